"""Explain: upload or pick images; top-5 predictions, any class's map over the picture, downloads."""

from __future__ import annotations

from functools import partial

import streamlit as st

from pages._shared import class_picker, colour_scale, guarded, image_or_stop, image_picker, model_or_stop, workspace
from tame_core.studio import COLORMAPS, ActiveImage, Explanation, LoadedModel, render

GRID_COLUMNS = 4


def all_images(model: LoadedModel, alpha: float, colormap: str) -> None:
    """Every active picture with its map, small; one click makes a picture the current one."""
    ws = workspace()
    columns = st.columns(GRID_COLUMNS)
    for position, image in enumerate(list(ws.images.values())):
        view = ws.view(model, image, ws.chosen_class(model, image))
        column = columns[position % GRID_COLUMNS]
        column.image(render.overlay_image(image.thumbnail, render.saliency(view), alpha, colormap))
        label = render.class_label(int(view.classes[0, 0]), model.class_names)
        column.button(f"{image.name}: {label}", key=f"open-{image.digest}", on_click=ws.select, args=(image.digest,))


def _follow_top5(model: LoadedModel, image: ActiveImage, key: str) -> None:
    """A top-5 choice explains that class; the searchable picker is reset to follow it."""
    chosen = st.session_state.get(key)
    if chosen is not None:
        workspace().choose_class(model, image, int(chosen))
        st.session_state.pop(f"class-{model.tag}-{image.digest}", None)


def top5(model: LoadedModel, image: ActiveImage, base: Explanation) -> None:
    """The five likeliest classes; one click explains that class.

    Radio buttons, not a selectable table: a table's row selection waits 150 ms in the browser before
    the server hears of it, a third of what a class switch may take (issue 22's 300 ms)."""
    rows = render.prediction_rows(base)
    labels = {int(row["index"]): f"{row['class']} · {row['probability']:.1%}" for row in rows}
    chosen = workspace().chosen_class(model, image)
    key = f"top5-{model.tag}-{image.digest}"
    st.radio(
        "Top 5: click one to explain it",
        list(labels),
        index=list(labels).index(chosen) if chosen in labels else None,
        format_func=labels.__getitem__,
        key=key,
        on_change=_follow_top5,
        args=(model, image, key),
    )


def map_views(model: LoadedModel, image: ActiveImage, class_index: int, alpha: float, colormap: str) -> None:
    """The class's map over the picture and alone, with the downloads of both."""
    view = workspace().view(model, image, class_index)
    saliency = render.saliency(view)
    overlaid = render.overlay_image(image.pixels, saliency, alpha, colormap)
    probability = float(view.class_probs[0, 0])
    label = render.class_label(class_index, model.class_names)
    left, right = st.columns(2)
    left.image(overlaid, caption=f"{label}: p = {probability:.1%}", output_format="JPEG")
    for note in (render.unlikely_class_note(probability), render.tiny_picture_note(image.pixels)):
        if note:
            left.info(note)
    heatmap = render.heatmap_image(saliency, colormap)
    right.image(heatmap, caption="The map alone (all branches)", output_format="JPEG")
    stem = f"{render.file_stem(image.name)}_{render.file_stem(model.class_names[class_index])}"
    left.download_button(
        "Overlay (.png)", data=lambda: render.png_bytes(overlaid), file_name=f"{stem}_overlay.png", mime="image/png"
    )
    right.download_button(
        "Map (.npy)",
        data=lambda: render.npy_bytes(saliency),
        file_name=f"{stem}_map.npy",
        mime="application/octet-stream",
        help=render.map_size_note(saliency.shape[:2], image.original_size),
    )
    if tuple(saliency.shape[:2]) != tuple(image.original_size):
        right.caption(f"Downloads are {saliency.shape[1]}×{saliency.shape[0]} px (the picture is "
                      f"{image.original_size[1]}×{image.original_size[0]} px).")
    colour_scale(colormap, "the map is scaled to its own range, 0 where the class is least supported, 1 where most")


def class_and_map(model: LoadedModel, image: ActiveImage, base: Explanation) -> None:
    """The top-5, the class picker, the display settings and the map: what a class switch redraws."""
    controls, pictures = st.columns([2, 3], gap="large")
    with controls:
        st.subheader(image.name)
        top5(model, image, base)
        class_index = class_picker(model, image)
        alpha = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="alpha")
        colormap = st.selectbox("Colormap", list(COLORMAPS), key="colormap")
    with pictures:
        map_views(model, image, class_index, alpha, colormap)


def body() -> None:
    st.title("Explain")
    image_picker()
    model = model_or_stop()
    image = image_or_stop("Upload an image or pick a sample above to see what the classifier looks at.")
    ws = workspace()
    with st.spinner("Explaining…"):
        base = ws.explanation(model, image)

    st.fragment(guarded)(partial(class_and_map, model, image, base))  # a class switch reruns only this part
    if len(ws.images) > 1 and st.toggle(f"Show all {len(ws.images)} images", key="show_all"):
        all_images(model, st.session_state.get("alpha", 0.5), st.session_state.get("colormap", list(COLORMAPS)[0]))


guarded(body)
