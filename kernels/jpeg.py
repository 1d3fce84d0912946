"""JPEG simulation: encoder colour stage, the 8x8 block stage (DCT, quantisation, dequantisation,
inverse DCT; one program per group of blocks), decoder colour stage. The math and the reference:
dil_fast/ops/reference/jpeg.py."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._autotune import configs


@triton.autotune(configs=configs([{"NB": 32}, {"NB": 16}, {"NB": 64}], {"NB": 128}, (4, 8)), key=["n_blocks", "Wp"])
@triton.jit
def _jpeg_blocks_fwd_kernel(
    x_ptr,
    q_ptr,
    d_ptr,
    out_ptr,
    n_blocks,
    blocks_per_row,
    blocks_per_plane,
    Wp,
    NB: tl.constexpr,
):
    """For NB blocks of 8x8 samples (0..255) of planes [P, Hp, Wp]:
    coef[u] = sum_k (x[k] - 128) D[k, u];  c[u] = sign * floor(|coef[u] / q[p, u]| + 0.5) * q[p, u];
    out[k] = clamp(floor(sum_u c[u] D[k, u] + 128 + 0.5), 0, 255)   (k = 8y + x, u = 8v + w)."""
    blk = tl.program_id(0).to(tl.int64) * NB + tl.arange(0, NB)
    bmask = blk < n_blocks
    p = blk // blocks_per_plane
    r = blk % blocks_per_plane
    pitch = tl.cast(Wp, tl.int64)
    base = p * blocks_per_plane * 64 + (r // blocks_per_row) * 8 * pitch + (r % blocks_per_row) * 8
    u = tl.arange(0, 64)
    coef = tl.zeros((NB, 64), dtype=tl.float32)
    for k in range(64):  # runtime loops: 64-way unrolling compiles for minutes
        xk = tl.load(x_ptr + base + (k // 8) * pitch + (k % 8), mask=bmask, other=128.0).to(tl.float32) - 128.0
        dk = tl.load(d_ptr + k * 64 + u)
        coef += xk[:, None] * dk[None, :]
    q = tl.load(q_ptr + p[:, None] * 64 + u[None, :], mask=bmask[:, None], other=1.0)
    v = coef / q
    a = tl.floor(tl.abs(v) + 0.5)
    deq = tl.where(v < 0, -a, a) * q
    for k in range(64):
        dk = tl.load(d_ptr + k * 64 + u)
        y = tl.sum(deq * dk[None, :], axis=1) + 128.0
        y = tl.minimum(tl.maximum(tl.floor(y + 0.5), 0.0), 255.0)
        tl.store(out_ptr + base + (k // 8) * pitch + (k % 8), y, mask=bmask)


def jpeg_blocks_fwd(plane: torch.Tensor, qtable: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """plane ``[P, Hp, Wp]`` float32 (0..255, Hp and Wp multiples of 8), qtable ``[P, 64]``,
    dct ``[64, 64]`` (dct8_matrix of dil_fast/ops/reference/jpeg.py) -> ``[P, Hp, Wp]`` float32."""
    P, Hp, Wp = plane.shape
    plane = plane.to(torch.float32).contiguous()
    out = torch.empty_like(plane)
    bpr = Wp // 8
    bpp = (Hp // 8) * bpr
    n_blocks = P * bpp

    def grid(meta):
        return (triton.cdiv(n_blocks, meta["NB"]),)

    _jpeg_blocks_fwd_kernel[grid](
        plane,
        qtable.to(device=plane.device, dtype=torch.float32).contiguous(),
        dct.to(device=plane.device, dtype=torch.float32).contiguous(),
        out,
        n_blocks,
        bpr,
        bpp,
        Wp,
    )
    return out


@triton.jit
def _rnd(x):
    return tl.floor(x + 0.5)


@triton.jit
def _jpeg_pre_fwd_kernel(
    x_ptr,
    y_ptr,
    c_ptr,
    H,
    W,
    Hp,
    Wp,
    IN_SCALE: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
):
    """Encoder colour stage for one sample b and a tile of chroma positions (i, j):
    rgb = round(clamp(x, 0, 1) * 255) of the edge-replicated image padded to Hp x Wp (x16);
    Y, Cb, Cr = round(JFIF(rgb)) clamped to [0, 255] -> y[b, 2i+dy, 2j+dx];
    c[b, 0|1, i, j] = round(mean of the 2x2 Cb|Cr)."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    Hc = Hp // 2
    Wc = Wp // 2
    n_tw = tl.cdiv(Wc, BW)
    i = (pid // n_tw) * BH + tl.arange(0, BH)
    j = (pid % n_tw) * BW + tl.arange(0, BW)
    m = (i[:, None] < Hc) & (j[None, :] < Wc)
    plane = tl.cast(H, tl.int64) * W
    src = x_ptr + b * 3 * plane
    cb_sum = tl.zeros((BH, BW), dtype=tl.float32)
    cr_sum = tl.zeros((BH, BW), dtype=tl.float32)
    for d in tl.static_range(4):
        hh = 2 * i + d // 2
        ww = 2 * j + d % 2
        hs = tl.minimum(hh, H - 1).to(tl.int64)
        ws = tl.minimum(ww, W - 1)
        offs = hs[:, None] * W + ws[None, :]
        r = _rnd(
            tl.minimum(tl.maximum(tl.load(src + offs, mask=m, other=0.0).to(tl.float32) * IN_SCALE, 0.0), 1.0) * 255.0
        )
        g = _rnd(
            tl.minimum(tl.maximum(tl.load(src + plane + offs, mask=m, other=0.0).to(tl.float32) * IN_SCALE, 0.0), 1.0)
            * 255.0
        )
        bl = _rnd(
            tl.minimum(
                tl.maximum(tl.load(src + 2 * plane + offs, mask=m, other=0.0).to(tl.float32) * IN_SCALE, 0.0), 1.0
            )
            * 255.0
        )
        yv = 0.299 * r + 0.587 * g + 0.114 * bl
        cb = -0.168735892 * r - 0.331264108 * g + 0.5 * bl + 128.0
        cr = 0.5 * r - 0.418687589 * g - 0.081312411 * bl + 128.0
        yv = tl.minimum(tl.maximum(_rnd(yv), 0.0), 255.0)
        cb_sum += tl.minimum(tl.maximum(_rnd(cb), 0.0), 255.0)
        cr_sum += tl.minimum(tl.maximum(_rnd(cr), 0.0), 255.0)
        tl.store(y_ptr + b * Hp * Wp + hh[:, None].to(tl.int64) * Wp + ww[None, :], yv, mask=m)
    coffs = i[:, None].to(tl.int64) * Wc + j[None, :]
    tl.store(c_ptr + (2 * b) * Hc * Wc + coffs, _rnd(cb_sum / 4.0), mask=m)
    tl.store(c_ptr + (2 * b + 1) * Hc * Wc + coffs, _rnd(cr_sum / 4.0), mask=m)


@triton.jit
def _fancy(c_ptr, i, j, i2, j2, Wc, mask):
    """libjpeg's triangle upsampling at one output sample: 3/4 nearer + 1/4 farther, H then W."""
    a = tl.load(c_ptr + i[:, None] * Wc + j[None, :], mask=mask, other=0.0)
    bv = tl.load(c_ptr + i2[:, None] * Wc + j[None, :], mask=mask, other=0.0)
    c = tl.load(c_ptr + i[:, None] * Wc + j2[None, :], mask=mask, other=0.0)
    d = tl.load(c_ptr + i2[:, None] * Wc + j2[None, :], mask=mask, other=0.0)
    return 0.75 * (0.75 * a + 0.25 * bv) + 0.25 * (0.75 * c + 0.25 * d)


@triton.jit
def _jpeg_post_fwd_kernel(
    y_ptr,
    c_ptr,
    out_ptr,
    H,
    W,
    Hp,
    Wp,
    BH: tl.constexpr,
    BW: tl.constexpr,
):
    """Decoder colour stage: fancy-upsample the decoded chroma (its ceil(H/2) x ceil(W/2) part,
    edges replicated), round, JFIF YCbCr -> RGB, round, clamp, / 255 -> out[b, 3, H, W]."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    Hc = Hp // 2
    Wc = Wp // 2
    hc = (H + 1) // 2
    wc = (W + 1) // 2
    n_tw = tl.cdiv(W, BW)
    h = (pid // n_tw) * BH + tl.arange(0, BH)
    w = (pid % n_tw) * BW + tl.arange(0, BW)
    m = (h[:, None] < H) & (w[None, :] < W)
    i = (h // 2).to(tl.int64)
    j = w // 2
    i2 = tl.where(h % 2 == 0, tl.maximum(i - 1, 0), tl.minimum(i + 1, hc - 1))
    j2 = tl.where(w % 2 == 0, tl.maximum(j - 1, 0), tl.minimum(j + 1, wc - 1))
    cb = _rnd(_fancy(c_ptr + (2 * b) * Hc * Wc, i, j, i2, j2, Wc, m)) - 128.0
    cr = _rnd(_fancy(c_ptr + (2 * b + 1) * Hc * Wc, i, j, i2, j2, Wc, m)) - 128.0
    yv = tl.load(y_ptr + b * Hp * Wp + h[:, None].to(tl.int64) * Wp + w[None, :], mask=m, other=0.0)
    r = yv + 1.402 * cr
    g = yv - 0.344136286 * cb - 0.714136286 * cr
    bl = yv + 1.772 * cb
    plane = tl.cast(H, tl.int64) * W
    dst = out_ptr + b * 3 * plane + h[:, None].to(tl.int64) * W + w[None, :]
    tl.store(dst, (tl.minimum(tl.maximum(_rnd(r), 0.0), 255.0) / 255.0).to(out_ptr.dtype.element_ty), mask=m)
    tl.store(dst + plane, (tl.minimum(tl.maximum(_rnd(g), 0.0), 255.0) / 255.0).to(out_ptr.dtype.element_ty), mask=m)
    tl.store(
        dst + 2 * plane, (tl.minimum(tl.maximum(_rnd(bl), 0.0), 255.0) / 255.0).to(out_ptr.dtype.element_ty), mask=m
    )


def jpeg_fwd(
    x: torch.Tensor, luma_q: torch.Tensor, chroma_q: torch.Tensor, dct: torch.Tensor, *, out_dtype=torch.float32
) -> torch.Tensor:
    """Whole JPEG simulation of x ``[B, 3, H, W]`` (float on [0, 1] or uint8), tables ``[B, 64]``:
    colour stage, luma and chroma block stages, decoder colour stage (4 launches)."""
    B, C, H, W = x.shape
    x = x.contiguous()
    Hp, Wp = triton.cdiv(H, 16) * 16, triton.cdiv(W, 16) * 16
    y = torch.empty((B, Hp, Wp), dtype=torch.float32, device=x.device)
    c = torch.empty((B * 2, Hp // 2, Wp // 2), dtype=torch.float32, device=x.device)
    bh, bw = (64, 128) if x.device.type == "cpu" else (16, 32)
    _jpeg_pre_fwd_kernel[(triton.cdiv(Hp // 2, bh) * triton.cdiv(Wp // 2, bw), B)](
        x, y, c, H, W, Hp, Wp, IN_SCALE=1.0 / 255.0 if x.dtype == torch.uint8 else 1.0, BH=bh, BW=bw
    )
    y = jpeg_blocks_fwd(y, luma_q, dct)
    c = jpeg_blocks_fwd(c, chroma_q.repeat_interleave(2, dim=0), dct)
    out = torch.empty((B, 3, H, W), dtype=out_dtype, device=x.device)
    _jpeg_post_fwd_kernel[(triton.cdiv(H, bh) * triton.cdiv(W, bw), B)](y, c, out, H, W, Hp, Wp, BH=bh, BW=bw)
    return out
