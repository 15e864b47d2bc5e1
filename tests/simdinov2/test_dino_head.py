"""Tests of `simdinov2.layers.DINOHead`: SimDINO mode (normalised bottleneck, no prototypes) and DINO mode
(weight-normalised prototype layer with DINO checkpoint names)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from simdinov2.layers import DINOHead, WeightNormLinear

torch.set_num_threads(1)


def test_simdino_head_outputs_unit_norm_bottleneck_without_prototypes():
    torch.manual_seed(0)
    head = DINOHead(192, out_dim=999, hidden_dim=64, bottleneck_dim=32, remove_last_layer=True)
    out = head(torch.randn(8, 192))
    assert out.shape == (8, 32)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(8))
    assert head.last_layer is None
    assert not any(k.startswith("last_layer") for k in head.state_dict())
    assert head.out_dim == 32


def test_simdino_head_without_normalize_is_the_plain_mlp():
    torch.manual_seed(0)
    head = DINOHead(16, hidden_dim=32, bottleneck_dim=8, remove_last_layer=True, normalize=False)
    x = torch.randn(4, 16)
    torch.testing.assert_close(head(x), head.mlp(x))


def test_mlp_layout_and_init():
    head = DINOHead(192, out_dim=100, hidden_dim=64, bottleneck_dim=32, nlayers=3)
    names = [k for k in head.state_dict() if k.startswith("mlp.")]
    assert names == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight", "mlp.4.bias"]
    assert isinstance(head.mlp[1], nn.GELU)
    for layer in (head.mlp[0], head.mlp[2], head.mlp[4]):
        assert torch.count_nonzero(layer.bias) == 0
        assert 0.015 < layer.weight.std().item() < 0.025  # trunc_normal(std=0.02)
    with_bn = DINOHead(192, hidden_dim=64, bottleneck_dim=32, nlayers=3, use_bn=True, remove_last_layer=True)
    assert isinstance(with_bn.mlp[1], nn.BatchNorm1d) and isinstance(with_bn.mlp[4], nn.BatchNorm1d)
    assert with_bn(torch.randn(4, 192)).shape == (4, 32)
    single = DINOHead(192, bottleneck_dim=32, nlayers=1, remove_last_layer=True)
    assert isinstance(single.mlp, nn.Linear)
    assert DINOHead(192, hidden_dim=64, bottleneck_dim=32, nlayers=2).mlp[2].in_features == 64
    with pytest.raises(ValueError, match="nlayers"):
        DINOHead(192, nlayers=0)


def test_dino_head_last_layer_names_and_frozen_norm():
    torch.manual_seed(0)
    head = DINOHead(192, out_dim=100, hidden_dim=64, bottleneck_dim=32, norm_last_layer=True)
    sd = head.state_dict()
    assert sd["last_layer.weight_g"].shape == (100, 1)
    assert sd["last_layer.weight_v"].shape == (100, 32)
    assert torch.equal(sd["last_layer.weight_g"], torch.ones(100, 1))
    assert not head.last_layer.weight_g.requires_grad
    assert head.last_layer.weight_v.requires_grad
    x = torch.randn(4, 192)
    out = head(x)
    assert out.shape == (4, 100)
    # Prototype scores = normalised bottleneck times unit-norm prototypes.
    z = F.normalize(head.mlp(x), dim=-1)
    prototypes = F.normalize(head.last_layer.weight_v, dim=-1)
    torch.testing.assert_close(out, z @ prototypes.T)
    out.sum().backward()
    assert head.last_layer.weight_g.grad is None and head.last_layer.weight_v.grad is not None

    trainable = DINOHead(192, out_dim=100, hidden_dim=64, bottleneck_dim=32, norm_last_layer=False)
    assert trainable.last_layer.weight_g.requires_grad


def test_weight_norm_linear_matches_torch_weight_norm_checkpoints():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = nn.utils.weight_norm(nn.Linear(8, 5, bias=False))
    with torch.no_grad():
        reference.weight_g.mul_(torch.rand(5, 1) + 0.5)
    ours = WeightNormLinear(8, 5)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(3, 8)
    torch.testing.assert_close(ours(x), reference(x))

    parametrized = nn.utils.parametrizations.weight_norm(nn.Linear(8, 5, bias=False))
    ours_again = WeightNormLinear(8, 5)
    ours_again.load_state_dict(parametrized.state_dict(), strict=True)
    torch.testing.assert_close(ours_again(x), parametrized(x))
