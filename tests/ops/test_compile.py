"""Every Triton kernel x every autotune config compiled for CUDA sm_90 without a GPU (Triton's own
pipeline down to a cubin, through the ptxas it ships), by the compile report bench/bench_compile.py.

Catches what the interpreter accepts but compiled Triton rejects (non-constexpr globals, constexpr
specialisation, type errors in loops), any config that spills registers, offsets formed as int32
products of runtime scalars (``k * stride`` wraps past 2**31 elements), and a noise kernel that
computes a Philox counter more than once per group of 4 normals.

Under TRITON_INTERPRET=1 the kernels are interpreter objects and the autotune lists collapse to one
config, so the report runs once per module in a child process without it (nor
DIL_FAST_SKIP_AUTOTUNE), writing its CSV to a temporary folder that the tests read."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from bench import bench_compile
from dil_fast import backends

pytestmark = pytest.mark.triton

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KERNELS = sorted({launch.kernel for launch in bench_compile.launches()})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(exit status, stdout, rows) of the compile report over every kernel."""
    if not backends.triton_status().available:
        pytest.skip(backends.triton_status().reason)
    out = tmp_path_factory.mktemp("compile_report")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "DIL_FAST_SKIP_AUTOTUNE")}
    env["DIL_FAST_BENCH_OUT"] = str(out)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_compile.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode not in (0, 1) and "ptxas" in proc.stderr and ("not found" in proc.stderr
                                                                     or "No such file" in proc.stderr):
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
    spilled = [f"{r['variant']} {r['config']}: {r['spill_bytes']} B ({r['registers']} registers)"
               for r in rows if int(r["spill_bytes"]) > 0]
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
        assert len(configs) >= 5, (kernel, configs)


def test_noise_computes_each_philox_counter_once(report):
    """Philox mul.hi per field element at its minimum: 10 rounds x 2 per counter / 4 normals = 5."""
    rows = _rows(report, "noise")
    above = [f"{r['variant']} {r['config']}: {r['mulhi_per_element']}" for r in rows
             if float(r["mulhi_per_element"]) > bench_compile.NOISE_MULHI_MIN]
    assert not above, "noise kernel recomputes Philox counters (mul.hi per element):\n" + "\n".join(above)
    # a kernel with no Philox products at all would pass the bound: it has lost the generator
    assert all(float(r["mulhi_per_element"]) >= 4 for r in rows)


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
        "3 int32 products of runtime scalars (offsets that can wrap)"]
    assert bench_compile.problems({**row, "mulhi_per_element": "18.25"}) == ["18.25 mul.hi per element > 5"]
    assert bench_compile.problems({"spill_bytes": 0, "int32_products": 0, "mulhi_per_element": ""}) == []
