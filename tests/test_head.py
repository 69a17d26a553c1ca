"""The attention head: branch maths, variants, resolution, class selection, branch masks and contributions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tame_core.errors import CheckpointError
from tame_core.head import VARIANTS, TAMEHead


def _identity_branches(head: TAMEHead) -> None:
    """1x1 convs that copy their input, batch norms that do nothing (eval mode, unit statistics)."""
    for branch in head.branches:
        channels = branch.conv.weight.shape[0]
        branch.conv.weight.data = torch.eye(channels)[:, :, None, None]
        branch.conv.bias.data.zero_()
    head.eval()


def test_branch_is_conv_bn_skip_relu():
    head = TAMEHead([2], num_classes=1)
    _identity_branches(head)
    x = torch.tensor([[[[1.0, -3.0]], [[-0.5, 2.0]]]])  # (1, 2, 1, 2)
    # conv copies x, bn is identity, skip adds x again: relu(2x)
    expected = torch.relu(2 * x)
    torch.testing.assert_close(head.branch_features([x]), expected, atol=1e-4, rtol=0)


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
    torch.testing.assert_close(head.branch_features([x]), expected(x), atol=1e-4, rtol=0)
    assert isinstance(head.branches[0].bn, torch.nn.Identity) == (not VARIANTS[variant].batch_norm)


def test_unknown_variant():
    with pytest.raises(CheckpointError, match="unknown head variant 'fancy'; choose one of tame, no_skip, no_bn, sigmoid"):
        TAMEHead([4], 10, variant="fancy")


def test_resolution_is_the_first_branchs_capped_at_56():
    head = TAMEHead([2, 3, 4], 5)
    feats = [torch.rand(1, 2, 112, 112), torch.rand(1, 3, 56, 56), torch.rand(1, 4, 28, 28)]
    assert head.branch_features(feats).shape == (1, 9, 56, 56)
    feats = [torch.rand(1, 2, 28, 28), torch.rand(1, 3, 14, 14), torch.rand(1, 4, 7, 7)]
    assert head.branch_features(feats).shape == (1, 9, 28, 28)
    assert head.resolution((28, 112)) == (14, 56)  # non-square keeps its aspect ratio


def test_upsampling_is_bilinear_without_corner_alignment():
    head = TAMEHead([1, 1], 1)
    _identity_branches(head)
    small = torch.rand(1, 1, 3, 3)
    out = head.branch_features([torch.zeros(1, 1, 6, 6), small])
    expected = F.interpolate(torch.relu(2 * small), size=(6, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, 1:], expected, atol=1e-4, rtol=0)


@pytest.fixture
def head_and_features():
    torch.manual_seed(0)
    head = TAMEHead([3, 5], 7).eval()
    features = head.branch_features([torch.rand(2, 3, 4, 4), torch.rand(2, 5, 2, 2)])
    return head, features


def test_class_selection_computes_the_same_rows(head_and_features):
    head, features = head_and_features
    full = head.fuse(features)
    assert full.shape == (2, 7, 4, 4)
    shared = head.fuse(features, torch.tensor([6, 2]))
    torch.testing.assert_close(shared, full[:, [6, 2]])
    per_image = head.fuse(features, torch.tensor([[1, 4], [5, 0]]))
    torch.testing.assert_close(per_image[0], full[0, [1, 4]])
    torch.testing.assert_close(per_image[1], full[1, [5, 0]])


def test_a_switched_off_branch_contributes_nothing(head_and_features):
    head, features = head_and_features
    masked = head.fuse(features, branch_mask=[True, False])
    zeroed = features.clone()
    zeroed[:, 3:] = 0
    torch.testing.assert_close(masked, head.fuse(zeroed))
    only_bias = head.fuse(features, branch_mask=[False, False])
    torch.testing.assert_close(only_bias, head.fuser.bias[None, :, None, None].expand_as(only_bias))
    with pytest.raises(ValueError, match="branch mask needs 2 flags"):
        head.fuse(features, branch_mask=[True])


def test_branch_contributions_add_up_to_the_map(head_and_features):
    head, features = head_and_features
    classes = torch.tensor([[3], [6]])
    terms = head.branch_contributions(features, classes)
    assert terms.shape == (2, 1, 2, 4, 4)
    total = terms.sum(dim=2) + head.fuser.bias[classes][:, :, None, None]
    torch.testing.assert_close(total, head.fuse(features, classes), atol=1e-5, rtol=0)


def test_wrong_feature_channels_are_named():
    head = TAMEHead([3, 5], 7)
    with pytest.raises(CheckpointError, match="expects 5 channels but the layer gives 6"):
        head.branch_features([torch.rand(1, 3, 4, 4), torch.rand(1, 6, 2, 2)])
    with pytest.raises(CheckpointError, match="head has 2 branches but got 1 feature maps"):
        head.branch_features([torch.rand(1, 3, 4, 4)])
