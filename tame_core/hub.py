"""Pull and push heads on the Hugging Face Hub (or any server ``HF_ENDPOINT`` points to).

A head on the Hub is the checkpoint pair (``head.safetensors`` + ``head.json``) and a model card
(``README.md``). Pulls check the tensor file against the SHA-256 recorded in the card. Pushes upload a
fresh copy of the checked head whose metadata holds no local paths (an absolute ``--weights`` file, say,
becomes its file name).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from .backbones import read_weights
from .card import HeadMetadata
from .checkpoint import load_head, paths_for, read_metadata, save_head
from .errors import HubError
from .fingerprint import sha256_of
from .maps import blur_sigma_pixels

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
    _check_download(repo_id, tensors, tensor_name, metadata.weights_sha256)
    _pull_classifier(repo_id, revision, cache_dir, metadata)
    return Path(tensors)


def _check_download(repo_id: str, path: str, name: str, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise HubError(
            f"{repo_id}: {name} has SHA-256 {actual[:12]}..., but its card says {expected[:12]}...; "
            "refusing a file that does not match"
        )


def _pull_classifier(repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None, metadata: HeadMetadata) -> None:
    """The fine-tuned classifier's weights, when the repo carries them (``push --with-weights``): they land
    beside the head, where :func:`~tame_core.heads.classifier_weights_for` finds them."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    name, expected = metadata.classifier.get("weights"), metadata.classifier.get("weights_sha256")
    if not expected or not str(name).endswith(".safetensors"):
        return
    try:
        path = hf_hub_download(repo_id, str(name), revision=revision, cache_dir=cache_dir)
    except EntryNotFoundError:
        return  # a head without its classifier: the user passes --weights
    except Exception as error:  # noqa: BLE001 - translated to one line below
        raise _hub_error(error, repo_id, revision, str(name)) from None
    _check_download(repo_id, path, str(name), expected)


def push_head(
    path: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload TAME head",
    with_weights: str | os.PathLike | None = None,
) -> str:
    """Upload a local head (tensors, card and a generated model card) to ``repo_id``; returns the commit URL.

    The head is loaded first (every check of :func:`~tame_core.checkpoint.load_head`), then saved afresh
    with :func:`public_metadata`, so what is uploaded holds no local paths and carries its own digests.
    ``with_weights`` also uploads the fine-tuned classifier the head explains (checked against the card's
    SHA-256; a ``.pt`` is converted to ``.safetensors``), so a pull gives a complete explainer.
    """
    from huggingface_hub import create_repo, upload_folder

    if not _REPO_ID.match(repo_id):
        raise HubError(f"{repo_id!r} is not a Hub repo id (owner/name: letters, digits, '-', '_', '.')")
    head, metadata = load_head(path)
    public = public_metadata(metadata)
    with tempfile.TemporaryDirectory() as folder:
        if with_weights is not None:
            public = replace(public, classifier=_stage_classifier(metadata, with_weights, Path(folder)))
        save_head(head, public, Path(folder) / HEAD_FILENAME)
        (Path(folder) / "README.md").write_text(model_card(public, repo_id))
        try:
            create_repo(repo_id, token=token, private=private, exist_ok=True)
            commit = upload_folder(
                repo_id=repo_id, folder_path=folder, token=token, revision=revision, commit_message=commit_message
            )
        except Exception as error:  # noqa: BLE001
            raise _hub_error(error, repo_id, revision, HEAD_FILENAME) from None
    return str(getattr(commit, "commit_url", commit))


def _stage_classifier(metadata: HeadMetadata, weights: str | os.PathLike, folder: Path) -> dict[str, Any]:
    """Put the classifier's weights in ``folder`` as ``.safetensors``; the card's ``classifier`` entry for them."""
    from safetensors.torch import save_file

    expected = metadata.classifier.get("weights_sha256")
    if not expected:
        raise HubError(
            "--with-weights: this head explains the pretrained "
            f"{metadata.backbone} (its card records no weights file), so there are no weights of yours to upload"
        )
    loaded = read_weights(weights)
    if loaded.sha256 != expected:
        raise HubError(
            f"--with-weights {loaded.name} is not the classifier this head was trained for "
            f"({metadata.classifier.get('weights')}, SHA-256 {expected[:12]}...)"
        )
    target = folder / (Path(loaded.name).stem + ".safetensors")
    if Path(weights).suffix == ".safetensors":
        target.write_bytes(Path(weights).read_bytes())
    else:
        save_file({k: v.contiguous().clone() for k, v in loaded.state.items()}, str(target))
    return {**metadata.classifier, "weights": target.name, "weights_sha256": sha256_of(target), "trained_for_sha256": expected}


def public_metadata(metadata: HeadMetadata) -> HeadMetadata:
    """A copy of ``metadata`` fit to publish: in every field (dict keys included) a local path becomes its
    file name and a URL becomes ``(link removed)``. tame_core itself writes neither, so only what a user
    added to a card is changed; the fields that say what the head is (backbone, layers, sizes, digests) stay."""
    changed = {
        item.name: scrub_local_paths(getattr(metadata, item.name), urls=True)
        for item in fields(metadata)
        if item.name not in _STRUCTURAL
    }
    return replace(metadata, **changed)


#: Card fields that describe the head's shape and identity: published as they are.
_STRUCTURAL = frozenset({"layers", "channels", "num_classes", "variant", "max_resolution", "input_size",
                         "format", "format_version", "weights_sha256", "tensors_sha256",
                         "class_names", "classifier"})  # the classes it explains (checked names) and the weights' file name and digest

#: A string that is a local path (POSIX, home, Windows drive or share, file URL), and a path of two or
#: more parts inside other text; URLs (``https://...``) match neither.
_LOCAL_PATH = re.compile(r"^(~|/|[A-Za-z]:[\\/]|\\\\|file://)")
_PATH_IN_TEXT = re.compile(r"""(?:^|(?<=[\s"'(=,]))(?:~|[A-Za-z]:)?(?:[\\/][^\s"'(),\\/]+){2,}""")
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>)\]]*")
_MAX_SCRUB_DEPTH = 64


def scrub_local_paths(value: Any, urls: bool = False, depth: int = 0) -> Any:
    """``value`` with every local path in its strings (dict keys too) cut to its file name, and with
    ``urls`` every URL replaced by ``(link removed)``. Used for what is published and for app messages."""
    if depth > _MAX_SCRUB_DEPTH:
        return "(nested too deep)"
    if isinstance(value, dict):
        return {scrub_local_paths(str(k), urls, depth + 1): scrub_local_paths(v, urls, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_local_paths(item, urls, depth + 1) for item in value]
    if isinstance(value, str):
        if urls:
            value = _URL.sub("(link removed)", value)
        if _LOCAL_PATH.match(value):
            return _file_name(value)
        return _PATH_IN_TEXT.sub(lambda found: _file_name(found.group(0)), value)
    return value


def _file_name(path: str) -> str:
    return re.split(r"[\\/]", path.rstrip("\\/"))[-1] or "(local path)"


def _blur_text(metadata) -> str:
    blur = getattr(metadata, "map_blur", 0.0)
    if not blur:
        return ""
    side = min(metadata.input_size)
    pixels = blur_sigma_pixels(blur, metadata.input_size)
    return f"; every map blurred (Gaussian, sigma {blur:.4f} of the input's shorter side: {pixels:.1f} px at {side})"


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
- Head variant: `{metadata.variant}`; maps fused at up to {metadata.max_resolution} px a side{_blur_text(metadata)}
- Input size: {metadata.input_size[0]}x{metadata.input_size[1]}
- Classes: {_classes_line(metadata)}
- Classifier weights: {_classifier_line(metadata)}
- Head SHA-256: `{metadata.weights_sha256}`

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


def _classes_line(metadata: HeadMetadata) -> str:
    names = metadata.class_names
    if not names:
        return f"{metadata.num_classes} (the architecture's own names)"
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"{metadata.num_classes}: {shown}"


def _classifier_line(metadata: HeadMetadata) -> str:
    weights = metadata.classifier.get("weights", "pretrained")
    if not metadata.classifier.get("weights_sha256"):
        return f"{weights} `{metadata.backbone}`"
    return f"`{weights}` (SHA-256 `{metadata.classifier['weights_sha256']}`), a fine-tune: pass it with `--weights` unless this repo holds it"


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
