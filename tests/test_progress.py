"""Progress bars are optional: without tqdm, crop, pack and train run (silently) all the same."""
from __future__ import annotations

import sys

import pytest

from dil_fast._progress import NullBar, progress_bar, tqdm_available
from tests.conftest import make_png_folder


@pytest.fixture
def no_tqdm(monkeypatch):
    for name in [m for m in sys.modules if m == "tqdm" or m.startswith("tqdm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now raises ImportError


def test_progress_bar_uses_tqdm_when_present():
    pytest.importorskip("tqdm")
    bar = progress_bar(True, total=3, disable=True)
    assert type(bar).__name__ == "tqdm"
    bar.close()
    assert isinstance(progress_bar(False, total=3), NullBar)


def test_crop_pack_train_without_tqdm(no_tqdm, tmp_path):
    from dil_fast.data.crop import crop_folder
    from dil_fast.data.pack import pack_folder

    assert not tqdm_available() and isinstance(progress_bar(True, total=1), NullBar)
    make_png_folder(tmp_path / "img", n=3, size=40)
    make_png_folder(tmp_path / "test", n=1, size=24)
    res = crop_folder(str(tmp_path / "img"), str(tmp_path / "patches"), size=16, stride=16, progress=True)
    assert res["patches"] == 12 and len(list((tmp_path / "patches").iterdir())) == 12
    pack_folder(str(tmp_path / "patches"), str(tmp_path / "store"), progress=True)
    assert (tmp_path / "store").exists()
    from dil_fast.train import TrainConfig, Trainer

    cfg = TrainConfig(ckpt_save=str(tmp_path / "run"), trainset=str(tmp_path / "patches"),
                      testset=str(tmp_path / "test"), patch_size=16, batch_size=2, total_epoch=1, num_workers=0,
                      device="cpu", nf=8, nb=1, gc=4, progress=True)
    assert Trainer(cfg).run() == 0 and (tmp_path / "run" / "model_1.pt").exists()
