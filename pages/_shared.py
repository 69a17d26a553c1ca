"""Streamlit pieces every page uses: the session's workspace, the model, the image picker, error guards
and job panels. Layout only; the logic behind them is in :mod:`tame_core.studio`.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

import streamlit as st

from tame_core.studio import (
    DISCONNECTED_TTL_S,
    GALLERY,
    GETS_IT_WRONG,
    MAX_UPLOAD_MB,
    STOPPED_BY_USER,
    UPLOAD_TYPES,
    AccessError,
    ActiveImage,
    ImageLoadError,
    Job,
    JobPlan,
    JobState,
    LoadedModel,
    ModelChoice,
    SessionFolder,
    TameError,
    Workspace,
    duration_text,
    load_model,
    load_sample,
    mispredicted,
    public_message,
    read_upload,
    render,
)

log = logging.getLogger("tame_core.studio.app")
T = TypeVar("T")

#: A job nobody has looked at for this long stops (the session's heartbeat comes every HEARTBEAT_S
#: while it runs; a hidden browser tab may slow it to once a minute).
ORPHAN_AFTER_S = 300.0
HEARTBEAT_S = 5.0


# --- session and model ------------------------------------------------------------------------------
def _session_probe() -> Callable[[], bool] | None:
    """Whether this browser session is still connected, from Streamlit's runtime (None where there is no
    runtime, as under AppTest: then the heartbeat alone decides)."""
    try:
        from streamlit.runtime import Runtime
        from streamlit.runtime.scriptrunner import get_script_run_ctx
    except ImportError:  # pragma: no cover - another Streamlit layout
        return None
    context = get_script_run_ctx()
    if context is None or not Runtime.exists():
        return None
    runtime, session = Runtime.instance(), context.session_id
    return lambda: runtime.is_active_session(session)


def workspace() -> Workspace:
    """This browser session's pictures, results and jobs (never shared with another session).

    Its jobs stop themselves once the session is gone: disconnected (a closed or reloaded tab), or
    silent for :data:`ORPHAN_AFTER_S`.
    """
    if "workspace" not in st.session_state:
        st.session_state["workspace"] = Workspace(alive=_session_probe(), orphan_after=ORPHAN_AFTER_S)
    return st.session_state["workspace"]


def keep_jobs_alive() -> None:
    """The session's heartbeat: every script run, and every HEARTBEAT_S while one of its jobs runs."""
    ws = workspace()
    ws.heartbeat()
    if ws.running_jobs:
        st.fragment(ws.heartbeat, run_every=HEARTBEAT_S)()


def session_folder() -> SessionFolder:
    """This browser session's own folder for trained heads, unpacked zips and evaluation states."""
    if "session_folder" not in st.session_state:  # its scratch goes once Streamlit would drop the session too
        gone_after = float(st.get_option("server.disconnectedSessionTTL") or DISCONNECTED_TTL_S)
        st.session_state["session_folder"] = SessionFolder(alive=_session_probe(), gone_after=gone_after)
    return st.session_state["session_folder"]


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _cached_model(choice: ModelChoice, fingerprint: tuple[int, int] | None) -> LoadedModel:
    # fingerprint is part of the cache key only: a head file rewritten on disk loads afresh.
    return load_model(choice)


def resolve_model(choice: ModelChoice | None) -> None:
    """Load the sidebar's choice (cached per process) and note the model or the error for the page."""
    st.session_state["model"], st.session_state["model_error"] = None, None
    if choice is None:
        st.session_state["model_error"] = "choose a head in the sidebar"
        return
    try:
        st.session_state["model"] = _cached_model(choice, choice.fingerprint())
    except TameError as error:
        st.session_state["model_error"] = public_message(str(error))


def model_or_stop() -> LoadedModel:
    """The model the sidebar loaded; without one, say why and end the page here."""
    model = st.session_state.get("model")
    if model is None:
        st.info(f"No model to explain with: {st.session_state.get('model_error') or 'choose one in the sidebar'}.")
        st.stop()
    return model


def image_or_stop(hint: str = "Upload an image or pick a sample on the Explain page.") -> ActiveImage:
    image = workspace().current_image
    if image is None:
        st.info(hint)
        st.stop()
    return image


# --- errors -----------------------------------------------------------------------------------------
def guarded(body: Callable[[], T]) -> T | None:
    """Run a page's body; a user error becomes its one-line ``st.error``, a bug a short one, never a traceback."""
    try:
        return body()
    except AccessError as error:  # names only what the user typed
        st.error(str(error))
    except TameError as error:
        st.error(public_message(str(error)))
    except Exception as error:  # noqa: BLE001 - keep the app usable whatever happened
        log.exception("page failed")
        reason = public_message(" ".join(str(error).split())[:200])
        st.error(f"Something went wrong ({type(error).__name__}: {reason}). The rest of the app still works.")
    return None


# --- pictures ---------------------------------------------------------------------------------------
def _use_sample(key: str) -> None:
    workspace().add(load_sample(key))


def _take_uploads() -> None:
    """Decode new uploads into the workspace before the script runs, so the sidebar already shows them."""
    ws = workspace()
    for upload in st.session_state.get("uploads") or []:
        if upload.file_id in ws.seen_uploads or upload.file_id in ws.upload_errors:
            continue  # decoded on an earlier change
        try:
            image = ws.add(read_upload(upload.name, upload.getvalue()))
            ws.seen_uploads[upload.file_id] = image.digest
        except ImageLoadError as error:
            ws.upload_errors[upload.file_id] = str(error)


def image_picker() -> None:
    """Upload one or several images, or pick a gallery sample; bad files get an error naming them."""
    ws = workspace()
    files = st.file_uploader(
        "Upload images",
        type=list(UPLOAD_TYPES),
        accept_multiple_files=True,
        max_upload_size=MAX_UPLOAD_MB,
        key="uploads",
        on_change=_take_uploads,
        help=f"JPEG, PNG or WebP, up to {MAX_UPLOAD_MB} MB each. Several at once are fine.",
    )
    present = {upload.file_id for upload in files or []}
    for file_id, message in ws.upload_errors.items():
        if file_id in present:
            st.error(message)
    st.caption("…or pick a sample photo (public domain / CC0, shipped with scikit-image and matplotlib):")
    columns = st.columns(len(GALLERY))
    model = st.session_state.get("model")
    wrong = mispredicted(model) if model is not None else frozenset()
    for column, (key, sample) in zip(columns, GALLERY.items()):
        column.button(sample.title, key=f"sample-{key}", on_click=_use_sample, args=(key,), width="stretch")
        if key in wrong:
            column.caption(GETS_IT_WRONG)


def _picked_class(model: LoadedModel, image: ActiveImage, key: str) -> None:
    """A class typed in the picker is the one explained; Explain's top-5 then re-reads it (none when it is
    not among the five)."""
    workspace().choose_class(model, image, int(st.session_state[key]))
    st.session_state.pop(f"top5-{model.tag}-{image.digest}", None)


def class_picker(model: LoadedModel, image: ActiveImage) -> int:
    """A searchable picker over every class; it starts at the model's top-1 and remembers the choice."""
    ws = workspace()
    names = model.class_names
    key = f"class-{model.tag}-{image.digest}"
    chosen = st.selectbox(
        f"Explain class (type to search all {len(names)})",
        range(len(names)),
        index=ws.chosen_class(model, image),
        format_func=lambda index: render.class_label(index, names),
        key=key,
        on_change=_picked_class,
        args=(model, image, key),
    )
    ws.choose_class(model, image, chosen)
    return chosen


# --- background jobs --------------------------------------------------------------------------------
def job_status(job: Job | None, key: str, controls: bool = True) -> None:
    """Progress bar and Stop button of a running job; the outcome of a finished one.

    ``controls=False`` (presentations) shows neither the bar nor the button, only a failure.
    """
    if job is None:
        return
    job.touch()
    if job.running:
        if controls:
            text = job.message or f"{job.name}…"
            left = job.remaining
            timing = f"{job.elapsed:.0f} s" + (f", {duration_text(left)} left" if left is not None else "")
            columns = st.columns([5, 1])
            columns[0].progress(job.progress, text=f"{text} ({timing})")
            columns[1].button("Stop", key=f"stop-{key}", on_click=_stop_and_wait, args=(job,), width="stretch")
    elif job.state is JobState.FAILED:
        st.error(f"{job.name} failed: {public_message(str(job.error))}")
    elif not controls:
        return
    elif job.state is JobState.DONE:
        st.caption(f"{job.name}: done in {job.elapsed:.1f} s.")
    elif job.state is JobState.STOPPED:
        st.warning(stopped_text(job))


#: After a Stop click the page waits this long for the job to end, so the next screen already says it stopped
#: (rather than at the next poll, seconds later on a slowly polled page).
STOP_WAIT_S = 3.0


def _stop_and_wait(job: Job) -> None:
    job.stop()
    job.wait(STOP_WAIT_S)


def start_when_ready(plan: JobPlan, what: str, key: str) -> Job | None:
    """Start the plan's work at once when :attr:`JobPlan.starts_at_once`; else offer a button that says
    what it will cost, and start it on a click. Returns the job to show."""
    if plan.estimate is None:
        return plan.job
    if plan.starts_at_once:
        return plan.start()
    if st.button(f"Run {what}: {plan.estimate.text()}", type="primary", key=key):
        plan.start()
        st.rerun()  # draw the page again without the button
    st.caption("Estimated from this machine's measured forward time × the forward passes the work needs.")
    return plan.job


def stopped_text(job: Job) -> str:
    """What a stopped job says: who stopped it, how fast it ended, and that finished parts are kept."""
    if job.stop_reason == STOPPED_BY_USER and job.stop_latency is not None:
        return (
            f"{job.name}: stopped {job.stop_latency:.1f} s after you asked ({job.elapsed:.0f} s in); "
            "what was finished is kept."
        )
    return f"{job.name}: stopped after {job.elapsed:.0f} s ({job.stop_reason or 'stopped'}); what was finished is kept."


def colour_scale(colormap: str = "jet", note: str = "each map is scaled to its own range") -> None:
    """The colour bar of a map view: low to high, and what the ends mean."""
    st.image(render.colour_scale(("0 (low)", "0.5", "1 (high)"), colormap), caption=f"Map colours: {note}.")


def live(job: Job | None, draw: Callable[[], None], every: float = 0.5) -> None:
    """Draw ``draw`` now and, while ``job`` runs, every ``every`` seconds; a full rerun once it ends."""
    running = job is not None and job.running

    def body() -> None:
        guarded(draw)  # a fragment rerun happens outside the page's own guard
        if running and job is not None and not job.running:
            st.rerun(scope="app")  # show the final state and stop polling

    st.fragment(body, run_every=every if running else None)()
