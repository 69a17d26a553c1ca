"""Demo mode: big pictures, one click to the next sample, explanations computed ahead in the background."""

from __future__ import annotations

import streamlit as st

from pages._shared import guarded, job_status, live, model_or_stop, workspace
from tame_core.studio import GALLERY, load_sample, render


def _step(offset: int) -> None:
    st.session_state["demo_index"] = (st.session_state.get("demo_index", 0) + offset) % len(GALLERY)


def body() -> None:
    model = model_or_stop()
    ws = workspace()
    samples = [load_sample(key) for key in GALLERY]
    job = ws.job_for("demo", model.key)
    if job is None:
        job = ws.start_job("demo", "Preparing the demo", lambda ctx: ws.precompute(model, samples, ctx), model.key)

    index = st.session_state.get("demo_index", 0) % len(samples)
    image = samples[index]
    key = list(GALLERY)[index]
    back, title, forward = st.columns([1, 6, 1], vertical_alignment="center")
    back.button("◀ Previous", on_click=_step, args=(-1,), key="demo_back", width="stretch")
    forward.button("Next ▶", on_click=_step, args=(1,), key="demo_next", type="primary", width="stretch")

    explanation = ws.explanation(model, image)  # ready if the background job got here first
    (index_top, name, probability), *others = explanation.top_k(3)[0]
    title.markdown(f"## {GALLERY[key].title}: the model sees **{name}** ({probability:.0%})")
    picture, explained = st.columns(2, gap="medium")
    picture.image(image.pixels, caption=f"{GALLERY[key].title} · {GALLERY[key].credit}", width="stretch")
    explained.image(
        render.overlay_image(image.pixels, render.saliency(explanation), 0.55),
        caption=f"Where it looks for {render.class_label(index_top, model.class_names)}",
        width="stretch",
        output_format="JPEG",
    )
    st.markdown("Runners-up: " + ", ".join(f"{other} ({p:.0%})" for _, other, p in others))
    st.caption(f"Sample {index + 1} of {len(samples)}.")
    live(job, lambda: job_status(job, "demo"))
    if st.button("Open this picture in Explain", key="demo_open"):
        ws.add(image)
        st.switch_page("pages/explain.py")


guarded(body)
