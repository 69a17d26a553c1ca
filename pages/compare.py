"""Compare: TAME and chosen baselines side by side on one picture, with their time and passes."""

from __future__ import annotations

import streamlit as st

from pages._shared import class_picker, guarded, image_or_stop, job_status, live, model_or_stop, workspace
from tame_core.studio import render
from tame_core.baselines import list_methods
from tame_core.studio.methods import MethodMap, compare_methods

COLUMNS = 4
DEFAULT_BASELINES = ("gradcam", "gradcam++", "layercam")


def body() -> None:
    st.title("Compare")
    model = model_or_stop()
    image = image_or_stop()
    ws = workspace()
    class_index = class_picker(model, image)
    available = list_methods()
    baselines = st.multiselect(
        "Baselines",
        available[1:],
        default=[m for m in DEFAULT_BASELINES if m in available],
        key="compare_methods",
        help="Each runs on the same model input as TAME. Score-CAM, Ablation-CAM and RISE need many forward passes.",
    )
    methods = ["tame", *baselines]
    explanation = ws.view(model, image, class_index)
    tag = (model.key, image.digest, class_index, tuple(methods))
    job = ws.job_for("compare", tag)
    if job is None:
        job = ws.start_job(
            "compare", "Comparing methods", lambda context: compare_methods(model, explanation, methods, context), tag
        )
    label = render.class_label(class_index, model.class_names)

    def draw() -> None:
        job_status(job, "compare")
        done = [r for r in job.records if isinstance(r, MethodMap)]
        if not done:
            st.caption("Maps appear here as each method finishes.")
            return
        columns = st.columns(COLUMNS)
        for position, result in enumerate(done):
            columns[position % COLUMNS].image(
                render.overlay_image(image.preview, result.saliency.cpu().numpy()),
                caption=f"{result.method}: {result.milliseconds:.0f} ms, {result.forward_passes} forward / "
                f"{result.backward_passes} backward",
                width="stretch",
            )
        st.dataframe(
            [
                {
                    "method": r.method,
                    "ms": r.milliseconds,
                    "forward passes": r.forward_passes,
                    "backward passes": r.backward_passes,
                    "× TAME time": r.milliseconds / done[0].milliseconds if done[0].milliseconds else None,
                }
                for r in done
            ],
            hide_index=True,
            column_config={
                "ms": st.column_config.NumberColumn(format="%.1f"),
                "× TAME time": st.column_config.NumberColumn(format="%.1f×"),
            },
        )
        st.caption(f"All maps explain {label}; times are this machine's wall clock for one picture.")

    live(job, draw)


guarded(body)
