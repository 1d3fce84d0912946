"""Pure-torch references of the degradation ops: the oracle of every kernel in kernels/{noise,blur,
jpeg,resize}.py and the CPU path.

Counter-based randomness (shared with the Triton kernels, bit for bit up to the float rounding of
``log``/``cos``/``sin``): Philox-4x32 with 10 rounds (Salmon et al., SC'11). A draw is addressed by

    key     = (seed mod 2**32, (seed >> 32) mod 2**32)
    counter = (c0 = index inside the stream,
               c1 = GLOBAL sample index (sample_offset + b),
               c2 = (confounder index k mod 2**16) | (stream << 16),
               c3 = step mod 2**32)

so a sample's distortion depends only on (seed, step, k, its global index, stream) and never on the
batch split, the number of GPUs or workers. ``stream = stage << 3 | purpose`` separates the pixel
field of a spec (purpose 0), its per-sample parameters (1), its per-batch parameters (2) and
auxiliary fields (3) from those of the other stages of a Compose.

Uniforms: ``u = ((x >> 9) * 2 + 1) * 2**-24`` in (0, 1), exact in float32. Normals: Box-Muller on
the 4 uniforms of one counter, ``n[4j+0,1] = r(u0) (cos, sin)(2 pi u1)``,
``n[4j+2,3] = r(u2) (cos, sin)(2 pi u3)`` with ``r(u) = sqrt(-2 ln u)``, in float32.
All integer work here is done in int64 tensors holding uint32 values.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "philox4x32_ref",
    "philox_uniform_ref",
    "philox_normal_ref",
    "seed_key",
    "stream_word",
    "gaussian_noise_ref",
    "reflect101_index",
    "blur_sep_ref",
    "blur2d_ref",
    "resample_tables",
    "resample_ref",
    "JPEG_LUMA_TABLE",
    "JPEG_CHROMA_TABLE",
    "jpeg_quant_tables",
    "dct8_matrix",
    "jpeg_blocks_ref",
    "jpeg_ref",
    "rgb_to_ycbcr_jpeg",
    "ycbcr_to_rgb_jpeg",
]

M32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
TWO_PI = 6.283185307179586


def seed_key(seed: int) -> tuple[int, int]:
    """The Philox key words of a (64-bit) seed."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return seed & M32, (seed >> 32) & M32


def stream_word(k: int, stream: int) -> int:
    """Counter word c2: confounder index in the low 16 bits, stream in the high 16."""
    return (int(k) & 0xFFFF) | ((int(stream) & 0xFFFF) << 16)


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    # a * m < 2**64 wraps in int64 two's complement; its low 64 bits, hence both words, are exact.
    p = a * m
    return (p >> 32) & M32, p & M32


def _mulhilo_split(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    # the same without relying on wrapping: partial products that fit in int64 (tests compare both)
    t1 = a * (m & 0xFFFF)
    t2 = a * (m >> 16)
    mid = t1 + ((t2 & 0xFFFF) << 16)
    return ((mid >> 32) + (t2 >> 16)) & M32, mid & M32


def philox4x32_ref(c0, c1, c2, c3, k0: int, k1: int, rounds: int = PHILOX_ROUNDS, *, mulhilo=None):
    """Philox-4x32 of broadcastable int64 counters holding uint32 values -> 4 int64 tensors."""
    mulhilo = mulhilo or _mulhilo
    c0, c1, c2, c3 = torch.broadcast_tensors(*(torch.as_tensor(c, dtype=torch.int64) for c in (c0, c1, c2, c3)))
    k0, k1 = int(k0) & M32, int(k1) & M32
    for _ in range(rounds):
        hi0, lo0 = mulhilo(c0, PHILOX_M0)
        hi1, lo1 = mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1.bitwise_xor_(c1).bitwise_xor_(k0), lo1, hi0.bitwise_xor_(c3).bitwise_xor_(k1), lo0
        k0 = (k0 + PHILOX_W0) & M32
        k1 = (k1 + PHILOX_W1) & M32
    return c0, c1, c2, c3


def _to_uniform(x: torch.Tensor) -> torch.Tensor:
    return ((x >> 9).to(torch.float32) * 2.0 + 1.0) * (1.0 / 16777216.0)


def philox_uniform_ref(n: int, sample_index: torch.Tensor, *, seed: int, step: int, k: int, stream: int):
    """Uniforms in (0, 1): ``[S, n]`` for the global sample indices ``sample_index`` ``[S]``."""
    k0, k1 = seed_key(seed)
    j = torch.arange((n + 3) // 4, dtype=torch.int64, device=sample_index.device)
    r = philox4x32_ref(j[None, :], (sample_index.to(torch.int64) & M32)[:, None],
                       stream_word(k, stream), int(step) & M32, k0, k1)
    u = torch.stack([_to_uniform(x) for x in r], dim=-1).reshape(sample_index.shape[0], -1)
    return u[:, :n]


def philox_normal_ref(n: int, sample_index: torch.Tensor, *, seed: int, step: int, k: int, stream: int = 0):
    """Standard normals ``[S, n]`` (float32) of the counter scheme in the module docstring."""
    k0, k1 = seed_key(seed)
    j = torch.arange((n + 3) // 4, dtype=torch.int64, device=sample_index.device)
    x0, x1, x2, x3 = philox4x32_ref(j[None, :], (sample_index.to(torch.int64) & M32)[:, None],
                                    stream_word(k, stream), int(step) & M32, k0, k1)
    u0, u1, u2, u3 = (_to_uniform(x) for x in (x0, x1, x2, x3))
    r0 = torch.sqrt(-2.0 * torch.log(u0))
    r2 = torch.sqrt(-2.0 * torch.log(u2))
    t1 = TWO_PI * u1
    t3 = TWO_PI * u3
    n4 = torch.stack([r0 * torch.cos(t1), r0 * torch.sin(t1), r2 * torch.cos(t3), r2 * torch.sin(t3)], dim=-1)
    return n4.reshape(sample_index.shape[0], -1)[:, :n]


def gaussian_noise_ref(x: torch.Tensor, sigma: torch.Tensor, *, seed: int, step: int, k: int = 0,
                       sample_offset: int = 0, stream: int = 0, clip: bool = True, round8: bool = False,
                       gray: torch.Tensor | None = None, normal: torch.Tensor | None = None) -> torch.Tensor:
    """``x + sigma[b] * n`` (then clip to [0, 1], then round to multiples of 1/255), in float32.

    x ``[B, C, H, W]`` on [0, 1]; sigma ``[B]`` on the [0, 1] scale (sigma_255 / 255); gray ``[B]``
    bool: one field for all channels. The field element of pixel (c, h, w) is normal number
    ``c*H*W + h*W + w`` of the sample's stream (``h*W + w`` when gray); ``normal`` ``[B, C*H*W]``
    replaces the drawn field (to test a kernel's arithmetic apart from its random numbers).
    """
    B, C, H, W = x.shape
    xf = x.float()
    if normal is None:
        idx = torch.arange(B, device=x.device, dtype=torch.int64) + int(sample_offset)
        normal = philox_normal_ref(C * H * W, idx, seed=seed, step=step, k=k, stream=stream)
    n = normal.reshape(B, C, H, W).float()
    if gray is not None:
        n = torch.where(gray.reshape(B, 1, 1, 1).bool(), n[:, :1].expand(B, C, H, W), n)
    y = xf + sigma.float().reshape(B, 1, 1, 1) * n
    if clip:
        y = y.clamp(0.0, 1.0)
    if round8:
        y = torch.floor(y * 255.0 + 0.5) / 255.0
    return y


def reflect101_index(n_out: int, n: int, start: int, device=None) -> torch.Tensor:
    """Indices ``start .. start+n_out-1`` folded into [0, n) by reflection without edge repeat
    (OpenCV BORDER_REFLECT_101 == torch 'reflect'), repeated as often as needed."""
    i = torch.arange(start, start + n_out, device=device, dtype=torch.int64)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * n - 2
    i = i.abs() % period
    return torch.where(i >= n, period - i, i)


def blur_sep_ref(x: torch.Tensor, weights: torch.Tensor, dim: int) -> torch.Tensor:
    """One separable pass: ``out[n, ..., i, ...] = sum_t w[n, t] x[n, ..., reflect(i + t - R), ...]``.

    x ``[N, C, H, W]``; weights ``[N, T]`` (T odd, R = T // 2); dim 2 (H) or 3 (W). Taps summed in
    order t = 0..T-1 in float32 (the kernel's order).
    """
    N, T = weights.shape
    R = T // 2
    n = x.shape[dim]
    idx = reflect101_index(n + 2 * R, n, -R, x.device)
    xp = x.float().index_select(dim, idx)
    w = weights.float()
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for t in range(T):
        out = out + w[:, t].reshape(N, 1, 1, 1) * xp.narrow(dim, t, n)
    return out


def blur2d_ref(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Per-sample 2-D correlation with reflect-101 borders: x ``[N, C, H, W]``, kernels ``[N, T, T]``."""
    N, C, H, W = x.shape
    T = kernels.shape[-1]
    R = T // 2
    xp = x.float().index_select(2, reflect101_index(H + 2 * R, H, -R, x.device))
    xp = xp.index_select(3, reflect101_index(W + 2 * R, W, -R, x.device))
    weight = kernels.float().reshape(N, 1, 1, T, T).expand(N, C, 1, T, T).reshape(N * C, 1, T, T)
    out = F.conv2d(xp.reshape(1, N * C, H + 2 * R, W + 2 * R), weight, groups=N * C)
    return out.reshape(N, C, H, W)


def _cubic_aa(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    x = x.abs()
    return torch.where(
        x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
        torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, torch.zeros_like(x)),
    )


def resample_tables(n_in: int, n_out: int, mode: str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index and weight tables ``[n_out, T]`` of a 1-D resampling (zero weights pad short rows).

    Convention: torch ``F.interpolate(size=..., align_corners=False, antialias=True)`` for
    'bilinear' and 'bicubic' (PIL-style: filter stretched by the scale when shrinking, cubic
    a = -0.5, taps cut at the border and renormalised), and ``F.interpolate(mode='area')``
    (adaptive average pooling) for 'area'.
    """
    scale = n_in / n_out
    rows_i, rows_w = [], []
    if mode == "area":
        for i in range(n_out):
            s = (i * n_in) // n_out
            e = -((-(i + 1) * n_in) // n_out)
            rows_i.append(list(range(s, e)))
            rows_w.append([1.0 / (e - s)] * (e - s))
    elif mode in ("bilinear", "bicubic"):
        half = 1.0 if mode == "bilinear" else 2.0
        support = half * scale if scale >= 1.0 else half
        inv = 1.0 / scale if scale >= 1.0 else 1.0
        for i in range(n_out):
            center = scale * (i + 0.5)
            xmin = max(int(center - support + 0.5), 0)
            xmax = min(int(center + support + 0.5), n_in)
            j = torch.arange(xmin, xmax, dtype=torch.float64)
            arg = (j - center + 0.5) * inv
            w = (1.0 - arg.abs()).clamp_min(0.0) if mode == "bilinear" else _cubic_aa(arg)
            total = float(w.sum())
            w = w / total if total != 0.0 else w
            rows_i.append(list(range(xmin, xmax)))
            rows_w.append(w.tolist())
    else:
        raise ValueError(f"resize mode {mode!r} is not one of 'area', 'bilinear', 'bicubic'")
    T = max(len(r) for r in rows_i)
    idx = torch.zeros(n_out, T, dtype=torch.int32)
    wt = torch.zeros(n_out, T, dtype=torch.float32)
    for i, (ri, rw) in enumerate(zip(rows_i, rows_w)):
        idx[i, : len(ri)] = torch.tensor(ri, dtype=torch.int32)
        idx[i, len(ri):] = ri[-1]
        wt[i, : len(rw)] = torch.tensor(rw, dtype=torch.float32)
    return idx.to(device), wt.to(device)


def resample_ref(x: torch.Tensor, idx: torch.Tensor, wt: torch.Tensor, dim: int) -> torch.Tensor:
    """One separable resampling pass along dim (2 or 3): ``out[.., i, ..] = sum_t wt[i,t] x[.., idx[i,t], ..]``."""
    n_out, T = idx.shape
    xf = x.float()
    out = None
    for t in range(T):
        g = xf.index_select(dim, idx[:, t].long())
        shape = [1, 1, 1, 1]
        shape[dim] = n_out
        term = wt[:, t].reshape(shape) * g
        out = term if out is None else out + term
    return out


# ITU-T T.81 Annex K tables, natural (row-major) order.
JPEG_LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)
JPEG_CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
) + (99,) * 32


def jpeg_quant_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """libjpeg's quality scaling (baseline, values clamped to [1, 255]): quality ``[B]`` int ->
    luma and chroma tables ``[B, 64]`` float32."""
    q = quality.to(torch.int64).clamp(1, 100)
    scale = torch.where(q < 50, 5000 // q, 200 - 2 * q)
    out = []
    for base in (JPEG_LUMA_TABLE, JPEG_CHROMA_TABLE):
        b = torch.tensor(base, dtype=torch.int64, device=q.device)
        out.append(((b[None, :] * scale[:, None] + 50) // 100).clamp(1, 255).float())
    return out[0], out[1]


def dct8_matrix(device=None) -> torch.Tensor:
    """``D[k, u]``: 2-D orthonormal DCT-II basis of JPEG, pixel k = 8y + x, coefficient u = 8v + w;
    ``coef = pixels @ D``, ``pixels = coef @ D.T``."""
    n = torch.arange(8, dtype=torch.float64)
    c = torch.where(n == 0, math.sqrt(1 / 8), math.sqrt(2 / 8))
    d1 = c[None, :] * torch.cos((2 * n[:, None] + 1) * n[None, :] * math.pi / 16)  # [pixel, freq]
    d2 = torch.einsum("yv,xw->yxvw", d1, d1).reshape(64, 64)
    return d2.float().to(device)


def _round(x: torch.Tensor, differentiable: bool) -> torch.Tensor:
    r = torch.floor(x + 0.5)
    if differentiable:
        r = r.detach()
        return r + (x - r) ** 3
    return r


def jpeg_blocks_ref(plane: torch.Tensor, qtable: torch.Tensor, *, differentiable: bool = False) -> torch.Tensor:
    """Encode + decode of every 8x8 block: plane ``[P, Hp, Wp]`` (0..255 samples, Hp, Wp multiples
    of 8), qtable ``[P, 64]`` -> ``[P, Hp, Wp]``: level shift, DCT, quantise (round half away from
    zero, as libjpeg), dequantise, inverse DCT, +128, round, clamp to [0, 255]."""
    P, Hp, Wp = plane.shape
    D = dct8_matrix(plane.device)
    blocks = (plane.float() - 128.0).reshape(P, Hp // 8, 8, Wp // 8, 8).permute(0, 1, 3, 2, 4).reshape(P, -1, 64)
    coef = blocks @ D
    q = qtable.float()[:, None, :]
    v = coef / q
    qc = torch.sign(v) * _round(v.abs(), differentiable)
    rec = (qc * q) @ D.T + 128.0
    rec = _round(rec, differentiable).clamp(0.0, 255.0)
    return rec.reshape(P, Hp // 8, Wp // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(P, Hp, Wp)


def rgb_to_ycbcr_jpeg(rgb: torch.Tensor) -> torch.Tensor:
    """JFIF (BT.601 full range) on 0..255 samples, ``[..., 3, H, W]``."""
    r, g, b = rgb.unbind(-3)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * b + 128.0
    cr = 0.5 * r - 0.418687589 * g - 0.081312411 * b + 128.0
    return torch.stack([y, cb, cr], dim=-3)


def ycbcr_to_rgb_jpeg(ycc: torch.Tensor) -> torch.Tensor:
    y, cb, cr = ycc.unbind(-3)
    cb = cb - 128.0
    cr = cr - 128.0
    return torch.stack([y + 1.402 * cr, y - 0.344136286 * cb - 0.714136286 * cr, y + 1.772 * cb], dim=-3)


def _fancy_up2(c: torch.Tensor, dim: int) -> torch.Tensor:
    # libjpeg's "fancy" (triangle) 2x upsampling: 3/4 of the nearer sample, 1/4 of the farther.
    n = c.shape[dim]
    i = torch.arange(n, device=c.device)
    prev = c.index_select(dim, (i - 1).clamp_min(0))
    nxt = c.index_select(dim, (i + 1).clamp_max(n - 1))
    even = 0.75 * c + 0.25 * prev
    odd = 0.75 * c + 0.25 * nxt
    out = torch.stack([even, odd], dim=dim + 1)
    shape = list(c.shape)
    shape[dim] = 2 * n
    return out.reshape(shape)


def jpeg_ref(x: torch.Tensor, quality: torch.Tensor, *, differentiable: bool = False, blocks_fn=None,
             tables: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Baseline JPEG simulation of RGB images x ``[B, 3, H, W]`` on [0, 1], quality ``[B]`` (1..100).

    As libjpeg/OpenCV with default settings: 8-bit samples, JFIF YCbCr (rounded), 4:2:0 chroma by
    2x2 means of the edge-replicated image padded to 16x16 MCUs, 8x8 DCT, the Annex K tables scaled
    by quality, inverse DCT, fancy (triangle) chroma upsampling, YCbCr -> RGB, round and clamp.
    Arithmetic is float (libjpeg's is integer ISLOW). ``differentiable`` replaces every rounding by
    ``r + (x - r)**3`` (r = round(x), detached). ``blocks_fn(plane, qtable)`` replaces the 8x8 block
    stage (the Triton kernel plugs in here); ``tables`` are precomputed :func:`jpeg_quant_tables`.
    """
    blocks_fn = blocks_fn or (lambda p, q: jpeg_blocks_ref(p, q, differentiable=differentiable))
    B, C, H, W = x.shape
    if C != 3:
        raise ValueError(f"JPEG simulation takes RGB images [B, 3, H, W], got {C} channels")
    Hp, Wp = -(-H // 16) * 16, -(-W // 16) * 16
    rgb = _round(x.float().clamp(0, 1) * 255.0, differentiable)
    rgb = rgb.index_select(2, torch.arange(Hp, device=x.device).clamp_max(H - 1))
    rgb = rgb.index_select(3, torch.arange(Wp, device=x.device).clamp_max(W - 1))
    ycc = _round(rgb_to_ycbcr_jpeg(rgb), differentiable).clamp(0, 255)
    y = ycc[:, 0]
    chroma = ycc[:, 1:].reshape(B, 2, Hp // 2, 2, Wp // 2, 2).mean(dim=(3, 5))
    chroma = _round(chroma, differentiable)
    ql, qc = tables if tables is not None else jpeg_quant_tables(quality.to(x.device))
    y_rec = blocks_fn(y.contiguous(), ql)
    c_rec = blocks_fn(chroma.reshape(B * 2, Hp // 2, Wp // 2).contiguous(),
                      qc.repeat_interleave(2, dim=0)).reshape(B, 2, Hp // 2, Wp // 2)
    hc, wc = -(-H // 2), -(-W // 2)
    c_up = _fancy_up2(_fancy_up2(c_rec[:, :, :hc, :wc], 2), 3)
    c_up = _round(c_up, differentiable)[:, :, :H, :W]
    out = ycbcr_to_rgb_jpeg(torch.cat([y_rec[:, None, :H, :W], c_up], dim=1))
    return _round(out, differentiable).clamp(0, 255) / 255.0
