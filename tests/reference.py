"""
The Go original's README, which the project keeps beside this checkout in
``../shared/reference``: its configuration must load as written.
"""

from __future__ import annotations

from pathlib import Path

REFERENCE_README = (
    Path(__file__).resolve().parents[2] / "shared/reference/gourmet-go-README.md"
)


def reference_config() -> str:
    """
    The configuration block of the Go original's README, verbatim.
    """
    text = REFERENCE_README.read_text(encoding="utf-8")
    return text.split("```toml\n", 1)[1].split("```", 1)[0]
