"""The app's files: per-session folders, zips streamed with limits, allowed server roots, uploaded heads."""

from __future__ import annotations

import gc
import io
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tame_core.errors import AccessError
from tame_core.studio import ModelChoice, store_uploaded_head
from tame_core.studio import training
from tame_core.evaluation import EvaluationConfig
from tame_core.studio.evaluation import forget_run, state_path
from tame_core.studio.per_image import ThumbnailKeeper, thumbnail_folder
from tame_core.studio.storage import ALLOWED_ROOTS_ENV, SessionFolder, server_path, studio_dir
from tame_core.studio.training import extract_zip, output_path, unpack_upload
from tame_core.training import TrainingError


def png(seed: int, size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def zipped(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def declare_size(data: bytes, size: int) -> bytes:
    """The zip with every member's uncompressed size rewritten to ``size``, in the local and central headers."""
    raw = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = raw.find(signature)
        while start != -1:
            raw[start + offset : start + offset + 4] = struct.pack("<I", size)
            start = raw.find(signature, start + 4)
    return bytes(raw)


def nothing_left(parent: Path, target: Path) -> bool:
    return not target.exists() and not any(path.name.startswith(".unzip-") for path in parent.iterdir())


# --- zips -------------------------------------------------------------------------------------------
def test_a_zip_declaring_a_2_gib_member_is_refused_before_anything_is_read(tmp_path):
    bomb = declare_size(zipped({"good.png": png(0)}, zipfile.ZIP_STORED), 2 * 2**30)
    tracemalloc.start()
    try:
        with pytest.raises(TrainingError, match=r"^bomb\.zip: member 'good\.png' unpacks to 2 GB, over the 128 MB limit per file$"):
            extract_zip(bomb, tmp_path / "out", "bomb.zip")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20 and nothing_left(tmp_path, tmp_path / "out")


def test_members_stream_to_disk_in_chunks(tmp_path):
    """A 48 MB member (a 50 KB zip) unpacks with a few MB of memory: it used to be read whole."""
    data = zipped({"big.png": bytes(48 * 2**20), "small.png": png(1)})
    assert len(data) < 200_000
    tracemalloc.start()
    try:
        folder = extract_zip(data, tmp_path / "out", "big.zip")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (folder / "big.png").stat().st_size == 48 * 2**20 and (folder / "small.png").read_bytes() == png(1)
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MB"


def test_a_member_that_lies_about_its_size_is_refused_and_leaves_nothing(tmp_path):
    liar = declare_size(zipped({"a.png": png(0, 64)}), 100)  # says 100 bytes, holds more: its CRC cannot match
    with pytest.raises(TrainingError, match=r"^liar\.zip: member 'a\.png' cannot be unpacked \(Bad CRC-32 for file 'a\.png'\)$"):
        extract_zip(liar, tmp_path / "out", "liar.zip")
    assert nothing_left(tmp_path, tmp_path / "out")


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"a.png": png(0), "b.png": png(1), "../../evil.png": png(2)}, r"member '\.\./\.\./evil\.png' would unpack outside its folder"),
        ({"a.png": png(0), "/tmp/absolute.png": png(1)}, r"member '/tmp/absolute\.png' would unpack outside its folder"),
        ({"a.png": png(0), "x/../a.png": png(1)}, r"member 'x/\.\./a\.png' appears twice"),
        ({"notes.txt": b"hello"}, r"no images inside"),
    ],
)
def test_refused_zips_leave_nothing_behind(tmp_path, members, message):
    """The good members before a bad one used to stay on disk."""
    with pytest.raises(TrainingError, match=message):
        extract_zip(zipped(members), tmp_path / "out", "up.zip")
    assert nothing_left(tmp_path, tmp_path / "out")
    assert not Path("/tmp/absolute.png").exists() and not (tmp_path.parent / "evil.png").exists()


def test_count_and_total_size_limits(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "MAX_ZIP_MEMBERS", 3)
    with pytest.raises(TrainingError, match=r"^up\.zip: 4 files is over the limit of 3$"):
        extract_zip(zipped({f"{i}.png": png(i) for i in range(4)}), tmp_path / "many", "up.zip")
    monkeypatch.setattr(training, "MAX_UNZIPPED_BYTES", 3 * 2**20)
    with pytest.raises(TrainingError, match=r"^up\.zip: unpacks to over 3 MB$"):
        extract_zip(zipped({"a.png": bytes(2 * 2**20), "b.png": bytes(2 * 2**20)}), tmp_path / "big", "up.zip")
    assert nothing_left(tmp_path, tmp_path / "many") and nothing_left(tmp_path, tmp_path / "big")


def test_a_zip_unpacks_its_images_only_and_from_a_file_object(tmp_path):
    data = zipped({"a/one.png": png(0), "two.PNG": png(1), "notes.txt": b"x", "__MACOSX/a/._one.png": b"junk", ".hidden.png": b"x"})
    folder = extract_zip(io.BytesIO(data), tmp_path / "ok")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == ["a/one.png", "two.PNG"]
    with pytest.raises(TrainingError, match="its folder exists already"):
        extract_zip(data, folder)


def test_a_new_upload_replaces_the_sessions_earlier_one(tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    first = unpack_upload(zipped({"a.png": png(0)}), "first.zip", "file-1", uploads)
    assert unpack_upload(b"not read again", "first.zip", "file-1", uploads) == first  # once per upload
    second = unpack_upload(zipped({"b.png": png(1)}), "second.zip", "file-2", uploads)
    assert not first.exists() and (second / "b.png").is_file()
    third = unpack_upload(zipped({"c.png": png(2)}), "third.zip", "file-3", uploads, keep_others=True)  # a job reads second
    assert second.exists() and third.exists()
    with pytest.raises(TrainingError, match="not a zip file"):
        unpack_upload(b"junk", "junk.zip", "file-4", uploads)  # replaces the others too, and leaves nothing itself
    assert list(uploads.iterdir()) == []


# --- per-session folders ----------------------------------------------------------------------------
def test_sessions_get_folders_of_their_own_and_scratch_goes_with_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TAME_STUDIO_DIR", str(tmp_path / "studio"))
    assert studio_dir() == tmp_path / "studio"
    first, second = SessionFolder(), SessionFolder()
    assert first.path != second.path and first.path.parent == second.path.parent == tmp_path / "studio" / "sessions"
    assert output_path("my_head", first.heads) != output_path("my_head", second.heads)
    config, choice = EvaluationConfig(data="/data/x", methods=("tame",)), ModelChoice()
    assert state_path(config, choice, first.evaluations) != state_path(config, choice, second.evaluations)
    state_path(config, choice, second.evaluations).write_text("{}")
    theirs = thumbnail_folder(state_path(config, choice, second.evaluations))
    ThumbnailKeeper(theirs)(["a.png"], "tame", torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 8))
    ThumbnailKeeper(thumbnail_folder(state_path(config, choice, first.evaluations)))(
        ["a.png"], "tame", torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 8)
    )
    forget_run(config, choice, first.evaluations)  # what a fresh Evaluate does
    assert state_path(config, choice, second.evaluations).read_text() == "{}" and len(list(theirs.rglob("*.png"))) == 2
    assert not thumbnail_folder(state_path(config, choice, first.evaluations)).exists()
    assert theirs.parent == second.evaluations  # under the session's scratch: its clean-up takes them

    head = first.heads / "mine.safetensors"
    head.write_bytes(b"kept")
    (first.uploads / "x").mkdir()
    path = first.path
    del first
    gc.collect()  # the session ends: its scratch goes, its trained heads stay
    assert head.read_bytes() == b"kept" and not (path / "uploads").exists() and not (path / "evaluations").exists()
    second.cleanup()
    assert not (second.path / "evaluations").exists()


# --- allowed roots ----------------------------------------------------------------------------------
def test_typed_paths_are_confined_to_the_allowed_roots(tmp_path, monkeypatch):
    data, heads, outside = tmp_path / "data", tmp_path / "heads", tmp_path / "secret"
    for folder in (data / "sub", heads, outside):
        folder.mkdir(parents=True)
    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    assert server_path(str(outside), "Folder") == outside  # unset: a single user's own machine
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, f" {data} {__import__('os').pathsep}{heads}")
    assert server_path(f" {data / 'sub'} ", "Folder") == data / "sub"
    assert server_path(str(heads / "h.safetensors"), "Head") == heads / "h.safetensors"
    (data / "link").symlink_to(outside)
    refusals = [str(outside), "/etc", f"{data}/../secret", str(data / "link"), str(tmp_path / "data-other"), "relative/path"]
    for typed in refusals:
        with pytest.raises(AccessError) as error:
            server_path(typed, "Folder")
        assert str(error.value) == f"Folder {typed}: outside the folders this server lets the app read (see {ALLOWED_ROOTS_ENV})"
    assert server_path(str(outside / "h.safetensors"), "Head", also=[outside]) == outside / "h.safetensors"


# --- uploaded heads ---------------------------------------------------------------------------------
def test_an_uploaded_head_never_writes_through_another_sessions_temporary_file(tmp_path, random_head_path):
    import hashlib

    data = random_head_path.read_bytes()
    busy = tmp_path / f"{hashlib.sha256(data).hexdigest()[:20]}.part"  # another session half-way through the same upload
    busy.write_bytes(b"another session is writing this")
    path = store_uploaded_head("mine.safetensors", data, tmp_path)
    assert path.read_bytes() == data and busy.read_bytes() == b"another session is writing this"
    assert [p.name for p in tmp_path.iterdir() if p.suffix in (".part", ".tmp")] == [busy.name]


# --- hostile input, second pass: one guard per class -------------------------------------------------
def test_a_typed_head_is_checked_on_the_files_really_read(tmp_path, monkeypatch, random_head_path):
    from tame_core.studio.storage import server_head

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (outside / "secret.safetensors").write_bytes(random_head_path.read_bytes())
    (outside / "secret.json").write_text(random_head_path.with_suffix(".json").read_text())
    (allowed / "sneaky.safetensors").symlink_to(outside / "secret.safetensors")  # the typed text lies inside
    (allowed / "own.safetensors").write_bytes(random_head_path.read_bytes())
    (allowed / "own.json").symlink_to(outside / "secret.json")  # a card beside it that points out
    (allowed / "door").symlink_to(outside)
    (allowed / "fine.safetensors").write_bytes(b"x")
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, str(allowed))
    for typed in ("allowed/sneaky", "allowed/sneaky.safetensors", "allowed/sneaky.json", "allowed/own",
                  "allowed/door/secret", "allowed/../outside/secret", "allowed/nothing/../../outside/x"):
        typed = typed.replace("allowed", str(allowed), 1)
        with pytest.raises(AccessError) as error:
            server_head(typed)
        assert str(error.value) == f"Head {typed}: outside the folders this server lets the app read (see {ALLOWED_ROOTS_ENV})"
    assert server_head(str(allowed / "fine")) == allowed / "fine.safetensors"
    assert server_head(f" {allowed / 'missing.json'} ") == allowed / "missing.safetensors"  # existence is not told
    monkeypatch.delenv(ALLOWED_ROOTS_ENV)
    assert server_head(str(allowed / "sneaky")) == outside / "secret.safetensors"  # unset: one user's own machine


def test_the_hub_field_takes_a_repo_id_and_never_a_path(tmp_path, monkeypatch, random_head_path):
    from tame_core.studio import models
    from tame_core.studio.storage import hub_repo_id

    assert hub_repo_id(" someone/lite0-head ") == "someone/lite0-head"
    hostile = [str(random_head_path), "/etc/passwd", "~/x", "../up/x", "a/b/c", "a/../b", "checkpoints/x.safetensors",
               "a/b.json", ".hidden/x", "C:\\temp\\x", "owner/", "/name", "x" * 200 + "/y", "a/b\nc"]
    for typed in hostile:
        with pytest.raises(AccessError, match=r"is not a Hub repo id: write owner/name \(a server file goes in the Local field\)$") as error:
            hub_repo_id(typed)
        assert "\n" not in str(error.value)
    # a Hub id that is also a file under the server's working directory is still pulled, never read from disk
    monkeypatch.chdir(tmp_path)
    (tmp_path / "heads").mkdir()
    (tmp_path / "heads" / "h1.safetensors").write_bytes(random_head_path.read_bytes())
    pulled = []
    monkeypatch.setattr("tame_core.studio.models.pull_head", lambda repo, revision=None: pulled.append((repo, revision)) or random_head_path)
    monkeypatch.delenv("TAME_HEAD", raising=False)
    assert models._head_source(ModelChoice(head="heads/h1", revision="v2")) == str(random_head_path)
    assert pulled == [("heads/h1", "v2")]
    assert models._head_source(ModelChoice(head=str(tmp_path / "heads" / "h1.safetensors"))) == str(tmp_path / "heads" / "h1.safetensors")


def test_a_disconnected_sessions_scratch_goes_once_streamlit_would_drop_it(tmp_path):
    """Not at garbage collection (minutes later, or never while something holds the session): the janitor
    removes the scratch once the session has been disconnected ``gone_after`` seconds, and a reconnect in
    time keeps it."""
    from tame_core.studio.storage import Janitor

    clock = {"now": 0.0}
    janitor = Janitor(clock=lambda: clock["now"])
    connected = {"a": True, "b": True}
    a = SessionFolder(tmp_path, alive=lambda: connected["a"], gone_after=120, janitor=janitor)
    b = SessionFolder(tmp_path, alive=lambda: connected["b"], gone_after=120, janitor=janitor)
    for folder in (a, b):
        (folder.uploads / "photo.jpg").write_bytes(b"x")
        (folder.evaluations / "state.json").write_text("{}")
        (folder.heads / "mine.safetensors").write_bytes(b"kept")

    def at(seconds: float) -> list[Path]:
        clock["now"] = seconds
        return janitor.sweep()

    assert at(10) == []
    connected["a"] = connected["b"] = False  # both tabs closed; b's comes back in time (a network blip)
    assert at(20) == [] and at(100) == []
    connected["b"] = True
    assert at(110) == []
    connected["b"] = False
    assert at(139) == []  # a: gone 119 s
    assert at(140) == [a.path]  # a: gone 120 s; b: seen gone since 139 only
    assert not (a.path / "uploads").exists() and not (a.path / "evaluations").exists()
    assert (a.path / "heads" / "mine.safetensors").read_bytes() == b"kept"
    assert (b.path / "uploads" / "photo.jpg").exists()
    assert at(258) == [] and at(259) == [b.path] and at(10_000) == []  # each cleaned once
    assert not (b.path / "uploads").exists()

    def broken() -> bool:
        raise RuntimeError("runtime gone")

    c = SessionFolder(tmp_path, alive=broken, gone_after=5, janitor=janitor)
    (c.uploads / "x").write_bytes(b"x")
    assert at(20_000) == [] and at(20_005) == [c.path]  # a probe that fails counts as gone


def test_the_apps_janitor_runs_in_one_daemon_thread(tmp_path):
    import threading

    from tame_core.studio import storage

    SessionFolder(tmp_path, alive=lambda: True)
    SessionFolder(tmp_path, alive=lambda: True)
    threads = [t for t in threading.enumerate() if t.name == "tame-session-janitor"]
    assert len(threads) == 1 and threads[0].daemon and storage._JANITOR is not None


def test_uploaded_heads_live_in_the_session_and_go_with_it(tmp_path, monkeypatch, random_head_path):
    monkeypatch.setenv("TAME_STUDIO_DIR", str(tmp_path / "studio"))
    folder = SessionFolder()
    data = random_head_path.read_bytes()
    kept = store_uploaded_head("mine.safetensors", data, folder.uploaded_heads)
    assert kept.parent == folder.path / "uploaded-heads"
    for name, junk in (("junk.safetensors", b"not a head"), ("zeros.safetensors", bytes(64)), ("cut.safetensors", data[:1000])):
        with pytest.raises(Exception) as error:
            store_uploaded_head(name, junk, folder.uploaded_heads)
        assert str(error.value).startswith(f"{name}: ") and str(tmp_path) not in str(error.value)
    assert list(folder.uploaded_heads.iterdir()) == [kept]  # refused uploads are not kept
    folder.cleanup()
    assert not kept.exists()


def test_the_studio_folder_has_a_total_quota(tmp_path, monkeypatch, random_head_path):
    from tame_core.errors import OutputError
    from tame_core.studio.storage import check_quota, used_bytes

    monkeypatch.setenv("TAME_STUDIO_DIR", str(tmp_path / "studio"))
    monkeypatch.setenv("TAME_STUDIO_QUOTA_MB", "1")
    folder = SessionFolder()
    (folder.heads / "big.bin").write_bytes(bytes(700 * 1024))
    assert used_bytes() == 700 * 1024
    check_quota(300 * 1024)
    message = r"^the app's storage is full \(1 MB used, 0 MB more asked, quota 1 MB\): forget uploads or try again later$"
    with pytest.raises(OutputError, match=message.replace("0 MB more", r"\d+ MB more")):
        store_uploaded_head("mine.safetensors", random_head_path.read_bytes(), folder.uploaded_heads)
    assert not any(folder.uploaded_heads.iterdir())
    with pytest.raises(OutputError, match=r"^the app's storage is full"):
        extract_zip(zipped({"a.png": bytes(400 * 1024)}, zipfile.ZIP_DEFLATED), folder.uploads / "z", "photos.zip")
    assert not (folder.uploads / "z").exists()


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ({"a.jpg": png(0), "a.jpg/b.jpg": png(1)}, "member 'a.jpg/b.jpg' lies inside member 'a.jpg', a file"),
        ({"x/a.png": png(0), "x/a.png/deeper/c.png": png(1)}, "member 'x/a.png/deeper/c.png' lies inside member 'x/a.png', a file"),
        ({"/".join(["d"] * 2000) + "/x.png": png(0)}, "is nested too deep or named too long (limits: 32 folders, 1024 characters)"),
        ({"e" * 300 + ".png": png(0)}, "is nested too deep or named too long"),
        ({"/".join(["f"] * 40) + "/y.png": png(0)}, "is nested too deep or named too long"),
    ],
)
def test_zips_whose_members_cannot_all_be_unpacked_give_one_line_without_server_paths(tmp_path, members, says):
    target = tmp_path / "unpacked"
    with pytest.raises(TrainingError) as error:
        extract_zip(zipped(members), target, "hostile.zip")
    message = str(error.value)
    assert message.startswith("hostile.zip: ") and says in message and str(tmp_path) not in message and len(message) < 300
    assert nothing_left(tmp_path, target)


def test_unpacking_into_an_existing_folder_names_no_server_path(tmp_path):
    (tmp_path / "there").mkdir()
    with pytest.raises(TrainingError, match=r"^photos\.zip: its folder exists already; unpack each zip into a new folder$"):
        extract_zip(zipped({"a.png": png(0)}), tmp_path / "there", "photos.zip")


def test_messages_for_the_browser_hold_no_server_paths():
    from tame_core.studio.storage import public_message

    assert public_message("no head checkpoint at /srv/tame/heads/h1.safetensors") == "no head checkpoint at h1.safetensors"
    assert public_message("/etc/passwd.safetensors: cannot read (Permission denied)") == "passwd.safetensors: cannot read (Permission denied)"
    assert public_message("C:\\Users\\me\\h.json: not valid JSON") == "h.json: not valid JSON"
    assert public_message("Hub repo 'a/b' does not exist") == "Hub repo 'a/b' does not exist"  # a repo id is not a path
    assert public_message("cannot reach the Hub at https://huggingface.co/x") == "cannot reach the Hub at https://huggingface.co/x"


def test_a_typed_folder_is_refused_when_links_inside_it_lead_outside(tmp_path, monkeypatch):
    from tame_core.studio.storage import server_folder

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "photos" / "deep").mkdir(parents=True)
    (allowed / "other").mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(png(0))
    (allowed / "other" / "fine.png").write_bytes(png(1))
    (allowed / "photos" / "inside.png").symlink_to(allowed / "other" / "fine.png")  # a link that stays inside
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, str(allowed))
    assert server_folder(str(allowed / "photos")) == allowed / "photos"
    for name, target in (("deep/leak.png", outside / "secret.png"), ("deep/door", outside), ("etc", Path("/etc"))):
        link = allowed / "photos" / name
        link.symlink_to(target)
        with pytest.raises(AccessError) as error:
            server_folder(str(allowed / "photos"))
        assert str(error.value) == (
            f"Folder {allowed / 'photos'}: {name} links outside the folders this server lets the app read (see {ALLOWED_ROOTS_ENV})"
        )
        link.unlink()
    monkeypatch.delenv(ALLOWED_ROOTS_ENV)
    (allowed / "photos" / "leak.png").symlink_to(outside / "secret.png")
    assert server_folder(str(allowed / "photos")) == allowed / "photos"  # unset: one user's own machine
