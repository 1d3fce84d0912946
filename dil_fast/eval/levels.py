"""What an evaluation degrades the test images with: named levels of confounder families.

A level is one value of one family (``noise:30``, ``blur:4.2``, ``hybrid:mild``, ``jpeg:10``,
``bicubic:4``, ``rain:storm``, ``isp:mixed``): the family as written, the value as written
(numbers normalised: ``30.0`` -> ``30``) and the :mod:`dil_fast.degrade` spec that
:func:`dil_fast.degrade.parse_confounders` makes of it. ``realsr:1`` expands to its four
confounders, each a level named by its spec (``realsr1-gaussian-x4``, ...).

Sweeps (``--sweep``) are levels of one numeric family, given as a list (``noise:10,30,50``) or as
an inclusive range ``family:start:stop:step`` (``noise:5:70:5`` is 5, 10, ..., 70).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..degrade import FAMILIES, Confounder, GaussianNoise, parse_confounders
from ..errors import FlagError

__all__ = [
    "EvalLevel",
    "NUMERIC_FAMILIES",
    "as_level",
    "noise_level",
    "parse_levels",
    "parse_sweep",
    "training_range",
    "format_number",
]


class _NumericFamilies(Mapping):
    """The families whose values are numbers (a registered ``axis``), name or alias -> the axis
    label of a sweep's plot; read from :data:`dil_fast.degrade.FAMILIES` at every access, so a
    plugin's family counts as soon as it is registered."""

    def _table(self) -> dict[str, str]:
        return {n: e.axis for e in FAMILIES.entries() if e.axis for n in (e.name, *e.aliases)}

    def __getitem__(self, name: str) -> str:
        return self._table()[name]

    def __iter__(self):
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


NUMERIC_FAMILIES = _NumericFamilies()
MAX_SWEEP_LEVELS = 1000


def _same_family(name: str) -> str:
    """The registered name of a family written by one of its aliases (``gaussian`` -> ``noise``)."""
    return FAMILIES[name].name if name in FAMILIES else name


def format_number(x: float) -> str:
    """A level value as text: integers without a decimal point, others in Python's shortest form."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


@dataclass(frozen=True)
class EvalLevel:
    """One evaluation level: ``family`` and ``level`` as written, the ``spec`` that degrades."""

    family: str
    level: str
    spec: Confounder

    @property
    def name(self) -> str:
        """``family:level`` (the log's section title and the CSVs' confounder/level columns joined)."""
        return f"{self.family}:{self.level}"

    @property
    def folder(self) -> str:
        """The subfolder of its outputs when a run has several levels (``noise-30``)."""
        return f"{self.family}-{self.level}"

    @property
    def value(self) -> float | None:
        """The level as a number (x axis of a sweep), None for named levels."""
        return float(self.level) if self.family in NUMERIC_FAMILIES else None

    @property
    def numpy_sigma(self) -> float | None:
        """The sigma of a plain Gaussian noise level (one number, clipped, not rounded): those take
        the released numpy path (:func:`dil_fast.eval.synthesis.add_noise`); None otherwise."""
        s = self.spec
        if (
            type(s) is GaussianNoise
            and not isinstance(s.sigma, (tuple, list))
            and s.clip
            and not s.round8
            and s.gray_prob == 0
            and not s.reference_numpy
        ):
            return float(s.sigma)
        return None


def noise_level(sigma: float) -> EvalLevel:
    """Gaussian noise of ``sigma`` (0..255 scale): the released ``--level``."""
    return EvalLevel("noise", format_number(sigma), GaussianNoise(float(sigma)))


def as_level(level) -> EvalLevel:
    """An :class:`EvalLevel` from a number (Gaussian noise sigma), a string naming one level
    (``"blur:5"``, ``"hybrid:moderate"``), a :mod:`dil_fast.degrade` spec, or an EvalLevel."""
    if isinstance(level, EvalLevel):
        return level
    if isinstance(level, Confounder):
        return EvalLevel(level.kind, level.name, level)
    if isinstance(level, str):
        levels = parse_levels(level, flag="level")
        if len(levels) != 1:
            raise ValueError(f"level {level!r} names {len(levels)} levels; give one")
        return levels[0]
    if isinstance(level, (int, float)) and not isinstance(level, bool):
        if not math.isfinite(level) or level < 0:
            raise ValueError(f"a noise level must be a finite number >= 0, got {level!r}")
        return noise_level(level)
    raise TypeError(
        f"a level is a number, a string such as 'blur:5', a confounder spec or an EvalLevel; got {type(level).__name__}"
    )


def _groups(text: str):
    """``(family, [values])`` of each ';'-separated group; bare values are Gaussian noise."""
    for group in text.split(";"):
        family, sep, values = group.strip().partition(":")
        if not sep:
            family, values = "noise", group
        yield family.strip().lower(), [v.strip() for v in values.split(",")]


def parse_levels(text: str, flag: str = "--confounders") -> list[EvalLevel]:
    """The levels of a :func:`dil_fast.degrade.parse_confounders` string, one per listed value, in
    order. :class:`FlagError` naming ``flag`` when the string is invalid or lists a level twice."""
    try:
        parse_confounders(text)  # validates the whole string, with messages that quote it
    except ValueError as exc:
        raise FlagError(f"{flag}: {exc}") from None
    levels: list[EvalLevel] = []
    for family, values in _groups(text):
        for value in values:
            specs = parse_confounders(f"{family}:{value}")
            if len(specs) == 1:
                written = format_number(float(value)) if family in NUMERIC_FAMILIES else value.lower()
                levels.append(EvalLevel(family, written, specs[0]))
            else:  # one value that names several confounders (realsr:1)
                levels += [EvalLevel(family, s.name, s) for s in specs]
    names = [lv.name for lv in levels]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FlagError(f"{flag}: {', '.join(twice)} listed more than once in {text!r}")
    return levels


def _sweep_values(text: str, rest: str, flag: str) -> list[str]:
    parts = rest.split(":")
    try:
        start, stop, step = (float(p) for p in parts)
    except ValueError:
        raise FlagError(f"{flag} {text}: a range is family:start:stop:step with numbers, e.g. noise:5:70:5") from None
    if not all(math.isfinite(v) for v in (start, stop, step)):
        raise FlagError(f"{flag} {text}: start, stop and step must be finite numbers")
    if step <= 0 or stop < start:
        raise FlagError(f"{flag} {text}: needs step > 0 and start <= stop")
    count = math.floor((stop - start) / step + 1e-9) + 1
    if count > MAX_SWEEP_LEVELS:
        raise FlagError(f"{flag} {text}: {count} levels; at most {MAX_SWEEP_LEVELS}")
    # 12 significant digits drop the float error of start + i * step (0.1 * 3 -> 0.3)
    return [format_number(float(f"{start + i * step:.12g}")) for i in range(count)]


def parse_sweep(text: str, flag: str = "--sweep") -> list[EvalLevel]:
    """The levels of a sweep: ``family:start:stop:step`` (inclusive stop) or ``family:a,b,c``, one
    numeric family (:data:`NUMERIC_FAMILIES`). :class:`FlagError` naming ``flag`` otherwise."""
    family, sep, rest = text.strip().partition(":")
    family = family.strip().lower()
    if not sep or ";" in text:
        raise FlagError(f"{flag} {text}: expected one family with its levels, e.g. noise:5:70:5 or blur:1,2,3")
    if family not in NUMERIC_FAMILIES:
        raise FlagError(
            f"{flag} {text}: a sweep plots PSNR against a numeric level; {family!r} is not one of "
            f"{', '.join(NUMERIC_FAMILIES)} (evaluate named levels with --confounders)"
        )
    values = _sweep_values(text, rest, flag) if rest.count(":") == 2 else [v.strip() for v in rest.split(",")]
    return parse_levels(f"{family}:{','.join(values)}", flag=f"{flag} {text}")


def training_range(config: dict | None, family: str) -> tuple[float, float] | None:
    """``(lo, hi)`` of the training levels of ``family`` in a training state's ``config`` (its
    ``confounders`` string, else its Gaussian noise ``levels``, else its task's confounders); None
    when the config has none of that family."""
    if not isinstance(config, dict):
        return None
    family = _same_family(family)
    text = config.get("confounders")
    if not text and config.get("task"):
        from ..tasks import TASKS

        task = TASKS.get(config["task"])
        text = task.confounders if task is not None else None
    values: list[float] = []
    if text:
        try:
            levels = parse_levels(str(text), flag="config")
        except FlagError:
            return None
        values = [lv.value for lv in levels if _same_family(lv.family) == family and lv.value is not None]
    elif family == "noise":
        try:
            values = [float(v) for v in config.get("levels") or ()]
        except (TypeError, ValueError):
            return None
    values = [v for v in values if math.isfinite(v)]
    return (min(values), max(values)) if values else None
