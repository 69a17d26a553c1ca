"""Your own classifier: a fine-tune with its own classes, names and weights, from Python to the CLI.

The custom model here is the embedded Lite0 with its classifier cut to five ImageNet rows and given new
names: its logits are known (Lite0's five rows), and a head cut from the bundled head's fuser rows must
give the bundled head's maps for those classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from tame_core import Explainer, TAMEHead, load_backbone, save_head, wrap_classifier
from tame_core.card import metadata_for
from tame_core.checkpoint import load_head
from tame_core.heads import bundled_head_path
from tame_core.classes import read_labels
from tame_core.cli import main
from tame_core.errors import BackboneError, ClassError, TrainingError
from tame_core.training import TrainConfig, train_head

#: tabby, espresso, missile, space shuttle, golden retriever
KEEP = [281, 967, 657, 812, 207]
NAMES = ["my cat", "coffee cup", "rocket", "shuttle", "good dog"]


@pytest.fixture(scope="module")
def custom(tmp_path_factory, lite0) -> dict[str, Path]:
    """Five-class weights (.safetensors and a wrapped .pt), a labels file, and a head cut from the bundled one."""
    folder = tmp_path_factory.mktemp("custom")
    state = {k: v.clone() for k, v in lite0.net.state_dict().items()}
    state["classifier.weight"] = state["classifier.weight"][KEEP].clone()
    state["classifier.bias"] = state["classifier.bias"][KEEP].clone()
    weights = folder / "five.safetensors"
    save_file(state, str(weights))
    wrapped = folder / "five.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    labels = folder / "labels.txt"
    labels.write_text("\n".join(NAMES) + "\n")
    bundled, bundled_meta = load_head(bundled_head_path("efficientnet_lite0"))
    cut = TAMEHead(bundled.channels, len(KEEP), bundled.variant, bundled.max_resolution)
    cut_state = bundled.state_dict()
    cut_state["fuser.weight"] = cut_state["fuser.weight"][KEEP].clone()
    cut_state["fuser.bias"] = cut_state["fuser.bias"][KEEP].clone()
    cut.load_state_dict(cut_state)
    backbone = load_backbone("efficientnet_lite0", weights=weights, class_names=NAMES)
    head = folder / "five_head.safetensors"
    save_head(cut.eval(), metadata_for(cut, backbone, bundled_meta.layers, map_blur=bundled_meta.map_blur), head)  # its maps: the same blur
    return {"weights": weights, "wrapped": wrapped, "labels": labels, "head": head, "folder": folder}


def test_five_class_cut_gives_lite0s_five_rows(custom, lite0, sample_images):
    backbone = load_backbone("efficientnet_lite0", weights=custom["wrapped"], class_names=read_labels(custom["labels"]))
    assert backbone.num_classes == 5 and backbone.class_names == tuple(NAMES)
    assert backbone.weights_name == "five.pt" and len(backbone.weights_sha256) == 64
    inputs = lite0.preprocess.batch([torch.from_numpy(sample_images[n]).permute(2, 0, 1) for n in ("chelsea", "coffee")], "crop")
    with torch.no_grad():
        torch.testing.assert_close(backbone(inputs), lite0(inputs)[:, KEEP], rtol=0, atol=1e-5)


def test_cut_head_gives_the_bundled_maps_for_its_classes(custom, sample_images):
    bundled = Explainer.load(device="cpu")
    mine = Explainer.load(custom["head"], weights=custom["weights"], device="cpu")  # the card names the rest
    assert mine.backbone.class_names == tuple(NAMES)
    picture = sample_images["chelsea"]
    ours = mine.explain(picture, classes=[list(range(5))])
    theirs = bundled.explain(picture, classes=[KEEP])
    torch.testing.assert_close(ours.maps, theirs.maps, rtol=0, atol=1e-5)
    assert ours.top_k(1)[0][0][1] == "my cat"
    assert mine.explain(picture, classes="coffee cup").classes.tolist() == [[1]]


def test_card_records_the_model(custom):
    card = json.loads(custom["head"].with_suffix(".json").read_text())
    assert card["backbone"] == "efficientnet_lite0" and card["num_classes"] == 5
    assert card["class_names"] == NAMES
    assert card["classifier"]["weights"] == "five.safetensors" and card["classifier"]["num_classes"] == 5
    assert card["classifier"]["weights_sha256"] == __import__("hashlib").sha256(custom["weights"].read_bytes()).hexdigest()
    assert card["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert str(custom["folder"]) not in custom["head"].with_suffix(".json").read_text()


def test_cli_explains_from_the_card_and_the_weights_alone(custom, sample_images, tmp_path, capsys):
    photo = tmp_path / "cat.jpg"
    Image.fromarray(sample_images["chelsea"]).save(photo)
    code = main(["explain", str(photo), "--head", str(custom["head"]), "--weights", str(custom["weights"]),
                 "--class", "Good Dog", "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert "explained 'good dog'" in line and "top-5: my cat " in line and "class 0" not in line
    assert np.load(tmp_path / "out" / "cat.npy").shape == sample_images["chelsea"].shape[:2]


def test_weights_beside_the_head_need_no_option(custom, tmp_path):
    folder = tmp_path / "pulled"
    folder.mkdir()
    for path in (custom["head"], custom["head"].with_suffix(".json"), custom["weights"]):
        (folder / path.name).write_bytes(path.read_bytes())
    explainer = Explainer.load(folder / custom["head"].name, device="cpu")
    assert explainer.backbone.class_names == tuple(NAMES) and explainer.backbone.weights_name == "five.safetensors"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_refusals_are_one_line_and_name_the_fix(custom, lite0, tmp_path, sample_images, capsys):
    photo = tmp_path / "cat.jpg"
    Image.fromarray(sample_images["chelsea"]).save(photo)
    alone = tmp_path / "alone"  # the head without its weights beside it
    alone.mkdir()
    for path in (custom["head"], custom["head"].with_suffix(".json")):
        (alone / path.name).write_bytes(path.read_bytes())
    base = ["explain", str(photo), "--head", str(alone / custom["head"].name), "--out", str(tmp_path / "o"), "--device", "cpu"]
    # no weights: the card says a fine-tune
    assert main(base) == 2
    message = _one_line(capsys)
    assert "explains a fine-tuned efficientnet_lite0 (weights file five.safetensors" in message and "pass that file with --weights" in message
    # other weights (one value changed): refused by SHA-256
    state = {k: v.clone() for k, v in lite0.net.state_dict().items()}
    state["classifier.weight"] = state["classifier.weight"][KEEP].clone() * 1.001
    state["classifier.bias"] = state["classifier.bias"][KEEP].clone()
    other = tmp_path / "other.safetensors"
    save_file(state, str(other))
    assert main([*base, "--weights", str(other)]) == 2
    message = _one_line(capsys)
    assert "weights other.safetensors are not the ones this head was trained for (five.safetensors" in message
    assert "pass five.safetensors with --weights" in message
    # labels of the wrong length
    short = tmp_path / "four.txt"
    short.write_text("a\nb\nc\nd\n")
    assert main([*base, "--weights", str(custom["weights"]), "--labels", str(short)]) == 2
    assert _one_line(capsys) == (
        "error: class names has 4 names but the classifier 'efficientnet_lite0' has 5 outputs; give one name per output, in output order"
    )
    # a labels file that is not text
    binary = tmp_path / "labels.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main([*base, "--weights", str(custom["weights"]), "--labels", str(binary)]) == 2
    assert "labels.bin is not UTF-8 text: give one class name per line, or a JSON list of names" in _one_line(capsys)


def test_weights_of_another_architecture_are_refused(tmp_path):
    import timm

    resnet = tmp_path / "resnet18_finetune.safetensors"
    save_file(timm.create_model("resnet18", num_classes=7).state_dict(), str(resnet))
    with pytest.raises(BackboneError, match=r"weights file resnet18_finetune.safetensors do not fit the model: .*another architecture"):
        load_backbone("efficientnet_lite0", weights=resnet)
    backbone = load_backbone("timm:resnet18", weights=resnet)  # the right architecture: 7 classes from the file
    assert backbone.num_classes == 7 and backbone.class_names[6] == "class 6" and backbone.pooled_layer == "layer4"


@pytest.mark.parametrize(
    "text, message",
    [
        ("a\n\nb\n", "labels file l.txt: name 2 is empty; every class needs a name"),
        ("cat\nCat\n", "labels file l.txt: 'Cat' is both name 1 and name 2; names must differ"),
        ('["a", 3]', "labels file l.txt: name 2 is 3; every class needs a name"),
        ('["a", "b"', "labels file l.txt starts with '[' but is not a JSON list of names"),
        ("", "labels file l.txt holds no class names"),
    ],
)
def test_bad_labels_files(tmp_path, text, message):
    path = tmp_path / "l.txt"
    path.write_text(text)
    with pytest.raises(ClassError) as error:
        read_labels(path)
    assert str(error.value) == message


def test_labels_as_json_list_and_with_windows_line_ends(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["ok", "scratch", "dent"]))
    (tmp_path / "b.txt").write_bytes("\ufeffok\r\nscratch\r\n  dent  \r\n\r\n".encode())
    assert read_labels(tmp_path / "a.json") == read_labels(tmp_path / "b.txt") == ("ok", "scratch", "dent")


def test_preprocessing_overrides_reach_the_card_and_are_checked(custom, tmp_path):
    backbone = load_backbone("efficientnet_lite0", weights=custom["weights"], preprocess={"input_size": [256, 256], "mean": [0.4, 0.4, 0.4]})
    assert backbone.preprocess.input_size == (256, 256) and backbone.preprocess.std == (0.5, 0.5, 0.5)
    assert torch.allclose(backbone.mean.flatten(), torch.tensor([0.4, 0.4, 0.4]))
    with pytest.raises(BackboneError, match=r"preprocessing: std must be above 0"):
        load_backbone("efficientnet_lite0", weights="random", preprocess={"std": [0, 1, 1]})


def test_layers_lists_a_fine_tunes_layers_and_names_an_unknown_one(custom, capsys):
    assert main(["layers", "--weights", str(custom["weights"])]) == 0
    assert "bn2" in capsys.readouterr().out
    from tame_core.errors import LayerError
    from tame_core.taps import check_layers

    with pytest.raises(LayerError, match=r"unknown layer 'blocks.99' in efficientnet_lite0; did you mean blocks.6, blocks.5, blocks.4\? \(list its layers with `tame layers --backbone efficientnet_lite0`\)"):
        check_layers(load_backbone("efficientnet_lite0", weights=custom["weights"]), ["blocks.4", "blocks.99"])


def test_default_recipe_is_little_data_and_paper_is_one_flag_away(tmp_path, lite0):
    from tame_core.training.trainer import recipe_layers

    default = TrainConfig(data=[tmp_path], out=tmp_path / "h")
    assert default.recipe == "auto" and default.settle_recipe(lite0.pooled_layer is not None) == "little-data"
    assert (default.fuser, default.init, default.lr, default.augment, default.epochs) == ("tied", "cam", 1e-2, "heavy", 1)
    assert recipe_layers(lite0, default) == ["blocks.4", "blocks.6", "bn2"]  # the bundled head's layers
    for_vit = TrainConfig(data=[tmp_path], out=tmp_path / "h", epochs=3)
    assert for_vit.settle_recipe(False) == "paper" and (for_vit.fuser, for_vit.init, for_vit.lr, for_vit.epochs) == ("class", "random", 1e-3, 3)
    paper = TrainConfig(data=[tmp_path], out=tmp_path / "h", recipe="paper")
    assert (paper.fuser, paper.init, paper.lr, paper.augment, paper.epochs) == ("class", "random", 1e-3, "standard", 8)
    assert recipe_layers(lite0, paper) == list(lite0.default_layers)
    mixed = TrainConfig(data=[tmp_path], out=tmp_path / "h", recipe="paper", init="cam", lr=5e-3)
    assert (mixed.fuser, mixed.init, mixed.lr) == ("class", "cam", 5e-3)  # what is given wins
    vgg = load_backbone("vgg16", weights="random")
    with pytest.raises(TrainingError, match=r"the little-data recipe with --init cam starts .* vgg16 has none: use --recipe paper"):
        recipe_layers(vgg, TrainConfig(data=[tmp_path], out=tmp_path / "h", recipe="little-data"))
    with pytest.raises(TrainingError, match=r"recipe 'fast' is not one of auto, little-data, paper"):
        TrainConfig(data=[tmp_path], out=tmp_path / "h", recipe="fast")


class TinyNet(nn.Module):
    """A classifier that is neither timm nor torchvision: two conv stages, global pooling, one linear layer."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(self.stem(x)).mean(dim=(2, 3)))


@pytest.mark.slow
def test_any_module_trains_and_explains_with_its_names(tmp_path, sample_images):
    torch.manual_seed(0)
    backbone = wrap_classifier(TinyNet(), ["ok", "scratch", "dent"], layers=["stem", "stage"], input_size=(64, 64))
    assert backbone.pooled_layer == "stage" and backbone.class_names == ("ok", "scratch", "dent")
    data = tmp_path / "photos"
    data.mkdir()
    for name, picture in sample_images.items():
        Image.fromarray(picture).save(data / f"{name}.png")
    out = train_head(TrainConfig(data=[data], out=tmp_path / "tiny", batch_size=2, progress=False, device="cpu"), backbone=backbone)
    explainer = Explainer.load(out, backbone=backbone, device="cpu")
    explanation = explainer.explain(sample_images["coffee"], classes="dent")
    assert explanation.maps.shape[:2] == (1, 1) and {name for _, name, _ in explanation.top_k(3)[0]} == {"ok", "scratch", "dent"}
    assert json.loads(out.with_suffix(".json").read_text())["class_names"] == ["ok", "scratch", "dent"]
    with pytest.raises(BackboneError, match=r"class_names has 2 names but the classifier 'custom' has 3 outputs"):
        wrap_classifier(TinyNet(), ["ok", "dent"], layers=["stage"])


@pytest.mark.slow
def test_cli_trains_a_fine_tune_with_the_default_recipe_and_explains_it(custom, sample_images, tmp_path, capsys):
    data = tmp_path / "photos"
    data.mkdir()
    for name, picture in sample_images.items():
        Image.fromarray(picture).save(data / f"{name}.jpg")
    head = tmp_path / "mine"
    code = main(["train", "--data", str(data), "--out", str(head), "--weights", str(custom["weights"]),
                 "--labels", str(custom["labels"]), "--batch-size", "2", "--device", "cpu", "--no-progress"])
    assert code == 0
    card = json.loads(head.with_suffix(".json").read_text())
    assert card["layers"] == ["blocks.4", "blocks.6", "bn2"] and card["class_names"] == NAMES
    assert card["training"]["recipe"]["recipe"] == "little-data" and card["training"]["recipe"]["weights"] == "five.safetensors"
    capsys.readouterr()
    photo = data / "chelsea.jpg"
    assert main(["explain", str(photo), "--head", str(head), "--weights", str(custom["weights"]), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    assert "explained 'my cat'" in capsys.readouterr().out


def test_push_with_weights_then_pull_gives_a_complete_explainer(fake_hub, custom, tmp_path, sample_images):
    from tame_core.hub import pull_head, push_head

    head, card = load_head(custom["head"])  # the same head, its card naming the .pt fine-tune (a wrapped, prefixed state)
    backbone = load_backbone("efficientnet_lite0", weights=custom["wrapped"], class_names=NAMES)
    pt_head = tmp_path / "alone" / "five_head.safetensors"  # a folder without the weights beside the head
    pt_head.parent.mkdir()
    save_head(head, metadata_for(head, backbone, card.layers, map_blur=card.map_blur), pt_head)
    push_head(pt_head, "team/five-classes", with_weights=custom["wrapped"])  # a .pt, converted to .safetensors
    files = fake_hub.resolve("team/five-classes", "main")[1]
    assert set(files) == {"head.safetensors", "head.json", "README.md", "five.safetensors"}
    card = json.loads(files["head.json"])
    assert card["class_names"] == NAMES and card["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert card["classifier"]["weights"] == "five.safetensors" and card["classifier"]["trained_for_sha256"] != card["classifier"]["weights_sha256"]
    assert str(tmp_path) not in files["head.json"].decode() and str(custom["folder"]) not in files["README.md"].decode()
    assert "my cat, coffee cup, rocket, shuttle, good dog" in files["README.md"].decode()

    local = pull_head("team/five-classes", cache_dir=tmp_path / "cache")
    assert (local.parent / "five.safetensors").is_file()
    explainer = Explainer.load("team/five-classes", device="cpu")  # the Hub alone: head, names, weights
    reference = Explainer.load(custom["head"], weights=custom["weights"], device="cpu")
    ours = explainer.explain(sample_images["chelsea"], classes=[[0, 4]])
    torch.testing.assert_close(ours.maps, reference.explain(sample_images["chelsea"], classes=[[0, 4]]).maps, rtol=0, atol=1e-6)
    assert ours.top_k(1)[0][0][1] == "my cat"


def test_push_refuses_weights_the_head_was_not_trained_for(fake_hub, custom, random_head_path, tmp_path, lite0):
    from tame_core.errors import HubError
    from tame_core.hub import push_head

    state = {k: v.clone() for k, v in lite0.net.state_dict().items()}
    state["classifier.weight"] = state["classifier.weight"][KEEP] + 1
    state["classifier.bias"] = state["classifier.bias"][KEEP].clone()
    other = tmp_path / "other.safetensors"
    save_file(state, str(other))
    with pytest.raises(HubError, match=r"--with-weights other.safetensors is not the classifier this head was trained for \(five.safetensors"):
        push_head(custom["head"], "team/wrong", with_weights=other)
    with pytest.raises(HubError, match=r"explains the pretrained efficientnet_lite0 .* no weights of yours to upload"):
        push_head(random_head_path, "team/wrong", with_weights=other)
    assert "team/wrong" not in fake_hub.repos


@pytest.fixture
def custom_app(monkeypatch, custom, tmp_path):
    """The app started on the five-class fine-tune: TAME_HEAD and TAME_WEIGHTS, as a deployment would."""
    from streamlit.testing.v1 import AppTest

    alone = tmp_path / "deployed"
    alone.mkdir()
    for path in (custom["head"], custom["head"].with_suffix(".json")):
        (alone / path.name).write_bytes(path.read_bytes())
    monkeypatch.setenv("TAME_HEAD", str(alone / custom["head"].name))
    monkeypatch.setenv("TAME_WEIGHTS", str(custom["weights"]))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=180)
    at.run()
    yield at
    for job in getattr(at.session_state["workspace"] if "workspace" in at.session_state else None, "jobs", {}).values():
        job.stop()
        job.wait(120)


def test_the_app_explains_a_fine_tune_with_its_own_names(custom_app, sample_images):
    import io

    at = custom_app
    assert not at.exception and at.session_state["model"].class_names == tuple(NAMES)
    assert "five_head.safetensors" in at.sidebar.caption[0].value and "five.safetensors" in at.sidebar.caption[0].value
    at.switch_page("pages/explain.py").run()
    buffer = io.BytesIO()
    Image.fromarray(sample_images["chelsea"]).save(buffer, format="PNG")
    at.file_uploader(key="uploads").set_value([("chelsea.png", buffer.getvalue(), "image/png")]).run()
    assert not at.exception and not at.error
    top5 = [option.split(" · ")[0] for option in at.radio[0].options]
    assert top5[0] == "my cat (0)" and set(top5) == {f"{n} ({i})" for i, n in enumerate(NAMES)}
    assert at.main.get("image")[0].captions[0].startswith("my cat (0): p = ")
    for page in ("branches", "curves", "compare"):
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception and not at.error, page
    at.switch_page("pages/demo.py").run()
    assert not at.exception and at.markdown[0].value.startswith("## chelsea.png: the model sees **my cat**")



def test_the_sidebar_switches_to_a_fine_tune_with_its_weights_under_the_allowed_roots(monkeypatch, custom, tmp_path):
    from streamlit.testing.v1 import AppTest

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    for path in (custom["head"], custom["head"].with_suffix(".json")):
        (allowed / path.name).write_bytes(path.read_bytes())
    monkeypatch.setenv("TAME_ALLOWED_ROOTS", str(allowed))
    monkeypatch.delenv("TAME_HEAD", raising=False)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=180)
    at.run()
    at.sidebar.selectbox(key="head_source").set_value("file").run()
    at.sidebar.text_input(key="head_path").input(str(allowed / custom["head"].name)).run()
    assert not at.exception and "explains a fine-tuned efficientnet_lite0" in at.sidebar.error[0].value  # weights needed
    at.sidebar.selectbox(key="weights_source").set_value("file").run()
    at.sidebar.text_input(key="weights_path").input(str(custom["weights"])).run()  # outside the allowed folders
    assert not at.exception and "outside the folders this server lets the app read" in at.sidebar.error[0].value
    (allowed / "five.safetensors").write_bytes(custom["weights"].read_bytes())
    at.sidebar.text_input(key="weights_path").input(str(allowed / "five.safetensors")).run()
    assert not at.exception and not at.sidebar.error
    assert at.session_state["model"].class_names == tuple(NAMES)


def test_cli_evaluate_loads_the_fine_tune_from_its_card_and_weights(custom, sample_images, tmp_path, capsys):
    data = tmp_path / "photos"
    data.mkdir()
    for name in ("chelsea", "coffee"):
        Image.fromarray(sample_images[name]).save(data / f"{name}.png")
    code = main(["evaluate", "--data", str(data), "--head", str(custom["head"]), "--weights", str(custom["weights"]),
                 "--methods", "tame,gradcam", "--metrics", "adic", "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    assert "tame" in table and "gradcam" in table
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["settings"]["images"] == 2


def test_the_default_recipe_is_the_bundled_heads_recipe(tmp_path, lite0):
    """`tame train --data ... --out H` (plus the evaluation protocol's --exclude-targets and the destroying
    term) trains exactly what scripts/train_bundled_head.py trained for the bundled head, whose card records it."""
    from tame_core.cli import build_parser
    from tame_core.cli.train import config_from
    from tame_core.training.trainer import recipe_layers

    args = build_parser().parse_args(["train", "--data", str(tmp_path), "--out", str(tmp_path / "h"), "--exclude-targets", "heldout"])

    config = config_from(args)
    config.settle_recipe(lite0.pooled_layer is not None)
    config.layers = recipe_layers(lite0, config)
    shipped = load_head(bundled_head_path("efficientnet_lite0"))[1].training["recipe"]
    ours = config.schedule_key()
    differing = {k for k in ours if k in shipped and ours[k] != shipped[k]}
    assert differing == {"loss"} and ours["recipe"] == "little-data"
    # the one difference is the destroying term, which the bundled head adds (`--destroy-weight 3 --destroy-fill black`, issue 25)
    assert shipped["loss"] == {**ours["loss"], "destroy": 3.0, "destroy_fill": "black"}


def test_a_weights_file_with_nan_or_inf_is_refused_in_one_line(tmp_path):
    from tame_core.backbones import read_weights

    for value in (float("nan"), float("inf")):
        path = tmp_path / "broken.safetensors"
        save_file({"fc.weight": torch.tensor([[1.0, value]]), "fc.bias": torch.zeros(1)}, str(path))
        with pytest.raises(BackboneError) as error:
            read_weights(path)
        assert str(error.value) == "weights file broken.safetensors: fc.weight holds NaN or infinite values; the classifier cannot be used"
    torch.save({"fc.weight": torch.ones(1, 2)}, tmp_path / "fine.pt")
    assert read_weights(tmp_path / "fine.pt").state["fc.weight"].shape == (1, 2)
