"""Camera-pipeline noise op (after CBDNet): sRGB -> linear -> Bayer mosaic -> demosaic -> camera
response with heteroscedastic noise at one stage, then JPEG for the stages that compress.

The pipeline has one implementation, the torch reference
(:func:`dil_fast.ops.reference.isp.camera_pipeline_ref`), declared with the dispatcher as ``isp``
so a forced ``triton``/``cuda`` backend is refused for it like for any other op; the JPEG step is
the dispatched :func:`dil_fast.ops.jpeg.jpeg` (its Triton kernel on CUDA).
"""

from __future__ import annotations

import torch

from .. import backends
from .jpeg import jpeg
from .reference.isp import camera_pipeline_ref, stage_has_jpeg

__all__ = ["camera_noise"]

OP = "isp"
backends.declare(OP, default=("torch",))
backends.implement(OP, "torch")(camera_pipeline_ref)


def camera_noise(
    x: torch.Tensor,
    stage: str,
    gamma: torch.Tensor,
    sigma_s: torch.Tensor,
    sigma_c: torch.Tensor,
    normal: torch.Tensor,
    *,
    quality: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """See :func:`~dil_fast.ops.reference.isp.camera_noise_ref` (stages, shapes and math): x
    ``[B, 3, H, W]`` on [0, 1]; gamma, sigma_s, sigma_c ``[B]``; normals ``[B, normal_count(stage,
    H, W)]``; quality ``[B]`` host ints for ``jpeg``/``mixed`` -> ``[B, 3, H, W]`` float32 on [0, 1]."""
    fn = backends.select(OP, x.device, None, backends.forced_backend(backend)).fn
    if stage_has_jpeg(stage) and quality is None:
        raise ValueError(f"camera noise stage {stage!r} compresses: it needs a JPEG quality per sample")
    y = fn(x, stage, gamma, sigma_s, sigma_c, normal)
    return jpeg(y, quality, backend=backend) if stage_has_jpeg(stage) else y
