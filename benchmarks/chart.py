"""
The comparison as a PNG chart for the README, drawn with matplotlib.

matplotlib is a benchmark tool, not a Gourmet dependency: ``./dev bench``
and tox's ``bench`` environment install it.  It is imported by name so that
type checking does not need it installed.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

#: (figure keys, panel title) in the order drawn; two keys draw two bars
#: for each target, the second hatched.
PANELS: List[Tuple[Tuple[str, ...], str]] = [
    (("small_rps",), "small body: requests/s (higher is better)"),
    (("small_p99_ms",), "small body: p99 latency, ms (lower is better)"),
    (("large_mbps",), "1 MiB body: MB/s (higher is better)"),
    (("slow_peak_mib",), "slow client: peak RSS, MiB (lower is better)"),
    (
        ("h2_small_rps", "h1_small_rps"),
        "HTTPS small body: requests/s, HTTP/2 | HTTP/1.1 hatched\n(higher is better)",
    ),
    (
        ("h2_small_cpu_us", "h1_small_cpu_us"),
        "HTTPS small body: proxy CPU us/request, HTTP/2 | HTTP/1.1 hatched\n"
        "(lower is better)",
    ),
]

HATCHES = ["", "//"]

#: The issue's absolute targets, drawn as dashed lines.
GOAL_LINES: Dict[str, Tuple[float, str]] = {
    "small_p99_ms": (3.0, "target (PyPy): < 3 ms"),
    "slow_peak_mib": (100.0, "target (CPython): < 100 MiB"),
}

COLOURS = ["#9e9e9e", "#2e7d32", "#c62828", "#1565c0", "#6a1b9a"]


def _pyplot() -> Optional[Any]:
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def draw(
    path: Path,
    labels: Dict[str, str],
    medians: Dict[str, Dict[str, Optional[float]]],
    title: str,
) -> Optional[str]:
    """
    Writes the chart to ``path``; returns why not if matplotlib is missing.

    :param labels: target key to the name shown, in the order drawn.
    :param medians: target key to figure key to its median (None: not
        measured).
    """
    pyplot = _pyplot()
    if pyplot is None:
        return "matplotlib is not installed (./dev bench installs it)"
    figure, axes = pyplot.subplots(3, 2, figsize=(11, 11))
    for axis, (keys, panel_title) in zip(axes.flat, PANELS):
        _panel(axis, keys, panel_title, labels, medians)
    save(pyplot, figure, path, title)
    return None


def save(pyplot: Any, figure: Any, path: Path, title: str) -> None:
    """
    Write ``figure`` to ``path`` under ``title``, and let it go.
    """
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _panel(
    axis: Any,
    keys: Tuple[str, ...],
    title: str,
    labels: Dict[str, str],
    medians: Dict[str, Dict[str, Optional[float]]],
) -> None:
    names, colours, rows = [], [], []
    for (target, label), colour in zip(labels.items(), COLOURS):
        values = [medians.get(target, {}).get(key) for key in keys]
        measured = [value for value in values if value is not None]
        if len(measured) == len(keys):
            names.append(label.replace(" ", "\n", 1))
            colours.append(colour)
            rows.append(measured)
    width = 0.8 / len(keys)
    for index, hatch in zip(range(len(keys)), HATCHES):
        offset = (index - (len(keys) - 1) / 2) * width
        heights = [row[index] for row in rows]
        bars = axis.bar(
            [x + offset for x in range(len(names))],
            heights,
            width,
            color=colours,
            hatch=hatch,
            edgecolor="white" if hatch else None,
        )
        axis.bar_label(bars, labels=[_short(v) for v in heights], fontsize=8)
    axis.set_xticks(range(len(names)), names)
    if keys[0] in GOAL_LINES:
        level, label = GOAL_LINES[keys[0]]
        axis.axhline(level, color="#444444", linestyle="--", linewidth=1, label=label)
        axis.legend(fontsize=8, loc="best")
    axis.set_title(title, fontsize=10)
    axis.tick_params(axis="x", labelsize=8)
    axis.margins(y=0.15)


def _short(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"
