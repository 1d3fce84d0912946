"""The demo means what it prints (issue 20, item 1): the built-in job at its real size, on the
native and the torch backends side by side (two processes, one thread each), prints output PSNRs
that agree within 0.2 dB, beats its noisy input by at least 2 dB at the seen level, and the
native run prints exactly the README's table."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
ROW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s+(seen|unseen)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s*$", re.M)


def _rows(text: str) -> dict[str, tuple[str, str, str, str]]:
    """``kind -> (sigma, input PSNR, output PSNR, output SSIM)`` of a demo table, as printed."""
    return {m.group(2): (m.group(1), m.group(3), m.group(4), m.group(5)) for m in ROW.finditer(text)}


def _readme_rows() -> dict:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    start = text.index("## What the demo shows")
    return _rows(text[start : text.index("```\n", text.index("```\n", start) + 4)])


@pytest.mark.slow
def test_demo_is_stable_across_backends_and_prints_the_readme_table(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "DIL_FAST_BACKEND")}
    procs = {}
    for backend, forced in (("native", "auto"), ("torch", "torch")):  # auto: the native kernels on the CPU
        cmd = [sys.executable, "-m", "dil_fast", "demo", "--out", str(tmp_path / backend), "--device", "cpu"]
        procs[backend] = subprocess.Popen(
            cmd,
            env={**env, "DIL_FAST_BACKEND": forced},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    out = {b: p.communicate(timeout=1500)[0] for b, p in procs.items()}
    for backend, p in procs.items():
        assert p.returncode == 0, f"{backend}: {out[backend][-3000:]}"
    native, torch_ = _rows(out["native"]), _rows(out["torch"])
    assert set(native) == set(torch_) == {"seen", "unseen"}, out["native"][-2000:]
    for kind in ("seen", "unseen"):
        assert abs(float(native[kind][2]) - float(torch_[kind][2])) <= 0.2, (kind, native, torch_)
        assert native[kind][1] == torch_[kind][1]  # the same noisy inputs
    assert float(native["seen"][2]) >= float(native["seen"][1]) + 2.0, native
    assert _readme_rows() == native, f"README table {_readme_rows()} != printed {native}"
