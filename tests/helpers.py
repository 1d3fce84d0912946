"""Plain helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from dil_fast import backends

# the optimizer tests' two implementations: the torch references and the native core (tier T2)
BACKENDS = [pytest.param("torch", id="torch"), pytest.param("cuda", id="native", marks=pytest.mark.ext)]

SHAPES = [(3, 17, 23), (2, 33, 65)]  # (B, H, W) of the kernel tests, C = 3
IDS = [f"B{b}_{h}x{w}" for b, h, w in SHAPES]

# the tiny RRDB networks of the training tests
RRDB_NF8 = ("--nf", "8", "--nb", "1", "--gc", "4")
RRDB_NF4 = ("--nf", "4", "--nb", "1", "--gc", "2")


def train_argv(
    trainset,
    testset,
    out,
    *extra,
    epochs=1,
    size=RRDB_NF8,
    patch_size=16,
    batch_size=2,
    num_workers=0,
    device="cpu",
    progress=False,
    tensorboard=False,
) -> list[str]:
    """``dil-fast train`` arguments of a tiny run: ``testset`` is one path or a list of them, ``extra``
    comes last (a repeated flag there wins); ``epochs``, ``batch_size`` or ``num_workers`` None leaves
    that flag out; ``progress`` / ``tensorboard`` False add ``--no_progress`` / ``--no_tensorboard``."""
    testsets = testset if isinstance(testset, (list, tuple)) else [testset]
    optional = (("--batch_size", batch_size), ("--total_epoch", epochs), ("--num_workers", num_workers))
    return [
        "train",
        "--trainset",
        str(trainset),
        "--testset",
        *map(str, testsets),
        "--ckpt_save",
        str(out),
        "--patch_size",
        str(patch_size),
        *[word for flag, value in optional if value is not None for word in (flag, str(value))],
        "--device",
        device,
        *([] if progress else ["--no_progress"]),
        *([] if tensorboard else ["--no_tensorboard"]),
        *size,
        *extra,
    ]


def triton_tol(dtype):
    """Kernel-vs-reference tolerance: fp32 tight, fp16 relative."""
    return dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-3, rtol=2e-3)


def natural_crops(h=64, w=80):
    """Crops of scikit-image's public-domain sample images, uint8 RGB [N, h, w, 3]."""
    data = pytest.importorskip("skimage.data")
    crops = []
    for name, (y, x) in (
        ("astronaut", (40, 150)),
        ("coffee", (120, 200)),
        ("chelsea", (60, 120)),
        ("rocket", (250, 300)),
        ("hubble_deep_field", (100, 300)),
    ):
        img = getattr(data, name)()
        crops.append(np.ascontiguousarray(img[y : y + h, x : x + w, :3]))
    return np.stack(crops)


def native_built() -> bool:
    """False when the install is pure Python on purpose (then the native tests skip, saying so)."""
    return not (
        os.environ.get("DIL_FAST_BUILD_EXT", "1").strip() == "0" or os.environ.get("DIL_FAST_DISABLE_EXT") == "1"
    )


def require(backend: str) -> None:
    """The native backend must be there unless the install was pure Python on purpose."""
    if backend != "cuda":
        return
    if not native_built():
        pytest.skip("tier T2: dil_fast._C not built (DIL_FAST_BUILD_EXT=0 / DIL_FAST_DISABLE_EXT=1)")
    st = backends.native_status()
    assert st.available, st.reason  # CI builds the extension: a missing one is a failure
