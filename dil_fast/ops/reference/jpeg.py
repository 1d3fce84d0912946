"""Pure-torch reference of the JPEG simulation (:mod:`dil_fast.ops.jpeg`): libjpeg/OpenCV baseline
encoding and decoding in float arithmetic; the oracle of ``kernels/jpeg.py`` and its CPU path."""

from __future__ import annotations

import math

import torch

__all__ = [
    "JPEG_LUMA_TABLE",
    "JPEG_CHROMA_TABLE",
    "jpeg_quant_tables",
    "dct8_matrix",
    "jpeg_blocks_ref",
    "jpeg_ref",
    "rgb_to_ycbcr_jpeg",
    "ycbcr_to_rgb_jpeg",
]


# ITU-T T.81 Annex K tables, natural (row-major) order.
JPEG_LUMA_TABLE = (
    16,
    11,
    10,
    16,
    24,
    40,
    51,
    61,
    12,
    12,
    14,
    19,
    26,
    58,
    60,
    55,
    14,
    13,
    16,
    24,
    40,
    57,
    69,
    56,
    14,
    17,
    22,
    29,
    51,
    87,
    80,
    62,
    18,
    22,
    37,
    56,
    68,
    109,
    103,
    77,
    24,
    35,
    55,
    64,
    81,
    104,
    113,
    92,
    49,
    64,
    78,
    87,
    103,
    121,
    120,
    101,
    72,
    92,
    95,
    98,
    112,
    100,
    103,
    99,
)
JPEG_CHROMA_TABLE = (
    17,
    18,
    24,
    47,
    99,
    99,
    99,
    99,
    18,
    21,
    26,
    66,
    99,
    99,
    99,
    99,
    24,
    26,
    56,
    99,
    99,
    99,
    99,
    99,
    47,
    66,
    99,
    99,
    99,
    99,
    99,
    99,
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


def jpeg_ref(
    x: torch.Tensor,
    quality: torch.Tensor,
    *,
    differentiable: bool = False,
    blocks_fn=None,
    tables: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
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
    c_rec = blocks_fn(chroma.reshape(B * 2, Hp // 2, Wp // 2).contiguous(), qc.repeat_interleave(2, dim=0)).reshape(
        B, 2, Hp // 2, Wp // 2
    )
    hc, wc = -(-H // 2), -(-W // 2)
    c_up = _fancy_up2(_fancy_up2(c_rec[:, :, :hc, :wc], 2), 3)
    c_up = _round(c_up, differentiable)[:, :, :H, :W]
    out = ycbcr_to_rgb_jpeg(torch.cat([y_rec[:, None, :H, :W], c_up], dim=1))
    return _round(out, differentiable).clamp(0, 255) / 255.0
