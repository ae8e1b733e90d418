"""Analyzer pieces that do not need the shipped weights: mask post-processing, precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mammo_scp.models.analyzer import cpu_flags, postprocess_mask, resolve_precision


def _two_blobs() -> np.ndarray:
    prob = np.zeros((40, 40), np.float32)
    prob[5:15, 5:15] = 0.9  # 100 px
    prob[25:29, 25:29] = 0.8  # 16 px
    return prob


def test_modes_keep_what_they_say():
    prob = _two_blobs()
    assert postprocess_mask(prob, 0.5, "all", 0, np.zeros((0, 4))).sum() == 116
    assert postprocess_mask(prob, 0.5, "all", 20, np.zeros((0, 4))).sum() == 100
    assert postprocess_mask(prob, 0.5, "largest", 0, np.zeros((0, 4))).sum() == 100
    near_small = np.array([[24.0, 24.0, 30.0, 30.0]])
    assert postprocess_mask(prob, 0.5, "with_finding", 0, near_small).sum() == 16
    assert postprocess_mask(prob, 0.5, "with_finding", 0, np.zeros((0, 4))).sum() == 0
    with pytest.raises(ValueError, match="mask mode"):
        postprocess_mask(prob, 0.5, "biggest", 0, near_small)


def test_auto_precision_is_bf16_only_where_the_cpu_runs_it_natively() -> None:
    amx = {"fpu", "avx512f", "amx_tile", "amx_bf16", "avx512_bf16"}
    avx512_bf16 = {"fpu", "avx512f", "avx512_bf16"}
    plain = {"fpu", "avx2", "avx512f"}
    assert resolve_precision("auto", amx) == ("bf16",
                                               "auto: the CPU has amx_bf16 and avx512_bf16")
    assert resolve_precision("auto", avx512_bf16)[0] == "bf16"
    assert resolve_precision("auto", plain) == (
        "fp32", "auto: the CPU has neither AMX nor AVX512_BF16")
    assert resolve_precision("fp32", amx) == ("fp32", "as configured")
    assert resolve_precision("bf16", plain) == ("bf16", "as configured")
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", amx)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\n"
                       "flags\t\t: fpu sse2 avx512f avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "absent") == set()  # not Linux: auto means fp32
