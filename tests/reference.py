"""
The README of the Go experiment Gourmet began as, as the project was given
it (``shared/reference/gourmet-go-README.md`` beside the repository), kept
verbatim in ``tests/fixtures`` so that the suite needs nothing outside the
repository: its configuration must load as written.
"""

from __future__ import annotations

from pathlib import Path

REFERENCE_README = Path(__file__).resolve().parent / "fixtures/gourmet-go-README.md"


def reference_config() -> str:
    """
    The configuration block of the Go original's README, verbatim.
    """
    text = REFERENCE_README.read_text(encoding="utf-8")
    return text.split("```toml\n", 1)[1].split("```", 1)[0]
