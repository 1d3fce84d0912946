"""The study's evaluator: every test image of every test set at every level, scored in one batched
pass on the training device, so a curve point costs a few forwards and no host work per image.

The degraded inputs are made once, by :func:`dil_fast.eval.synthesis.degrade_image` (image ``i``
of a test set seeded by ``(seed, i)``, the same for every method and every training seed), and
kept on the device. A pass runs the network in eval mode under ``torch.no_grad`` in float32 on
``[L, 3, H, W]`` (the ``L`` levels of one image in one batch), quantises the output to 8 bits
as :func:`dil_fast.eval.restore` does (x 255, round half to even, clip) and scores it with
:func:`dil_fast.metrics.psnr_torch` (and :func:`~dil_fast.metrics.ssim_torch` when asked), the
float64 twins of the BasicSR numbers. The scores equal :func:`dil_fast.eval.evaluate`'s for the
same network, levels and seed (``tests/study`` checks it to 1e-9 dB on the CPU); on CUDA the
convolutions run as the device's float32 default (cuDNN allows TF32), like ``dil-fast eval``.

Only the per-image scores come back to the host: one copy per pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..eval.levels import EvalLevel
from ..eval.synthesis import degrade_image, mod_crop
from ..metrics import psnr_torch, ssim_torch

__all__ = ["TestSet", "BatchedEvaluator", "load_testsets"]


@dataclass(frozen=True)
class TestSet:
    """One test set: its label (``builtin`` or the folder's name), its source and its images."""

    label: str
    source: str
    images: tuple[tuple[str, np.ndarray], ...]  # (name, HxWx3 uint8 RGB), sorted by name

    @property
    def pixels(self) -> int:
        return sum(img.shape[0] * img.shape[1] for _, img in self.images)


def load_testsets(specs: list[str], max_side: int, *, missing_ok: bool = False, log=print) -> list[TestSet]:
    """The test sets ``specs`` name (``default``: the built-in images, else a folder of clean
    images), each image centre-cropped to at most ``max_side`` (0: whole). With ``missing_ok`` a
    folder that does not exist is skipped with one ``log`` line (the device's optional Set5)."""
    import os

    from ..data.builtin import center_crop
    from ..eval import load_test_images

    sets, labels = [], set()
    for spec in specs:
        if spec != "default" and missing_ok and not os.path.isdir(spec):
            log(f"test set {spec}: not found, skipped")
            continue
        images = load_test_images(spec)
        if max_side:
            images = [(n, center_crop(img, max_side)) for n, img in images]
        label = "builtin" if spec == "default" else os.path.basename(os.path.normpath(spec)) or spec
        while label in labels:
            label += "_"
        labels.add(label)
        sets.append(TestSet(label, spec, tuple(images)))
    if not sets:
        raise InputError(f"--testset {' '.join(specs)}: no test set left to score")
    return sets


class BatchedEvaluator:
    """Scores a network on ``testsets`` x ``levels`` (see the module docstring).

    ``__call__(model, ssim=False)`` -> ``psnr [T][L, I_t]`` (and ``ssim`` alike, or None): numpy
    float64 arrays per test set, rows the levels in the order given, columns the images.
    """

    def __init__(
        self,
        testsets: list[TestSet],
        levels: tuple[EvalLevel, ...],
        *,
        seed: int,
        device,
        scale: int = 1,
        y: bool = False,
        crop_border: int = 0,
        channels_last: bool = False,
    ):
        self.testsets, self.levels = list(testsets), tuple(levels)
        self.device = torch.device(device)
        self.scale, self.y, self.crop_border = int(scale), bool(y), int(crop_border)
        self.channels_last = channels_last
        # per test set, per image: the degraded inputs of every level [L, 3, h, w] and the clean [1, 3, H, W] in 0..255
        self._inputs: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        for ts in self.testsets:
            per_image = []
            for i, (name, img) in enumerate(ts.images):
                clean = mod_crop(img, self.scale)
                try:
                    x = torch.cat(
                        [
                            degrade_image(clean, lv, seed=seed, index=i, scale=self.scale, device=self.device)
                            for lv in self.levels
                        ]
                    )
                except ValueError as exc:
                    raise InputError(f"{ts.label}/{name}: {exc}") from None
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                truth = torch.from_numpy(np.ascontiguousarray(clean.transpose(2, 0, 1)))[None].to(self.device)
                per_image.append((x, truth.to(torch.float64)))
            self._inputs.append(per_image)

    def __call__(self, model: torch.nn.Module, ssim: bool = False):
        was_training = model.training
        model.eval()
        psnr_rows, ssim_rows = [], []
        try:
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                for per_image in self._inputs:
                    p_cols, s_cols = [], []
                    for x, truth in per_image:
                        out = model(x).float()
                        if out.shape[-2:] != truth.shape[-2:]:
                            raise InputError(
                                f"the network turned a {x.shape[2]}x{x.shape[3]} input into "
                                f"{out.shape[2]}x{out.shape[3]}, the ground truth is "
                                f"{truth.shape[2]}x{truth.shape[3]}"
                            )
                        q = out.mul(255.0).round().clamp_(0, 255).to(torch.float64)  # the 8-bit image, 0..255
                        t = truth.expand_as(q)
                        kw = dict(data_range=255.0, crop_border=self.crop_border, test_y_channel=self.y)
                        p_cols.append(psnr_torch(q, t, **kw))
                        if ssim:
                            s_cols.append(ssim_torch(q, t, **kw))
                    psnr_rows.append(torch.stack(p_cols, 1))
                    if ssim:
                        ssim_rows.append(torch.stack(s_cols, 1))
        finally:
            model.train(was_training)
        flat = torch.cat([r.flatten() for r in psnr_rows + ssim_rows]).cpu().numpy()  # one copy to the host
        out_psnr, out_ssim, at = [], [], 0
        for rows, dest in ((psnr_rows, out_psnr), (ssim_rows, out_ssim)):
            for r in rows:
                dest.append(flat[at : at + r.numel()].reshape(r.shape))
                at += r.numel()
        return out_psnr, (out_ssim if ssim else None)
