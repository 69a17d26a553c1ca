"""Plotly figures the pages draw: deletion/insertion curves and training losses."""

from __future__ import annotations

from typing import Any, Sequence

import plotly.graph_objects as go

from .methods import CurvePoint, auc_direction

#: Line colours by method, so TAME keeps its colour whichever other methods are ticked.
_PALETTE = ("#d9480f", "#1c7ed6", "#2b8a3e", "#7048e8", "#e67700", "#0b7285", "#c2255c", "#5c940d", "#862e9c", "#495057")
LOSS_TERMS = ("loss", "ce", "area", "tv")


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
    for term in LOSS_TERMS:
        figure.add_trace(
            go.Scatter(x=[r["step"] for r in steps], y=[r[term] for r in steps], mode="lines+markers", name=term)
        )
    for step in resumed_at:
        figure.add_vline(x=step, line_dash="dot", line_color="#868e96", annotation_text="resumed", annotation_position="top")
    figure.update_layout(
        xaxis={"title": "step"},
        yaxis={"title": "value", "type": "log"},
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend={"orientation": "h", "y": -0.25},
    )
    return figure
