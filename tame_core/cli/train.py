"""``tame train --data DIR --out HEAD.safetensors``: train a head on any folder of images (no labels).

The target of each image is the frozen classifier's own top-1 prediction. Ctrl-C saves a resumable
state; ``--resume`` continues it. Multi-GPU / multi-node: ``torchrun --nproc_per_node N -m tame_core train ...``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from ..backbones import DEFAULT_BACKBONE
from ..head import FUSERS, VARIANTS
from .common import (
    add_classifier_options,
    MAX_BATCH,
    MAX_CLASSES_PER_IMAGE,
    MAX_EPOCHS,
    MAX_WORKERS,
    fraction,
    int_between,
    non_negative_float,
    positive_float,
    positive_int,
    seed,
    writable_folder,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a head on a folder of images", description=__doc__)
    parser.add_argument("--data", required=True, type=Path, nargs="+", metavar="SOURCE",
                        help="folders of images (recursive; jpg, png, webp, ...) and/or .txt lists of image files")
    parser.add_argument("--out", required=True, type=Path, help="head checkpoint to write (.safetensors + .json card)")
    _add_model_options(parser)
    _add_data_options(parser)
    _add_recipe_options(parser)
    _add_run_options(parser)
    parser.set_defaults(run=run)


# The option helpers import tame_core.training inside the function on purpose: `tame --help` and the other
# commands start without loading PyTorch (see cli/__init__.py); there is no import cycle to dodge.
def _add_model_options(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"backbone name (default: {DEFAULT_BACKBONE})")
    add_classifier_options(model, weights_default="pretrained")
    model.add_argument("--layers", nargs="+",
                       help="layers to tap (default: the backbone's; for the little-data recipe its last two and the layer its classifier pools; see `tame layers`)")
    model.add_argument("--variant", choices=sorted(VARIANTS), default="tame", help="head variant")
    model.add_argument("--fuser", choices=FUSERS,
                       help="class: one learned fuser row per class (the papers'); tied: the classifier's rows times a "
                            "projection shared by all classes, so every image trains every class; tied_residual: plus a per-class residual")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    from ..training import AUGMENTATIONS, SPLITS

    data = parser.add_argument_group("data")
    data.add_argument("--split", choices=SPLITS, default="all",
                      help="train/heldout: the project's ImageNet split by WordNet id (class i held out when i %% 5 == 4)")
    data.add_argument("--limit", type=positive_int, help="use only the first N images")
    data.add_argument("--exclude-targets", choices=("heldout",),
                      help="heldout: drop images whose target is one of the project's 200 held-out ImageNet classes")
    data.add_argument("--augment", choices=AUGMENTATIONS, help="augmentation (standard = resize, random crop, flip; heavy: crops of 25-100%% of the picture)")
    data.add_argument("--workers", type=int_between(0, MAX_WORKERS), help="data-loading processes (default: 0 on CPU, 4 on GPU)")


def _add_recipe_options(parser: argparse.ArgumentParser) -> None:
    from ..training import DEFAULT_RECIPE, INITS, MASK_ORDERS, RECIPES

    recipe = parser.add_argument_group("recipe (options left out come from --recipe)")
    recipe.add_argument(
        "--recipe", choices=[DEFAULT_RECIPE, *RECIPES], default=DEFAULT_RECIPE,
        help="little-data: works on a few thousand unlabelled photos: maps start from the class activation "
             f"map, tied fuser ({_recipe_text('little-data')}); needs a classifier that global-pools one layer into one "
             f"linear layer. paper: the papers' recipe ({_recipe_text('paper')}), for ImageNet-scale data, VGG or ViTs. "
             "auto (default): little-data where the classifier allows it, else paper",
    )
    recipe.add_argument("--epochs", type=int_between(1, MAX_EPOCHS))
    recipe.add_argument("--batch-size", type=int_between(1, MAX_BATCH), default=32, help="per process")
    recipe.add_argument("--lr", type=positive_float, help="OneCycleLR max learning rate")
    recipe.add_argument("--momentum", type=fraction, default=0.9, help="SGD momentum, 0..1")
    recipe.add_argument("--weight-decay", type=non_negative_float, default=5e-4)
    recipe.add_argument("--seed", type=seed, default=0, help="0 to 2**32-1")
    recipe.add_argument("--init", choices=INITS, help="cam: start every class from its class activation map")
    recipe.add_argument("--freeze-fuser", action="store_true",
                        help="train only the branches (with --init cam, every class keeps reading its classifier weights)")
    recipe.add_argument("--top-k", type=int_between(1, MAX_CLASSES_PER_IMAGE), default=1, help="train the maps of each image's top-k predicted classes")
    recipe.add_argument("--classes-per-image", type=int_between(1, MAX_CLASSES_PER_IMAGE),
                        help="train only this many of the top-k per image and step, drawn at random (default: all k)")
    recipe.add_argument("--mask-order", choices=MASK_ORDERS, default="raw", help="normalized: T-TAME's order for ViTs")
    _add_loss_options(recipe)


def _add_loss_options(recipe: argparse._ArgumentGroup) -> None:
    from ..training import LossWeights
    from ..training.losses import DESTROY_FILLS

    defaults = LossWeights()
    for name, flag, text in (
        ("ce", "--ce-weight", "cross-entropy weight"),
        ("area", "--area-weight", "area weight"),
        ("area_eps", "--area-eps", "area epsilon"),
        ("area_power", "--area-power", "area exponent"),
        ("tv", "--tv-weight", "total-variation weight"),
        ("tv_border", "--tv-border", "TV border-value factor"),
        ("destroy", "--destroy-weight", "destroying term (Dabkowski & Gal 2017): p(class) with the map's region set to the "
                                        "mean colour must fall; one more forward per step when on; 0 = off, the papers'"),
        ("insert", "--insert-weight", "insertion term: the map's region pasted on the blurred image must keep the class "
                                      "(cross-entropy); one more forward per step when on; 0 = off"),
    ):
        default = getattr(defaults, name)
        recipe.add_argument(flag, dest=f"loss_{name}", type=non_negative_float, default=default, help=f"{text} (default {default})")
    recipe.add_argument("--destroy-fill", dest="loss_destroy_fill", choices=DESTROY_FILLS, default=defaults.destroy_fill,
                        help="what the destroying term sets the map's region to: the mean colour (RISE's deletion), black, "
                             f"or both in turn (default {defaults.destroy_fill})")
    recipe.add_argument("--map-blur", type=non_negative_float, default=0.0, metavar="FRACTION",
                        help="written into the card: blur every map made with this head (Gaussian, sigma this fraction of the "
                             "input's shorter side; the bundled head: 8/224 = 0.0357); training is unchanged (default 0: none)")
    recipe.add_argument("--blur-masks", action="store_true",
                        help="train on masks blurred by --map-blur too, so the classifier sees during training the maps "
                             "users will see (default: training masks unblurred)")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (default: cuda when available)")
    run_group.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (default: on for CUDA)")
    run_group.add_argument("--checkpoint-every", type=positive_int, default=50, help="save the resumable state every N steps")
    run_group.add_argument("--resume", action="store_true", help="continue from the saved state")
    run_group.add_argument("--overwrite", action="store_true",
                           help="start afresh where an earlier run left its state, log or head (without it, such a run is refused)")
    run_group.add_argument("--state", type=Path, help="training state file (default: <out>.state.pt)")
    run_group.add_argument("--log", type=Path, help="JSON-lines log (default: <out>.log.jsonl)")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bar")


def _recipe_text(name: str) -> str:
    from ..training import RECIPES

    return ", ".join(f"{key} {value}" for key, value in RECIPES[name].items() if key not in ("fuser", "init"))


def config_from(args: argparse.Namespace):
    from ..training import LossWeights, TrainConfig

    loss = LossWeights(**{key[5:]: value for key, value in vars(args).items() if key.startswith("loss_")})
    return TrainConfig(
        data=args.data, out=args.out, backbone=args.backbone, weights=args.weights, labels=args.labels,
        input_size=args.input_size, mean=args.mean, std=args.std, recipe=args.recipe, layers=args.layers,
        variant=args.variant, fuser=args.fuser, exclude_targets=args.exclude_targets, split=args.split, limit=args.limit, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, seed=args.seed, augment=args.augment,
        init=args.init, freeze_fuser=args.freeze_fuser, top_k=args.top_k, classes_per_image=args.classes_per_image, mask_order=args.mask_order, loss=loss, map_blur=args.map_blur, blur_masks=args.blur_masks, device=args.device, amp=args.amp,
        workers=args.workers, checkpoint_every=args.checkpoint_every, resume=args.resume, overwrite=args.overwrite, state=args.state,
        log=args.log, progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from ..stopping import Stopped
    from ..training import train_head

    config = config_from(args)
    for path, flag in ((config.out, "--out"), (config.state_path, "--state"), (config.log_path, "--log")):
        writable_folder(path.parent, flag)  # now, not when the first checkpoint is due
    _log_warnings_to_stderr()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, _stopper(stop)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        out = train_head(config, stop=stop)
    except Stopped:  # Ctrl-C before the first step (the backbone loading, the images being checked)
        print("stopped before the first step; nothing was saved", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop.is_set():
        print(f"stopped; state saved to {config.state_path}; continue with the same command and --resume", file=sys.stderr)
        return 130
    sys.stdout.write(f"{out}\n")  # one write: under torchrun every rank's line reaches the pipe whole
    sys.stdout.flush()
    return 0


def _stopper(stop: threading.Event):
    """First Ctrl-C (or SIGTERM): finish the step, save, stop. A second one interrupts at once."""

    def handle(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("stopping after this step (Ctrl-C again to abort)", file=sys.stderr)

    return handle


def _log_warnings_to_stderr() -> None:
    logger = logging.getLogger("tame_core.training")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
