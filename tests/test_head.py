"""The attention head: branch maths, variants, resolution, class selection, branch masks and contributions,
fusing per branch at native resolution (checked against the papers' upsample-concatenate-fuse), and the
tied fuser."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tame_core.errors import CheckpointError, LayerError
from tame_core.head import VARIANTS, TAMEHead, TiedTAMEHead


def _identity_branches(head: TAMEHead) -> None:
    """1x1 convs that copy their input, batch norms that do nothing (eval mode, unit statistics)."""
    for branch in head.branches:
        channels = branch.conv.weight.shape[0]
        branch.conv.weight.data = torch.eye(channels)[:, :, None, None]
        branch.conv.bias.data.zero_()
    head.eval()


def _randomise(head: TAMEHead, seed: int = 0) -> TAMEHead:
    """Random weights everywhere, batch-norm statistics included, so no term is trivially zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in head.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=generator) + 0.5 if "running_var" in name else torch.randn(tensor.shape, generator=generator)
                tensor.copy_(values)
    return head.eval()


def papers_fuse(head: TAMEHead, outputs, classes=None, branch_mask=None) -> torch.Tensor:
    """The papers' order, kept only as this test's reference: upsample every branch output to the fused
    resolution, concatenate, then apply the 1x1 fuser (rows of the requested classes, masked columns zeroed)."""
    size = head.resolution(outputs[0].shape[-2:])
    upsampled = [o if tuple(o.shape[-2:]) == size else F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outputs]
    stacked = torch.cat(upsampled, dim=1)
    weight, bias = head.fuser_matrix()
    if branch_mask is not None:
        columns = torch.repeat_interleave(torch.tensor(branch_mask, dtype=weight.dtype), torch.tensor(head.channels))
        weight = weight * columns
    if classes is None:
        return F.conv2d(stacked, weight[:, :, None, None], bias)
    if classes.ndim == 1:
        return F.conv2d(stacked, weight[classes][:, :, None, None], bias[classes])
    return torch.einsum("bchw,bkc->bkhw", stacked, weight[classes]) + bias[classes][:, :, None, None]


def test_branch_is_conv_bn_skip_relu():
    head = TAMEHead([2], num_classes=1)
    _identity_branches(head)
    x = torch.tensor([[[[1.0, -3.0]], [[-0.5, 2.0]]]])  # (1, 2, 1, 2)
    # conv copies x, bn is identity, skip adds x again: relu(2x)
    expected = torch.relu(2 * x)
    torch.testing.assert_close(head.branch_outputs([x])[0], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "variant, expected",
    [
        ("no_skip", lambda x: torch.relu(x)),
        ("no_bn", lambda x: torch.relu(x)),
        ("sigmoid", lambda x: torch.sigmoid(2 * x)),
    ],
)
def test_variants(variant, expected):
    head = TAMEHead([2], num_classes=1, variant=variant)
    _identity_branches(head)
    x = torch.tensor([[[[1.0, -3.0]], [[-0.5, 2.0]]]])
    torch.testing.assert_close(head.branch_outputs([x])[0], expected(x), atol=1e-4, rtol=0)
    assert isinstance(head.branches[0].bn, torch.nn.Identity) == (not VARIANTS[variant].batch_norm)


def test_unknown_variant():
    with pytest.raises(CheckpointError, match="unknown head variant 'fancy'; choose one of tame, no_skip, no_bn, sigmoid"):
        TAMEHead([4], 10, variant="fancy")


def test_branch_outputs_keep_their_own_size_and_maps_come_at_the_first_capped_at_56():
    head = TAMEHead([2, 3, 4], 5).eval()
    feats = [torch.rand(1, 2, 112, 112), torch.rand(1, 3, 56, 56), torch.rand(1, 4, 28, 28)]
    outputs = head.branch_outputs(feats)
    assert [tuple(o.shape) for o in outputs] == [(1, 2, 112, 112), (1, 3, 56, 56), (1, 4, 28, 28)]
    assert head.fuse(outputs).shape == (1, 5, 56, 56)
    feats = [torch.rand(1, 2, 28, 28), torch.rand(1, 3, 14, 14), torch.rand(1, 4, 7, 7)]
    assert head(feats).shape == (1, 5, 28, 28)
    assert head.resolution((28, 112)) == (14, 56)  # non-square keeps its aspect ratio


def test_upsampling_is_bilinear_without_corner_alignment():
    head = TAMEHead([1, 1], 1)
    _identity_branches(head)
    with torch.no_grad():
        head.fuser.weight.copy_(torch.tensor([0.0, 1.0])[None, :, None, None])
        head.fuser.bias.zero_()
    small = torch.rand(1, 1, 3, 3)
    out = head([torch.zeros(1, 1, 6, 6), small])
    expected = F.interpolate(torch.relu(2 * small), size=(6, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


# --- fusing first gives the papers' maps --------------------------------------------------------
LAYOUTS = {
    "cnn, upsampled": ([3, 5, 7], [(12, 12), (6, 6), (3, 3)]),
    "cnn, first above the cap": ([3, 5], [(70, 60), (35, 30)]),  # the first branch is downsampled too
    "vit, one grid": ([6, 6, 6], [(14, 14), (14, 14), (14, 14)]),
    "non-square grid": ([4, 2], [(10, 16), (5, 8)]),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_fusing_per_branch_equals_the_papers_order(variant, layout):
    channels, sizes = LAYOUTS[layout]
    head = _randomise(TAMEHead(channels, 9, variant))
    torch.manual_seed(1)
    features = [torch.randn(2, c, *hw) for c, hw in zip(channels, sizes)]
    with torch.no_grad():
        outputs = head.branch_outputs(features)
        cases = [
            (None, None),
            (torch.tensor([6, 2, 2]), None),
            (torch.tensor([[1, 4], [5, 0]]), None),
            (None, [True] + [False] * (len(channels) - 1)),
            (torch.tensor([[8], [3]]), [False] + [True] * (len(channels) - 1)),
            (torch.tensor([7]), [False] * len(channels)),
        ]
        for classes, mask in cases:
            new = head.fuse(outputs, classes, mask)
            reference = papers_fuse(head, outputs, classes, mask)
            assert new.shape == reference.shape
            torch.testing.assert_close(new, reference, atol=1e-5, rtol=1e-5)


@pytest.fixture
def head_and_outputs():
    head = _randomise(TAMEHead([3, 5], 7))
    torch.manual_seed(0)
    outputs = head.branch_outputs([torch.rand(2, 3, 4, 4), torch.rand(2, 5, 2, 2)])
    return head, outputs


def test_class_selection_computes_the_same_rows(head_and_outputs):
    head, outputs = head_and_outputs
    full = head.fuse(outputs)
    assert full.shape == (2, 7, 4, 4)
    shared = head.fuse(outputs, torch.tensor([6, 2]))
    torch.testing.assert_close(shared, full[:, [6, 2]])
    per_image = head.fuse(outputs, torch.tensor([[1, 4], [5, 0]]))
    torch.testing.assert_close(per_image[0], full[0, [1, 4]])
    torch.testing.assert_close(per_image[1], full[1, [5, 0]])
    with pytest.raises(ValueError, match=r"classes must be \(K,\) or \(B, K\) with B=2"):
        head.fuse(outputs, torch.tensor([[1], [2], [3]]))


def test_a_switched_off_branch_contributes_nothing(head_and_outputs):
    head, outputs = head_and_outputs
    masked = head.fuse(outputs, branch_mask=[True, False])
    zeroed = [outputs[0], torch.zeros_like(outputs[1])]
    torch.testing.assert_close(masked, head.fuse(zeroed))
    only_bias = head.fuse(outputs, branch_mask=[False, False])
    assert only_bias.shape == (2, 7, 4, 4)
    torch.testing.assert_close(only_bias, head.fuser.bias[None, :, None, None].expand_as(only_bias))
    with pytest.raises(LayerError, match="^branch mask has 1 flag but the head has 2 branches$"):
        head.fuse(outputs, branch_mask=[True])


def test_branch_contributions_add_up_to_the_map(head_and_outputs):
    head, outputs = head_and_outputs
    classes = torch.tensor([[3], [6]])
    terms = head.branch_contributions(outputs, classes)
    assert terms.shape == (2, 1, 2, 4, 4)
    total = terms.sum(dim=2) + head.fuser.bias[classes][:, :, None, None]
    torch.testing.assert_close(total, head.fuse(outputs, classes), atol=1e-5, rtol=0)
    shared = head.branch_contributions(outputs, torch.tensor([3]))
    torch.testing.assert_close(shared[0], terms[0])


def test_gradients_match_the_papers_order():
    """Training goes through the same per-branch path: its gradients are the papers' gradients."""
    grads = []
    for fuse in (lambda h, o, c: h.fuse(o, c), papers_fuse):
        head = _randomise(TAMEHead([3, 5], 7)).train()
        torch.manual_seed(2)
        features = [torch.rand(4, 3, 8, 8), torch.rand(4, 5, 4, 4)]
        maps = fuse(head, head.branch_outputs(features), torch.tensor([1, 5, 5, 0]))
        (maps.sigmoid() * torch.linspace(0, 1, maps.numel()).view_as(maps)).sum().backward()
        grads.append({name: p.grad.clone() for name, p in head.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)


def test_wrong_feature_channels_are_named():
    head = TAMEHead([3, 5], 7)
    with pytest.raises(CheckpointError, match="expects 5 channels but the layer gives 6"):
        head.branch_outputs([torch.rand(1, 3, 4, 4), torch.rand(1, 6, 2, 2)])
    with pytest.raises(CheckpointError, match="head has 2 branches but got 1 feature maps"):
        head.branch_outputs([torch.rand(1, 3, 4, 4)])


# --- the tied fuser ---------------------------------------------------------------------------
def _tied(residual: bool = False, seed: int = 0) -> TiedTAMEHead:
    generator = torch.Generator().manual_seed(seed)
    class_weight, class_bias = torch.randn(11, 6, generator=generator), torch.randn(11, generator=generator)
    head = TiedTAMEHead([3, 5], class_weight, class_bias, residual=residual)
    return _randomise(head, seed)


def test_tied_rows_are_the_classifier_rows_times_the_shared_projection():
    head = _tied()
    fuser = head.fuser
    weight, bias = head.fuser_rows(torch.tensor([4, 9]))
    torch.testing.assert_close(weight, fuser.class_weight[[4, 9]] @ fuser.projection)
    expected_bias = fuser.class_weight[[4, 9]] @ fuser.offset + fuser.bias_scale * fuser.class_bias[[4, 9]] + fuser.shift
    torch.testing.assert_close(bias, expected_bias)
    assert {name for name, p in head.fuser.named_parameters()} == {"projection", "offset", "bias_scale", "shift"}
    assert not any(b.requires_grad for b in head.fuser.buffers())  # the classifier's rows never train


def test_every_image_trains_every_class_through_the_tied_fuser():
    head = _tied().train()
    features = [torch.rand(2, 3, 4, 4), torch.rand(2, 5, 2, 2)]
    head(features, torch.tensor([1])).sum().backward()  # one class's maps only
    assert head.fuser.projection.grad.abs().sum() > 0
    before = head.fuser_rows(torch.tensor([7]))[0].detach().clone()
    with torch.no_grad():
        head.fuser.projection -= 0.1 * head.fuser.projection.grad
    assert (head.fuser_rows(torch.tensor([7]))[0] - before).abs().max() > 1e-4  # class 7 moved too


@pytest.mark.parametrize("residual", [False, True])
def test_materialising_the_tied_fuser_gives_identical_maps(residual):
    head = _tied(residual)
    if residual:
        with torch.no_grad():
            head.fuser.residual.normal_()
    plain = head.materialize()
    assert type(plain) is TAMEHead and plain.config() == head.config()
    features = [torch.rand(2, 3, 4, 4), torch.rand(2, 5, 2, 2)]
    with torch.no_grad():
        for classes in (None, torch.tensor([3, 10]), torch.tensor([[0], [7]])):
            torch.testing.assert_close(plain(features, classes), head(features, classes), atol=1e-5, rtol=1e-5)
        mask = [False, True]
        torch.testing.assert_close(plain(features, branch_mask=mask), head(features, branch_mask=mask), atol=1e-5, rtol=1e-5)
