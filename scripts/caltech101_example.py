"""Explain your own classifier, end to end: a 101-class Caltech-101 fine-tune of the embedded Lite0.

1. Fine-tune: a new linear classifier (1280 -> 101) on Lite0's frozen pooled features, trained on 4 of
   every 5 photos of each category (sorted names; every 5th photo is held out) and scored on the rest.
   The weights (the whole network, new classifier included) and the 101 names are written to ``--work``.
2. Train a head for that model with ``tame train``'s default recipe (little data) on the training photos.
3. Evaluate it against Grad-CAM on held-out photos (AD/IC, deletion/insertion, ROAD), with the paired
   bootstrap interval of head minus Grad-CAM.

Nothing here is committed: the weights are made by this script from the embedded Lite0 and the photos.
Run: ``python scripts/caltech101_example.py --data ../shared/data/caltech101 --work runs/caltech101``
then ``TAME_HEAD=runs/caltech101/caltech_head.safetensors TAME_WEIGHTS=runs/caltech101/lite0_caltech101.safetensors make run``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from tame_core import Explainer, load_backbone
from tame_core.evaluation import EvaluationConfig, evaluate
from tame_core.images import find_images, image_to_tensor, load_image
from tame_core.training import TrainConfig, train_head

HOLD_OUT_EVERY = 5  # photo i (sorted) of each category is held out when i % 5 == 4
SKIP = {"BACKGROUND_Google"}  # Caltech's clutter folder is not a category


def split(root: Path) -> tuple[list[str], list[tuple[Path, int]], list[tuple[Path, int]]]:
    """(category names, training (path, label) pairs, held-out pairs)."""
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in SKIP)
    train, held = [], []
    for label, name in enumerate(names):
        for index, path in enumerate(sorted(find_images(root / name))):
            (held if index % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1 else train).append((path, label))
    return names, train, held


@torch.no_grad()
def pooled_features(backbone, files: list[Path], batch: int = 32) -> torch.Tensor:
    """Lite0's global-pooled ``bn2`` features (1280) of each photo, as the classifier sees it (centre crop)."""
    net, out = backbone.net, []
    for start in tqdm(range(0, len(files), batch), desc="features", unit="batch"):
        pictures = [image_to_tensor(load_image(path)) for path in files[start : start + batch]]
        inputs = backbone.preprocess.batch(pictures, "crop")
        out.append(net.forward_head(net.forward_features(backbone.normalize(inputs)), pre_logits=True))
    return torch.cat(out)


def fit_linear(features: torch.Tensor, labels: torch.Tensor, classes: int, epochs: int = 300) -> torch.nn.Linear:
    """Multinomial logistic regression, full batch, weight decay: seconds on a CPU, deterministic."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(features.shape[1], classes)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(epochs):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(layer(features), labels).backward()
        optimizer.step()
    return layer


def fine_tune(root: Path, work: Path) -> tuple[Path, Path, list[tuple[Path, int]], list[tuple[Path, int]], dict]:
    names, train, held = split(root)
    weights, labels_file = work / "lite0_caltech101.safetensors", work / "caltech101_labels.txt"
    labels_file.write_text("".join(f"{name}\n" for name in names))
    backbone = load_backbone("efficientnet_lite0")
    cache = work / "features.pt"
    if cache.is_file():
        features = torch.load(cache, weights_only=True)
    else:
        features = {"train": pooled_features(backbone, [p for p, _ in train]), "held": pooled_features(backbone, [p for p, _ in held])}
        torch.save(features, cache)
    y_train, y_held = torch.tensor([y for _, y in train]), torch.tensor([y for _, y in held])
    started = time.perf_counter()
    layer = fit_linear(features["train"], y_train, len(names))
    with torch.no_grad():
        accuracy = {
            "train_accuracy": float((layer(features["train"]).argmax(1) == y_train).float().mean()),
            "heldout_accuracy": float((layer(features["held"]).argmax(1) == y_held).float().mean()),
            "train_photos": len(train), "heldout_photos": len(held), "classes": len(names),
            "fit_seconds": round(time.perf_counter() - started, 1),
        }
    state = {k: v.clone() for k, v in backbone.net.state_dict().items()}
    state["classifier.weight"], state["classifier.bias"] = layer.weight.detach().clone(), layer.bias.detach().clone()
    save_file(state, str(weights))
    return weights, labels_file, train, held, accuracy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the caltech101 folder (one folder per category)")
    parser.add_argument("--work", type=Path, default=Path("runs/caltech101"))
    parser.add_argument("--eval-per-class", type=int, default=3, help="held-out photos per category to evaluate on (0: all)")
    parser.add_argument("--steps", type=int, default=10, help="deletion/insertion curve steps")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    weights, labels, train, held, accuracy = fine_tune(args.data, args.work)
    print(json.dumps(accuracy))

    train_list = args.work / "train_files.txt"
    train_list.write_text("".join(f"{p.resolve()}\n" for p, _ in train))
    head = args.work / "caltech_head.safetensors"
    config = TrainConfig(data=[train_list], out=head, weights=str(weights), labels=labels)  # the default recipe
    config.resume = config.state_path.is_file()
    train_head(config)
    card = json.loads(head.with_suffix(".json").read_text())
    print(json.dumps({"head_training_seconds": card["training"]["seconds"], "steps": card["training"]["steps"],
                      "layers": card["layers"], "recipe": card["training"]["recipe"]["recipe"]}))

    per_class: dict[int, list[Path]] = {}
    for path, label in held:
        per_class.setdefault(label, []).append(path)
    chosen = [p for paths in per_class.values() for p in (paths[: args.eval_per_class] if args.eval_per_class else paths)]
    eval_list = args.work / "eval_files.txt"
    eval_list.write_text("".join(f"{p.resolve()}\n" for p in chosen))
    explainer = Explainer.load(head, weights=weights, device="cpu")
    report = evaluate(
        explainer,
        EvaluationConfig(data=args.data, list_file=eval_list, methods=("tame", "gradcam"), batch_size=16, steps=args.steps),
        state_path=args.work / "evaluation_state.json",
    )
    print(report.table())
    report.save(args.work)  # results.json, results.csv and per_image.csv
    print(report.comparison_table("tame", "gradcam"))  # paired differences, 95 % bootstrap intervals, verdicts
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    raise SystemExit(main())
