"""Confounder sets and presets of the paper's tasks, and the CLI parser for confounder lists."""

from __future__ import annotations

import math

from .base import FAMILIES, Confounder, register_family
from .blur import GaussianBlur, RandomKernelBlur
from .compose import Choice, Compose
from .jpeg import JPEG
from .noise import GaussianNoise, RandomNoise
from .rain import Rain
from .resize import RandomResize, Resize

__all__ = [
    "PAPER_DENOISE_TRAIN",
    "PAPER_DENOISE_UNSEEN",
    "PAPER_DEBLUR_TRAIN",
    "PAPER_DEBLUR_UNSEEN",
    "HYBRID_LEVELS",
    "RAIN_LEVELS",
    "REALSR_TYPES",
    "hybrid",
    "rain",
    "realsr_confounders",
    "bicubic",
    "realesrgan_first_order",
    "realesrgan_second_order",
    "denoise_levels",
    "deblur_levels",
    "parse_confounders",
]

# The paper's confounder levels (docs/released-trainer.md, 'Confounder sets'): noise sigma on the 0..255 scale,
# blur sigma.
PAPER_DENOISE_TRAIN = (5, 10, 15, 20)
PAPER_DENOISE_UNSEEN = (30, 40, 50)
PAPER_DEBLUR_TRAIN = (1, 2, 3, 4)
PAPER_DEBLUR_UNSEEN = (4.2, 4.4, 4.6, 4.8, 5.0)

# decision: the hybrid ranges of RL-Restore (blur sigma 0..5, noise 0..50, JPEG quality 10..100)
# cut in thirds; each stage draws its parameters per sample from its level's range.
HYBRID_LEVELS = {
    "mild": dict(blur=(0.1, 5 / 3), noise=(0.0, 50 / 3), quality=(70, 100)),
    "moderate": dict(blur=(5 / 3, 10 / 3), noise=(50 / 3, 100 / 3), quality=(40, 70)),
    "severe": dict(blur=(10 / 3, 5.0), noise=(100 / 3, 50.0), quality=(10, 40)),
}


def _thirds(level: dict) -> dict:
    """A level's ranges cut in three sub-levels, the harshest last (quality falls as the rest rise)."""
    out = {}
    for i, name in enumerate(("low", "mid", "high")):
        cut = {}
        for key, (lo, hi) in level.items():
            a, b = (lo + (hi - lo) * i / 3, lo + (hi - lo) * (i + 1) / 3)
            if key == "quality":  # a harsher third has the lower qualities
                a, b = hi - (hi - lo) * (i + 1) / 3, hi - (hi - lo) * i / 3
                a, b = int(round(a)), int(round(b))
            cut[key] = (a, b)
        out[name] = cut
    return out


# decision: the hybrid task's training confounders are the severe level cut in thirds
HYBRID_LEVELS.update({f"severe-{k}": v for k, v in _thirds(HYBRID_LEVELS["severe"]).items()})

# decision: synthetic rain at three training densities and a denser unseen one (the paper's
# confounders are three rain datasets; these stand in when no paired folders are given)
RAIN_LEVELS = {
    "light": dict(density=(0.001, 0.004), length=(6.0, 12.0), intensity=(0.3, 0.6)),
    "medium": dict(density=(0.004, 0.008), length=(10.0, 18.0), intensity=(0.5, 0.8)),
    "heavy": dict(density=(0.008, 0.014), length=(14.0, 24.0), intensity=(0.6, 0.9)),
    "storm": dict(density=(0.014, 0.022), length=(20.0, 32.0), intensity=(0.7, 1.0)),
}

# decision: Real-ESRGAN's first-order degradation split by blur family and noise type: four
# confounders of the realsr task (each with its JPEG and the final 1/scale resize)
REALSR_TYPES = {
    "gaussian": dict(blur=dict(family_probs=(0.5, 0.5, 0.0, 0.0, 0.0, 0.0), sinc_prob=0.0), gaussian_prob=1.0),
    "generalized": dict(blur=dict(family_probs=(0.0, 0.0, 0.5, 0.5, 0.0, 0.0), sinc_prob=0.0), gaussian_prob=0.0),
    "plateau": dict(blur=dict(family_probs=(0.0, 0.0, 0.0, 0.0, 0.5, 0.5), sinc_prob=0.0), gaussian_prob=1.0),
    "sinc": dict(blur=dict(sinc_only=True), gaussian_prob=0.0),
}


def hybrid(level: str = "severe", kernel_size: int = 21) -> Compose:
    """Blur -> Gaussian noise -> JPEG at ``level`` ('mild', 'moderate', 'severe')."""
    if level not in HYBRID_LEVELS:
        raise ValueError(f"hybrid level must be one of {', '.join(HYBRID_LEVELS)}, got {level!r}")
    p = HYBRID_LEVELS[level]
    return Compose(
        (GaussianBlur(p["blur"], kernel_size=kernel_size), GaussianNoise(p["noise"]), JPEG(p["quality"])),
        label=f"hybrid-{level}",
    )


def realesrgan_first_order(scale: int = 4) -> Compose:
    """Real-ESRGAN's first degradation (its default training ranges): random kernel blur, random
    resize, Gaussian/Poisson noise, JPEG 30..95, then a bicubic resize to 1/scale of the input."""
    return Compose(
        (
            RandomKernelBlur(),
            RandomResize(),
            RandomNoise(),
            JPEG((30, 95)),
            Resize(scale=1.0 / scale, mode="bicubic", relative_to="original"),
        ),
        label=f"realesrgan1-x{scale}",
    )


def realesrgan_second_order(scale: int = 4) -> Compose:
    """Both Real-ESRGAN degradations: the first, then blur (prob 0.8, sigma 0.2..1.5), resize
    (0.3/0.4/0.3, up 1..1.2, down 0.3..1), noise (1..25, Poisson 0.05..2.5), then with equal
    probability [resize to 1/scale + sinc (prob 0.8), JPEG] or [JPEG, resize + sinc]."""
    final_resize = Resize(scale=1.0 / scale, mode="bicubic", relative_to="original")
    final_sinc = RandomKernelBlur(sinc_only=True, prob=0.8)
    jpeg = JPEG((30, 95))
    return Compose(
        (
            RandomKernelBlur(),
            RandomResize(),
            RandomNoise(),
            JPEG((30, 95)),
            RandomKernelBlur(sigma=(0.2, 1.5), prob=0.8),
            RandomResize(probs=(0.3, 0.4, 0.3), up=(1.0, 1.2), down=(0.3, 1.0)),
            RandomNoise(sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5)),
            Choice((Compose((final_resize, final_sinc, jpeg)), Compose((jpeg, final_resize, final_sinc)))),
        ),
        label=f"realesrgan2-x{scale}",
    )


def rain(level: str = "medium") -> Rain:
    """Synthetic rain streaks at ``level`` (:data:`RAIN_LEVELS`)."""
    if level not in RAIN_LEVELS:
        raise ValueError(f"rain level must be one of {', '.join(RAIN_LEVELS)}, got {level!r}")
    return Rain(**RAIN_LEVELS[level])


def realsr_confounders(order: int = 1, scale: int = 4) -> list[Compose]:
    """The realsr task's confounders: one per :data:`REALSR_TYPES` entry, Real-ESRGAN's pipeline
    with that blur family and noise type; ``order=2`` adds the second-order stage."""
    if order not in (1, 2):
        raise ValueError(f"realsr order must be 1 or 2, got {order!r}")
    final = Resize(scale=1.0 / scale, mode="bicubic", relative_to="original")
    out = []
    for name, t in REALSR_TYPES.items():
        noise = dict(gaussian_prob=t["gaussian_prob"])
        stages = [RandomKernelBlur(**t["blur"]), RandomResize(), RandomNoise(**noise), JPEG((30, 95))]
        if order == 2:
            jpeg, sinc = JPEG((30, 95)), RandomKernelBlur(sinc_only=True, prob=0.8)
            stages += [
                RandomKernelBlur(sigma=(0.2, 1.5), prob=0.8, **t["blur"]),
                RandomResize(probs=(0.3, 0.4, 0.3), up=(1.0, 1.2), down=(0.3, 1.0)),
                RandomNoise(sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5), **noise),
                Choice((Compose((final, sinc, jpeg)), Compose((jpeg, final, sinc)))),
            ]
        else:
            stages.append(final)
        out.append(Compose(tuple(stages), label=f"realsr{order}-{name}-x{scale}"))
    return out


def bicubic(scale: float) -> Resize:
    """Bicubic downsampling by ``scale`` (the clean LR of a super-resolution test)."""
    return Resize(scale=1.0 / float(scale), mode="bicubic", relative_to="original")


def denoise_levels(sigmas=PAPER_DENOISE_TRAIN, **kw) -> list[Confounder]:
    """The paper's denoising confounders: AWGN at each sigma (0..255 scale), clipped."""
    return [GaussianNoise(float(s), **kw) for s in sigmas]


def deblur_levels(levels=PAPER_DEBLUR_TRAIN, kernel_size: int = 21) -> list[Confounder]:
    """The paper's deblurring confounders: isotropic Gaussian blur of sigma = level."""
    return [GaussianBlur(float(s), kernel_size=kernel_size) for s in levels]


def _scale(v: str) -> float:
    x = float(v)
    if not math.isfinite(x) or not 1 <= x <= 16:
        raise ValueError(f"{v!r} is not a scale factor in [1, 16]")
    return x


def _realesrgan(v: str) -> Compose:
    orders = {
        "1": realesrgan_first_order,
        "first": realesrgan_first_order,
        "2": realesrgan_second_order,
        "second": realesrgan_second_order,
    }
    if v.lower() not in orders:
        raise ValueError(f"unknown variant {v!r} (1, first, 2 or second)")
    return orders[v.lower()]()


def _realsr(v: str) -> list[Compose]:
    """One value, the order, expands to the four confounders of the realsr task."""
    if v not in ("1", "2"):
        raise ValueError(f"realsr takes one order, 1 or 2, got {v!r}")
    return realsr_confounders(int(v))


register_family("hybrid", lambda v: hybrid(v.lower()))
register_family("rain", lambda v: rain(v.lower()))
register_family("bicubic", lambda v: bicubic(_scale(v)), axis="bicubic downscale factor")
register_family("realesrgan", _realesrgan)
register_family("realsr", _realsr)


def parse_confounders(spec: str) -> list[Confounder]:
    """'noise:5,10,15,20' | 'blur:1,2,3,4' | '5,10,15,20' (bare numbers: Gaussian noise levels) |
    'jpeg:10,30' | 'poisson:1,2' | 'hybrid:mild,severe,severe-low' | 'rain:light,heavy' |
    'bicubic:4' | 'realesrgan:first,second' | 'realsr:1' (the four realsr confounders; 'realsr:2'
    second order) | 'isp:raw,linear,srgb,jpeg' (camera-pipeline noise by stage; 'isp:mixed'); groups may be joined
    with ';' ('noise:15;blur:2'). Raises ValueError with a
    one-line message."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("empty confounder list; expected e.g. 'noise:5,10,15,20' or 'blur:1,2,3,4'")
    out: list[Confounder] = []
    for group in spec.split(";"):
        group = group.strip()
        family, sep, values = group.partition(":")
        if not sep:
            family, values = "noise", group
        family = family.strip().lower()
        if family not in FAMILIES:
            raise ValueError(
                f"unknown confounder family {family!r} in {spec!r}; use one of "
                f"{', '.join(FAMILIES.names(aliases=True))}"
            )
        items = [v.strip() for v in values.split(",")]
        if not values.strip() or any(not v for v in items):
            raise ValueError(f"confounder group {group!r} in {spec!r} has an empty value")
        parse = FAMILIES[family].obj
        for v in items:
            try:
                made = parse(v)
            except (ValueError, KeyError) as exc:
                msg = str(exc) if isinstance(exc, ValueError) else f"unknown variant {v!r}"
                raise ValueError(f"bad {family} confounder {v!r} in {spec!r}: {msg}") from None
            out.extend(made if isinstance(made, list) else [made])
    return out
