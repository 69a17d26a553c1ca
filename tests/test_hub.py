"""Pulling and pushing heads through the real huggingface_hub client against a local Hub stand-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tame_core import Explainer, TAMEHead, load_head, save_head
from tame_core.card import metadata_for
from tame_core.checkpoint import paths_for
from tame_core.errors import HubError
from tame_core.hub import is_repo_id, model_card, pull_head, push_head


def _head_files(path: Path) -> dict[str, bytes]:
    tensors, card = paths_for(path)
    return {"head.safetensors": tensors.read_bytes(), "head.json": card.read_bytes()}


def _other_head(lite0, tmp_path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    head = TAMEHead([40, 112, 320], lite0.num_classes)
    path = tmp_path / f"head{seed}.safetensors"
    save_head(head, metadata_for(head, lite0, lite0.default_layers, metrics={"AD100": 12.5}), path)
    return path


def test_push_then_pull_round_trip(fake_hub, random_head_path, tmp_path):
    url = push_head(random_head_path, "team/lite0-head")
    assert "team/lite0-head" in url
    files = fake_hub.resolve("team/lite0-head", "main")[1]
    assert set(files) == {"head.safetensors", "head.json", "README.md"}
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: tame-core") and "`blocks.2`" in card and "efficientnet_lite0" in card

    local = pull_head("team/lite0-head", cache_dir=tmp_path / "cache")
    pulled, metadata = load_head(local)
    original, _ = load_head(random_head_path)
    assert metadata.backbone == "efficientnet_lite0"
    for key, value in original.state_dict().items():
        torch.testing.assert_close(pulled.state_dict()[key], value, rtol=0, atol=0)


def test_pull_a_given_revision(fake_hub, lite0, tmp_path):
    first = _other_head(lite0, tmp_path, seed=1)
    second = _other_head(lite0, tmp_path, seed=2)
    commit_one = fake_hub.commit("team/revisions", _head_files(first))
    fake_hub.commit("team/revisions", _head_files(second))
    fake_hub.commit("team/revisions", _head_files(first), branch="stable")

    for revision, expected in ((commit_one, first), (None, second), ("stable", first)):
        head, _ = load_head(pull_head("team/revisions", revision=revision, cache_dir=tmp_path / "cache"))
        reference, _ = load_head(expected)
        torch.testing.assert_close(head.fuser.weight, reference.fuser.weight, rtol=0, atol=0)


@pytest.mark.parametrize(
    "repo, revision, expected",
    [
        ("nobody/no-such-repo", None, "Hub repo 'nobody/no-such-repo' does not exist"),
        ("team/errors", "v9", "has no revision 'v9'"),
        ("team/not-a-head", None, "has no file 'head.safetensors': is it a TAME head repo?"),
    ],
)
def test_pull_errors_are_one_line(fake_hub, random_head_path, tmp_path, repo, revision, expected):
    fake_hub.commit("team/errors", _head_files(random_head_path))
    fake_hub.commit("team/not-a-head", {"README.md": b"# just a readme"})
    with pytest.raises(HubError, match=expected) as info:
        pull_head(repo, revision=revision, cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_pull_refuses_a_file_that_does_not_match_its_card(fake_hub, random_head_path, lite0, tmp_path):
    files = _head_files(random_head_path)
    files["head.safetensors"] = paths_for(_other_head(lite0, tmp_path, seed=3))[0].read_bytes()
    fake_hub.commit("team/tampered", files)
    with pytest.raises(HubError, match="refusing a file that does not match"):
        pull_head("team/tampered", cache_dir=tmp_path / "cache")


def test_explainer_loads_a_head_by_repo_id(fake_hub, random_head_path, lite0, sample_images):
    fake_hub.commit("team/explain-me", _head_files(random_head_path))
    from_hub = Explainer.load("team/explain-me", backbone=lite0, device="cpu")
    from_disk = Explainer.load(random_head_path, backbone=lite0, device="cpu")
    image = sample_images["coffee"]
    torch.testing.assert_close(from_hub.explain(image).maps, from_disk.explain(image).maps)


def test_is_repo_id(tmp_path):
    assert is_repo_id("IDT-ITI/T-TAME-models") and is_repo_id("me/head.v2")
    assert not is_repo_id("head.safetensors") and not is_repo_id("a/b/c") and not is_repo_id("plain")


def test_model_card_lists_metrics(random_head_path):
    from tame_core.checkpoint import read_metadata

    metadata = read_metadata(random_head_path)
    metadata.metrics = {"heldout": {"AD100": 10.123456, "IC100": 40.0}}
    card = model_card(metadata, "team/x")
    assert "| heldout.AD100 | 10.12 |" in card and "| heldout.IC100 | 40 |" in card
    assert "blurred" not in card  # no map blur: nothing said
    metadata.map_blur = 8 / 224
    assert "every map blurred (Gaussian, sigma 0.0357 of the input's shorter side: 8.0 px at 224)" in model_card(metadata, "team/x")


def _tame(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "tame_core", *args], capture_output=True, text=True, env=environment, timeout=300
    )


def test_cli_pull_online_then_offline_from_the_cache(fake_hub, random_head_path, tmp_path):
    fake_hub.commit("team/cached", _head_files(random_head_path))
    home = str(tmp_path / "hf-home")
    online = _tame("pull", "team/cached", HF_HOME=home)
    assert online.returncode == 0, online.stderr
    path = Path(online.stdout.strip().splitlines()[-1])
    assert path.name == "head.safetensors" and path.is_file()

    requests_before = len(fake_hub.requests)
    offline = _tame("pull", "team/cached", HF_HOME=home, HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert Path(offline.stdout.strip().splitlines()[-1]) == path
    assert len(fake_hub.requests) == requests_before  # served from the cache alone


def test_cli_pull_offline_without_cache_is_one_line(tmp_path):
    result = _tame("pull", "team/anything", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: HF_HUB_OFFLINE=1 is set and team/anything (head.safetensors) is not in the local cache"
    ]


@pytest.mark.slow
def test_cli_pull_unreachable_hub_ends_in_one_error_line(tmp_path):
    """huggingface_hub retries with backoff (its own log lines), then we print one error line, no traceback."""
    result = _tame("pull", "team/anything", HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot reach the Hub at http://127.0.0.1:9 for team/anything")


def test_cli_push_prints_the_commit(fake_hub, random_head_path):
    result = _tame("push", str(random_head_path), "team/cli-push")
    assert result.returncode == 0, result.stderr
    assert "team/cli-push/commit/" in result.stdout
    card = json.loads(fake_hub.resolve("team/cli-push", "main")[1]["head.json"])
    assert card["layers"] == ["blocks.2", "blocks.4", "blocks.6"] and len(card["weights_sha256"]) == 64
