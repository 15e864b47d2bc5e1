"""Tests of simdinov2.loss: the coding-rate objective (against closed forms and a plain float64
double-loop implementation written here), its precision and robustness, and the DINO / DINOv2
baselines."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from simdinov2.loss import CosinePatchLoss, DINOLoss, KoLeoLoss, MCRLoss, coding_rate, iBOTPatchLoss


def unit_views(n_views: int, m: int, p: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n_views, m, p, generator=gen, dtype=torch.float64), dim=-1).to(dtype)


def loop_reference(student, teacher, eps, coeff, expa_type, world_size=1):
    """Upstream SimDINO's loss written out literally in float64: minus `coeff` times the mean cosine
    similarity of each teacher global view to every other student view, minus γ times the mean coding rate
    ½ logdet(I + p/(m·N·eps) Z Zᵀ) of the two global views, γ = (p + N·m) / (p·N·m) for N ranks of m samples.
    Python loops over views and samples, `torch.logdet`, no batching. Returns (loss, comp, expa,
    global_comp) as floats."""
    student = [s.detach().double() for s in student]
    teacher = [t.detach().double() for t in teacher]
    n_student = len(student)
    m, p = student[0].shape
    comp_sum, global_sum = 0.0, 0.0
    for i in range(2):
        for j in range(n_student):
            if i == j:
                continue
            pair = 0.0
            for b in range(m):
                t, s = teacher[i][b], student[j][b]
                pair += float(t @ s) / (float(t.norm()) * float(s.norm()))
            pair /= m
            comp_sum += pair
            if j < 2:
                global_sum += pair
    comp = comp_sum / (2 * n_student - min(2, n_student))
    global_comp = global_sum / 2
    rates = []
    for v in range(2):
        z = student[v] if expa_type == 0 else (student[v] + teacher[v]) / 2
        cov = torch.zeros(p, p, dtype=torch.float64)
        for b in range(m):
            cov += torch.outer(z[b], z[b])
        alpha = p / (m * world_size * eps)
        rates.append(0.5 * float(torch.logdet(torch.eye(p, dtype=torch.float64) + alpha * cov)))
    gamma = (p + world_size * m) / (p * world_size * m)
    expa = gamma * sum(rates) / 2
    return -coeff * comp - expa, comp, expa, global_comp


# ---------------------------------------------------------------------------------------------- MCR


@pytest.mark.parametrize(
    "n_views,m,p,eps,coeff,expa_type",
    [
        (2, 5, 4, 0.5, 1.0, 1),
        (2, 3, 8, 0.05, 1.0, 0),  # m < p: rank-deficient covariance
        (6, 7, 5, 0.05, 2.0, 1),
        (6, 4, 6, 1.3, 0.5, 0),
        (3, 9, 3, 0.2, 1.0, 1),
    ],
)
def test_mcr_matches_loop_reference(n_views, m, p, eps, coeff, expa_type):
    student = unit_views(n_views, m, p, seed=n_views * 100 + m)
    # Teacher = a perturbation of the student globals, so cosines are neither 0 nor 1.
    teacher = F.normalize(student[:2] + 0.7 * unit_views(2, m, p, seed=7), dim=-1)
    ref_loss, ref_comp, ref_expa, ref_global = loop_reference(
        list(student), list(teacher), eps, coeff, expa_type
    )
    for student_arg, teacher_arg in ((student, teacher), (list(student), list(teacher))):  # stacked and list
        loss, parts = MCRLoss(eps=eps, coeff=coeff, expa_type=expa_type)(student_arg, teacher_arg)
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
        assert parts["comp_loss"].item() == pytest.approx(ref_comp, rel=1e-5, abs=1e-6)
        assert parts["expa_loss"].item() == pytest.approx(ref_expa, rel=1e-5, abs=1e-6)
        assert parts["global_comp_loss"].item() == pytest.approx(ref_global, rel=1e-5, abs=1e-6)


def test_mcr_float64_matches_reference_tightly():
    student = unit_views(4, 6, 5, seed=3, dtype=torch.float64)
    teacher = unit_views(2, 6, 5, seed=4, dtype=torch.float64)
    loss, _ = MCRLoss(eps=0.3, coeff=1.5, expa_type=1)(student, teacher)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(loop_reference(student, teacher, 0.3, 1.5, 1)[0], rel=1e-12)


def test_identical_views_give_unit_compression():
    x = unit_views(1, 8, 6, seed=0)[0]
    loss, parts = MCRLoss()([x] * 5, [x, x])
    assert parts["comp_loss"].item() == pytest.approx(1.0, abs=1e-6)
    assert parts["global_comp_loss"].item() == pytest.approx(1.0, abs=1e-6)
    assert loss.item() == pytest.approx(-1.0 - parts["expa_loss"].item(), abs=1e-6)


@pytest.mark.parametrize("expa_type", [0, 1])
@pytest.mark.parametrize("eps", [0.5, 0.05])
def test_expansion_of_orthonormal_features_has_closed_form(expa_type, eps):
    # m = p and Z orthogonal (rows are unit vectors): ZᵀZ = I, so
    # R = ½·logdet((1 + α)·I) = ½·p·log(1 + α) with α = p/(m·eps) = 1/eps, and γ = (p + m)/(p·m) = 2/p,
    # hence expa = γ·R = log(1 + 1/eps) for either view. (With expa_type=1 and teacher = student, Z is unchanged.)
    p = 6
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    z = q.float()
    _, parts = MCRLoss(eps=eps, expa_type=expa_type)([z, z, z], [z, z])
    assert parts["expa_loss"].item() == pytest.approx(math.log(1 + 1 / eps), rel=1e-5)


def test_expansion_rank_m_when_fewer_samples_than_dims():
    # m < p orthonormal rows: ZᵀZ is a rank-m projection (eigenvalues 1 (×m) and 0), so
    # R = ½·m·log(1 + p/(m·eps)) and expa = γ·R with γ = (p + m)/(p·m).
    m, p, eps = 3, 8, 0.1
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    z = q[:m].float()  # m orthonormal rows in R^p
    _, parts = MCRLoss(eps=eps, expa_type=0)([z, z], [z, z])
    expected = (p + m) / (p * m) * 0.5 * m * math.log(1 + p / (m * eps))
    assert parts["expa_loss"].item() == pytest.approx(expected, rel=1e-5)
    # The standalone function (no γ) agrees with the same closed form, also batched over views.
    rates = coding_rate(torch.stack([z, z]), eps)
    assert torch.allclose(rates, torch.full((2,), 0.5 * m * math.log(1 + p / (m * eps))), rtol=1e-5)


def test_parts_are_detached_and_teacher_gets_no_gradient():
    student = unit_views(4, 5, 6, seed=5).requires_grad_()
    teacher = unit_views(2, 5, 6, seed=6).requires_grad_()
    loss, parts = MCRLoss()(student, teacher)
    assert all(not v.requires_grad for v in parts.values())
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert teacher.grad is None


@pytest.mark.parametrize("expa_type", [0, 1])
def test_gradcheck_float64(expa_type):
    teacher = unit_views(2, 3, 4, seed=11, dtype=torch.float64)
    student = unit_views(3, 3, 4, seed=12, dtype=torch.float64).requires_grad_()
    mcr = MCRLoss(eps=0.3, coeff=0.7, expa_type=expa_type)
    assert torch.autograd.gradcheck(lambda s: mcr(s, teacher)[0], (student,), eps=1e-6, atol=1e-6)


def test_bf16_inputs_and_autocast_give_float32_results():
    student = unit_views(4, 16, 12, seed=21)
    teacher = unit_views(2, 16, 12, seed=22)
    mcr = MCRLoss(eps=0.05)
    # bf16 inputs: the loss must be the float32 computation on the (rounded) bf16 values, not a bf16 one.
    loss_bf16, _ = mcr(student.bfloat16(), teacher.bfloat16())
    loss_ref, _ = mcr(student.bfloat16().float(), teacher.bfloat16().float())
    assert loss_bf16.dtype == torch.float32
    assert loss_bf16.item() == pytest.approx(loss_ref.item(), rel=1e-6, abs=1e-6)
    # float32 inputs under bf16 autocast: autocast must not leak into the matmuls.
    loss_fp32, _ = mcr(student, teacher)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_autocast, _ = mcr(student, teacher)
    assert loss_autocast.dtype == torch.float32
    assert loss_autocast.item() == pytest.approx(loss_fp32.item(), rel=1e-6, abs=1e-6)
    # Gradients flow back to bf16 leaves.
    s = student.bfloat16().requires_grad_()
    mcr(s, teacher.bfloat16())[0].backward()
    assert s.grad.dtype == torch.bfloat16 and torch.isfinite(s.grad.float()).all()


@pytest.mark.parametrize("expa_type", [0, 1])
@pytest.mark.parametrize("eps", [1e-6, 1e-9])
def test_collapsed_features_stay_finite_and_exact(expa_type, eps):
    # All samples and views equal one unit vector u: ZᵀZ = m·uuᵀ (rank 1), so
    # R = ½·log(1 + p/(m·eps)·m) = ½·log(1 + p/eps) and expa = γ·R.
    m, p = 16, 32
    u = F.normalize(torch.randn(p, generator=torch.Generator().manual_seed(0)), dim=0)
    student = u.expand(4, m, p).clone().requires_grad_()
    teacher = u.expand(2, m, p).clone()
    loss, parts = MCRLoss(eps=eps, expa_type=expa_type)(student, teacher)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    expected = (p + m) / (p * m) * 0.5 * math.log1p(p / eps * float(u.double() @ u.double()))
    assert parts["expa_loss"].item() == pytest.approx(expected, rel=1e-5)
    assert parts["comp_loss"].item() == pytest.approx(1.0, abs=1e-6)


def test_absurdly_small_eps_is_still_finite():
    # Past float64's resolution (α·‖C‖ ~ 1e17) the jitter fallback keeps the loss usable (finite).
    u = F.normalize(torch.randn(8), dim=0)
    student = u.expand(3, 4, 8).clone().requires_grad_()
    loss, _ = MCRLoss(eps=1e-16)(student, u.expand(2, 4, 8))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_schedule_may_set_eps_and_coeff():
    student, teacher = unit_views(3, 6, 5, seed=31), unit_views(2, 6, 5, seed=32)
    mcr = MCRLoss(eps=0.5, coeff=1.0)
    mcr.eps, mcr.coeff = 0.1, 3.0
    loss, _ = mcr(student, teacher)
    assert loss.item() == pytest.approx(loop_reference(student, teacher, 0.1, 3.0, 1)[0], rel=1e-5)
    mcr.eps = 0.0
    with pytest.raises(ValueError, match="eps"):
        mcr(student, teacher)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"eps": 0.0}, "eps"),
        ({"eps": -1.0}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"expa_type": 2}, "expa_type"),
        ({"reduce_cov": 2}, "reduce_cov"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MCRLoss(**kwargs)


def test_bad_views_raise_clear_errors():
    mcr = MCRLoss()
    x = unit_views(4, 5, 6, seed=0)
    with pytest.raises(ValueError, match="exactly 2 teacher"):
        mcr(x, x[:1])
    with pytest.raises(ValueError, match="exactly 2 teacher"):
        mcr(x, x[:3])
    with pytest.raises(ValueError, match="student views"):
        mcr([x[0]], [x[0], x[1]])
    with pytest.raises(ValueError, match="batch size and feature dimension"):
        mcr(x, unit_views(2, 5, 7, seed=1))
    with pytest.raises(ValueError, match="batch size and feature dimension"):
        mcr(x, unit_views(2, 4, 6, seed=1))
    with pytest.raises(ValueError, match=r"student_views\[2\]"):
        mcr([x[0], x[1], x[2, :3]], [x[0], x[1]])
    with pytest.raises(ValueError, match=r"chunk"):
        mcr(x.reshape(-1, 6), x[:2])
    with pytest.raises(ValueError, match="eps"):
        coding_rate(x[0], eps=0.0)


# ---------------------------------------------------------------------------------------- DINOLoss


def test_dino_center_ema_and_teacher_softmax():
    torch.manual_seed(0)
    loss = DINOLoss(out_dim=7, center_momentum=0.9)
    assert loss.center.shape == (1, 7) and torch.all(loss.center == 0)
    t1, t2 = torch.randn(10, 7), torch.randn(10, 7) + 2.0
    loss.update_center(t1)
    assert torch.allclose(loss.center, 0.1 * t1.mean(0, keepdim=True), atol=1e-6)
    loss.update_center(t2)
    expected = 0.9 * 0.1 * t1.mean(0, keepdim=True) + 0.1 * t2.mean(0, keepdim=True)
    assert torch.allclose(loss.center, expected, atol=1e-6)

    probs = loss.softmax_center_teacher(t1, teacher_temp=0.1)
    assert torch.allclose(probs.sum(-1), torch.ones(10), atol=1e-6)
    assert torch.allclose(probs, F.softmax((t1 - loss.center) / 0.1, dim=-1), atol=1e-6)
    # Lower temperature sharpens: larger max probability, lower entropy.
    sharp = loss.softmax_center_teacher(t1, teacher_temp=0.04)
    entropy = lambda q: -(q * q.clamp_min(1e-12).log()).sum(-1)
    assert torch.all(sharp.max(-1).values >= probs.max(-1).values)
    assert torch.all(entropy(sharp) < entropy(probs))


def test_dino_sinkhorn_marginals():
    torch.manual_seed(1)
    batch, k = 12, 5
    logits = torch.randn(batch, k)
    q = DINOLoss(out_dim=k).sinkhorn_knopp_teacher(logits, teacher_temp=0.5, n_iterations=200)
    assert q.shape == (batch, k)
    assert torch.allclose(q.sum(dim=1), torch.ones(batch), atol=1e-5)  # each sample a distribution
    assert torch.allclose(q.sum(dim=0), torch.full((k,), batch / k), atol=1e-3)  # equipartition
    q3 = DINOLoss(out_dim=k).sinkhorn_knopp_teacher(logits, teacher_temp=0.5)
    assert torch.allclose(q3.sum(dim=1), torch.ones(batch), atol=1e-5)


def test_dino_forward_and_forward_v1_match_manual():
    torch.manual_seed(2)
    batch, k, n_views, st, tt = 4, 6, 4, 0.1, 0.05
    student = torch.randn(n_views * batch, k)
    teacher = torch.randn(2 * batch, k)
    dino = DINOLoss(out_dim=k, student_temp=st)
    dino.center.copy_(torch.randn(1, k))
    center0 = dino.center.clone()

    t_probs = F.softmax((teacher - center0) / tt, dim=-1).chunk(2)
    s_logp = F.log_softmax(student / st, dim=-1).chunk(n_views)
    terms = []
    for i in range(2):
        for j in range(n_views):
            if i != j:
                terms.append(-(t_probs[i] * s_logp[j]).sum(-1).mean())
    expected = torch.stack(terms).mean()

    got = dino(list(student.chunk(n_views)), list(dino.softmax_center_teacher(teacher, tt).chunk(2)))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)

    got_v1 = dino.forward_v1(student, teacher, teacher_temp=tt)
    assert got_v1.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(dino.center, 0.9 * center0 + 0.1 * teacher.mean(0, keepdim=True), atol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        dino.forward_v1(student[:-1], teacher, teacher_temp=tt)


# --------------------------------------------------------------------------------- patch losses


def random_masks(n_images: int, n_patches: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    masks = torch.rand(n_images, n_patches, generator=gen) < 0.4
    masks[:, 0] = True  # every image has at least one masked patch
    return masks


def test_cosine_patch_loss_identical_tokens_is_minus_one():
    masks = random_masks(6, 9, seed=0)
    tokens = torch.randn(int(masks.sum()), 5)
    assert CosinePatchLoss()(tokens, tokens.clone(), masks).item() == pytest.approx(-1.0, abs=1e-6)


def test_cosine_patch_loss_weighting_matches_loop():
    masks = random_masks(4, 10, seed=1)
    masks[2] = False  # an unmasked image contributes nothing but still counts in the denominator
    n_masked = int(masks.sum())
    gen = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(n_masked, 6, generator=gen), torch.randn(n_masked, 6, generator=gen)
    total, row = 0.0, 0
    for image in range(masks.shape[0]):
        count = int(masks[image].sum())
        for _ in range(count):
            total += float(F.cosine_similarity(student[row], teacher[row], dim=0)) / count
            row += 1
    expected = -total / masks.shape[0]
    loss = CosinePatchLoss()
    assert loss(student, teacher, masks).item() == pytest.approx(expected, rel=1e-5)
    # Padded buffers: only the first n_masked_patches rows count.
    pad = torch.randn(3, 6)
    padded = loss.forward_masked(
        torch.cat([student, pad]), torch.cat([teacher, pad]), masks, n_masked_patches=n_masked
    )
    assert padded.item() == pytest.approx(expected, rel=1e-5)


def test_ibot_patch_loss_masked_matches_full():
    torch.manual_seed(4)
    n_images, n_patches, k = 3, 8, 5
    masks = random_masks(n_images, n_patches, seed=5)
    student, teacher_logits = torch.randn(n_images, n_patches, k), torch.randn(n_images, n_patches, k)
    ibot = iBOTPatchLoss(patch_out_dim=k)
    teacher = ibot.softmax_center_teacher(teacher_logits, teacher_temp=0.07)
    full = ibot(student, teacher, masks)
    masked = ibot.forward_masked(student[masks], teacher[masks], masks)
    assert masked.item() == pytest.approx(full.item(), rel=1e-5)
    ibot.update_center(teacher_logits[masks])
    assert torch.allclose(ibot.center, 0.1 * teacher_logits[masks].mean(0, keepdim=True), atol=1e-6)
    q = ibot.sinkhorn_knopp_teacher(teacher_logits[masks], 0.5, n_iterations=100)
    assert torch.allclose(q.sum(1), torch.ones(int(masks.sum())), atol=1e-5)


def test_koleo_matches_loop():
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(6))
    unit = F.normalize(x, dim=-1)
    total = 0.0
    for i in range(7):
        nearest = min(float((unit[i] - unit[j]).norm()) for j in range(7) if j != i)
        total += math.log(nearest + 1e-8)
    assert KoLeoLoss()(x).item() == pytest.approx(-total / 7, rel=1e-4)
    with pytest.raises(ValueError, match="B >= 2"):
        KoLeoLoss()(x[:1])
