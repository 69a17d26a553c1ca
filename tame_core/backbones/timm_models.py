"""Any timm classifier by name: pretrained weights through the Hugging Face Hub, or a local file."""

from __future__ import annotations

from torch import nn

from ..classes import class_names_for
from ..errors import BackboneError
from ..preprocessing import Preprocess
from .base import Backbone, Weights, load_state_dict_file, load_strict


def is_timm_model(name: str) -> bool:
    import timm

    return timm.is_model(name.split(".")[0])


def load_timm_backbone(name: str, weights: Weights = "pretrained") -> Backbone:
    """timm model ``name`` (``arch`` or ``arch.tag``), frozen, with its own preprocessing."""
    import timm
    from timm.data import infer_imagenet_subset, resolve_data_config

    if not is_timm_model(name):
        raise BackboneError(f"timm has no model called {name!r} (see timm.list_models())")
    try:
        net = timm.create_model(name, pretrained=weights == "pretrained")
    except Exception as error:  # noqa: BLE001 - hub, network and cache failures alike
        reason = " ".join(str(error).split())[:160]
        raise BackboneError(
            f"cannot get pretrained weights for timm model {name!r} from the Hugging Face Hub "
            f"({type(error).__name__}: {reason}); when offline, use a filled cache with HF_HUB_OFFLINE=1 "
            "or pass a local weights file"
        ) from None
    source = f"timm {name} ({net.pretrained_cfg.get('hf_hub_id') or 'pretrained'})"
    if weights == "random":
        source = "random init"
    elif weights != "pretrained":
        load_strict(net, load_state_dict_file(weights), f"weights from {weights}")
        source = str(weights)
    config = resolve_data_config({}, model=net)
    preprocess = Preprocess(
        input_size=tuple(config["input_size"][1:]),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        interpolation=config["interpolation"] if config["interpolation"] in ("bilinear", "bicubic") else "bilinear",
        crop_pct=float(config["crop_pct"]),
        fixed_input_size=bool(net.pretrained_cfg.get("fixed_input_size", False)),
    )
    class_names = class_names_for(net.num_classes, infer_imagenet_subset(net))
    return Backbone(name, net, preprocess, class_names, default_timm_layers(net), source)


def default_timm_layers(net: nn.Module) -> tuple[str, ...]:
    """The last three feature stages timm reports (the papers tap three consecutive depths)."""
    info = getattr(net, "feature_info", None) or []
    modules = [entry["module"] for entry in info if entry.get("module")]
    return tuple(modules[-3:])
