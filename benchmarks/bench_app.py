"""Class switch and branch toggle in the explorer app: server time against the 150 ms target, on the CPU.

After the first explanation of a picture, a class switch (Explain page) or a branch toggle (Branches
page) must update the page within 150 ms of server time. This prints, side by side:

* the tame_core call alone (``Explanation.with_classes`` / ``with_branches`` on cached features) next
  to a full explanation (the backbone forward those calls avoid);
* the whole page rerun as Streamlit's AppTest runs it (sidebar, page, images encoded), which is the
  server's work for one interaction plus AppTest's own overhead (an upper bound);
* a full garbage collection before and after the server's start-up freeze (``freeze_imported_objects``):
  Streamlit forced one after every rerun until ``runner.postScriptGC`` was turned off, and Python's own
  collector still makes one now and then.

Usage: python benchmarks/bench_app.py [--repeats 15] [--image PATH]
The head is the bundled one when checkpoints/efficientnet_lite0.safetensors exists, else an untrained
head with the same layers (the timing does not depend on the weights).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import timing

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 150.0


def untrained_head(folder: Path) -> Path:
    from tame_core import TAMEHead, load_backbone, save_head
    from tame_core.card import metadata_for
    from tame_core.taps import check_layers

    backbone = load_backbone("efficientnet_lite0")
    torch.manual_seed(0)
    head = TAMEHead([i.channels for i in check_layers(backbone, backbone.default_layers)], backbone.num_classes)
    path = folder / "untrained.safetensors"
    save_head(head.eval(), metadata_for(head, backbone, backbone.default_layers), path)
    return path


def median_ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"median {statistics.median(samples) * 1000:7.1f} ms  p90 {p90 * 1000:7.1f} ms"


def core_timings(picture: np.ndarray, repeats: int) -> dict[str, list[float]]:
    from tame_core import Explainer

    explainer = Explainer.load(device="cpu")
    base = explainer.explain(picture)
    classes = iter(np.random.default_rng(0).integers(0, 1000, size=10 * repeats).tolist())
    masks = itertools.cycle([(True, False, True), (False, True, True), (True, True, False)])
    return {
        "full explanation (backbone + head)": timing.samples(lambda: explainer.explain(picture), repeats),
        "with_classes (head only)": timing.samples(lambda: base.with_classes(next(classes)), repeats),
        "with_branches (head only)": timing.samples(lambda: base.with_branches(next(masks)), repeats),
    }


def app_timings(picture_png: bytes, repeats: int) -> dict[str, list[float]]:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600).run()
    at.file_uploader(key="uploads").set_value(("photo.png", picture_png, "image/png")).run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    picker = next(s for s in at.selectbox if s.key.startswith("class-"))
    classes = np.random.default_rng(1).integers(0, 1000, size=repeats).tolist()
    switch = []
    for index in classes:
        picker.set_value(int(index))
        start = time.perf_counter()
        at.run()
        switch.append(time.perf_counter() - start)
        picker = next(s for s in at.selectbox if s.key.startswith("class-"))
    assert not at.exception and not at.error

    at.switch_page("pages/branches.py").run()
    for job in at.session_state["workspace"].jobs.values():
        job.wait()  # AD/IC for every combination of branches: measured once per picture and class
    at.run()
    toggle = []
    for repeat in range(repeats):
        branch = [t for t in at.toggle if t.key.startswith("branch-")][repeat % 3]
        branch.set_value(not branch.value)
        start = time.perf_counter()
        at.run()
        toggle.append(time.perf_counter() - start)
    assert not at.exception and not at.error
    for job in at.session_state["workspace"].jobs.values():
        job.stop()
        job.wait()
    return {"class switch (Explain page rerun)": switch, "branch toggle (Branches page rerun)": toggle}


def collection_timings(repeats: int) -> dict[str, list[float]]:
    """A full garbage collection in this process, which has run the app: as every rerun forced it
    (Streamlit's ``runner.postScriptGC``, now off) and after the server's start-up freeze."""
    import gc

    from tame_core.studio import freeze_imported_objects

    gc.unfreeze()  # AppTest ran the app's start-up, freeze included: measure as it was before
    before = timing.samples(lambda: gc.collect(2), repeats)
    frozen = freeze_imported_objects()
    after = timing.samples(lambda: gc.collect(2), repeats)
    return {f"full collection, {frozen:,} objects tracked": before, "full collection after the freeze": after}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--image", type=Path, help="picture to explain (default: scikit-image's astronaut, 512x512)")
    args = parser.parse_args()

    from PIL import Image

    from tame_core.heads import bundled_head_path
    from tame_core.images import load_image
    from tame_core.studio.images import active_image
    from tame_core.studio.render import png_bytes

    folder = Path(tempfile.mkdtemp(prefix="bench-app-"))
    if bundled_head_path("efficientnet_lite0").exists():
        head = "bundled head (checkpoints/efficientnet_lite0.safetensors)"
    else:
        os.environ["TAME_HEAD"] = str(untrained_head(folder))
        head = "untrained head with the default layers (no bundled head yet)"
    if args.image:
        picture = np.asarray(load_image(args.image))
    else:
        from skimage import data

        picture = data.astronaut()
    working = active_image(Image.fromarray(picture), "bench", "upload").pixels  # what the app works on

    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU ({os.cpu_count()} cores, load {load}); {head}")
    size, work = f"{picture.shape[1]}x{picture.shape[0]}", f"{working.shape[1]}x{working.shape[0]}"
    print(f"picture {size} (the app works at {work}); {args.repeats} repeats each")
    core = core_timings(working, args.repeats)
    app = app_timings(png_bytes(picture), args.repeats)
    width = max(map(len, [*core, *app]))
    print("\ntame_core alone")
    for name, samples in core.items():
        print(f"  {name:<{width}}  {median_ms(samples)}")
    full = statistics.median(core["full explanation (backbone + head)"])
    for name in ("with_classes (head only)", "with_branches (head only)"):
        print(f"  {name:<{width}}  {full / statistics.median(core[name]):7.1f}x faster than a full explanation")
    print(f"\nwhole page rerun (AppTest, server side), target {TARGET_MS:.0f} ms")
    verdicts = []
    for name, samples in app.items():
        median = statistics.median(samples) * 1000
        verdicts.append(median <= TARGET_MS)
        verdict = "OK" if median <= TARGET_MS else "OVER"
        print(f"  {name:<{width}}  {median_ms(samples)}  = {median / TARGET_MS:.2f} x target  {verdict}")
    collections = collection_timings(args.repeats)
    print("\ngarbage collection with the app's libraries loaded (the GIL is held throughout)")
    for name, samples in collections.items():
        print(f"  {name:<{width}}  {median_ms(samples)}")
    slow, fast = (statistics.median(samples) for samples in collections.values())
    print(f"  the freeze takes a full collection from {slow * 1000:.1f} ms to {fast * 1000:.1f} ms (medians)")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
