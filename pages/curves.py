"""Deletion curves: how fast the class probability falls (deletion) or rises (insertion) with each map."""

from __future__ import annotations

import streamlit as st

from pages._shared import (
    class_picker,
    guarded,
    image_or_stop,
    job_status,
    live,
    model_or_stop,
    start_when_ready,
    workspace,
)
from tame_core.studio import (
    DEFAULT_FILLS,
    DEFAULT_STEPS,
    FILLS,
    MODES,
    MethodMap,
    Subject,
    auc_table,
    coinciding,
    coinciding_text,
    curves_plan,
    curves_so_far,
    fills_text,
    maps_so_far,
    method_names,
    perturbed_image,
    plots,
)


def settings() -> tuple[list[str], int, str]:
    """The methods (TAME first), the curves' steps and their baseline (what deleted pixels become, what
    insertion starts from)."""
    columns = st.columns([3, 1, 1, 1])
    others = columns[0].multiselect(
        "Baselines to compare with TAME", method_names()[1:], key="curve_methods", help="Score-CAM, Ablation-CAM and RISE take longer."
    )
    steps = columns[1].select_slider("Steps", [10, 20, 25, 50, 100], value=DEFAULT_STEPS, key="curve_steps")
    fills = {
        mode: column.selectbox(label, FILLS, FILLS.index(DEFAULT_FILLS[mode]), key=f"curve_fill_{mode}", help=help_text)
        for mode, column, label, help_text in (
            ("deletion", columns[2], "Deleted pixels become", "mean: the classifier's mean colour (RISE's deletion)"),
            ("insertion", columns[3], "Insertion starts from", "blur: RISE's Gaussian blur (11 x 11, sigma 5), RISE's insertion"),
        )
    }
    return ["tame", *others], steps, fills_text(fills)


def one_step(subject: Subject, maps: dict[str, MethodMap], steps: int, baseline: str) -> None:
    """The picture as the curves' model saw it at one step, for one map."""
    st.subheader("The picture at one step")
    pick, slider = st.columns([1, 3])
    method = pick.selectbox("Map", list(maps), key="curve_view_method")
    step = slider.slider("Step", 0, steps, steps // 5, key="curve_view_step")
    for column, mode in zip(st.columns(len(MODES)), MODES):
        column.image(
            perturbed_image(subject.explanation, maps[method].saliency, mode, step, steps, baseline),
            caption=f"{mode}: {step / steps:.0%} of pixels {'deleted' if mode == 'deletion' else 'inserted'}",
            width="stretch",
        )


def body() -> None:
    st.title("Deletion curves")
    model = model_or_stop()
    image = image_or_stop()
    ws = workspace()
    st.caption(
        "Pixels are changed in the order each map ranks them. Deletion replaces the most salient first, by "
        "default with the classifier's mean colour (a faithful map makes the probability fall fast: low AUC); "
        "insertion restores them onto a blurred copy (it should rise fast: high AUC). Curves are drawn as "
        "they are computed; a baseline added later is computed alone, the curves already drawn are kept."
    )
    class_index = class_picker(model, image)
    methods, steps, baseline = settings()
    subject = ws.subject(model, image, class_index)
    plan = curves_plan(ws, subject, methods, steps, baseline)
    job = start_when_ready(plan, f"the curves of {', '.join(plan.todo)}", "curves_start")

    def draw() -> None:
        job_status(job, "curves")
        live_records = job.records if job is not None else ()
        points = curves_so_far(subject, methods, steps, baseline, ws.results, live_records)
        maps = {m.method: m for m in maps_so_far(subject, methods, ws.results, live_records)}
        for column, mode in zip(st.columns(2), MODES):
            column.plotly_chart(plots.curve_figure(points, mode, methods), key=f"curve-{mode}", width="stretch")
        rows = auc_table(points, steps)
        if rows:
            st.dataframe(rows, hide_index=True)
        same = coinciding_text(coinciding(list(maps.values())))
        if same:
            st.caption(same)
        if maps:
            one_step(subject, maps, steps, baseline)

    live(job, draw)


guarded(body)
