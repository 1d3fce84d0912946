"""DDP on torch's engine, 2 gloo processes on the CPU: the averaged inner steps equal one process
on the global batch; a peer that dies or hangs ends the other rank with one line."""

import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import assert_close_verbose, make_png_folder
from tests.helpers import train_argv
from tests.train.ddp_worker import make_algorithm, run_steps

WORKER = os.path.join(os.path.dirname(__file__), "ddp_worker.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args, world=2, timeout=240, others_after_rank0=None):
    """Start ``world`` ranks of ddp_worker.py; returns ``[(rc, stdout, stderr, seconds)]`` per rank.
    ``others_after_rank0``: seconds the other ranks get once rank 0 has ended (then they are killed)."""
    port = _free_port()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    procs = []
    t0 = time.monotonic()
    for rank in range(world):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, WORKER, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    results = []
    for i, p in enumerate(procs):
        left = max(timeout - (time.monotonic() - t0), 1)
        if i and others_after_rank0 is not None:
            left = min(left, others_after_rank0)
        try:
            out, err = p.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        results.append((p.returncode, out, err, time.monotonic() - t0))
    return results


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_on_the_global_batch(tmp_path):
    res = _launch(["equal", str(tmp_path)])
    for rc, out, err, _ in res:
        assert rc == 0, err[-3000:]
    for variant in ("sf", "pf", "erm", "ss"):
        r0 = torch.load(tmp_path / f"{variant}.rank0.pt", weights_only=True)
        r1 = torch.load(tmp_path / f"{variant}.rank1.pt", weights_only=True)
        for name in r0:  # the ranks stay identical (every variant, ss through GradSync)
            assert torch.equal(r0[name], r1[name]), f"{variant}: {name} differs across ranks"
        if variant == "ss":
            continue  # a second-order meta-gradient is not linear in the support batch: no 1-process twin
        single = run_steps(make_algorithm(variant), rank=0, world=1, per_rank=4).meta_model.state_dict()
        start = make_algorithm(variant).meta_model.state_dict()
        moved = max((single[n] - start[n]).abs().max().item() for n in single)
        assert moved > 1e-4  # the steps changed the weights (the comparison below means something)
        for name in single:
            assert_close_verbose(r0[name], single[name], atol=2e-6, rtol=1e-4, name=f"{variant}:{name}")


def _train_args(tmp_path, out):
    make_png_folder(tmp_path / "train", n=16, size=20, seed=3)
    make_png_folder(tmp_path / "test", n=1, size=16, seed=4)
    flags = ("--distributed", "--print_every", "1", "--ddp_timeout", "5")
    return train_argv(tmp_path / "train", tmp_path / "test", out, *flags, epochs=3)[1:]  # the worker adds "train"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["die", "hang"])
def test_a_peer_that_dies_or_hangs_ends_the_other_rank_with_one_line(tmp_path, mode):
    out = tmp_path / "run"
    # 4 meta-iterations per epoch: rank 1 fails in the second epoch, after model_1.pt
    (rc0, _, err0, t0), (rc1, _, err1, _) = _launch(
        [mode, "6", "--", *_train_args(tmp_path, out)], timeout=120, others_after_rank0=1
    )
    assert rc0 == 3, err0[-3000:]
    assert "Traceback" not in err0
    errors = [line for line in err0.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err0
    assert errors[0].startswith("error: rank 0 of 2: distributed training stopped: ")
    assert ("--ddp_timeout 5 s" in errors[0]) == (mode == "hang"), errors[0]
    assert t0 < 90  # within --ddp_timeout of the failure (plus start-up), not the 300 s default
    if mode == "die":
        assert rc1 == 9
    # the last checkpoint written is kept, nothing half-written beside it
    listed = set(os.listdir(out))
    assert {"model_1.pt", "last.pt", "train.log"} <= listed
    assert not [n for n in listed if n.startswith(".") or n.endswith(".tmp")], listed


def test_ddp_timeout_must_be_positive(tmp_path, capsys):
    from dil_fast import cli

    rc = cli.main(["train", "--ckpt_save", str(tmp_path / "x"), "--ddp_timeout", "0"])
    assert rc == 2
    assert "--ddp_timeout" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
