"""Production randomness: counter-based streams that make every draw a pure function of its address.

Two generators, both shared bit for bit by the torch code here and the Triton kernels:

**Philox-4x32-10** (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) for the
degradations (noise fields, per-sample parameters). A draw is addressed by

    key     = (seed mod 2**32, (seed >> 32) mod 2**32)
    counter = (c0 = index inside the stream,
               c1 = GLOBAL sample index (sample_offset + b),
               c2 = (confounder index k mod 2**16) | (stream << 16),
               c3 = step mod 2**32)

so a sample's distortion depends only on (seed, step, k, its global index, stream) and never on the
batch split, the number of GPUs or workers. ``stream = stage << 3 | purpose`` separates the pixel
field of a spec (purpose 0), its per-sample parameters (1), its per-batch parameters (2) and
auxiliary fields (3) from those of the other stages of a Compose. Uniforms:
``u = ((x >> 9) * 2 + 1) * 2**-24`` in (0, 1), exact in float32. Normals: Box-Muller on the 4
uniforms of one counter, ``n[4j+0,1] = r(u0) (cos, sin)(2 pi u1)``, ``n[4j+2,3] = r(u2) (cos,
sin)(2 pi u3)`` with ``r(u) = sqrt(-2 ln u)``, in float32. Integer work is done in int64 tensors
holding uint32 values.

**The crop hash** (lowbias32 avalanche mixing) for the patch sampler: the offsets and dihedral mode
of one sample are a hash of a 31-bit ``key`` (from seed and epoch, :func:`stream_key`), the
confounder ``k`` and the sample's ``position`` in that confounder's epoch order, so resuming at any
position reproduces the crops exactly. Integer draws use the high 32 bits of ``hash * range``
(bias below ``range / 2**32``); multiplications are split in 16-bit halves so int64 never
overflows, which the Triton kernel repeats operation for operation.
"""

from __future__ import annotations

import torch

__all__ = [
    "seed_key",
    "stream_word",
    "philox4x32",
    "philox_uniform",
    "philox_normal",
    "mix32",
    "mix32_int",
    "stream_key",
    "crop_params",
]

M32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
TWO_PI = 6.283185307179586


# ---------------------------------------------------------------------------------------- Philox
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


def philox4x32(c0, c1, c2, c3, k0: int, k1: int, rounds: int = PHILOX_ROUNDS, *, mulhilo=None):
    """Philox-4x32 of broadcastable int64 counters holding uint32 values -> 4 int64 tensors."""
    mulhilo = mulhilo or _mulhilo
    # counters given as Python ints join the device of those given as tensors (CUDA sample indices)
    device = next((c.device for c in (c0, c1, c2, c3) if isinstance(c, torch.Tensor)), None)
    c0, c1, c2, c3 = torch.broadcast_tensors(
        *(torch.as_tensor(c, dtype=torch.int64, device=device) for c in (c0, c1, c2, c3))
    )
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


def _counters(n: int, sample_index: torch.Tensor, *, seed: int, step: int, k: int, stream: int):
    k0, k1 = seed_key(seed)
    j = torch.arange((n + 3) // 4, dtype=torch.int64, device=sample_index.device)
    return philox4x32(
        j[None, :], (sample_index.to(torch.int64) & M32)[:, None], stream_word(k, stream), int(step) & M32, k0, k1
    )


def philox_uniform(n: int, sample_index: torch.Tensor, *, seed: int, step: int, k: int, stream: int) -> torch.Tensor:
    """Uniforms in (0, 1): ``[S, n]`` for the global sample indices ``sample_index`` ``[S]``."""
    r = _counters(n, sample_index, seed=seed, step=step, k=k, stream=stream)
    u = torch.stack([_to_uniform(x) for x in r], dim=-1).reshape(sample_index.shape[0], -1)
    return u[:, :n]


def philox_normal(n: int, sample_index: torch.Tensor, *, seed: int, step: int, k: int, stream: int = 0) -> torch.Tensor:
    """Standard normals ``[S, n]`` (float32) of the counter scheme in the module docstring."""
    u0, u1, u2, u3 = (_to_uniform(x) for x in _counters(n, sample_index, seed=seed, step=step, k=k, stream=stream))
    r0 = torch.sqrt(-2.0 * torch.log(u0))
    r2 = torch.sqrt(-2.0 * torch.log(u2))
    t1 = TWO_PI * u1
    t3 = TWO_PI * u3
    n4 = torch.stack([r0 * torch.cos(t1), r0 * torch.sin(t1), r2 * torch.cos(t3), r2 * torch.sin(t3)], dim=-1)
    return n4.reshape(sample_index.shape[0], -1)[:, :n]


# ------------------------------------------------------------------------------------ crop hash
_C1 = 0x7FEB352D  # multipliers of the "lowbias32" integer hash (public-domain hash-prospector result)
_C2 = 0x846CA68B


def _mul32(x, c: int):
    """(x * c) mod 2**32 for 0 <= x < 2**32 without overflowing int64."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & M32


def mix32(x):
    """32-bit avalanche hash of int64 values in [0, 2**32) (tensor or int)."""
    x = x ^ (x >> 16)
    x = _mul32(x, _C1)
    x = x ^ (x >> 15)
    x = _mul32(x, _C2)
    x = x ^ (x >> 16)
    return x


def mix32_int(x: int) -> int:
    return int(mix32(int(x) & M32))


def stream_key(seed: int, epoch: int, salt: int = 0) -> int:
    """31-bit key of the random stream for (seed, epoch, salt); fits a Triton int32 argument."""
    seed = int(seed) & ((1 << 64) - 1)
    h = mix32_int((seed & M32) ^ mix32_int(seed >> 32))
    h = mix32_int(h ^ mix32_int(int(epoch) & M32))
    h = mix32_int(h ^ mix32_int((int(salt) + 0x9E3779B9) & M32))
    return h & 0x7FFFFFFF


def crop_params(key: int, k, position, height: int, width: int, patch: int):
    """(y, x, mode) int64 tensors for samples of confounder ``k`` at epoch ``position``: offsets
    uniform over every valid corner ``0 .. H-p`` / ``0 .. W-p`` inclusive, mode uniform over 0..7.

    ``k`` and ``position`` are int64 tensors (broadcast together), ``key`` from :func:`stream_key`.
    """
    k = torch.as_tensor(k, dtype=torch.int64)
    position = torch.as_tensor(position, dtype=torch.int64)
    base = mix32(key ^ mix32(position ^ mix32(k)))
    hy = mix32(base ^ 1)
    hx = mix32(base ^ 2)
    hm = mix32(base ^ 3)
    y = (hy * (height - patch + 1)) >> 32
    x = (hx * (width - patch + 1)) >> 32
    mode = hm >> 29
    return y, x, mode
