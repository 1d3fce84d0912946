"""Every Triton kernel x every autotune config compiled for CUDA sm_90 without a GPU (Triton's own
pipeline down to a cubin, through the ptxas it ships), by the compile report bench/bench_compile.py.

Catches what the interpreter accepts but compiled Triton rejects (non-constexpr globals, constexpr
specialisation, type errors in loops), any config that spills registers, offsets formed as int32
products of runtime scalars (``k * stride`` wraps past 2**31 elements), a noise kernel that
computes a Philox counter more than once per group of 4 normals, and approximate math (approximate
division, square root or transcendentals, FMA contraction) in a kernel whose output is claimed
bit-exact against its torch reference (``bench_compile.NUMERICS``).

Under TRITON_INTERPRET=1 the kernels are interpreter objects and the autotune lists collapse to one
config, so the report runs once per module in a child process without it (nor
DIL_FAST_SKIP_AUTOTUNE), writing its CSV to a temporary folder that the tests read."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from bench import bench_compile
from dil_fast import backends

pytestmark = pytest.mark.triton

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KERNELS = sorted({launch.kernel for launch in bench_compile.launches()})
EXACT = sorted(k for k, numerics in bench_compile.NUMERICS.items() if numerics.exact)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(exit status, stdout, rows) of the compile report over every kernel."""
    if not backends.triton_status().available:
        pytest.skip(backends.triton_status().reason)
    out = tmp_path_factory.mktemp("compile_report")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "DIL_FAST_SKIP_AUTOTUNE")}
    env["DIL_FAST_BENCH_OUT"] = str(out)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "bench_compile.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if (
        proc.returncode not in (0, 1)
        and "ptxas" in proc.stderr
        and ("not found" in proc.stderr or "No such file" in proc.stderr)
    ):
        pytest.skip("no ptxas in this Triton install")
    assert proc.returncode in (0, 1), f"compile report crashed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    with open(out / "compile.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return proc.returncode, proc.stdout, rows


def _rows(report, kernel):
    rows = [r for r in report[2] if r["kernel"] == kernel]
    assert rows, f"the compile report has no row for {kernel}"
    return rows


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_config_compiles_without_spilling(report, kernel):
    """Each variant x config has a cubin (else the report raises) and ptxas spills nothing."""
    rows = _rows(report, kernel)
    spilled = [
        f"{r['variant']} {r['config']}: {r['spill_bytes']} B ({r['registers']} registers)"
        for r in rows
        if int(r["spill_bytes"]) > 0
    ]
    assert not spilled, f"{kernel} spills on triton {rows[0]['triton']}:\n" + "\n".join(spilled)
    assert all(0 < int(r["registers"]) <= 255 for r in rows)


@pytest.mark.parametrize("kernel", KERNELS)
def test_offsets_are_not_int32_products(report, kernel):
    """No scalar int32 product of two runtime values (k * stride_ok, H * W, ...) in the TTIR."""
    rows = _rows(report, kernel)
    assert all(int(r["int32_products"]) == 0 for r in rows), {r["variant"]: r["int32_products"] for r in rows}


def test_int32_product_count_reads_the_ttir():
    ttir = """
    %c2_i32 = arith.constant 2 : i32 loc(#loc1)
    %period = arith.muli %W, %c2_i32 : i32 loc(#loc2)
    %dst = arith.muli %k, %stride_ok : i32 loc(#loc3)
    %off = arith.muli %k64, %stride64 : i64 loc(#loc4)
    %t = arith.muli %h, %w : tensor<16xi32> loc(#loc5)
    """
    assert bench_compile.int32_scalar_products(ttir) == 1


def test_report_covers_every_config_of_the_autotuned_kernels(report):
    """Several configs per autotuned kernel (the real lists, not the interpreter's single one)."""
    for kernel in ("noise", "blur_sep[AXIS=0]", "blur_sep[AXIS=1]", "blur2d", "resample[AXIS=0]", "jpeg_blocks"):
        configs = {r["config"] for r in _rows(report, kernel)}
        assert len(configs) >= 4, (kernel, configs)


def test_noise_computes_each_philox_counter_once(report):
    """Philox mul.hi per field element at its minimum: 10 rounds x 2 per counter / 4 normals = 5."""
    rows = _rows(report, "noise")
    above = [
        f"{r['variant']} {r['config']}: {r['mulhi_per_element']}"
        for r in rows
        if float(r["mulhi_per_element"]) > bench_compile.NOISE_MULHI_MIN
    ]
    assert not above, "noise kernel recomputes Philox counters (mul.hi per element):\n" + "\n".join(above)
    # a kernel with no Philox products at all would pass the bound: it has lost the generator
    assert all(float(r["mulhi_per_element"]) >= 4 for r in rows)


@pytest.mark.parametrize("kernel", EXACT)
def test_kernels_claimed_exact_have_no_approximate_math(report, kernel):
    """No approximate division/sqrt/transcendental and no FMA contraction in the sm_90 PTX of a
    kernel claimed bit-exact, except the kinds its NUMERICS entry allows (with the reason)."""
    rows = _rows(report, kernel)
    bad = [f"{r['variant']} {r['config']}: {bench_compile.inexact(r)}" for r in rows if bench_compile.inexact(r)]
    assert not bad, (
        f"{kernel} is claimed bit-exact ({bench_compile.NUMERICS[kernel].exact}), but its PTX on "
        f"triton {rows[0]['triton']} holds approximate math:\n" + "\n".join(bad)
    )


def test_every_kernel_declares_its_numerics():
    """Each kernel of the report says what is exact (and what it allows, why) or why nothing is."""
    assert set(bench_compile.NUMERICS) == set(KERNELS)
    assert EXACT, "no kernel claims bit-exactness: the check checks nothing"
    for kernel, numerics in bench_compile.NUMERICS.items():
        assert bool(numerics.exact) != bool(numerics.why_not), kernel
        assert set(numerics.allowed) <= set(bench_compile.APPROX_MATH), kernel
        assert all(numerics.allowed.values()) and (numerics.exact or not numerics.allowed), kernel


def test_approx_math_reads_the_ptx():
    ptx = """
    div.full.f32 \t%r1, %r2, %r3;
    div.rn.f32 \t%r1, %r2, %r3;
    @%p1 div.approx.ftz.f32 %r1, %r2, %r3;
    sqrt.approx.ftz.f32 \t%r44, %r375;
    sqrt.rn.f32 %r1, %r2;
    fma.rn.f32 \t%r752, %r751, 0f3B808081, %r126;
    fma.rn.ftz.f32 \t%r1, %r2, %r3, %r4;
    mul.f32 \t%r403, %r322, 0f33800000;
    mul.rn.f32 %r1, %r2, %r3;
    add.rn.f32 %r1, %r2, %r3;
    @!%p2 sub.f32 %r1, %r2, %r3;
    mul.lo.s32 %r1, %r2, %r3;
    ex2.approx.f32 %r1, %r2;
    lg2.approx.ftz.f32 %r1, %r2;
    // sin.approx.f32 in a comment
    """
    assert bench_compile.approx_math(ptx) == {
        "div_full": 1,
        "div_approx": 1,
        "rcp_approx": 0,
        "sqrt_approx": 1,
        "ex2_approx": 1,
        "lg2_approx": 1,
        "sin_approx": 0,
        "cos_approx": 0,
        "fma_contracted": 1,
        "fma_contractible": 2,
    }


def test_noise_launcher_passes_the_options_the_report_compiles_with(monkeypatch):
    """noise_fwd launches with NOISE_LAUNCH_OPTIONS (no FMA contraction), the options the report
    compiles the noise kernel with; the interpreter ignores them, so this looks at the call."""
    if not backends.triton_status().available:
        pytest.skip(backends.triton_status().reason)
    noise = backends.triton_kernels("noise")
    seen = {}

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.update(kwargs)

    monkeypatch.setattr(noise, "_noise_fwd_kernel", Kernel())
    noise.noise_fwd(torch.zeros(1, 3, 4, 4), torch.ones(1, 1), seed=0, step=0)
    assert noise.NOISE_LAUNCH_OPTIONS == {"enable_fp_fusion": False}
    assert {k: seen.get(k) for k in noise.NOISE_LAUNCH_OPTIONS} == noise.NOISE_LAUNCH_OPTIONS
    launch = next(launch for launch in bench_compile.launches() if launch.kernel == "noise")
    assert bench_compile.launch_options(launch) == noise.NOISE_LAUNCH_OPTIONS


def test_report_exit_status_and_table(report):
    """Exit status 1 exactly when a row has a problem; the stdout table names every kernel."""
    status, stdout, rows = report
    assert status == (1 if any(bench_compile.problems(r) for r in rows) else 0), stdout[-3000:]
    assert all(kernel in stdout for kernel in KERNELS)


def test_problems_flags_spills_int32_products_and_excess_philox_work():
    row = {"spill_bytes": "0", "int32_products": "0", "mulhi_per_element": "4.75"}
    assert bench_compile.problems(row) == []
    assert bench_compile.problems({**row, "spill_bytes": "8"}) == ["spills 8 B per thread"]
    assert bench_compile.problems({**row, "int32_products": "3"}) == [
        "3 int32 products of runtime scalars (offsets that can wrap)"
    ]
    assert bench_compile.problems({**row, "mulhi_per_element": "18.25"}) == ["18.25 mul.hi per element > 5"]
    assert bench_compile.problems({"spill_bytes": 0, "int32_products": 0, "mulhi_per_element": ""}) == []


def test_problems_flags_approximate_math_only_where_exactness_is_claimed():
    row = {
        "spill_bytes": "0",
        "int32_products": "0",
        "mulhi_per_element": "",
        **dict.fromkeys(bench_compile.APPROX_MATH, "0"),
    }
    noise = {**row, "kernel": "noise", "mulhi_per_element": "4.75"}
    assert bench_compile.problems({**noise, "lg2_approx": "2", "sin_approx": "2", "cos_approx": "2"}) == []
    assert bench_compile.problems({**noise, "div_full": "8", "fma_contracted": "16", "sqrt_approx": "4"}) == [
        "claimed bit-exact, but 8 div_full, 4 sqrt_approx, 16 fma_contracted"
    ]
    assert bench_compile.problems({**row, "kernel": "sample_crops", "fma_contractible": "3"}) == [
        "claimed bit-exact, but 3 fma_contractible"
    ]
    assert bench_compile.problems({**row, "kernel": "blur2d", "fma_contracted": "40", "div_full": "1"}) == []
