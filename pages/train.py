"""Train: fit a TAME head on a folder of images in the background, watch it learn, stop, resume, save."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages._shared import guarded, job_status, live, session_folder, workspace
from tame_core.studio import (
    DEFAULT_BACKBONE,
    RECIPES,
    SPLITS,
    VARIANTS,
    JobState,
    TrainConfig,
    backbone_names,
    can_resume_training,
    latest_preview,
    layer_choices,
    loss_history,
    plots,
    push_head,
    resumed_steps,
    run_outcome,
    server_folder,
    start_training,
    training_cost,
    total_steps,
    training_config,
    unpack_upload,
)

RECIPE_LABELS = {"little-data": "Little data (recommended)", "paper": "Papers' recipe"}


@st.cache_resource(show_spinner="Listing the backbone's layers…")
def usable_layers(backbone: str) -> tuple[dict[str, str], list[str]]:
    return layer_choices(backbone)


def training_data() -> Path | None:
    """The folder to train on: typed in, or an uploaded zip unpacked (once per upload)."""
    source = st.radio("Images", ["A folder on the server", "Upload a zip"], horizontal=True, key="train_source")
    if source == "A folder on the server":
        text = st.text_input("Folder (searched recursively)", key="train_folder", placeholder="/data/my-images")
        if not text.strip():
            return None
        folder = server_folder(text, "Folder")
        if not folder.is_dir():
            st.error(f"{text.strip()}: not a folder on this server")
            return None
        return folder
    upload = st.file_uploader("Zip of images", type=["zip"], key="train_zip")
    if upload is None:
        return None
    job = workspace().job("train")
    with st.spinner(f"Unpacking {upload.name}…"):
        return unpack_upload(upload, upload.name, upload.file_id, session_folder().uploads, keep_others=job is not None and job.running)


def settings(data: Path | None) -> TrainConfig | None:
    backbones = backbone_names()
    left, middle, right = st.columns(3)
    backbone = left.selectbox("Backbone", backbones, index=backbones.index(DEFAULT_BACKBONE), key="train_backbone")
    variant = middle.selectbox("Head variant", list(VARIANTS), key="train_variant")
    name = right.text_input("Save as (head name)", value="my_head", key="train_name", help="Kept in this session's own folder.")
    layers, recipe_defaults = usable_layers(backbone)
    recipes = list(recipe_defaults)
    recipe = st.radio(
        "Recipe", recipes, horizontal=True, key=f"train_recipe_{backbone}", format_func=RECIPE_LABELS.get,
        help="Little data: every map starts as the classifier's own class activation map, so a few thousand unlabelled "
             "photos train a useful head (the bundled head's recipe). Papers': a learned map per class from scratch, "
             "for ImageNet-scale data." + ("" if "little-data" in recipes else f" {backbone}'s classifier pools no layer, so only the papers' recipe applies."),
    )
    defaults = RECIPES[recipe]
    chosen = st.multiselect(
        "Layers to tap (one branch each)",
        list(layers),
        default=recipe_defaults[recipe],
        format_func=layers.get,
        key=f"train_layers_{backbone}_{recipe}",
    )
    epochs, batch, rate, split = st.columns(4)
    values = {
        "recipe": recipe,
        "epochs": epochs.number_input("Epochs", 1, 200, defaults["epochs"], key=f"train_epochs_{recipe}"),
        "batch_size": batch.select_slider("Batch size", [4, 8, 16, 32, 64], value=16, key="train_batch"),
        "lr": rate.number_input("Learning rate", 1e-5, 1.0, defaults["lr"], format="%.4f", key=f"train_lr_{recipe}"),
        "split": split.selectbox("Split", SPLITS, key="train_split", help="train / heldout: the project's ImageNet split"),
    }
    if data is None or not chosen:
        st.info("Choose the images and at least one layer to start.")
        return None
    model = st.session_state.get("model")  # train where the sidebar's model runs
    device = model.choice.device if model is not None else "cpu"
    return training_config(data, name, session_folder().heads, backbone, chosen, variant, device, **values)


def progress_panel() -> None:
    job = workspace().job("train")
    if job is None:
        return

    def draw() -> None:
        job_status(job, "train")
        records = job.records
        steps = loss_history(records)
        if steps:
            st.plotly_chart(plots.loss_figure(steps, resumed_steps(records)), key="train_losses", width="stretch")
            st.caption("  \n".join(f"**{term}**: {plots.LOSS_MEANINGS[term]}" for term in plots.loss_terms(steps)))
        preview = latest_preview(records)
        if preview is not None:
            st.caption(f"Maps of the head saved at step {preview['step']}:")
            for column, picture in zip(st.columns(len(preview["overlays"]) or 1), preview["overlays"]):
                column.image(picture, width="stretch")
        outcome = run_outcome(records)
        if job.state is JobState.DONE and job.result is not None:
            st.success(f"Saved {job.result}. Choose it in the sidebar (Head: local file) to explain with it.")
        elif job.state is JobState.STOPPED and outcome is not None:
            total = total_steps(records)
            st.info(
                f"Stopped at step {outcome['step']} of {'?' if total is None else total}. The head as it was then is in {job.result} "
                "(not finished); Resume continues the same schedule from there."
            )

    live(job, draw, every=1.0)


def hub_panel(path: Path) -> None:
    with st.expander("Push to the Hugging Face Hub"):
        repo = st.text_input("Repo id", placeholder="owner/name", key="push_repo")
        token = st.text_input("Token (write access)", type="password", key="push_token")
        private = st.checkbox("Private repo", key="push_private")
        if not private:
            st.caption("Without **Private repo** the repo is public: anyone can download the head and its card.")
        if st.button("Push", key="push", disabled=not repo.strip()):
            with st.spinner(f"Pushing to {repo}…"):
                url = push_head(path, repo.strip(), token=token or None, private=private)
            st.success(f"Pushed: {url}")


def body() -> None:
    st.title("Train a head")
    data = training_data()
    config = settings(data)
    job = workspace().job("train")
    running = job is not None and job.running
    if config is not None:
        mine = job is not None and job.tag == config.out  # this session's own run of that name
        if config.out.exists() and not mine:
            st.warning(f"{config.out.name} exists: a new run replaces it (or pick another name).")
        cost = training_cost(st.session_state.get("model"), config)
        if cost is not None and not running:
            st.caption(f"Estimated {cost.text()} on this machine; once it runs, the progress bar says what is left.")
        go, again = st.columns(2)
        resumable = can_resume_training(config)  # after a stop, Resume is the button to press: Start replaces the head
        if go.button("Start training", type="secondary" if resumable else "primary", disabled=running, key="train_start"):
            start_training(workspace(), config, resume=False)
            st.rerun()
        if resumable and again.button("Resume the stopped run", type="primary", disabled=running, key="train_resume"):
            start_training(workspace(), config, resume=True)
            st.rerun()
    progress_panel()
    if job is not None and job.state is JobState.DONE and job.result is not None:
        hub_panel(Path(job.result))


guarded(body)
