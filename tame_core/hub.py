"""Pull and push heads on the Hugging Face Hub (or any server ``HF_ENDPOINT`` points to).

A head on the Hub is the checkpoint pair (``head.safetensors`` + ``head.json``) and a model card
(``README.md``). Pulls check the tensor file against the SHA-256 recorded in the card.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from .checkpoint import paths_for, read_metadata, sha256_of
from .errors import HubError

HEAD_FILENAME = "head.safetensors"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_repo_id(text: str) -> bool:
    """``owner/name`` (and not a file that exists locally)."""
    return bool(_REPO_ID.match(text)) and not Path(text).exists() and not text.endswith((".safetensors", ".json"))


def pull_head(
    repo_id: str,
    revision: str | None = None,
    filename: str = HEAD_FILENAME,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Download a head from the Hub (cached) and return the local ``.safetensors`` path."""
    from huggingface_hub import hf_hub_download

    tensor_name, card_name = (p.name for p in paths_for(filename))
    try:
        card = hf_hub_download(repo_id, card_name, revision=revision, cache_dir=cache_dir)
        tensors = hf_hub_download(repo_id, tensor_name, revision=revision, cache_dir=cache_dir)
    except Exception as error:  # noqa: BLE001 - translated to one line below
        raise _hub_error(error, repo_id, revision, filename) from None
    metadata = read_metadata(card)
    if not metadata.weights_sha256:
        raise HubError(f"{repo_id}: {card_name} records no weights_sha256, so the download cannot be verified")
    actual = sha256_of(tensors)
    if actual != metadata.weights_sha256:
        raise HubError(
            f"{repo_id}: {tensor_name} has SHA-256 {actual[:12]}..., but its card says "
            f"{metadata.weights_sha256[:12]}...; refusing a file that does not match"
        )
    return Path(tensors)


def push_head(
    path: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload TAME head",
) -> str:
    """Upload a local head (tensors, card and a generated model card) to ``repo_id``; returns the commit URL."""
    from huggingface_hub import create_repo, upload_folder

    tensor_path, card_path = paths_for(path)
    metadata = read_metadata(tensor_path)
    if not tensor_path.is_file():
        raise HubError(f"no head checkpoint at {tensor_path}")
    if metadata.weights_sha256 != sha256_of(tensor_path):
        raise HubError(f"{tensor_path} does not match the SHA-256 in {card_path.name}; re-save the head before pushing")
    with tempfile.TemporaryDirectory() as folder:
        shutil.copyfile(tensor_path, Path(folder) / HEAD_FILENAME)
        shutil.copyfile(card_path, Path(folder) / Path(HEAD_FILENAME).with_suffix(".json"))
        (Path(folder) / "README.md").write_text(model_card(metadata, repo_id))
        try:
            create_repo(repo_id, token=token, private=private, exist_ok=True)
            commit = upload_folder(
                repo_id=repo_id, folder_path=folder, token=token, revision=revision, commit_message=commit_message
            )
        except Exception as error:  # noqa: BLE001
            raise _hub_error(error, repo_id, revision, HEAD_FILENAME) from None
    return str(getattr(commit, "commit_url", commit))


def model_card(metadata, repo_id: str) -> str:
    """A Hub model card (README.md with YAML front matter) describing the head."""
    metrics = metadata.metrics or {}
    rows = "\n".join(f"| {name} | {value} |" for name, value in _flatten(metrics).items()) or "| (none recorded) | |"
    training = metadata.training or {}
    recipe = "\n".join(f"- `{k}`: {v}" for k, v in training.items()) or "- (not recorded)"
    data = metadata.data or {}
    data_lines = "\n".join(f"- `{k}`: {v}" for k, v in data.items()) or "- (not recorded)"
    return f"""---
library_name: tame-core
license: apache-2.0
tags:
- explainability
- saliency
- tame
- image-classification
pipeline_tag: image-classification
---

# TAME explanation head for `{metadata.backbone}`

A trained attention head (TAME / T-TAME) that explains the frozen `{metadata.backbone}` classifier:
one forward pass gives a saliency map for every one of its {metadata.num_classes} classes.

- Layers tapped: {", ".join(f"`{layer}`" for layer in metadata.layers)} (channels {metadata.channels})
- Head variant: `{metadata.variant}`; maps fused at up to {metadata.max_resolution} px a side
- Input size: {metadata.input_size[0]}x{metadata.input_size[1]}
- Weights SHA-256: `{metadata.weights_sha256}`

## Use

```python
from tame_core import Explainer
explainer = Explainer.load("{repo_id}")
explanation = explainer.explain(image)      # a PIL image, numpy array or tensor
saliency = explanation.map_at_original()    # float32 map in [0, 1] at the image's size
```

or `tame explain photo.jpg --head {repo_id} --out maps/`.

## Training
{recipe}

## Data
{data_lines}

## Evaluation

| metric | value |
| --- | --- |
{rows}
"""


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = f"{value:.4g}" if isinstance(value, float) else value
    return flat


def _hub_error(error: Exception, repo_id: str, revision: str | None, filename: str) -> HubError:
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision}" if revision else repo_id
    if isinstance(error, GatedRepoError):
        return HubError(f"Hub repo {repo_id!r} is gated: accept its terms and set HF_TOKEN")
    if isinstance(error, RepositoryNotFoundError):
        return HubError(f"Hub repo {repo_id!r} does not exist (or is private and HF_TOKEN is not set)")
    if isinstance(error, RevisionNotFoundError):
        return HubError(f"Hub repo {repo_id!r} has no revision {revision!r}")
    if isinstance(error, LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE:
        return HubError(f"HF_HUB_OFFLINE=1 is set and {where} ({filename}) is not in the local cache")
    if isinstance(error, LocalEntryNotFoundError):
        return HubError(
            f"cannot reach the Hub at {constants.ENDPOINT} for {where} and it is not in the local cache "
            "(offline? set HF_ENDPOINT, or HF_HUB_OFFLINE=1 with a filled cache)"
        )
    if isinstance(error, EntryNotFoundError):
        return HubError(f"Hub repo {where} has no file {filename!r}: is it a TAME head repo?")
    if isinstance(error, HFValidationError):
        return HubError(f"{repo_id!r} is not a valid Hub repo id: {' '.join(str(error).split())[:160]}")
    reason = " ".join(str(error).split())[:200]
    return HubError(f"Hub request for {where} failed ({type(error).__name__}: {reason})")
