"""What ``dil-fast info`` reports: the truth about this installation."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform

import torch

from . import backends
from ._version import __version__


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}" if v else "none"


def _native_cuda(mod) -> dict:
    """What the native core carries for CUDA, and whether its (static) runtime can start."""
    out = {}
    has_cuda = bool(mod.has_cuda())
    out["cuda_kernels"] = "yes" if has_cuda else "no (built without nvcc: CPU twins only)"
    out["cuda_archs"] = ", ".join(mod.cuda_archs()) or "none"
    if not has_cuda:
        out["cuda_runtime"] = "none"
        return out
    out["cuda_runtime"] = (
        f"{_cuda_version(mod.cuda_runtime_version())} (static; built with "
        f"{_cuda_version(mod.cuda_runtime_version_compiled())})"
    )
    out["cuda_driver"] = _cuda_version(mod.cuda_driver_version())
    try:
        n = mod.cuda_device_count()
        out["native_cuda_devices"] = str(n)
    except RuntimeError as exc:
        out["native_cuda_devices"] = f"unavailable: {exc}"
    return out


# optional packages: (info key, module, distribution names, what it is for / how to get it)
_OPTIONAL = (
    (
        "dali",
        "nvidia.dali",
        ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110"),
        "--loader dali; pip install dil_fast[dali]",
    ),
    (
        "scikit_image",
        "skimage",
        ("scikit-image",),
        "built-in sample images (demo, study); pip install dil_fast[samples]",
    ),
    ("tqdm", "tqdm", ("tqdm",), "progress bars; without it runs are silent"),
    (
        "tensorboard",
        "torch.utils.tensorboard",
        ("tensorboard",),
        "TensorBoard event files; pip install dil_fast[tracking]",
    ),
    ("wandb", "wandb", ("wandb",), "--wandb PROJECT; pip install dil_fast[wandb]"),
)


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing or broken
        return False


def _optional() -> dict:
    """Which optional packages are installed (found, not imported: importing DALI is slow)."""
    out = {}
    for key, module, dists, missing in _OPTIONAL:
        if not _found(module):
            out[key] = f"not installed ({missing})"
            continue
        for dist in dists:
            try:
                out[key] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        else:
            out[key] = "installed"
    return out


def collect() -> dict:
    tri = backends.triton_status()
    nat = backends.native_status()
    out = {
        "dil_fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": tri.reason if tri.available else f"unavailable: {tri.reason}",
        "native_core": nat.reason if nat.available else f"not loaded: {nat.reason}",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    if nat.available:
        out.update(_native_cuda(nat.module))
    out.update(_optional())
    return out


def format_info(d: dict) -> str:
    width = max(len(k) for k in d)
    return "\n".join(f"{k:<{width}} : {v}" for k, v in d.items())
