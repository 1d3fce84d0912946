"""The trainer's API: any nn.Module and any loader written to the documented protocol train through
Trainer with checkpoints, evaluation and an exact resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dil_fast.degrade import GaussianNoise
from dil_fast.train import TrainConfig, Trainer
from tests.conftest import make_png_folder


class TinyUNetish(nn.Module):
    """A user's own network (not an RRDB): two convs and a global skip."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))


class TensorCleanLoader:
    """A user-written clean loader: K shuffled views of one tensor of patches, per epoch, with the
    members of dil_fast.data.base.Loader and nothing else."""

    yields = "clean"

    def __init__(self, patches: torch.Tensor, batch: int, k: int, seed: int = 0):
        self.patches, self.batch, self.num_confounders, self.seed = patches, batch, k, seed
        self.epoch, self.position = 0, 0

    def __len__(self):
        return self.patches.shape[0] // self.batch

    def set_epoch(self, epoch):
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        orders = [torch.randperm(self.patches.shape[0], generator=g) for _ in range(self.num_confounders)]
        while self.position < len(self):
            s = self.position * self.batch
            batch = torch.stack([self.patches[o[s : s + self.batch]] for o in orders])
            self.position += 1
            yield batch

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        self.epoch, self.position = state["epoch"], state["position"]


class PairListLoader(TensorCleanLoader):
    """A user-written loader that yields the K (input, target) pairs itself."""

    yields = "pairs"

    def __iter__(self):
        for clean in super().__iter__():
            yield [(c.clamp(0, 1) * 0.9, c) for c in clean]


@pytest.fixture
def run(tmp_path):
    test = make_png_folder(tmp_path / "test", n=1, size=16, seed=4)
    patches = torch.rand(12, 3, 10, 10, generator=torch.Generator().manual_seed(0))

    def make(name, **kw):
        cfg = TrainConfig(
            ckpt_save=str(tmp_path / name),
            testset=str(tmp_path / "test"),
            total_epoch=3,
            print_every=1,
            progress=False,
            test_every=1,
            **kw,
        )
        torch.manual_seed(0)
        return Trainer(
            cfg,
            model=TinyUNetish(),
            loader=TensorCleanLoader(patches, 3, 2),
            confounders=[GaussianNoise(10.0), GaussianNoise(20.0)],
        )

    assert test
    return make


def _weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.meta_model.state_dict().items()}


def test_user_model_and_loader_train_checkpoint_and_resume_exactly(run, tmp_path):
    straight = run("straight")
    assert straight.run() == 0
    assert (tmp_path / "straight" / "model_3.pt").exists() and straight.last_eval is not None
    first = run("stopped", stop_after=5)  # 4 meta-iterations per epoch: stops inside epoch 1
    assert first.run() == 0
    resumed = run("stopped", resume=str(tmp_path / "stopped" / "last.pt"))
    assert resumed.run() == 0
    want, got = _weights(straight), _weights(resumed)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    log = (tmp_path / "stopped" / "train.log").read_text()
    assert "Resumed from" in log and "iteration 1" in log


def test_a_loader_of_pairs_skips_the_degradation(tmp_path):
    make_png_folder(tmp_path / "test", n=1, size=16, seed=4)
    cfg = TrainConfig(
        ckpt_save=str(tmp_path / "p"),
        testset=str(tmp_path / "test"),
        total_epoch=1,
        print_every=1,
        progress=False,
        variant="erm",
    )
    loader = PairListLoader(torch.rand(6, 3, 8, 8), 2, 3)
    trainer = Trainer(cfg, model=TinyUNetish(), loader=loader)
    assert trainer.run() == 0 and trainer.degrade is None and loader.position == 3


def test_a_loader_missing_protocol_members_is_refused(tmp_path):
    class Half:
        yields = "clean"
        num_confounders = 2

        def __len__(self):
            return 1

    with pytest.raises(TypeError, match="lacks epoch, position, __iter__, set_epoch, state_dict, load_state_dict"):
        Trainer(TrainConfig(ckpt_save=str(tmp_path / "x")), model=TinyUNetish(), loader=Half())
