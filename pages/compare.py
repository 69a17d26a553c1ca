"""Compare: TAME and chosen comparison methods side by side on one picture, with what each costs."""

from __future__ import annotations

import streamlit as st

from pages._shared import (
    class_picker,
    colour_scale,
    guarded,
    image_or_stop,
    job_status,
    live,
    model_or_stop,
    start_when_ready,
    workspace,
)
from tame_core.methods import get_method, list_methods
from tame_core.metrics import get_metric
from tame_core.studio import render
from tame_core.studio.methods import (
    compare_estimate,
    compare_methods,
    cost_rows,
    maps_so_far,
    missing,
)

COLUMNS = 4
DEFAULT_BASELINES = ("gradcam", "gradcam++", "layercam")


def body() -> None:
    st.title("Compare")
    model = model_or_stop()
    image = image_or_stop()
    ws = workspace()
    class_index = class_picker(model, image)
    available = list_methods()
    others = st.multiselect(
        "Baselines",
        available[1:],
        default=[m for m in DEFAULT_BASELINES if m in available],
        key="compare_methods",
        format_func=lambda m: f"{m}: {get_method(m).description.split(': ', 1)[-1]}",
        help="Each runs on the same model input as TAME. Score-CAM, Ablation-CAM and RISE need hundreds to "
        "thousands of forward passes: the button says how long before they start.",
    )
    methods = ["tame", *others]
    subject = ws.subject(model, image, class_index)
    job = ws.job_for("compare", subject.key())
    running = job is not None and job.running
    todo = missing(subject, methods, ws.results)
    if todo and not running:
        estimate = compare_estimate(subject, todo, ws.results)
        job = start_when_ready(
            job,
            ", ".join(todo),
            estimate,
            "compare_start",
            lambda: ws.start_job(
                "compare",
                f"Comparing methods (estimated {estimate.duration})",
                lambda context: compare_methods(subject, todo, context, ws.results),
                subject.key(),
            ),
        )
    label = render.class_label(class_index, model.class_names)

    def draw() -> None:
        job_status(job, "compare")
        done = maps_so_far(subject, methods, ws.results, job.records if job is not None else ())
        if not done:
            st.caption("Maps appear here as each method finishes.")
            return
        columns = st.columns(COLUMNS)
        for position, result in enumerate(done):
            cost = f"{result.relative:.1f}× TAME ({result.milliseconds:,.0f} ms)"
            columns[position % COLUMNS].image(
                render.overlay_image(image.preview, result.saliency.cpu().numpy()),
                caption=f"{result.method}: {cost}, {result.forward_passes:,} forward / {result.backward_passes:,} backward",
                width="stretch",
            )
        colour_scale()
        costs = cost_rows(done)
        st.dataframe(
            costs,
            hide_index=True,
            column_order=("method", "× TAME time", "ms", "forward passes", "backward passes"),  # timing: below
            column_config={
                "ms": st.column_config.NumberColumn(f"ms {get_metric('ms_per_image').arrow}", format="%.1f"),
                "forward passes": st.column_config.NumberColumn(f"forward passes {get_metric('forward_passes').arrow}", format="%d"),
                "backward passes": st.column_config.NumberColumn(f"backward passes {get_metric('backward_passes').arrow}", format="%d"),
                "× TAME time": st.column_config.NumberColumn(
                    format="%.1f×", help="Timed in turns with TAME, so a busy machine slows both alike"
                ),
            },
        )
        st.caption(
            f"All maps explain {label}. Times are each method's own work on this machine, warm: each method runs "
            "in turns with TAME (cheap ones several times, the median shown), so × TAME holds even when the "
            "machine is busy. TAME's time is its backbone forward plus its head."
        )
        st.caption("  \n".join(f"**{row['method']}**: {row['timing']}." for row in costs))

    live(job, draw, every=5.0)


guarded(body)
