"""Degradation kernels compiled for CUDA sm_90 without a GPU (Triton's own compiler pipeline down
to PTX/cubin): catches what the interpreter accepts but compiled Triton rejects (non-constexpr
globals, constexpr specialisation, type errors in loops).

Under TRITON_INTERPRET=1 the kernels are interpreter objects, so each test re-runs itself in a
child process without it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dil_fast import backends

pytestmark = pytest.mark.triton


def _in_child(request) -> bool:
    """Under the interpreter, run this test in a child process without it; True when done there."""
    if not backends.triton_interpret():
        return False
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode == 0 and "skipped" in tail and "passed" not in tail:
        pytest.skip(f"child process: {tail}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return True


P32, P16, PU8 = "*fp32", "*fp16", "*u8"


def _compile(kernel, signature: dict, constexprs: dict):
    triton = backends.triton_status().module
    if triton is None:
        pytest.skip("triton is not importable")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:  # pragma: no cover - layout of older Triton
        pytest.skip(f"this Triton has no ASTSource/GPUTarget ({exc})")
    fn = kernel
    while not isinstance(fn, triton.runtime.JITFunction):
        fn = fn.fn  # unwrap @autotune
    sig = {name: ("constexpr" if name in constexprs else signature[name]) for name in fn.arg_names}
    try:
        return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    except RuntimeError as exc:
        msg = str(exc)
        if "ptxas" in msg and ("not found" in msg or "No such file" in msg):
            pytest.skip(f"no ptxas in this Triton install ({msg[:100]})")
        raise


def _ints(*names):
    return {n: "i32" for n in names}


def test_kernels_compile_for_sm90(request):
    """Every degradation kernel, in the variants the ops launch, down to a cubin for sm_90."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device compiles and runs the kernels for real (test_degrade_triton.py)")
    if _in_child(request):
        return
    noise = backends.triton_kernels("noise")
    blur = backends.triton_kernels("blur")
    resize = backends.triton_kernels("resize")
    jpeg = backends.triton_kernels("jpeg")
    done = []
    for variant, io in (("fp32", (P32, P32)), ("u8-gray", (PU8, P32)), ("fp16", (P16, P16))):
        sig = {"x_ptr": io[0], "out_ptr": io[1], "sigma_ptr": P32, "gray_ptr": "*i32", "seed_lo": "i64",
               **_ints("K", "B", "CHW", "HW", "C", "stride_xk", "stride_xb", "stride_ok", "stride_ob", "seed_hi",
                       "step_lo", "sample_offset", "k_base", "stream")}
        done.append(_compile(noise._noise_fwd_kernel, sig, {"IN_SCALE": 1.0, "CLIP": True, "ROUND8": True,
                                                            "HAS_GRAY": variant == "u8-gray", "BLOCK": 1024}))
    sig = {"x_ptr": P32, "w_ptr": P32, "kern_ptr": P32, "out_ptr": P16,
           **_ints("K", "B", "C", "H", "W", "stride_xk", "stride_xb", "stride_ok", "stride_ob")}
    for axis in (0, 1):
        done.append(_compile(blur._blur_sep_fwd_kernel, sig, {"IN_SCALE": 1.0, "T": 7, "AXIS": axis, "BH": 16, "BW": 64}))
    done.append(_compile(blur._blur2d_fwd_kernel, sig, {"IN_SCALE": 1.0, "T": 5, "BH": 16, "BW": 64}))
    sig = {"x_ptr": PU8, "idx_ptr": "*i32", "wt_ptr": P32, "out_ptr": P32, "q_ptr": P32, "d_ptr": P32,
           "y_ptr": P32, "c_ptr": P32,
           **_ints("H_in", "W_in", "H_out", "W_out", "T", "n_blocks", "blocks_per_row", "blocks_per_plane",
                   "Wp", "H", "W", "Hp")}
    done.append(_compile(resize._resample_fwd_kernel, sig, {"IN_SCALE": 1 / 255, "AXIS": 1, "BH": 16, "BW": 64}))
    done.append(_compile(jpeg._jpeg_pre_fwd_kernel, sig, {"IN_SCALE": 1 / 255, "BH": 16, "BW": 32}))
    done.append(_compile(jpeg._jpeg_post_fwd_kernel, {**sig, "out_ptr": P16}, {"BH": 16, "BW": 32}))
    done.append(_compile(jpeg._jpeg_blocks_fwd_kernel, {**sig, "x_ptr": P32}, {"NB": 32}))
    sample = backends.triton_kernels("sample_crops")
    sig = {"store_ptr": PU8, "perm_ptr": "*i64", "key": "i64", "counter_base": "i64",
           **_ints("start", "batch", "height", "width", "s_n", "s_h", "s_w", "s_c", "p_k", "p_l",
                   "o_k", "o_b", "o_c", "o_h", "o_w")}
    for out_ty, to_float in ((P32, True), (P16, True), (PU8, False)):
        done.append(_compile(sample._sample_crops_fwd_kernel, {**sig, "out_ptr": out_ty},
                             {"PATCH": 48, "BLOCK": 1024, "TO_FLOAT": to_float}))
    assert len(done) == 13 and all("cubin" in k.asm for k in done)
