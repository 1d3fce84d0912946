"""--distributed under torchrun with 2 gloo processes on CPU."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from tests.conftest import make_png_folder


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_gloo_processes(tmp_path):
    make_png_folder(tmp_path / "train", n=16, size=20, seed=3)
    make_png_folder(tmp_path / "test", n=1, size=16, seed=4)
    out = tmp_path / "ddp"
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "dil_fast",
        "train",
        "--distributed",
        "--local_rank",
        "0",
        "--device",
        "cpu",
        "--trainset",
        str(tmp_path / "train"),
        "--testset",
        str(tmp_path / "test"),
        "--ckpt_save",
        str(out),
        "--patch_size",
        "16",
        "--batch_size",
        "2",
        "--total_epoch",
        "2",
        "--num_workers",
        "0",
        "--nf",
        "8",
        "--nb",
        "1",
        "--gc",
        "4",
        "--print_every",
        "1",
        "--no_progress",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    log = (out / "train.log").read_text()
    # only rank 0 writes: one seed line per run, iterations = 16 // (2 x 2 ranks) = 4 per epoch
    assert log.count("Set random seed to 1") == 1
    assert log.count("Meta net updated!") == 2 * 4
    assert "Iter: 3/4" in log
    assert "All 2 ranks hold identical meta weights" in log
    ck = torch.load(out / "model_2.pt", weights_only=True)
    assert set(ck) == {"model_meta", "model_task"}
    listed = set(os.listdir(out)) - {"tb", "options.yaml"}  # TensorBoard and PyYAML when installed
    assert listed == {"curves.png", "last.pt", "metrics.csv", "model_1.pt", "model_2.pt", "options.json", "train.log"}
