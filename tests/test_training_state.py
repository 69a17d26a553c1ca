"""The resumable training state: checksummed, checked field by field and against the head before loading."""

from __future__ import annotations

import copy
import io
import random

import pytest
import torch

from tame_core.fingerprint import files_digest, resume_tensors_digest
from tame_core.head import TAMEHead
from tame_core.training import TrainingError
from tame_core.training.state import check_state, load_state, rng_state, save_state
from tame_core.training.trainer import parameter_groups


def head_and_optimizer(channels=(4, 6), classes=5, steps=2):
    torch.manual_seed(0)
    head = TAMEHead(list(channels), classes)
    optimizer = torch.optim.SGD(parameter_groups(head, 5e-4), lr=0.1, momentum=0.9, nesterov=True)
    for _ in range(steps):  # momentum buffers exist only after a step
        optimizer.zero_grad()
        maps = head([torch.randn(2, c, 4, 4) for c in channels])
        maps = maps[0] if isinstance(maps, tuple) else maps
        maps.float().mean().backward()
        optimizer.step()
    return head, optimizer


def a_state(head, optimizer) -> dict:
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    return {
        "key": {"epochs": 1},
        "step": 3,
        "seconds": 1.5,
        "images": 12,
        "head": {k: v.clone() for k, v in head.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),  # its entries are the live buffers otherwise
        "scheduler": scheduler.state_dict(),
        "scaler": {},
        "rng": rng_state(),
        "targets_rng": torch.Generator().manual_seed(1).get_state(),
    }


def test_a_state_round_trips_exactly(tmp_path):
    head, optimizer = head_and_optimizer()
    state = a_state(head, optimizer)
    save_state(tmp_path / "run.state.pt", state)
    loaded = load_state(tmp_path / "run.state.pt")
    assert loaded["step"] == 3 and loaded["key"] == {"epochs": 1} and loaded["rng"]["python"] == random.getstate()
    assert resume_tensors_digest(loaded["head"]) == resume_tensors_digest(head.state_dict())
    buffers = [entry["momentum_buffer"] for entry in loaded["optimizer"]["state"].values()]
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(buffers) == len(parameters) == len(list(head.parameters()))
    assert all(torch.equal(saved, optimizer.state[p]["momentum_buffer"]) for saved, p in zip(buffers, parameters))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.state.pt"]  # no temporary file left


def test_flipped_bytes_are_refused_not_resumed(tmp_path):
    """64 flipped bytes inside the tensors resumed to another head before states carried a SHA-256."""
    path = tmp_path / "run.state.pt"
    head, optimizer = head_and_optimizer(channels=(32, 48), classes=50)
    save_state(path, a_state(head, optimizer))
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2  # inside the payload: the head's and optimizer's tensor bytes fill most of the file
    raw[middle : middle + 64] = bytes(b ^ 0xFF for b in raw[middle : middle + 64])
    path.write_bytes(bytes(raw))
    with pytest.raises(TrainingError, match=r"does not match the SHA-256 recorded in it: the file is corrupt or was changed") as error:
        load_state(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_truncated_foreign_and_old_states_are_one_line_errors(tmp_path):
    head, optimizer = head_and_optimizer()
    good = tmp_path / "good.state.pt"
    save_state(good, a_state(head, optimizer))
    cut = tmp_path / "cut.state.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(TrainingError, match=r"^--resume: cannot read training state .*cut\.state\.pt"):
        load_state(cut)
    old = tmp_path / "old.state.pt"  # what tame_core wrote before checksums: the bare dict, version 1
    torch.save({"version": 1, **a_state(head, optimizer)}, old)
    with pytest.raises(TrainingError, match="saved before checksums were added cannot be resumed"):
        load_state(old)
    text = tmp_path / "notes.state.pt"
    text.write_text("not a state")
    with pytest.raises(TrainingError, match="cannot read training state"):
        load_state(text)
    with pytest.raises(TrainingError, match="no training state at"):
        load_state(tmp_path / "missing.state.pt")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("optimizer"), r"is incomplete: no optimizer$"),
        (lambda s: (s.pop("rng"), s.pop("scaler")), r"is incomplete: no scaler, rng$"),
        (lambda s: s.update(head=[1, 2]), r"'head' is a list, not a training state's head$"),
        (lambda s: s.update(step="3"), r"'step' is a str"),
        (lambda s: s.update(step=True), r"'step' is a bool"),
    ],
)
def test_missing_or_mistyped_fields_are_named(tmp_path, change, message):
    head, optimizer = head_and_optimizer()
    state = a_state(head, optimizer)
    change(state)
    save_state(tmp_path / "s.pt", state)  # a valid checksum: the content itself is wrong
    with pytest.raises(TrainingError, match=message):
        load_state(tmp_path / "s.pt")


def test_tensors_that_do_not_fit_the_head_are_refused_before_loading(tmp_path):
    head, optimizer = head_and_optimizer()
    path = tmp_path / "s.pt"
    fresh, fresh_optimizer = head_and_optimizer(steps=0)
    before = resume_tensors_digest(fresh.state_dict())

    state = a_state(head, optimizer)
    state["head"]["branches.0.conv.weight"] = torch.zeros(3, 3, 1, 1)
    with pytest.raises(TrainingError, match=r"does not fit this run's head: branches\.0\.conv\.weight is \(3, 3, 1, 1\), the head needs \(4, 4, 1, 1\)"):
        check_state(state, fresh, fresh_optimizer, path)

    state = a_state(head, optimizer)
    state["head"].pop("fuser.weight")
    state["head"]["extra.weight"] = torch.zeros(1)
    with pytest.raises(TrainingError, match=r"fuser\.weight missing; unexpected extra\.weight"):
        check_state(state, fresh, fresh_optimizer, path)

    state = a_state(head, optimizer)
    state["optimizer"]["state"][0]["momentum_buffer"] = torch.zeros(2, 2)
    with pytest.raises(TrainingError, match=r"optimizer momentum_buffer of parameter 0 is \(2, 2\), the parameter \(4, 4, 1, 1\)"):
        check_state(state, fresh, fresh_optimizer, path)

    state = a_state(head, optimizer)
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]
    with pytest.raises(TrainingError, match="optimizer parameter groups differ"):
        check_state(state, fresh, fresh_optimizer, path)

    state = a_state(head, optimizer)
    state["optimizer"]["state"][99] = {"momentum_buffer": torch.zeros(1)}
    with pytest.raises(TrainingError, match="optimizer state for unknown parameter 99"):
        check_state(state, fresh, fresh_optimizer, path)

    assert resume_tensors_digest(fresh.state_dict()) == before and not fresh_optimizer.state  # nothing was loaded
    check_state(a_state(head, optimizer), fresh, fresh_optimizer, path)  # the real one fits


def test_file_digest_follows_names_and_contents_not_the_folder(tmp_path):
    first, second = tmp_path / "a", tmp_path / "elsewhere" / "b"
    for folder in (first, second):
        (folder / "sub").mkdir(parents=True)
        (folder / "1.png").write_bytes(b"one")
        (folder / "sub" / "2.png").write_bytes(b"two")
    digest = files_digest(sorted(first.rglob("*.png")))
    assert digest == files_digest(sorted(second.rglob("*.png"))) == files_digest(sorted(second.rglob("*.png"), reverse=True))
    (second / "1.png").write_bytes(b"ONE")  # same name, same size, other bytes
    assert files_digest(sorted(second.rglob("*.png"))) != digest
    (second / "1.png").write_bytes(b"one")
    (second / "1.png").rename(second / "3.png")
    assert files_digest(sorted(second.rglob("*.png"))) != digest
    assert files_digest([first / "1.png"]) != files_digest([first / "1.png", first / "sub" / "2.png"])


def test_tensor_digest_sees_values_shapes_and_names():
    head, _ = head_and_optimizer(steps=0)
    state = head.state_dict()
    digest = resume_tensors_digest(state)
    assert digest == resume_tensors_digest({k: v.clone() for k, v in reversed(list(state.items()))})
    changed = {k: v.clone() for k, v in state.items()}
    changed["fuser.weight"].view(-1)[0] += 1e-6
    assert resume_tensors_digest(changed) != digest
    renamed = {("x" + k if k == "fuser.bias" else k): v for k, v in state.items()}
    assert resume_tensors_digest(renamed) != digest
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_a_state_reads_back_without_unpickling_code(tmp_path):
    """Both layers are read with weights_only=True: a pickled callable inside the payload is refused."""
    path = tmp_path / "evil.state.pt"

    class Boom:
        def __reduce__(self):
            return (print, ("executed",))

    head, optimizer = head_and_optimizer()
    state = a_state(head, optimizer)
    state["key"] = {"payload": Boom()}
    save_state(path, state)
    with pytest.raises(TrainingError, match="cannot read training state"):
        load_state(path)
    buffer = io.BytesIO(path.read_bytes())
    assert torch.load(buffer, weights_only=True)["format"] == "tame-training-state"
