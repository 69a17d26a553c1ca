"""Any timm classifier by name: pretrained weights through the Hugging Face Hub, or a local file."""

from __future__ import annotations

import torch
from torch import nn

from ..classes import class_names_for
from ..errors import BackboneError
from ..preprocessing import Preprocess
from .base import Backbone, Weights, find_pooled_layer, net_with_weights


def is_timm_model(name: str) -> bool:
    import timm

    return timm.is_model(name.split(".")[0])


def load_timm_backbone(name: str, weights: Weights = "pretrained") -> Backbone:
    """timm model ``name`` (``arch`` or ``arch.tag``), frozen, with its own preprocessing.

    A weights file may be a fine-tune with any number of classes: the count comes from its classifier."""
    import timm
    from timm.data import infer_imagenet_subset, resolve_data_config

    if not is_timm_model(name):
        raise BackboneError(f"timm has no model called {name!r} (see timm.list_models())")
    loaded = None
    if weights == "pretrained":
        net = _pretrained(name)
        source = f"timm {name} ({net.pretrained_cfg.get('hf_hub_id') or 'pretrained'})"
    else:
        def build(num_classes: int) -> nn.Module:
            return timm.create_model(name, pretrained=False, num_classes=num_classes)

        classifier = _classifier_name(name)
        net, loaded = net_with_weights(build, weights, classifier, 1000)
        source = "random init" if loaded is None else loaded.name
    config = resolve_data_config({}, model=net)
    preprocess = Preprocess(
        input_size=tuple(config["input_size"][1:]),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        interpolation=config["interpolation"] if config["interpolation"] in ("bilinear", "bicubic") else "bilinear",
        crop_pct=float(config["crop_pct"]),
        fixed_input_size=bool(net.pretrained_cfg.get("fixed_input_size", False)),
    )
    subset = infer_imagenet_subset(net) if net.num_classes >= 1000 else None
    class_names = class_names_for(net.num_classes, subset)
    layers, pooled = default_timm_layers(net, preprocess.input_size)
    return Backbone(name, net, preprocess, class_names, layers, source, weights=loaded, pooled_layer=pooled)


def _pretrained(name: str) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=True)
    except Exception as error:  # noqa: BLE001 - hub, network and cache failures alike
        reason = " ".join(str(error).split())[:160]
        raise BackboneError(
            f"cannot get pretrained weights for timm model {name!r} from the Hugging Face Hub "
            f"({type(error).__name__}: {reason}); when offline, use a filled cache with HF_HUB_OFFLINE=1 "
            "or pass a local weights file"
        ) from None


def _classifier_name(name: str) -> str | None:
    """The classifier module timm's config names for ``name`` (the first, for distilled models)."""
    import timm

    with torch.device("meta"):
        classifier = timm.create_model(name, pretrained=False).pretrained_cfg.get("classifier")
    return classifier[0] if isinstance(classifier, (list, tuple)) else classifier


def default_timm_layers(net: nn.Module, input_size: tuple[int, int]) -> tuple[tuple[str, ...], str | None]:
    """(layers, pooled layer): the last three feature stages timm reports (the papers tap three consecutive
    depths), and the layer the classifier global-pools, if it does (the little-data recipe ends there)."""
    info = getattr(net, "feature_info", None) or []
    modules = [entry["module"] for entry in info if entry.get("module")]
    return tuple(modules[-3:]), find_pooled_layer(net, input_size)
