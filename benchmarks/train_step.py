#!/usr/bin/env python
"""Training-step throughput of our trainers against the step a user would assemble from lightly + timm.

Owns the measurement behind the issue's step goals: images/s of one full iteration (teacher forward on the
2 global crops, student forward on all crops, loss, backward, gradient clipping, optimizer step, EMA)
for
- `ours v1 SimDINO`: the models, loss and optimizer of `simdino/main_dino.py` (coding-rate loss, no
  prototype layer) through the trainers' own step, `simdinov2.train.step.train_step`;
- `ours v1 DINO`: the same trainer with `--use_simdino false` (65536 prototypes, centering);
- `ours v2 SimDINOv2`: the same `train_step` on the v2 meta-architecture `SSLMetaArch` (+ iBOT-style
  masked patch term, shared head) when that trainer is importable;
- `lightly+timm DINO`: a timm `VisionTransformer` of the same shape (dynamic image size for the local
  crops), lightly's `DINOProjectionHead` + `DINOLoss`, `update_momentum` EMA and a default
  `torch.optim.AdamW`, written as lightly's DINO ViT benchmark does it (globals and locals batched).

All run at identical shapes (default vit_tiny/4, 2×28 px + 4×12 px crops, batch 64; `--paper` is ViT-B/16,
2×224 + 10×96, batch 64, meant for a GPU), in fp32 and under bf16 autocast. Next to the time it prints
the FLOPs of one step (counted with FlopCounterMode) and the achieved FLOP/s over this machine's matmul
peak in the same dtype, measured in the same run (MFU). `--profile` adds a torch.profiler table of the
top ops of the v1 SimDINO step.

    python -m benchmarks.train_step                       # CPU defaults, ~2-3 min on 2 cores
    python -m benchmarks.train_step --paper --device cuda # the paper's shapes
"""

from __future__ import annotations

import argparse
import copy
import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import (
    DTYPES,
    count_flops,
    format_table,
    machine_info,
    measure_matmul_peak,
    parse_dtypes,
    print_header,
    resolve_device,
    set_threads,
    summarize,
    time_fn,
    v1_model_args,
    write_json,
)
from simdino.train.multicrop import MultiCropStudentTeacher, build_loss, build_student_teacher
from simdinov2 import distributed
from simdinov2.configs import get_cfg
from simdinov2.data.collate import collate_data_and_cast
from simdinov2.data.masking import MaskingGenerator
from simdinov2.precision import resolve_amp
from simdinov2.train import train as v2_train
from simdinov2.train.optim import build_optimizer, param_groups
from simdinov2.train.step import train_step

PEER = "lightly+timm DINO"

# `--ours-adamw foreach` measures what the trainers' switch to fused AdamW (build_optimizer) bought: the
# same parameter groups and betas with the multi-tensor foreach kernel they used before.
_OURS_ADAMW = {"impl": "trainer"}


def ours_optimizer(
    name: str, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.Optimizer:
    if _OURS_ADAMW["impl"] == "foreach" and name == "adamw":
        return torch.optim.AdamW(groups, betas=betas, foreach=True)
    return build_optimizer(name, groups, betas=betas)


@dataclass
class Shapes:
    arch: str
    patch_size: int
    global_size: int
    local_size: int
    n_local: int
    batch: int
    out_dim: int  # DINO prototypes (ours --use_simdino false and the lightly head)
    hidden_dim: int = 2048
    bottleneck_dim: int = 256

    @property
    def n_views(self) -> int:
        return 2 + self.n_local


@dataclass
class BuiltStep:
    """One ready-to-run training iteration: `step()` does everything a trainer does per batch."""

    name: str
    step: Callable[[], Any]
    n_params: int


def make_crops(shapes: Shapes, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """Fixed random crops (the data loader is not part of the step): 2 global, then the locals."""
    gen = torch.Generator().manual_seed(seed)
    crops = [
        torch.randn(shapes.batch, 3, shapes.global_size, shapes.global_size, generator=gen) for _ in range(2)
    ]
    crops += [
        torch.randn(shapes.batch, 3, shapes.local_size, shapes.local_size, generator=gen)
        for _ in range(shapes.n_local)
    ]
    return [c.to(device) for c in crops]


# ------------------------------------------------------------------------------------------- ours, v1
def v1_args(shapes: Shapes, simdino: bool, dtype: str) -> argparse.Namespace:
    """The v1 trainer's settings (its defaults), with the benchmark shapes and precision."""
    return v1_model_args(
        arch=shapes.arch,
        patch_size=shapes.patch_size,
        global_crops_size=shapes.global_size,
        local_crops_size=shapes.local_size,
        local_crops_number=shapes.n_local,
        batch_size_per_gpu=shapes.batch,
        out_dim=shapes.out_dim,
        z_dim=shapes.bottleneck_dim,
        hidden_dim=shapes.hidden_dim,
        use_simdino=simdino,
        use_fp16=dtype != "fp32",
        amp_dtype={"fp32": "auto", "bf16": "bfloat16", "fp16": "float16"}[dtype],
    )


def build_ours_v1(
    shapes: Shapes, simdino: bool, dtype: str, device: torch.device, compile_model: bool
) -> BuiltStep:
    """The v1 trainer's step for one batch: `simdinov2.train.step.train_step` on the pair `main_dino.py`
    builds (`MultiCropStudentTeacher`), at epoch 1 (prototypes no longer frozen)."""
    args = v1_args(shapes, simdino, dtype)
    student, teacher = build_student_teacher(args)
    student.to(device)
    teacher.to(device)
    if compile_model:
        for module in (student.backbone, student.head, teacher.backbone, teacher.head):
            module.compile()
    loss_fn = build_loss(args).to(device)
    optimizer = ours_optimizer(args.optimizer, param_groups(student))
    amp = resolve_amp(device, args.use_fp16, args.amp_dtype)
    scaler = amp.grad_scaler()
    pair = MultiCropStudentTeacher(student, student, teacher, loss_fn, amp, simdino, args.freeze_last_layer)
    pair.train()
    images = make_crops(shapes, device)
    values = {
        "lr": args.lr * shapes.batch / 256.0,
        "wd": args.weight_decay,
        "mom": args.momentum_teacher,
        "teacher_temp": args.teacher_temp,
        "epoch": 1,
    }

    def step() -> float:
        # The trainer's step returns the loss parts as floats (one device sync, as when it logs them).
        return sum(train_step(pair, optimizer, images, values, args.clip_grad, scaler).values())

    name = "ours v1 SimDINO" if simdino else "ours v1 DINO"
    return BuiltStep(name, step, sum(p.numel() for p in student.parameters()))


# ------------------------------------------------------------------------------------------- ours, v2
def v2_available() -> str | None:
    """None when the v2 trainer can be benchmarked, else why not (it is written by another engineer)."""
    try:
        import simdinov2.train.ssl_meta_arch  # noqa: F401
    except Exception as exc:  # ImportError or an in-progress module that fails to import
        return f"{type(exc).__name__}: {exc}"
    return None


def build_ours_v2(shapes: Shapes, dtype: str, device: torch.device, compile_model: bool) -> BuiltStep:
    """`simdinov2.train.step.train_step` (forward_losses, backward, clip, AdamW, EMA) on the SimDINOv2
    recipe (`simdino_config.yaml`) with the benchmark's shapes. Registers are set to 0 and every module
    computes in `dtype`, so that the tokens and the precision match the v1 and lightly steps."""
    precision = "fp32" if dtype == "fp32" else dtype
    overrides = [
        f"student.arch={shapes.arch}",
        f"student.patch_size={shapes.patch_size}",
        "student.num_register_tokens=0",
        "student.block_chunks=0",
        f"crops.global_crops_size={shapes.global_size}",
        f"crops.local_crops_size={shapes.local_size}",
        f"crops.local_crops_number={shapes.n_local}",
        f"train.batch_size_per_gpu={shapes.batch}",
        f"dino.head_hidden_dim={shapes.hidden_dim}",
        f"dino.head_bottleneck_dim={shapes.bottleneck_dim}",
        f"dino.head_n_prototypes={shapes.bottleneck_dim}",
        f"ibot.head_n_prototypes={shapes.bottleneck_dim}",
        f"train.device={device.type}",
        "train.sharding=none",
        f"compile={str(compile_model).lower()}",
    ]
    for side, modules in (
        ("student", ("backbone", "dino_head", "ibot_head")),
        ("teacher", ("backbone", "dino_head", "ibot_head")),
    ):
        overrides += [
            f"compute_precision.{side}.{m}.mixed_precision.param_dtype={precision}" for m in modules
        ]
    cfg = get_cfg("simdino_config.yaml", overrides)
    distributed.init_distributed(device.type)
    model = v2_train.build_model(cfg)
    model.train()
    optimizer = ours_optimizer(
        str(cfg.optim.opt), model.get_params_groups(), betas=tuple(cfg.optim.kwargs.betas)
    )
    scaler = v2_train.build_grad_scaler(cfg, model)

    grid = shapes.global_size // shapes.patch_size
    crops = make_crops(shapes, torch.device("cpu"))
    samples = [
        ({"global_crops": [c[b] for c in crops[:2]], "local_crops": [c[b] for c in crops[2:]]}, None)
        for b in range(shapes.batch)
    ]
    batch = collate_data_and_cast(
        samples,
        mask_ratio_tuple=tuple(cfg.ibot.mask_ratio_min_max),
        mask_probability=float(cfg.ibot.mask_sample_probability),
        dtype=torch.float32,
        n_tokens=grid * grid,
        mask_generator=MaskingGenerator((grid, grid), max_num_patches=0.5 * grid * grid),
    )
    batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    lr = float(cfg.optim.base_lr) * shapes.batch / 1024
    values = {
        "lr": lr,
        "wd": float(cfg.optim.weight_decay),
        "last_layer_lr": lr,
        "mom": 0.994,
        "teacher_temp": float(cfg.teacher.teacher_temp),
        "ibot_loss_weight": float(cfg.ibot.loss_weight),
    }
    clip = float(cfg.optim.clip_grad)

    def step() -> float:
        return sum(train_step(model, optimizer, batch, values, clip, scaler).values())

    n_params = sum(p.numel() for p in model.student.parameters())
    return BuiltStep("ours v2 SimDINOv2", step, n_params)


# ------------------------------------------------------------------------------------- lightly + timm
def lightly_available() -> str | None:
    try:
        import lightly.loss  # noqa: F401
        import lightly.models.modules  # noqa: F401
        import timm  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc} (pip install -r benchmarks/requirements.txt)"
    return None


def build_peer(shapes: Shapes, dtype: str, device: torch.device, compile_model: bool) -> BuiltStep:
    """The DINO step a user would write from lightly + timm, following lightly's ViT DINO benchmark:
    timm ViT (same width/depth/heads/patch, dynamic image size for the locals, drop path 0.1), lightly's
    3-layer `DINOProjectionHead` with a weight-normalised prototype layer, `DINOLoss`, `update_momentum`
    for the EMA, `torch.optim.AdamW` with its defaults (for-loop on CPU) on lightly's weight-decay split,
    and `clip_grad_norm_(3.0)` (our trainer clips too)."""
    from lightly.loss import DINOLoss as LightlyDINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, get_weight_decay_parameters, update_momentum
    from timm.models.vision_transformer import VisionTransformer

    widths = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12), "vit_large": (1024, 16)}
    if shapes.arch not in widths:
        raise SystemExit(f"--arch {shapes.arch} has no timm peer here; use one of {', '.join(widths)}")
    embed_dim, heads = widths[shapes.arch]
    depth = 24 if shapes.arch == "vit_large" else 12
    backbone = VisionTransformer(
        img_size=shapes.global_size,
        patch_size=shapes.patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        num_classes=0,
        dynamic_img_size=True,
        drop_path_rate=0.1,
    )
    head = DINOProjectionHead(
        embed_dim, shapes.hidden_dim, shapes.bottleneck_dim, shapes.out_dim, freeze_last_layer=1
    )
    teacher_backbone = copy.deepcopy(backbone)
    # weight_norm modules cannot be deep-copied: build the teacher head and copy the weights (as lightly's examples do).
    teacher_head = DINOProjectionHead(embed_dim, shapes.hidden_dim, shapes.bottleneck_dim, shapes.out_dim)
    teacher_head.load_state_dict(head.state_dict())
    deactivate_requires_grad(teacher_backbone)
    deactivate_requires_grad(teacher_head)
    modules = [backbone, head, teacher_backbone, teacher_head]
    for m in modules:
        m.to(device).train()
    if compile_model:
        for m in modules:
            m.compile()
    criterion = LightlyDINOLoss(output_dim=shapes.out_dim, warmup_teacher_temp_epochs=0).to(device)
    decay, no_decay = get_weight_decay_parameters([backbone, head])
    optimizer = torch.optim.AdamW(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=5e-4 * shapes.batch / 256,
        weight_decay=0.04,
    )
    student_params = [p for p in list(backbone.parameters()) + list(head.parameters()) if p.requires_grad]
    views = make_crops(shapes, device)
    use_amp = dtype != "fp32"
    amp_dtype = DTYPES[dtype]
    epoch = 1

    def step() -> float:
        update_momentum(backbone, teacher_backbone, m=0.996)
        update_momentum(head, teacher_head, m=0.996)
        global_views = torch.cat(views[:2])
        local_views = torch.cat(views[2:])
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
            with torch.no_grad():
                teacher_out = teacher_head(teacher_backbone(global_views))
            student_out = head(torch.cat([backbone(global_views), backbone(local_views)]))
            loss = criterion(teacher_out.chunk(2), student_out.chunk(len(views)), epoch=epoch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student_params, 3.0)
        head.cancel_last_layer_gradients(epoch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return BuiltStep(PEER, step, sum(p.numel() for p in student_params))


# -------------------------------------------------------------------------------------------- driver
def build(name: str, shapes: Shapes, dtype: str, device: torch.device, compile_model: bool) -> BuiltStep:
    torch.manual_seed(0)
    if name == "simdino":
        return build_ours_v1(shapes, True, dtype, device, compile_model)
    if name == "dino":
        return build_ours_v1(shapes, False, dtype, device, compile_model)
    if name == "simdinov2":
        return build_ours_v2(shapes, dtype, device, compile_model)
    if name == "lightly":
        return build_peer(shapes, dtype, device, compile_model)
    raise SystemExit(f"unknown method {name!r}")


def profile_step(built: BuiltStep, device: torch.device, top: int) -> str:
    """torch.profiler table of one step (after a warm-up step), sorted by self time."""
    built.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        built.step()
    sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_key, row_limit=top, max_name_column_width=48)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arch", default="vit_tiny")
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--global-size", type=int, default=28)
    p.add_argument("--local-size", type=int, default=12)
    p.add_argument("--n-local", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--out-dim", type=int, default=65536, help="DINO prototypes (ours --use_simdino false and lightly)"
    )
    p.add_argument("--paper", action="store_true", help="ViT-B/16, 2x224 + 10x96 crops, batch 64 (use a GPU)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=["simdino", "dino", "simdinov2", "lightly"],
        help="any of simdino dino simdinov2 lightly",
    )
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], help="fp32 and/or bf16 (autocast)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    p.add_argument("--compile", action="store_true", help="torch.compile every module (ours and the peer)")
    p.add_argument(
        "--ours-adamw",
        choices=["trainer", "foreach"],
        default="trainer",
        help="ours: the trainers' build_optimizer (trainer: fused AdamW on plain tensors) or "
        "torch's foreach AdamW (what the trainers used before)",
    )
    p.add_argument(
        "--profile", action="store_true", help="also print torch.profiler's top ops of the v1 SimDINO step"
    )
    p.add_argument("--profile-dtype", default="bf16")
    p.add_argument("--profile-top", type=int, default=25)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke setting: 16/8 px crops (2 local), batch 4, small head, 1 step",
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    set_threads(args.threads)
    device = resolve_device(args.device)
    dtypes = parse_dtypes(args.dtypes)
    _OURS_ADAMW["impl"] = args.ours_adamw
    if args.paper:
        shapes = Shapes("vit_base", 16, 224, 96, 10, 64, args.out_dim)
    else:
        shapes = Shapes(
            args.arch,
            args.patch_size,
            args.global_size,
            args.local_size,
            args.n_local,
            args.batch,
            args.out_dim,
        )
    if args.quick:  # a few seconds: the smoke test's setting, not a measurement
        shapes = Shapes(shapes.arch, 4, 16, 8, 2, 4, 512, hidden_dim=256, bottleneck_dim=64)
        args.steps, args.warmup = 1, 0
    if device.type == "cpu" and "fp16" in dtypes:
        raise SystemExit(
            "fp16 autocast is not a CPU training mode here (the trainers run bf16 on CPU): use --dtypes fp32 bf16"
        )

    info = machine_info(device)
    print_header("train_step: one training iteration, ours vs lightly+timm", info)
    print(f"  shapes: {shapes}")

    skipped: dict[str, str] = {}
    methods = []
    for m in args.methods:
        why = v2_available() if m == "simdinov2" else lightly_available() if m == "lightly" else None
        if why:
            skipped[m] = why
            print(f"  skipping {m}: {why}")
        else:
            methods.append(m)

    peak_sizes = (256,) if args.quick else None
    peaks = {dt: measure_matmul_peak(DTYPES[dt], device, sizes=peak_sizes) for dt in dtypes}
    print("  measured matmul peak: " + ", ".join(f"{dt} {v / 1e9:.1f} GFLOP/s" for dt, v in peaks.items()))

    rows: list[dict[str, Any]] = []
    flops_by_method: dict[str, int] = {}
    for dt in dtypes:
        # All methods of one dtype are built first and their timed steps interleaved (round-robin),
        # so that a change in background load hits every method alike and the ratios stay fair.
        builts: list[tuple[str, BuiltStep]] = []
        for m in methods:
            built = build(m, shapes, dt, device, args.compile)
            if args.ours_adamw == "foreach" and m != "lightly":
                built.name += " +foreach AdamW"
            if m not in flops_by_method:  # same ops in every dtype: count once, untimed
                built.step()
                flops_by_method[m] = count_flops(built.step)
            for _ in range(args.warmup):
                built.step()
            builts.append((m, built))
        times: dict[str, list[float]] = {built.name: [] for _, built in builts}
        for _ in range(args.steps):
            for _, built in builts:
                times[built.name] += time_fn(built.step, device, warmup=0, repeats=1)
        for m, built in builts:
            stats = summarize(times[built.name])
            step_s = stats["median_s"]
            flops = flops_by_method[m]
            rows.append(
                {
                    "method": built.name,
                    "dtype": dt,
                    "ms/step": 1e3 * step_s,
                    "img/s": shapes.batch / step_s,
                    "GFLOP/step": flops / 1e9,
                    "GFLOP/s": flops / step_s / 1e9,
                    "MFU %": 100 * flops / step_s / peaks[dt],
                    "params M": built.n_params / 1e6,
                    "min ms": 1e3 * stats["min_s"],
                    "max ms": 1e3 * stats["max_s"],
                }
            )
            print(
                f"  {built.name:<22} {dt}: {1e3 * step_s:8.1f} ms/step (min {1e3 * stats['min_s']:.1f})  "
                f"{shapes.batch / step_s:8.1f} img/s",
                flush=True,
            )
        del builts
        gc.collect()

    for row in rows:
        peer = next((r for r in rows if r["method"] == PEER and r["dtype"] == row["dtype"]), None)
        row[f"x vs {PEER}"] = peer["ms/step"] / row["ms/step"] if peer else float("nan")
        fp32 = next((r for r in rows if r["method"] == row["method"] and r["dtype"] == "fp32"), None)
        row["x vs own fp32"] = fp32["ms/step"] / row["ms/step"] if fp32 else float("nan")

    columns = [
        "method",
        "dtype",
        "ms/step",
        "img/s",
        f"x vs {PEER}",
        "x vs own fp32",
        "GFLOP/step",
        "GFLOP/s",
        "MFU %",
        "params M",
    ]
    print()
    print(format_table(rows, columns))
    print(
        f"\nMFU = counted FLOPs of one step / step time / measured {device.type} matmul peak of that dtype "
        f"({', '.join(f'{dt}: {v / 1e9:.1f} GFLOP/s' for dt, v in peaks.items())})."
    )
    for m, why in skipped.items():
        print(f"skipped {m}: {why}")

    profile_text = None
    if args.profile:
        built = build("simdino", shapes, args.profile_dtype, device, args.compile)
        profile_text = profile_step(built, device, args.profile_top)
        print(
            f"\n## torch.profiler: ours v1 SimDINO step, {args.profile_dtype}, top {args.profile_top} ops by self time"
        )
        print(profile_text)

    result = {
        "machine": info,
        "shapes": vars(shapes),
        "peaks_flops": peaks,
        "rows": rows,
        "skipped": skipped,
        "profile": profile_text,
        "settings": {
            "steps": args.steps,
            "warmup": args.warmup,
            "compile": args.compile,
            "ours_adamw": args.ours_adamw,
        },
    }
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
