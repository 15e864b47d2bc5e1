"""The CPU precision rule of both trees: bf16 autocast only where the CPU computes bf16 natively, fp32
otherwise; explicit requests honoured with a warning; v2's config rewritten to what runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from simdinov2 import precision
from simdinov2.configs import get_cfg

CPU = torch.device("cpu")


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)


def test_cpu_has_bf16_reads_flags_and_env(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    real_read_text = Path.read_text
    monkeypatch.setattr(
        Path,
        "read_text",
        lambda self, *a, **kw: real_read_text(cpuinfo if str(self) == "/proc/cpuinfo" else self, *a, **kw),
    )
    for name in (precision.CPU_BF16_ENV, "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not precision.cpu_has_bf16()
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    assert precision.cpu_has_bf16()
    monkeypatch.delenv(precision.CPU_BF16_ENV)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert precision.cpu_has_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # the AVX2-only emulation the README's times use
    assert not precision.cpu_has_bf16()
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    assert not precision.cpu_has_bf16()


def test_v1_default_is_fp32_without_native_bf16(no_bf16, caplog):
    with caplog.at_level(logging.INFO, logger="simdinov2"):
        amp = precision.resolve_amp(CPU, None)
    assert not amp.enabled and amp.dtype == torch.float32
    assert "precision: fp32 on the CPU: this CPU has no native bf16 instructions" in caplog.text


def test_v1_default_is_bf16_with_native_bf16(native_bf16, caplog):
    with caplog.at_level(logging.INFO, logger="simdinov2"):
        amp = precision.resolve_amp(CPU, None)
    assert amp.enabled and amp.dtype == torch.bfloat16 and not amp.needs_scaler
    assert "computes bf16 natively" in caplog.text


def test_v1_explicit_request_is_honoured_with_a_warning(no_bf16, caplog):
    with caplog.at_level(logging.INFO, logger="simdinov2"):
        amp = precision.resolve_amp(CPU, True)
    assert amp.enabled and amp.dtype == torch.bfloat16
    assert any(r.levelno == logging.WARNING and "emulated" in r.getMessage() for r in caplog.records)


def _dtypes(cfg) -> set[str]:
    return {str(precision.OmegaConf.select(cfg, key)) for key in precision._PRECISION_KEYS}


def test_v2_cpu_precision_follows_the_rule(no_bf16, caplog):
    cfg = get_cfg(None, [])
    with caplog.at_level(logging.INFO, logger="simdinov2"):
        precision.apply_cpu_precision(cfg, precision.user_precision_keys([]), CPU)
    assert _dtypes(cfg) == {"fp32"}
    assert "precision: fp32 on the CPU" in caplog.text and "bf16 instead" not in caplog.text
    assert not any(r.levelno == logging.WARNING for r in caplog.records)


def test_v2_shipped_config_is_no_request_but_overrides_are(native_bf16):
    config = Path(precision.__file__).parent / "configs" / "simdino_config.yaml"
    key = "compute_precision.student.backbone.mixed_precision.param_dtype"
    assert precision.user_precision_keys([], config) == set()
    assert precision.user_precision_keys([f"{key}=fp16", "optim.epochs=2"], config) == {key}
    cfg = get_cfg(str(config), [f"{key}=fp16"])
    precision.apply_cpu_precision(cfg, {key}, CPU)
    assert precision.OmegaConf.select(cfg, key) == "fp16"  # kept (runs as bf16: resolve_dtype)
    assert _dtypes(cfg) == {"bf16", "fp16"}


def test_v2_explicit_key_warns_without_native_bf16(no_bf16, tmp_path, caplog):
    user_config = tmp_path / "mine.yaml"
    user_config.write_text(
        "compute_precision:\n  student:\n    backbone:\n      mixed_precision: {param_dtype: bf16}\n"
    )
    keys = precision.user_precision_keys([], user_config)
    cfg = get_cfg(str(user_config), [])
    with caplog.at_level(logging.INFO, logger="simdinov2"):
        precision.apply_cpu_precision(cfg, keys, CPU)
    assert _dtypes(cfg) == {"bf16", "fp32"}
    assert any(r.levelno == logging.WARNING and "emulated" in r.getMessage() for r in caplog.records)


def test_v2_cuda_config_untouched(no_bf16):
    cfg = get_cfg(None, [])
    before = _dtypes(cfg)
    precision.apply_cpu_precision(cfg, set(), torch.device("cuda"))
    assert _dtypes(cfg) == before
