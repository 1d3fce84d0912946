"""The one dispatcher: preferences, forced backends honoured or refused the same way on every path
(degradation ops, the sampler, the optimizers, the loaders, the trainer), the fused-optimizer rule."""

from __future__ import annotations

import pytest
import torch

from dil_fast import backends
from dil_fast.cli import main
from dil_fast.degrade import GaussianNoise, PoissonNoise, counterfactual
from dil_fast.meta import ERM, SerialFirstOrder
from dil_fast.ops.noise import gaussian_noise
from dil_fast.ops.optim import adam_step_, fused_optimizer, new_step
from dil_fast.ops.sample_crops import sample_crops
from dil_fast.optim import FusedAdam
from dil_fast.train import TrainConfig, Trainer

ALL_OPS = (
    "noise",
    "blur_separable",
    "blur2d",
    "resize",
    "jpeg",
    "poisson",
    "isp",
    "sample_crops",
    "adam_step",
    "meta_step",
    "sgd_step",
    "nonfinite_check",
)


def test_every_op_is_declared_and_torch_serves_it_everywhere():
    import dil_fast.ops  # noqa: F401 - declares every op

    assert set(ALL_OPS) <= set(backends.ops())
    for op in ALL_OPS:
        assert backends.select(op, torch.device("cpu"), None, "torch").backend == "torch"


def test_preference_per_device():
    cpu = torch.device("cpu")
    assert backends.backend_for("noise", cpu) == "torch"  # Triton on CPU tensors only when forced
    assert backends.backend_for("sample_crops", cpu) == "torch"
    native = backends.native_status().available
    assert backends.backend_for("adam_step", cpu) == ("cuda" if native else "torch")


def test_unknown_and_unservable_backends_are_refused_with_the_reason():
    x = torch.rand(2, 3, 8, 8)
    sigma = torch.full((1, 2), 0.1)
    with pytest.raises(backends.BackendError, match="'gpu' is not one of"):
        gaussian_noise(x, sigma, seed=0, step=0, backend="gpu")
    with pytest.raises(
        backends.BackendError, match=r"noise: backend 'cuda' cannot serve cpu tensors \(no implementation\)"
    ):
        gaussian_noise(x, sigma, seed=0, step=0, backend="cuda")
    with pytest.raises(backends.BackendError, match="poisson: backend 'triton'"):
        counterfactual(x, [PoissonNoise(1.0)], seed=0, step=0, backend="triton")


def test_forced_backend_reaches_the_sampler_and_its_loader():
    store = torch.randint(0, 256, (4, 9, 9, 3), dtype=torch.uint8)
    perm = torch.stack([torch.randperm(4)])
    with pytest.raises(backends.BackendError, match="sample_crops: backend 'cuda'"):
        sample_crops(store, perm, 0, 2, 5, 7, backend="cuda")
    assert sample_crops(store, perm, 0, 2, 5, 7, backend="torch").shape == (1, 2, 3, 5, 5)


def test_forced_backend_reaches_the_optimizers():
    p = torch.randn(5)
    with pytest.raises(backends.BackendError, match="adam_step: backend 'triton'"):
        adam_step_(p, torch.randn(5), torch.zeros(5), torch.zeros(5), new_step("cpu"), 1e-3, backend="triton")
    with pytest.raises(backends.BackendError, match="adam_step: backend 'triton'"):
        FusedAdam([torch.nn.Parameter(p)], backend="triton")
    with pytest.raises(backends.BackendError, match="adam_step: backend 'triton'"):
        SerialFirstOrder(torch.nn.Conv2d(3, 3, 3), backend="triton")
    # torch: the reference path, per-tensor torch.optim.Adam (the one rule: fused means native kernels)
    assert not fused_optimizer("cpu", "torch")
    sf = SerialFirstOrder(torch.nn.Conv2d(3, 3, 3), backend="torch")
    assert not sf.fused and type(sf.meta_optimizer) is torch.optim.Adam
    if backends.native_status().available:
        assert fused_optimizer("cpu") and fused_optimizer("cpu", "cuda")
        assert isinstance(ERM(torch.nn.Conv2d(3, 3, 3), backend="cuda").meta_optimizer, FusedAdam)


def test_env_backend_is_read_once_and_validated(monkeypatch):
    backends.env_backend.cache_clear()
    try:
        monkeypatch.setenv("DIL_FAST_BACKEND", "torch")
        assert backends.forced_backend() == "torch" and backends.forced_backend("cuda") == "cuda"
        monkeypatch.setenv("DIL_FAST_BACKEND", "cuda")
        assert backends.forced_backend() == "torch"  # read once: later changes are not seen
        backends.env_backend.cache_clear()
        monkeypatch.setenv("DIL_FAST_BACKEND", "bogus")
        with pytest.raises(backends.BackendError, match="DIL_FAST_BACKEND='bogus'"):
            backends.forced_backend()
    finally:
        monkeypatch.delenv("DIL_FAST_BACKEND", raising=False)
        backends.env_backend.cache_clear()


def test_check_forced_lists_every_op_a_run_cannot_serve():
    assert backends.check_forced(["noise", "adam_step"], "cpu", None) is None
    assert backends.check_forced(["noise", "adam_step"], "cpu", "torch") == "torch"
    with pytest.raises(backends.BackendError) as err:
        backends.check_forced(["noise", "sample_crops", "adam_step"], "cpu", "cuda")
    msg = str(err.value)
    assert msg.startswith("backend 'cuda' cannot serve this run on cpu: ")
    assert "noise: backend 'cuda'" in msg and "sample_crops: backend 'cuda'" in msg
    if backends.native_status().available:  # the native core serves the optimizer on the CPU
        assert "adam_step" not in msg


@pytest.fixture
def store_run(tmp_path, png_folder):
    from dil_fast.data.pack import pack_folder

    png_folder(n=8, size=20)
    pack_folder(tmp_path / "train", tmp_path / "store", progress=False)
    test = png_folder(n=1, size=16, name="test")
    return dict(
        trainset=str(tmp_path / "store"),
        testset=str(test[0]).rsplit("/", 1)[0],
        loader="store",
        confounders="noise:5,15",
        patch_size=12,
        batch_size=2,
        total_epoch=1,
        num_workers=0,
        nf=4,
        nb=1,
        gc=2,
        print_every=1,
        progress=False,
        ckpt_save=str(tmp_path / "ck"),
    )


def test_trainer_refuses_a_forced_backend_up_front_naming_each_op(store_run):
    with pytest.raises(backends.BackendError) as err:
        Trainer(TrainConfig(**store_run, backend="cuda")).run()
    assert "sample_crops" in str(err.value) and "noise" in str(err.value)
    assert Trainer(TrainConfig(**store_run, backend="torch", stop_after=1)).run() == 0


def test_cli_prints_the_refusal_as_one_line(store_run, capsys):
    argv = ["train", "--backend", "cuda"]
    for k in (
        "trainset",
        "testset",
        "loader",
        "confounders",
        "patch_size",
        "batch_size",
        "total_epoch",
        "nf",
        "nb",
        "gc",
        "ckpt_save",
    ):
        argv += [f"--{k}", str(store_run[k])]
    assert main(argv + ["--num_workers", "0", "--no_progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: backend 'cuda' cannot serve this run")


def test_gaussian_noise_spec_uses_the_dispatcher():
    x = torch.rand(2, 3, 8, 8)
    a = counterfactual(x, [GaussianNoise(10.0)], seed=1, step=2, backend="torch")
    b = counterfactual(x, [GaussianNoise(10.0)], seed=1, step=2)
    assert torch.equal(a, b)
