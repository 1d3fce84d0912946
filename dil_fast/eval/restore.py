"""``dil-fast restore``: restore real degraded images (no ground truth) with a checkpoint.

::

    dil-fast restore --ckpt runs/denoise/model_30.pt --input photos/ --output restored/
    dil-fast restore --ckpt RealESRGAN_x4plus.pth --input big.jpg --output out/ --tile 512 --tile_pad 16
    dil-fast restore --ckpt last.pt --input frames/ --output out/ --batch_size 8 --precision fp16

``--ckpt``: any layout :func:`dil_fast.eval.load_checkpoint` reads (a training state, ``model_N.pt``,
a state_dict, BasicSR / Real-ESRGAN ``params``/``params_ema``, official SwinIR), at any scale: the
output is ``s`` times the input where the network upscales by ``s``. ``--input``: an image file or
a folder of images (not recursive; hidden files skipped); ``--output``: a folder, created if needed,
that receives one PNG per input under the input's name (``x.jpg`` -> ``x.png``; ``--suffix out``:
``x_out.png``). A folder that already holds other files is fine; an output that would replace an
existing file is refused unless ``--overwrite``, and ``--output`` may not be the input folder.

Large images: ``--tile N`` cuts the input into ``N x N`` tiles, each run with ``--tile_pad P``
pixels of real image context on every side (Real-ESRGAN's scheme) and only its centre kept, so a
fully convolutional network whose receptive field reaches at most ``P`` pixels gives exactly the
untiled output; with less context the seams differ by little. All windows of an image have one
size (those at the borders are shifted inward), so ``--batch_size`` of them run as one batch;
without tiles, consecutive images of one size are batched. ``--precision bf16|fp16`` runs the whole
network in that type (fp16 on CUDA only; default fp32). ``--device`` defaults to CUDA when there is
one.

A ``model_N.pt`` of one's own ``--arch`` (whose weights alone do not say how to build it) takes
the keyword arguments its run recorded in ``options.json`` beside it; without ``--arch`` the error
names the one to pass (dil_fast imports no code that a file names).

Everything is checked before the first write: the flags, the checkpoint, every input image (each
is decoded once up front, with :mod:`dil_fast.data.images`' policies: grayscale -> RGB, opaque alpha
dropped, translucent alpha and 16-bit refused) and the output folder. Every output is written
atomically (a temporary name, then a rename). A failure during the run (out of memory, Ctrl-C)
leaves the finished outputs, each whole, and the error line says how many there are. Errors are one
line naming the file or flag (exit status 2).

API: :class:`Restorer` (``Restorer(model, device=..., precision=..., tile=..., tile_pad=...,
batch_size=...)``, called with a list of same-size ``HxWx3`` uint8 images) and
:func:`tile_windows`.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from .._progress import progress
from ..data.images import IMAGE_EXTS, list_images, read_image_rgb, write_image_rgb
from ..devices import resolve_device
from ..errors import CheckpointError, FlagError, InputError
from ..models.registry import ARCHS, parse_arch_kwargs
from .checkpoint import load_checkpoint
from .testsets import output_names

__all__ = ["PRECISIONS", "Tile", "tile_windows", "Restorer", "add_restore_parser", "run_restore"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_TILE_PAD = 10  # Real-ESRGAN's default


@dataclass(frozen=True)
class Tile:
    """One tile: the core ``[y0, y1) x [x0, x1)`` of the input it restores, and the top-left corner
    ``(wy, wx)`` of the window (the core plus its context) that the network sees."""

    y0: int
    y1: int
    x0: int
    x1: int
    wy: int
    wx: int


def _spans(size: int, tile: int, pad: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Along one axis: the window length and ``[(core start, core stop, window start)]``."""
    window = min(size, tile + 2 * pad)
    spans = []
    for start in range(0, size, tile):
        stop = min(start + tile, size)
        # shifted inward at the borders, so every window has one length; the core then keeps at
        # least `pad` pixels of context on each side that is not the image's own border
        spans.append((start, stop, min(max(start - pad, 0), size - window)))
    return window, spans


def tile_windows(h: int, w: int, tile: int, pad: int) -> tuple[tuple[int, int], list[Tile]]:
    """``((window h, window w), tiles)`` covering an ``h x w`` image with ``tile x tile`` cores and
    ``pad`` pixels of context, row-major. Every window has the returned size (at most
    ``tile + 2 pad`` per side, the image size when smaller); cores do not overlap and cover the image."""
    if tile < 1 or pad < 0:
        raise ValueError(f"tile_windows: tile must be >= 1 and pad >= 0, got {tile}, {pad}")
    wh, rows = _spans(h, tile, pad)
    ww, cols = _spans(w, tile, pad)
    return (wh, ww), [Tile(y0, y1, x0, x1, wy, wx) for y0, y1, wy in rows for x0, x1, wx in cols]


class Restorer:
    """Runs a restoration network over whole images: tiled or not, batched, in one precision.

    ``model`` maps ``[N, 3, h, w]`` in [0, 1] to ``[N, 3, s h, s w]`` (``s`` is read off the first
    output); it is moved to ``device`` and ``precision`` (``fp32``, ``bf16``, ``fp16``) and put in
    eval mode. ``tile`` 0: whole images; else see :func:`tile_windows`. ``batch_size``: windows (or
    same-size images) per forward pass.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device="cpu",
        precision: str = "fp32",
        tile: int = 0,
        tile_pad: int = DEFAULT_TILE_PAD,
        batch_size: int = 1,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if tile < 0 or tile_pad < 0 or batch_size < 1:
            raise ValueError(
                f"tile >= 0, tile_pad >= 0 and batch_size >= 1 needed, got {tile}, {tile_pad}, {batch_size}"
            )
        self.device = torch.device(device)
        self.dtype = PRECISIONS[precision]
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.tile, self.tile_pad, self.batch_size = tile, tile_pad, batch_size
        self.scale: int | None = None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, h, w]`` float32 on the device -> ``[N, 3, s h, s w]`` float32."""
        with torch.no_grad():
            out = self.model(x.to(self.dtype))
        if out.dim() != 4 or out.shape[:2] != x.shape[:2]:
            raise CheckpointError(f"the network maps {tuple(x.shape)} to {tuple(out.shape)}; expected [N, 3, s*h, s*w]")
        sh, sw = out.shape[2] / x.shape[2], out.shape[3] / x.shape[3]
        if sh != sw or not sh.is_integer() or sh < 1:
            raise CheckpointError(
                f"the network maps a {x.shape[2]}x{x.shape[3]} input to "
                f"{out.shape[2]}x{out.shape[3]}; restore needs one integer scale for both sides"
            )
        if self.scale is None:
            self.scale = int(sh)
        elif int(sh) != self.scale:
            raise CheckpointError(f"the network's scale changed from x{self.scale} to x{int(sh)} between inputs")
        return out.float()

    @staticmethod
    def _to_uint8(out: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` float -> ``[N, H, W, 3]`` uint8 on the CPU: x 255, round half to even,
        clip (the arithmetic of :func:`dil_fast.data.images.tensor_to_uint8`, elementwise, so a tile
        quantised alone gives the bytes of the whole image quantised at once)."""
        return out.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()

    def _tiled(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        (wh, ww), tiles = tile_windows(h, w, self.tile, self.tile_pad)
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))  # uint8 on the host: windows move
        out = None  # uint8 [sH, sW, 3] on the host, filled tile by tile (a large SR output stays off the device)
        for i in range(0, len(tiles), self.batch_size):
            group = tiles[i : i + self.batch_size]
            windows = torch.stack([x[:, t.wy : t.wy + wh, t.wx : t.wx + ww] for t in group])
            restored = self._forward(windows.to(self.device).float().div_(255.0))
            s = self.scale
            if out is None:
                out = torch.empty((h * s, w * s, 3), dtype=torch.uint8)
            for t, r in zip(group, self._to_uint8(restored)):  # one copy to the host per batch
                out[t.y0 * s : t.y1 * s, t.x0 * s : t.x1 * s] = r[
                    (t.y0 - t.wy) * s : (t.y1 - t.wy) * s, (t.x0 - t.wx) * s : (t.x1 - t.wx) * s
                ]
        return out.numpy()

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Restore ``HxWx3`` uint8 RGB images (untiled: all of one size, at most ``batch_size``;
        tiled: any number, any sizes) -> the restored ``sH x sW x 3`` uint8 images."""
        if self.tile:
            return [self._tiled(img) for img in images]
        if len({img.shape for img in images}) > 1:
            raise ValueError("Restorer: untiled images of one call must have one size")
        batch = torch.from_numpy(np.stack([img.transpose(2, 0, 1) for img in images]))
        restored = self._to_uint8(self._forward(batch.to(self.device).float().div_(255.0)))
        return [np.ascontiguousarray(r) for r in restored.numpy()]


# ----------------------------------------------------------------------------------------- the command


@dataclass
class _Plan:
    """Everything the run needs, checked before anything is written."""

    inputs: list[str]  # image paths, sorted
    shapes: list[tuple[int, int]]
    outputs: list[str]  # output paths, one per input
    folder: str
    restorer: Restorer
    arch: str


def _inputs(path: str) -> list[str]:
    if not os.path.exists(path):
        raise InputError(f"--input {path}: no such file or folder")
    if os.path.isdir(path):
        return list_images(path, exts=IMAGE_EXTS, flag="--input")
    if not os.path.isfile(path):
        raise InputError(f"--input {path}: not a file or folder")
    return [path]


def _check_flags(args, device: torch.device) -> None:
    if args.tile < 0:
        raise FlagError(f"--tile must be >= 0 (0: whole images), got {args.tile}")
    if args.tile_pad < 0:
        raise FlagError(f"--tile_pad must be >= 0, got {args.tile_pad}")
    if args.batch_size < 1:
        raise FlagError(f"--batch_size must be >= 1, got {args.batch_size}")
    for flag in ("nf", "nb", "gc"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise FlagError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if args.precision == "fp16" and device.type != "cuda":
        raise FlagError(f"--precision fp16 needs a CUDA device (--device {device}); use bf16 or fp32 on the CPU")
    if args.suffix is not None and (not args.suffix or os.sep in args.suffix or "/" in args.suffix):
        raise FlagError(f"--suffix {args.suffix!r}: a non-empty file name part without path separators")


def _output_paths(args, inputs: list[str]) -> tuple[str, list[str]]:
    """The output folder and one PNG path per input; refuses a folder that cannot be made or
    written, the input folder itself, and (without --overwrite) replacing existing files."""
    folder = os.path.abspath(args.output)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"--output {args.output}: is a file, not a folder")
    path = folder
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise InputError(f"--output {args.output}: cannot create the folder ({path} is a file)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"--output {args.output}: folder is not writable ({path})")
    if os.path.isdir(folder) and any(os.path.samefile(os.path.dirname(os.path.abspath(p)), folder) for p in inputs):
        raise InputError(
            f"--output {args.output}: is the --input folder; the outputs would replace or mix with "
            "the inputs, give another folder"
        )
    names = output_names([os.path.basename(p) for p in inputs])
    if args.suffix:
        names = [f"{os.path.splitext(n)[0]}_{args.suffix}.png" for n in names]
    paths = [os.path.join(folder, n) for n in names]
    for p in paths:
        if os.path.isdir(p):
            raise InputError(
                f"--output {args.output}: {os.path.basename(p)} is a folder there; an output needs that name"
            )
        if os.path.exists(p) and not args.overwrite:
            raise InputError(
                f"--output {args.output}: {os.path.basename(p)} exists (an earlier run?); pass "
                "--overwrite to replace it, or give another folder"
            )
    return folder, paths


def _load_model(args) -> tuple[torch.nn.Module, str]:
    """The network of ``--ckpt``: a ``model_N.pt`` is rebuilt as its run recorded it (the run
    folder's ``options.json``, else ``last.pt``); a missing ``--arch`` of one's own class is named
    (dil_fast imports no code a file names)."""
    try:
        arch_kwargs = parse_arch_kwargs(args.arch_kwargs)
    except ValueError as exc:
        raise FlagError(str(exc)) from None
    arch_kwargs.update({k: getattr(args, k) for k in ("nf", "nb", "gc") if getattr(args, k) is not None})
    ck = load_checkpoint("", args.ckpt, arch=args.arch, arch_kwargs=arch_kwargs, key=args.key, run_folder=True)
    if ck.described_by:
        print(f"network: {ck.arch} {ck.kwargs} (from {ck.described_by})")
    return ck.model, ck.arch


def _plan(args) -> _Plan:
    device = resolve_device(args.device)
    _check_flags(args, device)
    inputs = _inputs(args.input)
    folder, outputs = _output_paths(args, inputs)
    model, arch = _load_model(args)
    shapes = []
    for p in inputs:  # every image decodes (the policies of dil_fast.data.images) before any output exists
        shapes.append(read_image_rgb(p).shape[:2])
    restorer = Restorer(
        model,
        device=device,
        precision=args.precision,
        tile=args.tile,
        tile_pad=args.tile_pad,
        batch_size=args.batch_size,
    )
    return _Plan(inputs, shapes, outputs, folder, restorer, arch)


def _groups(plan: _Plan, batch_size: int, tiled: bool) -> list[list[int]]:
    """Indices of the inputs restored together: consecutive images of one size, untiled."""
    groups: list[list[int]] = []
    for i, shape in enumerate(plan.shapes):
        if groups and not tiled and len(groups[-1]) < batch_size and plan.shapes[groups[-1][0]] == shape:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _make_folder(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--output {folder}: cannot create the folder ({exc.strerror or exc})") from None


def run_restore(args) -> int:
    plan = _plan(args)
    restorer = plan.restorer
    _make_folder(plan.folder)
    done, start = 0, time.monotonic()
    current = plan.inputs[0]
    try:
        with progress(len(plan.inputs), desc="restore", unit="img", enabled=not args.no_progress) as bar:
            for group in _groups(plan, args.batch_size, bool(args.tile)):
                current = plan.inputs[group[0]]
                images = [read_image_rgb(plan.inputs[i]) for i in group]
                for i, restored in zip(group, restorer(images)):
                    current = plan.inputs[i]
                    write_image_rgb(plan.outputs[i], restored)
                    done += 1
                    bar.update()
    except torch.cuda.OutOfMemoryError:
        raise InputError(
            f"{current}: out of {restorer.device} memory ({_written(done, plan)}); try --tile 512 "
            "(or smaller), a smaller --batch_size or --precision fp16"
        ) from None
    except (InputError, CheckpointError) as exc:
        raise type(exc)(f"{exc} ({_written(done, plan)})") from None
    except RuntimeError as exc:  # the network refused an input (too small for its padding, a shape it cannot take)
        first = " ".join(str(exc).split())[:200]
        raise InputError(f"{current}: the network failed on this image ({first}) ({_written(done, plan)})") from None
    seconds = time.monotonic() - start
    tiles = f"tile {args.tile}, pad {args.tile_pad}" if args.tile else "whole images"
    print(
        f"restored {done} image(s) into {plan.folder} ({plan.arch} x{restorer.scale}, {tiles}, batch "
        f"{args.batch_size}, {args.precision}, {restorer.device}) in {seconds:.1f} s"
    )
    return 0


def _written(done: int, plan: _Plan) -> str:
    return f"{done} of {len(plan.inputs)} outputs were written to {plan.folder}, each whole"


def add_restore_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "restore",
        help="restore degraded images without ground truth (a file or a folder), tiled for large images",
        description="Restore every image of --input (a file or a folder) with --ckpt and write one PNG per input "
        "into --output. --tile N cuts large images into N x N tiles with --tile_pad pixels of context each.",
    )
    p.add_argument(
        "--ckpt",
        required=True,
        metavar="PATH",
        help="checkpoint: a training state, model_N.pt, a state_dict, BasicSR/Real-ESRGAN or official SwinIR",
    )
    p.add_argument("--input", required=True, metavar="DIR|FILE", help="an image file or a folder of images")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument(
        "--tile", type=int, default=0, help="tile size in input pixels for large images (default 0: whole images)"
    )
    p.add_argument(
        "--tile_pad",
        type=int,
        default=DEFAULT_TILE_PAD,
        help="context pixels around each tile; at least the network's receptive field makes the tiled "
        f"output equal to the untiled one (default {DEFAULT_TILE_PAD})",
    )
    p.add_argument(
        "--batch_size", type=int, default=4, help="tiles, or consecutive same-size images, per forward pass (default 4)"
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=list(PRECISIONS),
        help="the network's number type: fp32, bf16, or fp16 (CUDA only) (default fp32)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--suffix", default=None, help="output names NAME_SUFFIX.png instead of NAME.png")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that exist in --output")
    p.add_argument(
        "--key",
        default="model_meta",
        choices=["model_meta", "model_task", "params_ema"],
        help="which network of a dil_fast checkpoint (default model_meta; params_ema: the EMA of an --ema run)",
    )
    p.add_argument(
        "--arch",
        default=None,
        help=", ".join(ARCHS.names()) + " or package.module:Class (default: from the checkpoint)",
    )
    p.add_argument("--arch_kwargs", default=None, help="JSON keyword arguments of --arch (override the checkpoint's)")
    p.add_argument("--nf", type=int, default=None, help="RRDB width (default: from the checkpoint)")
    p.add_argument("--nb", type=int, default=None, help="number of RRDB blocks (default: from the checkpoint)")
    p.add_argument("--gc", type=int, default=None, help="RRDB growth channels (default: from the checkpoint)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar or progress lines")
    p.set_defaults(func=run_restore)
    return p
