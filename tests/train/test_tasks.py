"""Every task of the paper trains and tests end to end at tiny scale; super-resolution pairs stay
aligned; paired folders (one confounder each); other backbones and checkpoint layouts."""

from __future__ import annotations

import csv
import json
import os

import cv2
import numpy as np
import pytest
import torch

from dil_fast.degrade import parse_confounders, realsr_confounders
from dil_fast.errors import CheckpointError, FlagError, InputError
from dil_fast.models import RRDBNetX4, dil_to_basicsr
from dil_fast.tasks import TASKS
from dil_fast.train import TrainConfig, Trainer
from tests.conftest import make_png_folder

TINY = dict(patch_size=16, batch_size=1, total_epoch=1, num_workers=0, progress=False, print_every=1)


@pytest.fixture
def folders(tmp_path):
    make_png_folder(tmp_path / "train", n=4, size=32)
    make_png_folder(tmp_path / "test", n=1, size=24, seed=3)
    return tmp_path


def _cfg(tmp_path, name, **kw):
    kw.setdefault("trainset", str(tmp_path / "train"))
    kw.setdefault("testset", str(tmp_path / "test"))
    return TrainConfig(ckpt_save=str(tmp_path / name), **{**TINY, **kw})


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_trains_and_runs_its_periodic_test(folders, task):
    rrdb = dict(nf=4, nb=1, gc=2)
    trainer = Trainer(_cfg(folders, task, task=task, **rrdb))
    assert trainer.run() == 0
    spec = TASKS[task]
    assert trainer.last_eval is not None and all(np.isfinite(trainer.last_eval))
    assert type(trainer.meta_model).__name__ == ("RRDBNetX4" if spec.scale == 4 else "RRDBNet")
    assert type(trainer.loader).__name__ == ("ReleasedPairLoader" if task == "denoise" else "FolderCleanLoader")
    log = (folders / task / "train.log").read_text()
    assert log.count("Meta net updated!") == 4 and "Epoch: 0, psnr:" in log
    if task != "denoise":  # the confounders of the task's row, one per value
        assert trainer.degrade.num_confounders == trainer.loader.num_confounders >= 3


def test_realsr_order_2_trains_on_the_second_order_confounders(folders):
    trainer = Trainer(_cfg(folders, "realsr2", task="realsr", order=2, nf=4, nb=1, gc=2))
    assert trainer.run() == 0
    second, first = realsr_confounders(2), realsr_confounders(1)
    names = ["realsr2-gaussian-x4", "realsr2-generalized-x4", "realsr2-plateau-x4", "realsr2-sinc-x4"]
    assert [c.name for c in second] == names
    # the specs trained on: Real-ESRGAN's second stage after the first (8 stages each, the first order has 5)
    assert list(trainer.degrade.confounders) == second != first
    assert [len(c.stages) for c in trainer.degrade.confounders] == [8] * 4 and [len(c.stages) for c in first] == [5] * 4
    assert trainer.last_eval is not None and all(np.isfinite(trainer.last_eval))
    run = folders / "realsr2"
    options = json.loads((run / "options.json").read_text())
    assert options["config"]["task"] == "realsr" and options["config"]["order"] == 2
    assert options["resolved"]["confounders"] == names
    assert options["resolved"]["test"] == [c.name for c in parse_confounders(TASKS["realsr"].test)]
    assert options["resolved"]["scale"] == 4 and options["resolved"]["metric"] == {"y": True, "crop_border": 4}
    log = (run / "train.log").read_text()
    assert log.count("Meta net updated!") == 4 and "realsr1-" not in log
    losses = [line for line in log.splitlines() if "Losses: " in line]
    assert losses and all(all(n in line for n in names) for line in losses)
    tags = {r["tag"] for r in csv.DictReader((run / "metrics.csv").read_text(encoding="utf-8").splitlines())}
    assert {f"loss/{n}" for n in names} <= tags


def test_sr_pairs_are_low_resolution_of_the_high_resolution_crop(folders):
    trainer = Trainer(_cfg(folders, "sr", task="realsr", nf=4, nb=1, gc=2)).open()
    batches = next(trainer.epoch_iterations(0))
    lr, hr = trainer.degrade(next(iter(trainer.loader)), 0)[0]
    assert lr.shape == (1, 3, 4, 4) and hr.shape == (1, 3, 16, 16)
    assert batches[1].shape == (4,)
    trainer.close()
    # an x4 run of a size-keeping confounder appends the bicubic 1/4 resize
    cfg = _cfg(folders, "sr2", confounders="noise:5,10", scale=4, arch="rrdb_x4", nf=4, nb=1, gc=2)
    t = Trainer(cfg).open()
    assert [c.name for c in t.degrade.confounders] == ["noise5+x1/4", "noise10+x1/4"]
    t.close()
    with pytest.raises(FlagError, match="outputs x1 its input; the data is x4"):
        Trainer(_cfg(folders, "sr3", task="realsr", arch="rrdb", nf=4, nb=1, gc=2)).open()


def _paired(root, name, n=4, size=32, scale=1, seed=0):
    """A paired folder whose LQ is the exact box average of the GT (so alignment is checkable)."""
    rng = np.random.default_rng(seed)
    for sub in ("GT", "LQ"):
        os.makedirs(root / name / sub, exist_ok=True)
    for i in range(n):
        gt = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        lq = (
            gt.reshape(size // scale, scale, size // scale, scale, 3).mean((1, 3)).round().astype(np.uint8)
            if scale > 1
            else np.clip(gt.astype(int) + 20, 0, 255).astype(np.uint8)
        )
        cv2.imwrite(str(root / name / "GT" / f"{i:03d}.png"), gt[:, :, ::-1])
        cv2.imwrite(str(root / name / "LQ" / f"{i:03d}.png"), lq[:, :, ::-1])
    return str(root / name)


def test_paired_folders_are_one_confounder_each_and_stay_aligned_under_the_modes(folders):
    sets = [_paired(folders, f"rain{k}", seed=k) for k in range(3)]
    trainer = Trainer(_cfg(folders, "derain", task="derain", trainset=sets, nf=4, nb=1, gc=2))
    assert trainer.run() == 0
    assert type(trainer.loader).__name__ == "PairedLoader" and trainer.loader.num_confounders == 3
    assert trainer.degrade is None
    sr = _paired(folders, "sr", n=6, size=32, scale=4)
    t = Trainer(_cfg(folders, "psr", trainset=[sr], scale=4, arch="rrdb_x4", nf=4, nb=1, gc=2, batch_size=2)).open()
    for epoch in range(3):  # many crops and modes: every LQ crop is the box average of its GT crop
        t.loader.set_epoch(epoch)
        for pairs in t.loader:
            lq, gt = pairs[0]
            box = (gt * 255).reshape(2, 3, 4, 4, 4, 4).mean((3, 5))
            assert torch.allclose(lq * 255, box.round(), atol=0.51)
    t.close()


def test_paired_folder_errors_name_the_file(folders):
    bad = _paired(folders, "bad")
    os.remove(os.path.join(bad, "LQ", "001.png"))
    with pytest.raises(InputError, match=r"1 image\(s\) only in GT/ \(e\.g\. 001\)"):
        Trainer(_cfg(folders, "b1", trainset=[bad], nf=4, nb=1, gc=2)).open()
    size = _paired(folders, "size", scale=1)
    with pytest.raises(InputError, match="with --scale 4 the GT must be 4x the LQ"):
        t = Trainer(_cfg(folders, "b2", trainset=[size], scale=4, arch="rrdb_x4", nf=4, nb=1, gc=2)).open()
        next(iter(t.loader))
    with pytest.raises(FlagError, match="paired folder"):
        Trainer(_cfg(folders, "b3", trainset=[size], loader="folder", nf=4, nb=1, gc=2)).open()


SWIN_KWARGS = (
    '{"img_size": 16, "embed_dim": 8, "depths": [1], "num_heads": [2], "window_size": 4, '
    '"mlp_ratio": 2.0, "upscale": 1, "drop_path_rate": 0.0}'
)


@pytest.mark.parametrize("variant", ["sf", "pf", "ss", "ps", "ss-fo", "erm"])
def test_swinir_trains_with_every_variant(folders, variant):
    trainer = Trainer(
        _cfg(folders, f"swin-{variant}", task="deblur", arch="swinir", arch_kwargs=SWIN_KWARGS, variant=variant)
    )
    assert trainer.run() == 0 and type(trainer.meta_model).__name__ == "SwinIR"
    state = torch.load(folders / f"swin-{variant}" / "last.pt", weights_only=True)
    assert state["model_config"]["arch"] == "swinir" and state["model_config"]["kwargs"]["embed_dim"] == 8
    assert all(torch.isfinite(v).all() for v in state["models"]["model_meta"].values() if v.is_floating_point())


def test_own_architecture_by_name_and_its_resume_needs_the_flag_again(folders):
    arch = "tests.train.custom_arch:TinyNet"
    cfg = _cfg(folders, "own", arch=arch, arch_kwargs='{"width": 3}', stop_after=2)
    assert Trainer(cfg).run() == 0
    last = str(folders / "own" / "last.pt")
    with pytest.raises(CheckpointError, match="pass it again to resume"):
        Trainer(_cfg(folders, "own", resume=last)).open()
    assert Trainer(_cfg(folders, "own", resume=last, arch=arch, arch_kwargs='{"width": 3}')).run() == 0


def test_basicsr_checkpoint_resumes_weights_only_into_the_x4_model(folders):
    torch.manual_seed(0)
    net = RRDBNetX4(nf=4, nb=1, gc=2)
    path = folders / "realesrgan.pth"
    torch.save({"params_ema": dil_to_basicsr(net.state_dict())}, path)
    trainer = Trainer(_cfg(folders, "res", task="realsr", resume=str(path), stop_after=1)).open()
    got = trainer.meta_model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in net.state_dict().items())
    trainer.close()


def test_task_flags_are_validated():
    def refused(match, **kw):
        with pytest.raises(FlagError, match=match):
            TrainConfig(ckpt_save="x", trainset="y", **kw).validate()

    refused("--task must be one of", task="sr")
    refused("--order 2 selects", order=2)
    refused("--arch must be one of", arch="unet")
    refused("--arch_kwargs: not JSON", arch_kwargs="{nf: 3}")
    refused("--nf/--nb/--gc size an RRDB", arch="swinir", nf=8)
    refused("must be a multiple of the scale 4", task="realsr", patch_size=30)
    refused("--loss must be one of", loss="ssim")
    refused("--lr must be a finite number", lr=float("nan"))
    refused("--meta_lr must be a finite number", meta_lr=float("inf"))
    refused("--test_level must be a finite number", test_level=float("nan"))
