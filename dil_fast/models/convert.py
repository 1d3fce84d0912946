"""``dil-fast convert``: write a checkpoint of any supported layout in another one.

``--to dil`` writes the released layout (``{"model_meta": sd, "model_task": sd}`` in the
architecture's own names, loadable by ``--resume``, eval and restore, and by the released scripts
when it is their RRDBNet); ``--to basicsr`` writes ``{"params": sd}`` in BasicSR / Real-ESRGAN names,
for every architecture BasicSR has (each registers how: ``register_arch(..., basicsr=)``):
``rrdb_x4`` (BasicSR's ``RRDBNet(scale=4)``), ``rrdb_basicsr`` (its scales 1 and 2, pixel-unshuffle
input) and ``swinir`` (BasicSR's ``SwinIR`` has the official names). dil_fast's same-size ``rrdb``
has no BasicSR counterpart (BasicSR's scale 1 pixel-unshuffles) and is refused. The input may be a
dil_fast training state, a released checkpoint, a bare state_dict, a BasicSR / Real-ESRGAN
checkpoint (``params_ema`` preferred) or an official SwinIR one; the layout is detected from the keys.
"""

from __future__ import annotations

import argparse
import os

from ..checkpoints import basicsr_checkpoint, load_file, released_checkpoint, save
from ..errors import CheckpointError, FlagError
from .registry import ARCHS, model_from_checkpoint, model_spec, spec_to_carry

__all__ = ["convert", "add_convert_parser", "run_convert"]

FORMATS = ("dil", "basicsr")


def convert(src: str, dst: str, fmt: str, key: str = "model_meta") -> str:
    """Convert ``src`` to ``fmt`` at ``dst``; returns the architecture converted."""
    if fmt not in FORMATS:
        raise FlagError(f"--to must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise FlagError(f"--out {dst}: must differ from --ckpt")
    try:
        model, arch, kwargs = model_from_checkpoint(load_file(src), src, key=key)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    sd = model.state_dict()
    to_basicsr = ARCHS[arch].facts.get("basicsr") if arch in ARCHS else None
    if fmt == "basicsr" and to_basicsr is None:
        serves = ", ".join(ARCHS.where(lambda e: e.facts.get("basicsr") is not None))
        raise CheckpointError(f"{src}: holds a {arch} network, which BasicSR does not have (--to basicsr: {serves})")
    try:
        if fmt == "basicsr":
            obj = basicsr_checkpoint(to_basicsr(sd))
        else:  # the spec too when the weights alone would be read as another network (a global skip)
            obj = released_checkpoint(sd, model_config=spec_to_carry(model_spec(arch, kwargs), sd))
    except ValueError as exc:
        raise CheckpointError(f"{src}: {exc}") from None
    save(obj, os.path.dirname(os.path.abspath(dst)), os.path.basename(dst), flag="--out")
    return arch


def add_convert_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert",
        help="write a checkpoint in dil_fast's (released) or BasicSR's layout",
        description="Detects the input layout (dil_fast training state, released model_N.pt, "
        "BasicSR / Real-ESRGAN params or params_ema) and writes it as --to says.",
    )
    p.add_argument("--ckpt", required=True, help="the checkpoint to convert")
    p.add_argument(
        "--to",
        required=True,
        choices=FORMATS,
        help="dil: {model_meta, model_task}; basicsr: {params} in BasicSR's names ("
        + ", ".join(ARCHS.where(lambda e: e.facts.get("basicsr") is not None))
        + ")",
    )
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument(
        "--key",
        default="model_meta",
        choices=("model_meta", "model_task"),
        help="which network of a two-network checkpoint",
    )
    p.set_defaults(func=run_convert)
    return p


def run_convert(args) -> int:
    arch = convert(args.ckpt, args.out, args.to, args.key)
    print(f"wrote {args.out}: {arch} in the {args.to} layout")
    return 0
