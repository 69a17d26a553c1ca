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
from tame_core.methods import list_methods
from tame_core.metrics.curves import DEFAULT_FILLS, DEFAULT_STEPS, FILLS, MODES, fills_text
from tame_core.studio import plots
from tame_core.studio.methods import (
    auc_direction,
    auc_rows,
    curve_points,
    curves_estimate,
    curves_so_far,
    maps_so_far,
    missing,
    perturbed_image,
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
    available = list_methods()
    settings = st.columns([3, 1, 1, 1])
    others = settings[0].multiselect(
        "Baselines to compare with TAME", available[1:], key="curve_methods", help="Score-CAM, Ablation-CAM and RISE take longer."
    )
    steps = settings[1].select_slider("Steps", [10, 20, 25, 50, 100], value=DEFAULT_STEPS, key="curve_steps")
    fills = {
        mode: column.selectbox(label, FILLS, FILLS.index(DEFAULT_FILLS[mode]), key=f"curve_fill_{mode}", help=help_text)
        for mode, column, label, help_text in (
            ("deletion", settings[2], "Deleted pixels become", "mean: the classifier's mean colour (RISE's deletion)"),
            ("insertion", settings[3], "Insertion starts from", "blur: RISE's Gaussian blur (11 x 11, sigma 5), RISE's insertion"),
        )
    }
    baseline = fills_text(fills)
    methods = ["tame", *others]
    subject = ws.subject(model, image, class_index)
    tag = (subject.key(), steps, baseline)
    job = ws.job_for("curves", tag)
    todo = missing(subject, methods, ws.results, steps, baseline)
    if todo and not (job is not None and job.running):
        estimate = curves_estimate(subject, todo, steps, ws.results, baseline)
        job = start_when_ready(
            job,
            f"the curves of {', '.join(todo)}",
            estimate,
            "curves_start",
            lambda: ws.start_job(
                "curves",
                f"Deletion and insertion curves (estimated {estimate.duration})",
                lambda context: curve_points(subject, todo, context, steps, baseline, ws.results),
                tag,
            ),
        )

    def draw() -> None:
        job_status(job, "curves")
        live_records = job.records if job is not None else ()
        points = curves_so_far(subject, methods, steps, baseline, ws.results, live_records)
        maps = {m.method: m for m in maps_so_far(subject, methods, ws.results, live_records)}
        for column, mode in zip(st.columns(2), MODES):
            column.plotly_chart(plots.curve_figure(points, mode, methods), key=f"curve-{mode}", width="stretch")
        rows = auc_rows(points)
        if rows:
            st.dataframe(
                rows,
                hide_index=True,
                column_config={
                    "deletion_auc": st.column_config.NumberColumn(f"deletion AUC ({auc_direction('deletion')})", format="%.3f"),
                    "insertion_auc": st.column_config.NumberColumn(
                        f"insertion AUC ({auc_direction('insertion')})", format="%.3f"
                    ),
                },
            )
        if maps:
            st.subheader("The picture at one step")
            pick, slider = st.columns([1, 3])
            method = pick.selectbox("Map", list(maps), key="curve_view_method")
            step = slider.slider("Step", 0, steps, steps // 5, key="curve_view_step")
            shown = st.columns(len(MODES))
            for column, mode in zip(shown, MODES):
                column.image(
                    perturbed_image(subject.explanation, maps[method].saliency, mode, step, steps, baseline),
                    caption=f"{mode}: {step / steps:.0%} of pixels {'deleted' if mode == 'deletion' else 'inserted'}",
                    width="stretch",
                )

    live(job, draw)


guarded(body)
