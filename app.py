"""TAME Explorer: see what a classifier looks at, and how each part of its explanation head contributes.

Run with ``streamlit run app.py`` (or ``make run``). This file sets up the pages and the sidebar that all
of them share (model and active image); each screen is a module in ``pages/``, the logic behind them is
in :mod:`tame_core.studio`.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit import runtime

from pages._shared import guarded, keep_jobs_alive, resolve_model, session_folder, workspace
from tame_core.studio import (
    CHECKPOINT_DIR,
    DEFAULT_BACKBONE,
    HEAD_ENV,
    MAX_HEAD_UPLOAD_MB,
    MAX_UPLOAD_MB,
    WEIGHTS_ENV,
    ModelChoice,
    available_devices,
    backbone_names,
    bundled_head_path,
    default_choice,
    freeze_imported_objects,
    hub_repo_id,
    server_head,
    server_path,
    share_cpu_between_threads,
    store_uploaded_head,
    store_uploaded_weights,
)

st.set_page_config(page_title="TAME Explorer", page_icon=":material/local_fire_department:", layout="wide")


@st.cache_resource
def _server_setup() -> int:
    """Once per server process: CPU threads shared fairly between page scripts and background jobs, and
    the libraries just imported kept out of the garbage collector's full passes (about 300 ms each otherwise)."""
    freeze_imported_objects()
    return share_cpu_between_threads()


if runtime.exists():  # a server, or AppTest's (not a bare `python app.py`)
    _server_setup()

# Every url_path differs from its file's stem on purpose: Streamlit still runs a folder named pages/ the
# legacy way (each file a page, by stem) on a session's first run and in every AppTest run; distinct paths
# make that fall through to this script, so the sidebar and the navigation below always run.
PAGES = {
    "Explore": [
        st.Page("pages/explain.py", url_path="explanations", title="Explain", icon=":material/image_search:", default=True),
        st.Page("pages/branches.py", url_path="branch-ablation", title="Branches", icon=":material/account_tree:"),
        st.Page("pages/curves.py", url_path="deletion-curves", title="Deletion curves", icon=":material/show_chart:"),
        st.Page("pages/compare.py", url_path="comparison", title="Compare", icon=":material/compare:"),
    ],
    "Build": [
        st.Page("pages/train.py", url_path="training", title="Train", icon=":material/model_training:"),
        st.Page("pages/evaluate.py", url_path="evaluation", title="Evaluate", icon=":material/table_chart:"),
    ],
    "Present": [st.Page("pages/demo.py", url_path="demo-mode", title="Demo mode", icon=":material/slideshow:")],
}

HEAD_SOURCES = {
    "bundled": "Bundled head",
    "file": "Local .safetensors file",
    "upload": "Upload a head",
    "hub": "Hugging Face Hub",
}
AS_HEAD_SAYS = "as the head's card says"


def model_sidebar() -> ModelChoice | None:
    """Head source, backbone and device; returns the choice (None until the chosen source is filled in)."""
    st.subheader("Model")
    source = st.selectbox("Head", list(HEAD_SOURCES), format_func=HEAD_SOURCES.get, key="head_source")
    head: str | None = None
    revision: str | None = None
    weights: str | None = None
    if source == "bundled":
        head, weights = default_choice().head, default_choice().weights
        if head:
            st.caption(f"Using `{Path(head).name}` (from ${HEAD_ENV})" + (f" on `{Path(weights).name}` (from ${WEIGHTS_ENV})." if weights else "."))
        else:
            st.caption(f"`checkpoints/{bundled_head_path(DEFAULT_BACKBONE).name}` on the embedded {DEFAULT_BACKBONE}.")
    elif source == "file":
        typed = st.text_input("Path to a head (.safetensors)", key="head_path").strip()
        head = str(server_head(typed, "Head", also=[CHECKPOINT_DIR, session_folder().heads])) if typed else None
    elif source == "upload":
        upload = st.file_uploader(
            "Head checkpoint", type=["safetensors"], key="head_upload", max_upload_size=MAX_HEAD_UPLOAD_MB
        )
        if upload is not None:
            head = str(store_uploaded_head(upload.name, upload.getvalue(), session_folder().uploaded_heads))
    else:
        head = hub_repo_id(typed) if (typed := st.text_input("Repo id", placeholder="owner/name", key="hub_repo").strip()) else None
        revision = st.text_input("Revision", placeholder="main", key="hub_revision").strip() or None
    backbones = [AS_HEAD_SAYS, *backbone_names()]
    backbone = st.selectbox("Backbone", backbones, key="backbone", help="The classifier the head explains.")
    if source != "bundled":
        weights = classifier_weights()
    device = st.selectbox("Device", available_devices(), key="device")
    if source != "bundled" and head is None:
        return None
    return ModelChoice(head, None if backbone == AS_HEAD_SAYS else backbone, revision, device, weights)


WEIGHTS_SOURCES = {"card": "As the head's card says", "file": "A weights file on the server", "upload": "Upload weights"}


def classifier_weights() -> str | None:
    """The classifier's weights: what the head's card names (pretrained, or a fine-tune's file beside the
    head), a server file under the allowed folders, or an upload kept in this session's folder."""
    source = st.selectbox(
        "Classifier weights", list(WEIGHTS_SOURCES), format_func=WEIGHTS_SOURCES.get, key="weights_source",
        help="For a head trained on your own fine-tuned classifier: its weights (.safetensors, .pt, .pth). "
             "The head's card records their SHA-256, so other weights are refused.",
    )
    if source == "file":
        typed = st.text_input("Path to the weights", key="weights_path").strip()
        return str(server_path(typed, "Weights", also=[session_folder().uploads])) if typed else None
    if source == "upload":
        upload = st.file_uploader("Weights file", type=["safetensors", "pt", "pth"], key="weights_upload", max_upload_size=MAX_HEAD_UPLOAD_MB)
        if upload is not None:
            return str(store_uploaded_weights(upload.name, upload.getvalue(), session_folder().uploads))
    return None


def _select_image() -> None:
    workspace().select(st.session_state["active_image"])


def images_sidebar() -> None:
    """The session's pictures: which one every page works on."""
    ws = workspace()
    st.subheader("Active image")
    if not ws.images:
        st.caption(f"None yet: upload images (up to {MAX_UPLOAD_MB} MB each) or pick a sample on Explain.")
        return
    if st.session_state.get("active_image") != ws.current:
        st.session_state["active_image"] = ws.current  # an upload or sample on a page changed it
    st.selectbox(
        "Image", list(ws.images), format_func=lambda d: ws.images[d].name, key="active_image", on_change=_select_image
    )
    image = ws.current_image
    if image is not None:
        st.image(image.thumbnail, caption=f"{image.original_size[1]}×{image.original_size[0]} px")
    st.button("Forget all images", on_click=ws.clear, key="forget_images")


def sidebar() -> None:
    with st.sidebar:
        keep_jobs_alive()
        choice = guarded(model_sidebar)  # e.g. an uploaded head that is not one: its error, no model
        resolve_model(choice)
        model, error = st.session_state["model"], st.session_state["model_error"]
        if model is not None:
            st.caption(model.describe())
            if model.unfinished_note:
                st.warning(model.unfinished_note)
        elif choice is not None:
            st.error(f"Cannot load the model: {error}")
        images_sidebar()


page = st.navigation(PAGES)
sidebar()
page.run()
