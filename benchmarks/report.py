"""
The comparison's figures as a table: each target's medians, their ratios to
nginx's proxy and to stock Twisted, and the issue's goals met or not.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from attrs import frozen

#: The targets, in the order shown, by key.
TARGETS: Dict[str, str] = {
    "upstream": "upstream alone",
    "nginx": "nginx proxy",
    "stock": "stock Twisted",
    "cpython": "Gourmet CPython",
    "pypy": "Gourmet PyPy",
}

#: Target key to figure key to its median; None where not measured.
Medians = Dict[str, Dict[str, Optional[float]]]


@frozen
class Figure:
    key: str
    label: str
    #: Digits after the point.
    digits: int


FIGURES = [
    Figure("small_rps", "small body req/s", 0),
    Figure("small_p50_ms", "small body p50 ms", 2),
    Figure("small_p99_ms", "small body p99 ms", 2),
    Figure("large_mbps", "1 MiB body MB/s", 0),
    Figure("slow_peak_mib", "slow client peak RSS MiB", 1),
]

#: Whom each figure is compared with, and how the ratio row is labelled.
REFERENCES = {"nginx": "  / nginx proxy", "stock": "  / stock Twisted"}

#: The targets that terminate TLS: the HTTPS rows' columns.
HTTPS_TARGETS = {key: TARGETS[key] for key in ("nginx", "cpython", "pypy")}
HTTPS_REFERENCES = {"nginx": REFERENCES["nginx"]}

#: The HTTPS rows' protocols, by key: ALPN's h2, and HTTP/1.1 over TLS.
PROTOCOLS = {"h2": "HTTP/2", "h1": "HTTP/1.1"}


def https_figures() -> List[Figure]:
    figures = []
    for key, name in PROTOCOLS.items():
        figures += [
            Figure(f"{key}_small_rps", f"{name} small req/s", 0),
            Figure(f"{key}_small_p50_ms", f"{name} small p50 ms", 2),
            Figure(f"{key}_small_p99_ms", f"{name} small p99 ms", 2),
            Figure(f"{key}_small_cpu_us", f"{name} small CPU us/req", 0),
            Figure(f"{key}_large_mbps", f"{name} 1 MiB MB/s", 0),
            Figure(f"{key}_large_cpu_us", f"{name} 1 MiB CPU us/req", 0),
        ]
    return figures


HTTPS_FIGURES = https_figures()

LABEL_WIDTH = 27
COLUMN_WIDTH = 17


def ratio(
    medians: Medians, target: str, figure: str, reference: str
) -> Optional[float]:
    value = medians.get(target, {}).get(figure)
    base = medians.get(reference, {}).get(figure)
    if value is None or not base:
        return None
    return value / base


def _row(label: str, cells: List[str]) -> str:
    return label.ljust(LABEL_WIDTH) + "".join(c.rjust(COLUMN_WIDTH) for c in cells)


def _number(value: Optional[float], digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(
    medians: Medians,
    errors: Dict[str, str],
    targets: Dict[str, str] = TARGETS,
    figures: List[Figure] = FIGURES,
    references: Dict[str, str] = REFERENCES,
    title: str = "",
    errors_label: str = "errors (non-2xx/socket)",
) -> str:
    """
    One column per target; per figure its medians, then their ratios.

    :param errors: target key to its error counts, shown as a last row
        labelled ``errors_label``.
    """
    lines = [_row(title, list(targets.values()))]
    for figure in figures:
        values = [medians.get(t, {}).get(figure.key) for t in targets]
        lines.append(_row(figure.label, [_number(v, figure.digits) for v in values]))
        for reference, label in references.items():
            ratios = [ratio(medians, t, figure.key, reference) for t in targets]
            lines.append(_row(label, [_number(r, 2) for r in ratios]))
    lines.append(_row(errors_label, [errors.get(t, "-") for t in targets]))
    return "\n".join(lines)


def https_table(medians: Medians, errors: Dict[str, str]) -> str:
    """
    The HTTPS rows: each protocol's figures beside nginx's.

    :param errors: target key to its error counts for every protocol.
    """
    return table(
        medians, errors, HTTPS_TARGETS, HTTPS_FIGURES, HTTPS_REFERENCES, "HTTPS"
    )


def protocol_cost_text(medians: Medians) -> Optional[str]:
    """
    HTTP/2 beside HTTP/1.1 over TLS for each target: the CPU time per
    small request and the requests per second, as ratios.
    """
    parts = []
    for target, name in HTTPS_TARGETS.items():
        cpu = _h2_over_h1(medians, target, "small_cpu_us")
        rps = _h2_over_h1(medians, target, "small_rps")
        if cpu is not None and rps is not None:
            parts.append(
                f"{name} {cpu:.2f}x the CPU per request and {rps:.2f}x the req/s"
            )
    if not parts:
        return None
    return "HTTP/2 beside HTTP/1.1 over TLS (small body): " + "; ".join(parts) + "."


def _h2_over_h1(medians: Medians, target: str, figure: str) -> Optional[float]:
    h2 = medians.get(target, {}).get(f"h2_{figure}")
    h1 = medians.get(target, {}).get(f"h1_{figure}")
    return None if h2 is None or not h1 else h2 / h1


@frozen
class Goal:
    """
    One of the issue's targets: ``target``'s ``figure`` (divided by
    ``reference``'s when there is one) against ``threshold``.
    """

    text: str
    target: str
    figure: str
    reference: Optional[str]
    at_least: bool
    threshold: float
    unit: str

    def value(self, medians: Medians) -> Optional[float]:
        if self.reference is not None:
            return ratio(medians, self.target, self.figure, self.reference)
        return medians.get(self.target, {}).get(self.figure)

    def met(self, medians: Medians) -> Optional[bool]:
        value = self.value(medians)
        if value is None:
            return None
        return value >= self.threshold if self.at_least else value < self.threshold

    def shown(self, medians: Medians) -> str:
        value = self.value(medians)
        if value is None:
            return "-"
        if self.unit == "%":
            return f"{value:.0%}"
        if self.unit == "x":
            return f"{value:.2f}x"
        return f"{value:.2f} {self.unit}"


def goals(connections: int) -> List[Goal]:
    at = f"at {connections} connections"
    return [
        Goal("small body: Gourmet CPython >= 1.6x stock Twisted's req/s",
             "cpython", "small_rps", "stock", True, 1.6, "x"),
        Goal("small body: Gourmet PyPy >= 35% of nginx proxy's req/s",
             "pypy", "small_rps", "nginx", True, 0.35, "%"),
        Goal("1 MiB body: Gourmet CPython >= 50% of nginx proxy's MB/s",
             "cpython", "large_mbps", "nginx", True, 0.5, "%"),
        Goal("1 MiB body: Gourmet PyPy >= 50% of nginx proxy's MB/s",
             "pypy", "large_mbps", "nginx", True, 0.5, "%"),
        Goal(f"small body p99 {at}: Gourmet PyPy < 3 ms",
             "pypy", "small_p99_ms", None, False, 3.0, "ms"),
        # On CPython, the Python baseline's runtime: on PyPy, importing
        # Twisted's web stack alone takes more (see pypy_memory_text).
        Goal("slow client peak RSS: Gourmet CPython < 100 MiB",
             "cpython", "slow_peak_mib", None, False, 100.0, "MiB"),
    ]  # fmt: skip


def pypy_memory_text(
    medians: Medians, floor_mib: Optional[float], start_mib: Optional[float]
) -> Optional[str]:
    """
    Gourmet's memory on PyPy beside PyPy's own floor: the memory target is
    checked on CPython, because PyPy with nothing but Twisted's web stack
    imported is already about as large as the target.
    """
    peak = medians.get("pypy", {}).get("slow_peak_mib")
    if peak is None or floor_mib is None or start_mib is None:
        return None
    return (
        f"On PyPy (for comparison, not a target): PyPy with Twisted's web stack "
        f"imported and nothing served is {floor_mib:.1f} MiB; Gourmet PyPy "
        f"started at {start_mib:.1f} MiB and peaked at {peak:.1f} MiB "
        f"(+{peak - start_mib:.1f} MiB during the download)."
    )


def goals_text(goal_list: List[Goal], medians: Medians) -> str:
    lines = ["Targets (from this run's medians):"]
    for goal in goal_list:
        met = goal.met(medians)
        verdict = "not measured" if met is None else "met" if met else "NOT MET"
        lines.append(f"  {goal.text:<62} {goal.shown(medians):>9}  {verdict}")
    return "\n".join(lines)


def goals_json(goal_list: List[Goal], medians: Medians) -> List[Dict[str, Any]]:
    return [
        {
            "target": goal.text,
            "value": goal.value(medians),
            "threshold": goal.threshold,
            "met": goal.met(medians),
        }
        for goal in goal_list
    ]
