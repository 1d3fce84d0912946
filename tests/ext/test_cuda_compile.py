"""The CUDA kernels of csrc/optim_cuda.cu compile for sm_90 with nvcc (no GPU needed) and ptxas
spills nothing in any of them: the register report of `nvcc -Xptxas -v`, one line per kernel."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")

pytestmark = pytest.mark.ext


def ptxas_report(log: str) -> dict[str, tuple[int, int]]:
    """{mangled kernel: (registers, spill store bytes)} from ptxas' verbose log."""
    out, kernel, spills = {}, None, 0
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)'", line):
            kernel, spills = m.group(1), 0
        elif kernel and (m := re.search(r"(\d+) bytes spill stores", line)):
            spills = int(m.group(1))
        elif kernel and (m := re.search(r"Used (\d+) registers", line)):
            out[kernel] = (int(m.group(1)), spills)
            kernel = None
    return out


def test_kernels_compile_for_sm90_without_spills(tmp_path):
    sys.path.insert(0, ROOT)
    try:
        import build_ext_support
    finally:
        sys.path.remove(ROOT)
    nvcc = build_ext_support.find_toolkit()["nvcc"]
    if nvcc is None:
        pytest.skip("no nvcc on this machine: the sm_90 compile check needs the CUDA toolkit")
    info = tmp_path / "df_build_info.h"
    info.write_text('#define DF_CUDA_ARCHS "sm_90"\n')
    res = subprocess.run(
        [
            nvcc,
            "-c",
            os.path.join(CSRC, "optim_cuda.cu"),
            "-o",
            str(tmp_path / "optim_cuda.o"),
            "-O3",
            "-std=c++17",
            "-I",
            CSRC,
            "-include",
            str(info),
            "-gencode",
            "arch=compute_90,code=sm_90",
            "-Xptxas",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    report = ptxas_report(res.stderr + res.stdout)
    names = " ".join(report)
    for kernel in ("adam_kernel", "meta_adam_kernel", "sgd_kernel", "nonfinite_kernel", "advance_steps_kernel"):
        assert kernel in names, f"{kernel} missing from the ptxas report"
    spilling = {k: v for k, v in report.items() if v[1]}
    assert not spilling, f"ptxas spills in {spilling}"
