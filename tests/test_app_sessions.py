"""The app shared by several browsers: hostile uploads, per-session files, and typed paths confined to allowed roots."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "app.py"
REFUSED = "outside the folders this server lets the app read (see TAME_ALLOWED_ROOTS)"


@pytest.fixture
def studio(monkeypatch, tmp_path, random_head_path) -> Path:
    monkeypatch.setenv("TAME_HEAD", str(random_head_path))
    monkeypatch.setenv("TAME_STUDIO_DIR", str(tmp_path / "studio"))
    monkeypatch.delenv("TAME_ALLOWED_ROOTS", raising=False)
    return tmp_path


def session() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=180).run()


def encoded(picture: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photos(folder: Path, sample_images, names=("chelsea", "coffee")) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        Image.fromarray(sample_images[name]).save(folder / f"{name}.png")
    return folder


def test_many_hostile_uploads_at_once(studio, sample_images):
    rocket = Image.fromarray(sample_images["rocket"])
    gray16 = Image.fromarray((np.linspace(0, 65535, 120 * 160).reshape(120, 160)).astype(np.uint16))
    alpha = Image.fromarray(np.dstack([sample_images["coffee"], np.full(sample_images["coffee"].shape[:2], 128, np.uint8)]))
    uploads = [
        ("rocket.png", encoded(rocket, "PNG"), "image/png"),
        ("notes.jpg", b"a text file renamed", "image/jpeg"),
        ("cmyk.jpg", encoded(rocket.convert("CMYK"), "JPEG"), "image/jpeg"),
        ("depth16.png", encoded(gray16, "PNG"), "image/png"),
        ("alpha.png", encoded(alpha, "PNG"), "image/png"),
        ("cut.jpg", encoded(rocket, "JPEG")[:400], "image/jpeg"),
        ("rocket copy.png", encoded(rocket, "PNG"), "image/png"),  # the same picture twice
        ("bomb.png", encoded(Image.new("L", (12_000, 12_000)), "PNG"), "image/png"),
        ("huge.jpg", encoded(rocket.resize((4000, 3000)), "JPEG", quality=70), "image/jpeg"),
    ]
    at = session()
    at.file_uploader(key="uploads").set_value(uploads).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert [line.split(":")[0] for line in errors] == ["notes.jpg", "cut.jpg", "bomb.png"]
    assert "not an image" in errors[0] and "corrupt or truncated" in errors[1] and "89-megapixel limit" in errors[2]
    assert all("\n" not in line for line in errors)
    workspace = at.session_state["workspace"]
    names = [image.name for image in workspace.images.values()]
    assert names == ["rocket.png", "cmyk.jpg", "depth16.png", "alpha.png", "huge.jpg"]  # the copy is the same picture
    huge = next(image for image in workspace.images.values() if image.name == "huge.jpg")
    assert huge.original_size == (3000, 4000) and max(huge.size) == 1024
    assert all(image.pixels.dtype == np.uint8 and image.pixels.shape[2] == 3 for image in workspace.images.values())


def test_each_session_trains_into_its_own_folder(studio, sample_images):
    data = photos(studio / "images", sample_images)
    first, second = session(), session()
    for at in (first, second):
        at.switch_page("pages/train.py").run()
        at.text_input(key="train_folder").input(str(data)).run()
        assert not at.exception and not at.error and not at.warning
    assert first.session_state["session_folder"].path != second.session_state["session_folder"].path
    mine = first.session_state["session_folder"].heads / "my_head.safetensors"
    mine.write_bytes(b"an earlier run of this session")
    first.run()
    second.run()
    assert [w.value for w in first.warning] == [f"{mine.name} exists: a new run replaces it (or pick another name)."]
    assert not second.warning  # the other session's file is not this session's output
    assert mine.parent.parent.parent == studio / "studio" / "sessions"


def test_typed_server_paths_stay_inside_the_allowed_roots(studio, sample_images, monkeypatch):
    allowed = photos(studio / "allowed" / "images", sample_images)
    monkeypatch.setenv("TAME_ALLOWED_ROOTS", str(studio / "allowed"))
    at = session()
    at.switch_page("pages/evaluate.py").run()
    at.text_input(key="eval_folder").input("/etc").run()
    assert [e.value for e in at.error] == [f"Folder /etc: {REFUSED}"]
    at.text_input(key="eval_folder").input(str(allowed)).run()
    assert not at.error and not at.exception

    at.switch_page("pages/train.py").run()
    at.text_input(key="train_folder").input(str(studio)).run()
    assert [e.value for e in at.error] == [f"Folder {studio}: {REFUSED}"]
    at.text_input(key="train_folder").input(str(allowed)).run()
    assert not at.error and not at.exception

    at.sidebar.selectbox(key="head_source").set_value("file").run()
    at.sidebar.text_input(key="head_path").input("/etc/passwd").run()
    assert not at.exception and [e.value for e in at.sidebar.error] == [f"Head /etc/passwd: {REFUSED}"]
    own = at.session_state["session_folder"].heads / "trained.safetensors"  # this session's trained heads stay allowed
    assert own.parent.is_dir()
    at.sidebar.text_input(key="head_path").input(str(own)).run()
    assert not any(REFUSED in e.value for e in at.sidebar.error)


def test_the_sidebar_reads_no_head_outside_the_allowed_roots(studio, random_head_path, monkeypatch):
    allowed, outside = studio / "allowed", studio / "outside"
    allowed.mkdir()
    outside.mkdir()
    (outside / "h1.safetensors").write_bytes(random_head_path.read_bytes())
    (allowed / "sneaky.safetensors").symlink_to(outside / "h1.safetensors")
    monkeypatch.setenv("TAME_ALLOWED_ROOTS", str(allowed))
    at = session()
    at.sidebar.selectbox(key="head_source").set_value("hub").run()
    hub_says = []
    for typed in (str(outside / "h1.safetensors"), str(outside / "h1"), "/etc/passwd", "/etc/nothing-here", "../outside/h1"):
        at.sidebar.text_input(key="hub_repo").input(typed).run()
        errors = [e.value for e in at.sidebar.error]
        assert not at.exception and at.session_state["model"] is None and len(errors) == 1
        shown = typed if len(typed) <= 60 else typed[:57] + "..."  # what was typed, shortened, and nothing else
        hub_says.append(errors[0].replace(repr(shown), "<typed>"))
    assert set(hub_says) == {"<typed> is not a Hub repo id: write owner/name (a server file goes in the Local field)"}
    at.sidebar.selectbox(key="head_source").set_value("file").run()
    for typed in (f"{allowed}/sneaky", f"{allowed}/sneaky.safetensors"):
        at.sidebar.text_input(key="head_path").input(typed).run()
        assert not at.exception and [e.value for e in at.sidebar.error] == [f"Head {typed}: {REFUSED}"]
        assert at.session_state["model"] is None


def test_a_head_upload_stays_in_the_session_and_a_missing_local_head_names_no_server_path(studio, random_head_path):
    at = session()
    at.sidebar.selectbox(key="head_source").set_value("file").run()
    missing = studio / "nowhere" / "h.safetensors"
    at.sidebar.text_input(key="head_path").input(str(missing)).run()
    errors = [e.value for e in at.sidebar.error]
    assert not at.exception and len(errors) == 1 and str(studio) not in errors[0] and "h.safetensors" in errors[0]
