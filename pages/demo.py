"""Demo mode: big pictures, one click to the next, explanations computed ahead, no job controls on show.

The curated set is photos the embedded classifier gets right (checked by the tests); a presenter can
show their own pictures instead (those uploaded in this session).
"""

from __future__ import annotations

import streamlit as st

from pages._shared import colour_scale, guarded, job_status, live, model_or_stop, workspace
from tame_core.studio import DEMO, ActiveImage, load_sample, render

CURATED, MINE = "Curated samples", "My pictures"
HEATMAP, TOP = "Heatmap", "Most important quarter"
TOP_FRACTION = 0.25


def _step(offset: int, count: int) -> None:
    st.session_state["demo_index"] = (st.session_state.get("demo_index", 0) + offset) % count


def demo_set(imagenet: bool) -> tuple[list[ActiveImage], dict[str, str]]:
    """The pictures to present and, per picture, its credit line. A classifier of your own classes is
    presented on your pictures: the curated photos are ImageNet ones."""
    ws = workspace()
    if not imagenet and not ws.images:
        st.info("This model has its own classes: upload the pictures to present on the Explain page, then come back.")
        return [], {}
    sources = ([CURATED] if imagenet else []) + ([MINE] if ws.images else [])
    source = st.radio("Show", sources, horizontal=True, key="demo_source", label_visibility="collapsed")
    if source == MINE:
        chosen = st.multiselect(
            "Pictures to present",
            list(ws.images),
            default=list(ws.images),
            format_func=lambda digest: ws.images[digest].name,
            key="demo_mine",
        )
        return [ws.images[digest] for digest in chosen], {}
    samples = [load_sample(key) for key in DEMO]
    return samples, {image.digest: f"{image.name} · {DEMO[key].credit}" for key, image in zip(DEMO, samples)}


def body() -> None:
    model = model_or_stop()
    ws = workspace()
    images, credits = demo_set(model.knows_imagenet)
    if not images:
        if model.knows_imagenet or ws.images:
            st.info("Choose at least one picture to present.")
        return
    tag = (model.key, tuple(image.digest for image in images))
    job = ws.job_for("demo", tag)
    if job is None:
        job = ws.start_job("demo", "Preparing the demo", lambda ctx: ws.precompute(model, images, ctx), tag)

    count = len(images)
    index = st.session_state.get("demo_index", 0) % count
    image = images[index]
    back, title, forward = st.columns([1, 6, 1], vertical_alignment="center")
    back.button("◀ Previous", on_click=_step, args=(-1, count), key="demo_back", width="stretch")
    forward.button("Next ▶", on_click=_step, args=(1, count), key="demo_next", type="primary", width="stretch")

    explanation = ws.explanation(model, image)  # ready if the background job got here first
    (index_top, name, probability), *others = explanation.top_k(3)[0]
    title.markdown(f"## {image.name}: the model sees **{name}** ({probability:.0%})")
    picture, explained = st.columns(2, gap="medium")
    picture.image(image.pixels, caption=credits.get(image.digest, image.name), width="stretch")
    label = render.class_label(index_top, model.class_names)
    saliency = render.saliency(explanation)
    if st.session_state.get("demo_view") != TOP:
        explained.image(
            render.overlay_image(image.pixels, saliency, 0.55),
            caption=f"Where it looks for {label}",
            width="stretch",
            output_format="JPEG",
        )
        with explained:
            colour_scale(note="red where the picture most supports the class, blue where least")
    else:
        explained.image(
            render.most_salient(image.pixels, saliency, TOP_FRACTION),
            caption=f"The {TOP_FRACTION:.0%} of the picture its map ranks highest for {label}",
            width="stretch",
            output_format="JPEG",
        )
    explained.segmented_control("Map", [HEATMAP, TOP], default=HEATMAP, key="demo_view", label_visibility="collapsed")
    st.markdown("Runners-up: " + ", ".join(f"{other} ({p:.0%})" for _, other, p in others))
    st.caption(f"Picture {index + 1} of {count}.")
    live(job, lambda: job_status(job, "demo", controls=False))
    if st.button("Open this picture in Explain", key="demo_open"):
        ws.add(image)
        st.switch_page("pages/explain.py")


guarded(body)
