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
from tame_core.studio import (
    ActiveImage,
    JobPlan,
    MethodMap,
    compare_plan,
    cost_rows,
    maps_so_far,
    method_names,
    method_summary,
    metric_spec,
    render,
)

COLUMNS = 4
DEFAULT_BASELINES = ("gradcam", "gradcam++", "layercam")


def maps_grid(image: ActiveImage, done: list[MethodMap]) -> None:
    """Each finished map over the picture, captioned with what it cost."""
    columns = st.columns(COLUMNS)
    for position, result in enumerate(done):
        cost = f"{result.relative:.1f}× TAME ({result.milliseconds:,.0f} ms)"
        columns[position % COLUMNS].image(
            render.overlay_image(image.preview, result.saliency.cpu().numpy()),
            caption=f"{result.method}: {cost}, {result.forward_passes:,} forward / {result.backward_passes:,} backward",
            width="stretch",
        )
    colour_scale()


def costs_table(done: list[MethodMap], label: str) -> None:
    """The maps' costs, every cell a number, and how each time was taken."""
    costs = cost_rows(done)
    st.dataframe(
        costs,
        hide_index=True,
        column_order=("method", "× TAME time", "ms", "forward passes", "backward passes"),  # timing: below
        column_config={
            "ms": st.column_config.NumberColumn(f"ms {metric_spec('ms_per_image').arrow}", format="%.1f"),
            "forward passes": st.column_config.NumberColumn(f"forward passes {metric_spec('forward_passes').arrow}", format="%d"),
            "backward passes": st.column_config.NumberColumn(f"backward passes {metric_spec('backward_passes').arrow}", format="%d"),
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


def body() -> None:
    st.title("Compare")
    model = model_or_stop()
    image = image_or_stop()
    ws = workspace()
    class_index = class_picker(model, image)
    available = method_names()
    others = st.multiselect(
        "Baselines",
        available[1:],
        default=[m for m in DEFAULT_BASELINES if m in available],
        key="compare_methods",
        format_func=lambda m: f"{m}: {method_summary(m)}",
        help="Each runs on the same model input as TAME. Score-CAM, Ablation-CAM and RISE need hundreds to "
        "thousands of forward passes: the button says how long before they start.",
    )
    methods = ["tame", *others]
    subject = ws.subject(model, image, class_index)
    plan: JobPlan = compare_plan(ws, subject, methods)
    job = start_when_ready(plan, ", ".join(plan.todo), "compare_start")
    label = render.class_label(class_index, model.class_names)

    def draw() -> None:
        job_status(job, "compare")
        done = maps_so_far(subject, methods, ws.results, job.records if job is not None else ())
        if not done:
            st.caption("Maps appear here as each method finishes.")
            return
        maps_grid(image, done)
        costs_table(done, label)

    live(job, draw, every=5.0)


guarded(body)
