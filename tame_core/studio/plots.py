"""Plotly figures the pages draw: deletion/insertion curves, training losses and paired comparisons."""

from __future__ import annotations

import math
from typing import Any, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .curves import CurvePoint, auc_direction

#: Line colours by method, so TAME keeps its colour whichever other methods are ticked.
_PALETTE = ("#d9480f", "#1c7ed6", "#2b8a3e", "#7048e8", "#e67700", "#0b7285", "#c2255c", "#5c940d", "#862e9c", "#495057")
LOSS_TERMS = ("loss", "ce", "area", "tv", "destroy", "insert")
#: One line on each series of the loss chart, for people who have not read the papers.
LOSS_MEANINGS = {
    "loss": "the weighted sum of the terms below: what training lowers",
    "ce": "how badly the classifier misses the class when it sees only what the map keeps (lower: the map keeps what matters)",
    "area": "how much of the picture the maps cover (lower: smaller maps)",
    "tv": "how ragged the maps are (lower: smoother maps)",
    "destroy": "the class's probability once the map's region is removed (lower: the map holds the evidence)",
    "insert": "how badly the classifier misses the class from the map's region alone on a blurred picture",
}


def method_colour(method: str, methods: Sequence[str]) -> str:
    return _PALETTE[list(methods).index(method) % len(_PALETTE)] if method in methods else _PALETTE[-1]


def curve_figure(points: Sequence[CurvePoint], mode: str, methods: Sequence[str], height: int = 360) -> go.Figure:
    """Class probability against the fraction of pixels changed, one line per method (fixed axes)."""
    figure = go.Figure()
    for method in methods:
        mine = [p for p in points if p.method == method and p.mode == mode]
        figure.add_trace(
            go.Scatter(
                x=[p.fraction for p in mine],
                y=[p.probability for p in mine],
                mode="lines",
                name=method,
                line={"color": method_colour(method, methods), "width": 3 if method == "tame" else 2},
            )
        )
    figure.update_layout(
        title=f"{mode.capitalize()} (AUC: {auc_direction(mode)})",
        xaxis={"title": "fraction of pixels " + ("deleted" if mode == "deletion" else "inserted"), "range": [0, 1]},
        yaxis={"title": "class probability", "range": [0, 1]},  # a probability: fixed before the first point
        height=height,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


def loss_figure(records: Sequence[dict[str, Any]], resumed_at: Sequence[int] = (), height: int = 360) -> go.Figure:
    """Training loss terms against the step, from the trainer's step records; a dotted line where a run resumed."""
    steps = [r for r in records if "step" in r and "loss" in r]
    figure = go.Figure()
    for term in loss_terms(steps):
        figure.add_trace(
            go.Scatter(x=[r["step"] for r in steps], y=[r.get(term) for r in steps], mode="lines+markers", name=term)
        )
    ticks = log_ticks(steps)
    for step in resumed_at:
        figure.add_vline(x=step, line_dash="dot", line_color="#868e96", annotation_text="resumed", annotation_position="top")
    figure.update_layout(
        xaxis={"title": "step"},
        yaxis={"title": "value", "type": "log", "tickvals": ticks or None, "ticktext": [f"{t:g}" for t in ticks] or None},
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


def loss_terms(records: Sequence[dict[str, Any]]) -> list[str]:
    """The loss series the records hold, in :data:`LOSS_TERMS` order (destroy/insert only when on)."""
    return [term for term in LOSS_TERMS if any(r.get(term) is not None for r in records)]


def log_ticks(records: Sequence[dict[str, Any]]) -> list[float]:
    """Ticks at 1, 2, 5 times the powers of ten over the loss values, labelled in full: a log axis reads
    ``0.05, 0.1, 0.2`` rather than plotly's ``5, 2, 100, 5, 2``."""
    values = [float(r[t]) for r in records for t in LOSS_TERMS if isinstance(r.get(t), (int, float)) and r[t] > 0]
    if not values:
        return []
    low, high = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    steps = (1, 2, 5) if high - low <= 3 else (1,)  # over many decades, the powers of ten alone
    ticks = [m * 10.0**p for p in range(low, high + 1) for m in steps]
    inside = [t for t in ticks if min(values) <= t <= max(values)]
    below = [t for t in ticks if t < min(values)][-1:]
    above = [t for t in ticks if t > max(values)][:1]
    return [float(f"{t:.3g}") for t in below + inside + above]


#: Interval colours by verdict: the first method better (green), worse (red), no telling (grey), or, for the
#: map area where no way is better, larger or smaller (blue).
VERDICT_COLOURS = {"better": "#2b8a3e", "worse": "#c92a2a", "within noise": "#868e96", "larger": "#1c7ed6", "smaller": "#1c7ed6"}


def comparison_figure(rows: Sequence[dict[str, Any]], a: str, b: str, row_height: int = 58) -> go.Figure:
    """``a - b`` per metric (rows of :func:`~.per_image.comparison_rows`): the mean difference and its 95 %
    interval, one small panel per metric (metrics differ in scale) centred on 0, coloured by verdict."""
    figure = make_subplots(rows=max(1, len(rows)), cols=1, vertical_spacing=0.35 / max(1, len(rows)))
    shown: set[str] = set()
    for index, row in enumerate(rows, start=1):
        colour = VERDICT_COLOURS[row["verdict"]]
        figure.add_trace(
            go.Scatter(
                x=[row["mean difference"]], y=[0], mode="markers", marker={"color": colour, "size": 9},
                error_x={"type": "data", "symmetric": False, "array": [row["high"] - row["mean difference"]],
                         "arrayminus": [row["mean difference"] - row["low"]], "color": colour, "thickness": 3, "width": 6},
                name=row["verdict"], legendgroup=row["verdict"], showlegend=row["verdict"] not in shown,
                hovertemplate=f"{row['metric']}: %{{x:+.4f}} [{row['low']:+.4f}, {row['high']:+.4f}], {row['verdict']}<extra></extra>",
            ),
            row=index, col=1,
        )
        shown.add(row["verdict"])
        reach = max(abs(row["low"]), abs(row["high"])) * 1.2 or 1.0  # 0 in the middle: the side is the answer
        figure.add_vline(x=0, line_color="#495057", line_width=1, row=index, col=1)
        figure.update_xaxes(range=[-reach, reach], zeroline=False, nticks=7, row=index, col=1)
        figure.update_yaxes(
            tickvals=[0], ticktext=[row["metric"]], range=[-1, 1], row=index, col=1
        )
    figure.update_layout(
        title=f"{a} − {b}: mean difference and 95% interval per metric",
        height=90 + row_height * max(1, len(rows)),
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1.0, "xanchor": "right"},
    )
    return figure
