"""Tests of the shared ViT (`simdinov2.models`, `simdinov2.layers`): shapes, crops, masks, registers,
LayerScale, SwiGLU, checkpoint layouts (flat / chunked / DINO v1), probing helpers and attention math."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from simdinov2.layers import Attention, add_residual_on_batch_subset, drop_path
from simdinov2.models import (
    ARCHS,
    DinoVisionTransformer,
    build_model,
    build_vit,
    remap_block_keys,
    vit_tiny,
)

torch.set_num_threads(1)


def tiny(**kwargs) -> DinoVisionTransformer:
    """vit_tiny at patch 4 on 28 px images: the cheapest realistic model."""
    kwargs.setdefault("patch_size", 4)
    kwargs.setdefault("img_size", 28)
    return vit_tiny(**kwargs)


# ---------------------------------------------------------------------- shapes
def test_forward_and_forward_features_shapes():
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        cls = model(x)
        feats = model.forward_features(x)
    assert cls.shape == (2, 192)
    assert feats["x_norm_clstoken"].shape == (2, 192)
    assert feats["x_norm_regtokens"].shape == (2, 0, 192)
    assert feats["x_norm_patchtokens"].shape == (2, 49, 192)
    assert feats["x_prenorm"].shape == (2, 50, 192)
    assert feats["masks"] is None
    torch.testing.assert_close(cls, feats["x_norm_clstoken"])
    torch.testing.assert_close(model.norm(feats["x_prenorm"])[:, 0], cls)
    for name, value in (
        ("embed_dim", 192),
        ("num_features", 192),
        ("patch_size", 4),
        ("num_heads", 3),
        ("n_blocks", 12),
        ("depth", 12),
        ("num_register_tokens", 0),
    ):
        assert getattr(model, name) == value


@pytest.mark.parametrize("size", [224, 96])
def test_vit_tiny_patch16_global_and_local_crops(size):
    model = vit_tiny(patch_size=16).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, size, size))
    assert feats["x_norm_patchtokens"].shape == (1, (size // 16) ** 2, 192)


def test_vit_small_runs():
    model = ARCHS["vit_small"](patch_size=8, img_size=32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 384)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "arch, low, high, width, depth",
    [
        ("vit_base", 85e6, 87e6, 768, 12),
        ("vit_large", 302e6, 306e6, 1024, 24),
        ("vit_giant2", 1.1e9, 1.2e9, 1536, 40),
    ],
)
def test_big_archs_build_on_meta(arch, low, high, width, depth):
    with torch.device("meta"):
        model = ARCHS[arch](patch_size=16)
    n_params = sum(p.numel() for p in model.parameters())
    assert low < n_params < high
    assert model.embed_dim == width and model.depth == depth
    assert model.pos_embed.is_meta
    names = set(model.state_dict())
    if arch == "vit_giant2":  # DINOv2 ViT-g uses SwiGLU with 2/3-width hidden layer rounded to 8
        assert f"blocks.{depth - 1}.mlp.w12.weight" in names
        assert model.state_dict()["blocks.0.mlp.w3.weight"].shape == (1536, 4096)
    else:
        assert f"blocks.{depth - 1}.mlp.fc1.weight" in names


def test_unknown_arch_names_valid_ones():
    with pytest.raises(ValueError, match="vit_small"):
        build_vit("vit_huge", 16)
    with pytest.raises(ValueError, match="ffn_layer"):
        tiny(ffn_layer="moe")


# ---------------------------------------------------------------------- crops / position embedding
@pytest.mark.parametrize("img_size", [224, 28])
def test_variable_crop_sizes_at_patch4(img_size):
    model = tiny(img_size=img_size).eval()
    with torch.no_grad():
        for crop, grid in ((28, 7), (12, 3)):
            feats = model.forward_features(torch.randn(2, 3, crop, crop))
            assert feats["x_norm_patchtokens"].shape == (2, grid * grid, 192)
            pos = model.interpolate_pos_encoding(torch.zeros(1, 1, 192), crop, crop)
            assert pos.shape == (1, 1 + grid * grid, 192)


def test_pos_embed_unchanged_when_grid_matches():
    model = tiny()
    assert model.interpolate_pos_encoding(torch.zeros(1, 50, 192), 28, 28) is model.pos_embed


def test_pos_embed_interpolation_keeps_row_column_orientation():
    """A position embedding that varies only along rows must still vary only along rows after resizing
    to a non-square grid (catches a height/width swap)."""
    model = tiny(img_size=32, interpolate_offset=0.0)
    side = 8
    rows = torch.arange(side, dtype=torch.float32).repeat_interleave(side)  # row index of each patch
    with torch.no_grad():
        model.pos_embed.zero_()
        model.pos_embed[0, 1:, 0] = rows
    pos = model.interpolate_pos_encoding(torch.zeros(1, 1, 192), 28, 12)  # 7 rows x 3 cols
    grid = pos[0, 1:, 0].reshape(7, 3)
    torch.testing.assert_close(grid, grid[:, :1].expand(7, 3))  # constant along columns
    assert (grid[1:, 0] > grid[:-1, 0]).all()  # increasing down the rows
    # The default offset path (DINO's scale-factor kludge) gives the same grid sizes.
    model.interpolate_offset = 0.1
    assert model.interpolate_pos_encoding(torch.zeros(1, 1, 192), 28, 12).shape == (1, 22, 192)


def test_antialias_option_changes_downsampling():
    model = tiny(img_size=224)
    plain = model.interpolate_pos_encoding(torch.zeros(1, 1, 192), 12, 12)
    model.interpolate_antialias = True
    smooth = model.interpolate_pos_encoding(torch.zeros(1, 1, 192), 12, 12)
    assert plain.shape == smooth.shape and not torch.allclose(plain, smooth)


# ---------------------------------------------------------------------- list input, masks, registers
def test_list_input_matches_per_tensor_calls():
    torch.manual_seed(0)
    model = tiny(num_register_tokens=2).eval()
    globals_, locals_ = torch.randn(2, 3, 28, 28), torch.randn(4, 3, 12, 12)
    masks = torch.rand(2, 49) > 0.5
    with torch.no_grad():
        outs = model.forward_features([globals_, locals_], [masks, None])
        single = model.forward_features(globals_, masks)
        cls_list = model([globals_, locals_])
    assert isinstance(outs, list) and len(outs) == 2
    assert outs[0]["x_norm_patchtokens"].shape == (2, 49, 192)
    assert outs[1]["x_norm_patchtokens"].shape == (4, 9, 192)
    assert outs[0]["masks"] is masks and outs[1]["masks"] is None
    torch.testing.assert_close(outs[0]["x_norm_clstoken"], single["x_norm_clstoken"])
    assert [c.shape for c in cls_list] == [(2, 192), (4, 192)]
    with pytest.raises(ValueError, match="masks"):
        model.forward_features([globals_, locals_], [masks])


def test_masked_patches_get_the_mask_token_before_pos_embed():
    torch.manual_seed(0)
    model = tiny(num_register_tokens=3)
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.randn(2, 3, 28, 28)
    masks = torch.zeros(2, 49, dtype=torch.bool)
    masks[0, :10] = True
    masks[1, 20:45] = True
    with torch.no_grad():
        tokens = model.prepare_tokens_with_masks(x, masks)
        pos = model.interpolate_pos_encoding(tokens, 28, 28)
        patches = tokens[:, 1 + 3 :] - pos[:, 1:]
        embedded = model.patch_embed(x)
    expected_masked = model.mask_token.expand(int(masks.sum()), -1)
    torch.testing.assert_close(patches[masks], expected_masked, atol=1e-5, rtol=0)
    torch.testing.assert_close(patches[~masks], embedded[~masks], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        tokens[:, 0] - pos[:, 0], model.cls_token[:, 0].expand(2, -1), atol=1e-6, rtol=0
    )
    with pytest.raises(ValueError, match="shape"):
        model.prepare_tokens_with_masks(x, masks[:, :10])


def test_register_tokens_follow_cls_without_pos_embed():
    model = tiny(num_register_tokens=4)
    with torch.no_grad():
        model.register_tokens.normal_()
        tokens = model.prepare_tokens_with_masks(torch.randn(2, 3, 28, 28))
        feats = model.forward_features(torch.randn(2, 3, 28, 28))
    assert tokens.shape == (2, 1 + 4 + 49, 192)
    torch.testing.assert_close(tokens[:, 1:5], model.register_tokens.expand(2, -1, -1))
    assert feats["x_norm_regtokens"].shape == (2, 4, 192)
    assert feats["x_norm_patchtokens"].shape == (2, 49, 192)
    assert "register_tokens" in model.state_dict()
    assert "register_tokens" not in tiny().state_dict()


# ---------------------------------------------------------------------- LayerScale, SwiGLU, drop path
def test_layerscale_on_and_off():
    on, off = tiny(init_values=0.1), tiny(init_values=None)
    assert torch.allclose(on.state_dict()["blocks.3.ls1.gamma"], torch.full((192,), 0.1))
    assert "blocks.3.ls2.gamma" in on.state_dict()
    assert not any(".ls" in k for k in off.state_dict())
    assert not any(".ls" in k for k in tiny(init_values=0).state_dict())
    # With every gamma at zero each block is the identity: the trunk output equals the input tokens.
    with torch.no_grad():
        for name, p in on.named_parameters():
            if name.endswith("gamma"):
                p.zero_()
        x = torch.randn(2, 3, 28, 28)
        torch.testing.assert_close(on.forward_features(x)["x_prenorm"], on.prepare_tokens_with_masks(x))


@pytest.mark.parametrize("ffn", ["swiglu", "swiglufused"])
def test_swiglu_ffn(ffn):
    model = tiny(ffn_layer=ffn).eval()
    sd = model.state_dict()
    hidden = (int(192 * 4 * 2 / 3) + 7) // 8 * 8
    assert sd["blocks.0.mlp.w12.weight"].shape == (2 * hidden, 192)
    assert sd["blocks.0.mlp.w3.weight"].shape == (192, hidden)
    assert not any("fc1" in k for k in sd)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 12, 12)).shape == (2, 192)


def test_drop_path_rates_linear_or_uniform():
    linear = tiny(drop_path_rate=0.2)
    rates = [blk.sample_drop_ratio for blk in linear.block_list()]
    assert rates[0] == 0.0 and math.isclose(rates[-1], 0.2)
    assert all(b > a for a, b in itertools.pairwise(rates))
    uniform = tiny(drop_path_rate=0.2, drop_path_uniform=True)
    assert all(math.isclose(blk.sample_drop_ratio, 0.2) for blk in uniform.block_list())


def test_stochastic_depth_only_in_training():
    torch.manual_seed(0)
    model = tiny(drop_path_rate=0.5, drop_path_uniform=True)
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        model.eval()
        a, b = model(x), model(x)
        model.train()
        c = model(x)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_batch_subset_residual_is_rescaled():
    torch.manual_seed(0)
    x = torch.zeros(8, 3, 5)
    out = add_residual_on_batch_subset(x, lambda t: torch.ones_like(t), drop_ratio=0.75)
    touched = out.flatten(1).abs().sum(1) > 0
    assert int(touched.sum()) == 2  # int(8 * 0.25)
    assert torch.allclose(out[touched], torch.full_like(out[touched], 4.0))  # scaled by 8 / 2


def test_drop_path_keeps_expectation():
    torch.manual_seed(0)
    y = drop_path(torch.ones(20000, 1), 0.3, training=True)
    values = torch.unique(y)
    assert len(values) == 2 and values[0] == 0.0 and math.isclose(values[1].item(), 1 / 0.7, rel_tol=1e-6)
    assert abs(y.mean().item() - 1.0) < 0.03
    assert torch.equal(drop_path(torch.ones(3, 1), 0.3, training=False), torch.ones(3, 1))


# ---------------------------------------------------------------------- checkpoint layouts
def _same_seed_models(**kwargs):
    common = dict(num_register_tokens=2, init_values=0.1)
    return {chunks: tiny(block_chunks=chunks, **common, **kwargs).eval() for chunks in (0, 3, 4)}


def test_chunked_block_names_use_global_index():
    names = set(tiny(block_chunks=4).state_dict())
    assert "blocks.1.3.attn.qkv.weight" in names  # block 3 is the first of chunk 1 (chunk size 3)
    assert "blocks.3.11.mlp.fc2.bias" in names
    assert not any(k.startswith("blocks.1.0.") for k in names)  # identity padding has no parameters
    assert "blocks.11.norm1.weight" in tiny().state_dict()
    assert tiny(block_chunks=4).block_names()[5] == "blocks.1.5"


def test_flat_and_chunked_state_dicts_load_into_each_other():
    torch.manual_seed(0)
    models = _same_seed_models()
    x = torch.randn(2, 3, 28, 28)
    for src_chunks, src in models.items():
        with torch.no_grad():
            reference = src(x)
        sd = src.state_dict()
        for dst_chunks in models:
            if dst_chunks == src_chunks:
                continue
            fresh = tiny(block_chunks=dst_chunks, num_register_tokens=2, init_values=0.1).eval()
            fresh.load_state_dict(remap_block_keys(sd, fresh), strict=True)
            with torch.no_grad():
                torch.testing.assert_close(fresh(x), reference, rtol=0, atol=0)
    flat_sd = models[0].state_dict()
    remap_block_keys(flat_sd, models[4])
    assert "blocks.0.norm1.weight" in flat_sd  # the input dict was not modified


def test_dino_v1_state_dict_loads_strict_into_v1_build():
    """Keys and shapes of a DINO v1 ViT-S/16 checkpoint (no mask token, no registers, no LayerScale)."""
    dim, hidden, depth, patch = 384, 1536, 12, 16
    v1_shapes = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, (224 // patch) ** 2 + 1, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    for i in range(depth):
        for name, shape in (
            ("norm1.weight", (dim,)),
            ("norm1.bias", (dim,)),
            ("attn.qkv.weight", (3 * dim, dim)),
            ("attn.qkv.bias", (3 * dim,)),
            ("attn.proj.weight", (dim, dim)),
            ("attn.proj.bias", (dim,)),
            ("norm2.weight", (dim,)),
            ("norm2.bias", (dim,)),
            ("mlp.fc1.weight", (hidden, dim)),
            ("mlp.fc1.bias", (hidden,)),
            ("mlp.fc2.weight", (dim, hidden)),
            ("mlp.fc2.bias", (dim,)),
        ):
            v1_shapes[f"blocks.{i}.{name}"] = shape
    torch.manual_seed(0)
    state = {k: torch.randn(s) * 0.02 for k, s in v1_shapes.items()}
    model = build_vit("vit_small", 16, v1=True)
    assert model.mask_token is None
    model.load_state_dict(state, strict=True)
    torch.testing.assert_close(model.cls_token, state["cls_token"])
    chunked = build_vit("vit_small", 16, v1=True, block_chunks=4)
    chunked.load_state_dict(remap_block_keys(state, chunked), strict=True)
    with pytest.raises(ValueError, match="use_mask_token"):
        model.prepare_tokens_with_masks(torch.randn(1, 3, 32, 32), torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="v1"):
        build_vit("vit_small", 16, v1=True, num_register_tokens=4)


# ---------------------------------------------------------------------- probing helpers
def test_get_intermediate_layers_shapes_and_chunked_equivalence():
    torch.manual_seed(0)
    models = _same_seed_models()
    flat, chunked = models[0], models[4]
    chunked.load_state_dict(remap_block_keys(flat.state_dict(), chunked))
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        last4 = flat.get_intermediate_layers(x, n=4)
        assert len(last4) == 4 and all(o.shape == (2, 49, 192) for o in last4)
        torch.testing.assert_close(last4[-1], flat.forward_features(x)["x_norm_patchtokens"])
        for a, b in zip(last4, chunked.get_intermediate_layers(x, n=4), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        maps = flat.get_intermediate_layers(x, n=[0, 5], reshape=True)
        assert [m.shape for m in maps] == [(2, 192, 7, 7)] * 2
        pairs = flat.get_intermediate_layers(x, n=1, return_class_token=True)
        assert pairs[0][0].shape == (2, 49, 192) and pairs[0][1].shape == (2, 192)
        torch.testing.assert_close(pairs[0][1], flat(x))
        raw = flat.get_intermediate_layers(x, n=1, norm=False)
        torch.testing.assert_close(raw[0], flat.forward_features(x)["x_prenorm"][:, 3:])
    with pytest.raises(ValueError):
        flat.get_intermediate_layers(x, n=13)


def test_get_last_selfattention_rows_sum_to_one():
    torch.manual_seed(0)
    model = tiny(num_register_tokens=2, block_chunks=4).eval()
    with torch.no_grad():
        attn = model.get_last_selfattention(torch.randn(2, 3, 28, 28))
    assert attn.shape == (2, 3, 1 + 2 + 49, 1 + 2 + 49)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 52))
    assert (attn >= 0).all()


def test_attention_matches_explicit_softmax_reference():
    torch.manual_seed(0)
    attn = Attention(dim=64, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(3, 17, 64)
    with torch.no_grad():
        out = attn(x)
        # Reference: the DINO layout qkv(x) -> (3, heads, head_dim), softmax(QKᵀ/sqrt(d)) V.
        qkv = attn.qkv(x).reshape(3, 17, 3, 4, 16).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(16), dim=-1)
        expected = attn.proj((probs @ v).transpose(1, 2).reshape(3, 17, 64))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(attn.attention_probs(x), probs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("tokens", [10, 50])
def test_cpu_bf16_explicit_attention_matches_sdpa(tokens, monkeypatch):
    """Under CPU bf16 autocast short sequences take the explicit softmax path (faster there); it must give
    what SDPA gives, forward and backward, to bf16 accuracy."""
    from simdinov2.layers import attention as attention_module

    torch.manual_seed(0)
    attn = Attention(dim=192, num_heads=3, qkv_bias=True)
    x = torch.randn(8, tokens, 192)
    results = {}
    for name, limit in (("explicit", attention_module.EXPLICIT_CPU_MAX_TOKENS), ("sdpa", 0)):
        monkeypatch.setattr(attention_module, "EXPLICIT_CPU_MAX_TOKENS", limit)
        assert attention_module._use_explicit_attention(
            torch.empty(1, 1, tokens, 8, dtype=torch.bfloat16)
        ) == (name == "explicit")
        attn.zero_grad()
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attn(xi)
        out.float().square().mean().backward()
        results[name] = (out.float(), xi.grad.clone(), attn.qkv.weight.grad.clone())
    for got, want in zip(results["explicit"], results["sdpa"], strict=True):
        assert (got - want).norm() / want.norm() < 2e-2
    assert not attention_module._use_explicit_attention(torch.empty(1, 1, 10, 8))  # fp32 keeps SDPA
    assert not attention_module._use_explicit_attention(torch.empty(1, 1, 2000, 8, dtype=torch.bfloat16))


# ---------------------------------------------------------------------- config builder
def test_build_model_from_config_node():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create(
        {
            "arch": "vit_tiny",
            "patch_size": 4,
            "drop_path_rate": 0.2,
            "layerscale": 0.1,
            "ffn_layer": "mlp",
            "block_chunks": 4,
            "qkv_bias": True,
            "proj_bias": True,
            "ffn_bias": True,
            "num_register_tokens": 4,
            "interpolate_offset": 0.1,
            "interpolate_antialias": False,
            "drop_path_uniform": False,
        }
    )
    student, teacher, embed_dim = build_model(cfg, img_size=28)
    assert embed_dim == 192 and student.num_register_tokens == 4 and teacher.chunked_blocks
    assert max(b.sample_drop_ratio for b in student.block_list()) == pytest.approx(0.2)
    assert max(b.sample_drop_ratio for b in teacher.block_list()) == 0.0
    assert set(student.state_dict()) == set(teacher.state_dict())
    assert student.pos_embed.shape == (1, 50, 192)
    only_teacher, dim = build_model({"arch": "vit_tiny", "patch_size": 4}, only_teacher=True, img_size=28)
    assert isinstance(only_teacher, DinoVisionTransformer) and dim == 192
    with pytest.raises(ValueError, match="valid archs"):
        build_model({"arch": "resnet50"})


# ---------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_forward_on_cuda():
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = tiny(num_register_tokens=4, init_values=0.1, block_chunks=4, drop_path_rate=0.2).to(device)
    x = [torch.randn(2, 3, 28, 28, device=device), torch.randn(4, 3, 12, 12, device=device)]
    masks = [torch.rand(2, 49, device=device) > 0.5, None]
    qkv_dtypes = []
    hook = model.block_list()[-1].attn.qkv.register_forward_hook(lambda m, i, o: qkv_dtypes.append(o.dtype))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outs = model(x, masks, is_training=True)
        loss = sum(o["x_norm_clstoken"].float().pow(2).mean() for o in outs)
    loss.backward()
    hook.remove()
    assert qkv_dtypes == [torch.bfloat16, torch.bfloat16]  # attention really ran in bf16 for both crop sizes
    assert all(torch.isfinite(o["x_norm_patchtokens"].float()).all() for o in outs)
    assert model.pos_embed.grad is not None and torch.isfinite(model.pos_embed.grad).all()
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        reference = model(x[0]).float()
    with torch.no_grad():
        full = model(x[0])
    torch.testing.assert_close(reference, full, atol=0.1, rtol=0.05)
    attn = model.get_last_selfattention(x[0])
    torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn.sum(-1)))


def test_cls_token_init_is_each_trees_own():
    """v1 (DINO): CLS token trunc-normal(std 0.02); v2 (DINOv2): normal(std 1e-6)."""
    torch.manual_seed(0)
    v1 = build_vit("vit_small", 16, v1=True)
    v2 = build_vit("vit_small", 16)
    assert v1.cls_token_init == "dino" and v2.cls_token_init == "dinov2"
    assert 0.01 < float(v1.cls_token.std()) < 0.03 and float(v1.cls_token.abs().max()) <= 2.0
    assert float(v2.cls_token.std()) < 1e-5
    with pytest.raises(ValueError, match="cls_token_init"):
        vit_tiny(cls_token_init="zeros")
