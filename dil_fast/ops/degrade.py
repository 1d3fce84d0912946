"""Public degradation ops: one function per op family, each served by the Triton kernel
(kernels/{noise,blur,resize,jpeg}.py) or the pure-torch reference (ops/ref_degrade.py).

Backend choice (dil_fast.backends): CUDA tensors prefer Triton; CPU tensors use the torch reference
unless Triton is asked for explicitly (``backend="triton"`` or ``DIL_FAST_BACKEND=triton``, which
runs under ``TRITON_INTERPRET=1``). These ops have no native (``cuda``) kernels, so
``DIL_FAST_BACKEND=cuda`` leaves them to the normal preference.

The Triton-capable ops are registered with ``torch.library.custom_op`` (namespace ``dil_fast``)
with fake implementations, so torch.compile and CUDA graphs see one op per launch.
"""
from __future__ import annotations

import functools

import torch

from .. import backends
from . import ref_degrade as ref

__all__ = [
    "pick_backend",
    "to_device",
    "gaussian_noise",
    "blur_separable",
    "blur2d",
    "resize",
    "jpeg",
]

_U64 = 0xFFFFFFFFFFFFFFFF


def pick_backend(op: str, device: torch.device, backend: str | None = None) -> str:
    """'triton' or 'torch' for ``op`` on ``device`` (``backend`` forces one; errors list why)."""
    device = torch.device(device)
    forced = backend or backends.forced_backend()
    if forced == "cuda":  # no native kernels for degradations
        forced = None
    pref = ("triton", "torch") if device.type == "cuda" else ("torch",)
    return backends.choose(op, device, pref, forced=forced)


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """Host parameters -> device without a host sync (pinned memory, non-blocking) on CUDA."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@functools.lru_cache(maxsize=128)
def _resample_tables(n_in: int, n_out: int, mode: str, device: str):
    idx, wt = ref.resample_tables(n_in, n_out, mode)
    return to_device(idx, device), to_device(wt, device)


@functools.lru_cache(maxsize=8)
def _dct(device: str) -> torch.Tensor:
    return to_device(ref.dct8_matrix(), device)


def _i64(v: int) -> int:
    # custom_op ints are int64: carry a 64-bit seed as its two's-complement value
    v = int(v) & _U64
    return v - (1 << 64) if v >= (1 << 63) else v


# ----------------------------------------------------------------------------------------------
# Gaussian noise: [K, B, C, H, W] from a shared [B, C, H, W] or independent [K, B, C, H, W] batch.

@torch.library.custom_op("dil_fast::degrade_noise", mutates_args=())
def _noise_op(x: torch.Tensor, sigma: torch.Tensor, gray: torch.Tensor | None, seed: int, step: int,
              k_base: int, sample_offset: int, stream: int, clip: bool, round8: bool,
              out_dtype: torch.dtype, backend: str) -> torch.Tensor:
    seed = int(seed) & _U64
    if backend == "triton":
        return backends.triton_kernels("noise").noise_fwd(
            x, sigma, seed=seed, step=step, k_base=k_base, sample_offset=sample_offset, stream=stream,
            clip=clip, round8=round8, gray=gray, out_dtype=out_dtype)
    K = sigma.shape[0]
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x
    outs = []
    for k in range(K):
        xk = xf if x.dim() == 4 else xf[k]
        outs.append(ref.gaussian_noise_ref(
            xk, sigma[k], seed=seed, step=step, k=k_base + k, sample_offset=sample_offset, stream=stream,
            clip=clip, round8=round8, gray=None if gray is None else gray[k]).to(out_dtype))
    return torch.stack(outs)


@_noise_op.register_fake
def _(x, sigma, gray, seed, step, k_base, sample_offset, stream, clip, round8, out_dtype, backend):
    return x.new_empty((sigma.shape[0],) + tuple(x.shape[-4:]), dtype=out_dtype)


def gaussian_noise(x: torch.Tensor, sigma: torch.Tensor, *, seed: int, step: int, k_base: int = 0,
                   sample_offset: int = 0, stream: int = 0, clip: bool = True, round8: bool = False,
                   gray: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32,
                   backend: str | None = None) -> torch.Tensor:
    """K noisy versions: x ``[B, C, H, W]`` (shared) or ``[K, B, C, H, W]``, uint8 or float on
    [0, 1]; sigma ``[K, B]`` on the [0, 1] scale; gray ``[K, B]`` bool. -> ``[K, B, C, H, W]``.
    Confounder k uses counter word ``k_base + k``; one launch writes all K (clean read once)."""
    if sigma.dim() != 2:
        raise ValueError(f"sigma must be [K, B], got shape {tuple(sigma.shape)}")
    if x.dim() not in (4, 5) or (x.dim() == 5 and x.shape[0] != sigma.shape[0]) or x.shape[-4] != sigma.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} does not match sigma [K, B] = {tuple(sigma.shape)}")
    be = pick_backend("degrade.noise", x.device, backend)
    sigma = sigma.to(device=x.device, dtype=torch.float32)
    if gray is not None:
        gray = gray.to(device=x.device, dtype=torch.bool)
    return _noise_op(x.contiguous(), sigma, gray, _i64(seed), int(step), int(k_base), int(sample_offset),
                     int(stream), bool(clip), bool(round8), out_dtype, be)


# ----------------------------------------------------------------------------------------------
# Separable blur (K-fused) and per-sample 2-D blur, reflect-101 borders.

@torch.library.custom_op("dil_fast::degrade_blur_sep", mutates_args=())
def _blur_sep_op(x: torch.Tensor, weights: torch.Tensor, out_dtype: torch.dtype, backend: str) -> torch.Tensor:
    K, B, _ = weights.shape
    if backend == "triton":
        kern = backends.triton_kernels("blur")
        tmp = kern.blur_sep_fwd(x, weights, 1)
        return kern.blur_sep_fwd(tmp.reshape(K * B, *tmp.shape[2:]), weights.reshape(1, K * B, -1), 0,
                                 out_dtype=out_dtype).reshape(tmp.shape)
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x
    outs = []
    for k in range(K):
        xk = xf if x.dim() == 4 else xf[k]
        outs.append(ref.blur_sep_ref(ref.blur_sep_ref(xk, weights[k], 3), weights[k], 2).to(out_dtype))
    return torch.stack(outs)


@_blur_sep_op.register_fake
def _(x, weights, out_dtype, backend):
    return x.new_empty((weights.shape[0],) + tuple(x.shape[-4:]), dtype=out_dtype)


def blur_separable(x: torch.Tensor, weights: torch.Tensor, *, out_dtype: torch.dtype = torch.float32,
                   backend: str | None = None) -> torch.Tensor:
    """K separable blurs (the same 1-D kernel along W, then along H): x ``[B, C, H, W]`` (shared)
    or ``[K, B, C, H, W]``; weights ``[K, B, T]`` (T odd) -> ``[K, B, C, H, W]``."""
    if weights.dim() != 3 or weights.shape[-1] % 2 != 1:
        raise ValueError(f"weights must be [K, B, T] with T odd, got {tuple(weights.shape)}")
    be = pick_backend("degrade.blur", x.device, backend)
    return _blur_sep_op(x.contiguous(), weights.to(device=x.device, dtype=torch.float32).contiguous(), out_dtype, be)


@torch.library.custom_op("dil_fast::degrade_blur2d", mutates_args=())
def _blur2d_op(x: torch.Tensor, kernels: torch.Tensor, out_dtype: torch.dtype, backend: str) -> torch.Tensor:
    if backend == "triton":
        return backends.triton_kernels("blur").blur2d_fwd(x, kernels, out_dtype=out_dtype)
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x
    return ref.blur2d_ref(xf, kernels).to(out_dtype)


@_blur2d_op.register_fake
def _(x, kernels, out_dtype, backend):
    return x.new_empty(x.shape, dtype=out_dtype)


def blur2d(x: torch.Tensor, kernels: torch.Tensor, *, out_dtype: torch.dtype = torch.float32,
           backend: str | None = None) -> torch.Tensor:
    """Per-sample 2-D correlation: x ``[N, C, H, W]``, kernels ``[N, T, T]`` (T odd)."""
    if kernels.dim() != 3 or kernels.shape[0] != x.shape[0] or kernels.shape[1] != kernels.shape[2] or kernels.shape[1] % 2 != 1:
        raise ValueError(f"kernels must be [N, T, T] with T odd and N = {x.shape[0]}, got {tuple(kernels.shape)}")
    be = pick_backend("degrade.blur", x.device, backend)
    return _blur2d_op(x.contiguous(), kernels.to(device=x.device, dtype=torch.float32).contiguous(), out_dtype, be)


# ----------------------------------------------------------------------------------------------
# Resize (tables fix the convention: torch antialias=True for bilinear/bicubic, 'area' pooling).

@torch.library.custom_op("dil_fast::degrade_resample", mutates_args=())
def _resample_op(x: torch.Tensor, idx_h: torch.Tensor, wt_h: torch.Tensor, idx_w: torch.Tensor,
                 wt_w: torch.Tensor, out_dtype: torch.dtype, backend: str) -> torch.Tensor:
    if backend == "triton":
        kern = backends.triton_kernels("resize")
        return kern.resample_fwd(kern.resample_fwd(x, idx_h, wt_h, 0), idx_w, wt_w, 1, out_dtype=out_dtype)
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x
    return ref.resample_ref(ref.resample_ref(xf, idx_h, wt_h, 2), idx_w, wt_w, 3).to(out_dtype)


@_resample_op.register_fake
def _(x, idx_h, wt_h, idx_w, wt_w, out_dtype, backend):
    return x.new_empty((x.shape[0], x.shape[1], idx_h.shape[0], idx_w.shape[0]), dtype=out_dtype)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic", *, out_dtype: torch.dtype = torch.float32,
           backend: str | None = None) -> torch.Tensor:
    """x ``[N, C, H, W]`` -> ``[N, C, size[0], size[1]]``, as ``F.interpolate(x, size, mode=mode,
    antialias=True)`` for 'bilinear'/'bicubic' and ``mode='area'`` for 'area' (no clamping)."""
    H, W = x.shape[-2:]
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"resize to {size} is empty")
    if mode not in ("area", "bilinear", "bicubic"):
        raise ValueError(f"resize mode {mode!r} is not one of 'area', 'bilinear', 'bicubic'")
    idx_h, wt_h = _resample_tables(H, h, mode, str(x.device))
    idx_w, wt_w = _resample_tables(W, w, mode, str(x.device))
    be = pick_backend("degrade.resize", x.device, backend)
    return _resample_op(x.contiguous(), idx_h, wt_h, idx_w, wt_w, out_dtype, be)


# ----------------------------------------------------------------------------------------------
# JPEG simulation: colour stages in torch, the 8x8 block stage as one op.

@torch.library.custom_op("dil_fast::degrade_jpeg_blocks", mutates_args=())
def _jpeg_blocks_op(plane: torch.Tensor, qtable: torch.Tensor, backend: str) -> torch.Tensor:
    if backend == "triton":
        return backends.triton_kernels("jpeg").jpeg_blocks_fwd(plane, qtable, _dct(str(plane.device)))
    return ref.jpeg_blocks_ref(plane, qtable)


@_jpeg_blocks_op.register_fake
def _(plane, qtable, backend):
    return torch.empty_like(plane, dtype=torch.float32)


@torch.library.custom_op("dil_fast::degrade_jpeg", mutates_args=())
def _jpeg_op(x: torch.Tensor, luma_q: torch.Tensor, chroma_q: torch.Tensor, out_dtype: torch.dtype,
             backend: str) -> torch.Tensor:
    if backend == "triton":
        return backends.triton_kernels("jpeg").jpeg_fwd(x, luma_q, chroma_q, _dct(str(x.device)), out_dtype=out_dtype)
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x
    return ref.jpeg_ref(xf, luma_q, tables=(luma_q, chroma_q)).to(out_dtype)


@_jpeg_op.register_fake
def _(x, luma_q, chroma_q, out_dtype, backend):
    return x.new_empty(x.shape, dtype=out_dtype)


def jpeg(x: torch.Tensor, quality: torch.Tensor, *, differentiable: bool = False,
         out_dtype: torch.dtype = torch.float32, backend: str | None = None) -> torch.Tensor:
    """Baseline JPEG simulation (see :func:`ref_degrade.jpeg_ref`): x ``[B, 3, H, W]`` on [0, 1]
    (or uint8), quality ``[B]`` ints (host tensor or list; tables are built on the host).
    ``differentiable=True`` always runs the torch path (autograd)."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"JPEG simulation takes RGB images [B, 3, H, W], got {tuple(x.shape)}")
    quality = torch.as_tensor(quality).cpu().reshape(-1).expand(x.shape[0])
    luma_q, chroma_q = (to_device(t, x.device) for t in ref.jpeg_quant_tables(quality))
    if differentiable:
        xf = x.float() / 255.0 if x.dtype == torch.uint8 else x
        return ref.jpeg_ref(xf, quality, differentiable=True, tables=(luma_q, chroma_q)).to(out_dtype)
    be = pick_backend("degrade.jpeg", x.device, backend)
    return _jpeg_op(x.contiguous(), luma_q, chroma_q, out_dtype, be)
