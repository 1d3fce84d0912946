"""--distributed under torchrun, and --launcher slurm from srun's variables (the mapping as a pure
function of fake environments, and 2 gloo processes on CPU for each launcher)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from tests.conftest import make_png_folder
from tests.helpers import train_argv


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
    flags = ("--distributed", "--local_rank", "0", "--print_every", "1")
    argv = train_argv(tmp_path / "train", tmp_path / "test", out, *flags, epochs=2, tensorboard=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    cmd += ["-m", "dil_fast", *argv]
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


# ---------------------------------------------------------------------- --launcher slurm / pytorch
SLURM = {
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "8",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_JOB_ID": "4242",
}


@pytest.mark.parametrize(
    "hostlist, hosts",
    [
        ("node17", ["node17"]),
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("node[8-11]", ["node8", "node9", "node10", "node11"]),  # no padding: the lower bound has none
        ("node[098-101]", ["node098", "node099", "node100", "node101"]),
        ("gpu[1-2]-ib,cpu05", ["gpu1-ib", "gpu2-ib", "cpu05"]),
        ("rack[1-2]n[3,5]", ["rack1n3", "rack1n5", "rack2n3", "rack2n5"]),  # first bracket slowest
        (" a , b[1] ", ["a", "b1"]),
        ("10.0.0.5", ["10.0.0.5"]),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_expand_hostlist(hostlist, hosts):
    from dil_fast.train.distributed import expand_hostlist

    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist", ["", "a,,b", "node[1-", "node]1", "node[a-b]", "node[3-1]", "n[[1]]", "n[]"])
def test_expand_hostlist_refuses_malformed_lists(hostlist):
    from dil_fast.train.distributed import expand_hostlist

    with pytest.raises(ValueError):
        expand_hostlist(hostlist)


def test_slurm_variables_map_to_torchs():
    from dil_fast.train.distributed import launch_from_environment, slurm_environment

    assert slurm_environment(SLURM) == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu07",  # the first node of the list
        "MASTER_PORT": str(10000 + 4242),  # from the job id: two jobs on one node differ
    }
    assert slurm_environment(dict(SLURM, SLURM_JOB_ID="123456"))["MASTER_PORT"] == str(10000 + 123456 % 20000)
    no_job = {k: v for k, v in SLURM.items() if k != "SLURM_JOB_ID"}
    assert slurm_environment(no_job)["MASTER_PORT"] == "29500"  # torch's default
    # the step's node list first (task 0 runs on its first node), then the job's, then SLURM_NODELIST
    assert slurm_environment(dict(SLURM, SLURM_STEP_NODELIST="cn[3-4]"))["MASTER_ADDR"] == "cn3"
    old = {k: v for k, v in SLURM.items() if k != "SLURM_JOB_NODELIST"}
    assert slurm_environment(dict(old, SLURM_NODELIST="a1,b2"))["MASTER_ADDR"] == "a1"
    # MASTER_ADDR / MASTER_PORT set by the job script win
    env = slurm_environment(dict(SLURM, MASTER_ADDR="10.1.2.3", MASTER_PORT="23456"))
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.1.2.3", "23456")
    # torch's own RANK/WORLD_SIZE (a stale export) do not override srun's
    assert slurm_environment(dict(SLURM, RANK="0", WORLD_SIZE="1"))["RANK"] == "5"

    launch = launch_from_environment("slurm", SLURM)
    assert (launch.rank, launch.world_size, launch.local_rank) == (5, 8, 1)
    assert launch.init_kwargs() == {"init_method": "tcp://gpu07:14242", "rank": 5, "world_size": 8}
    ipv6 = launch_from_environment("slurm", dict(SLURM, MASTER_ADDR="fe80::1"))
    assert ipv6.init_kwargs()["init_method"] == "tcp://[fe80::1]:14242"


@pytest.mark.parametrize(
    "change, needles",
    [
        ({"SLURM_PROCID": None, "SLURM_LOCALID": None}, ["missing SLURM_PROCID, SLURM_LOCALID", "srun"]),
        ({"SLURM_NTASKS": "two"}, ["SLURM_NTASKS='two'", "whole number"]),
        ({"SLURM_PROCID": "8"}, ["SLURM_PROCID=8", "SLURM_NTASKS=8"]),
        ({"SLURM_JOB_NODELIST": "gpu[07-"}, ["SLURM_JOB_NODELIST='gpu[07-'", "MASTER_ADDR"]),
        ({"SLURM_JOB_NODELIST": None}, ["no node list", "MASTER_ADDR"]),
        ({"MASTER_PORT": "70000"}, ["MASTER_PORT='70000'"]),
        ({"TORCHELASTIC_RUN_ID": "x"}, ["torchrun", "--launcher pytorch"]),
    ],
    ids=["missing", "not-a-number", "rank-past-world", "bad-nodelist", "no-nodelist", "bad-port", "under-torchrun"],
)
def test_slurm_environment_refusals_name_the_flag_and_the_variable(change, needles):
    from dil_fast.errors import FlagError
    from dil_fast.train.distributed import slurm_environment

    env = {k: v for k, v in {**SLURM, **change}.items() if v is not None}
    with pytest.raises(FlagError) as info:
        slurm_environment(env)
    message = str(info.value)
    assert message.startswith("--launcher slurm") and "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_pytorch_launcher_reads_torchruns_environment():
    from dil_fast.errors import FlagError
    from dil_fast.train.distributed import launch_from_environment

    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    launch = launch_from_environment("pytorch", env, local_rank=0)
    assert (launch.rank, launch.world_size, launch.local_rank, launch.init_kwargs()) == (1, 2, 1, {})  # env://
    no_local = {k: v for k, v in env.items() if k != "LOCAL_RANK"}
    assert launch_from_environment("pytorch", no_local, local_rank=0).local_rank == 0  # --local_rank then
    with pytest.raises(FlagError, match=r"missing RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT\): torchrun"):
        launch_from_environment("pytorch", {})
    with pytest.raises(FlagError, match="under srun without torchrun: --launcher slurm"):
        launch_from_environment("pytorch", SLURM)


def test_cuda_index_of_a_task():
    from dil_fast.errors import FlagError
    from dil_fast.train.distributed import cuda_index

    assert cuda_index(3, 4) == 3  # every task sees the node's GPUs
    assert cuda_index(3, 1) == 0  # srun --gpus-per-task=1: its own GPU is device 0
    with pytest.raises(FlagError, match="rank 7: local rank 3 but this process sees 2 GPU"):
        cuda_index(3, 2, rank=7)


def test_launcher_flag_and_distributed(tmp_path):
    from dil_fast.errors import FlagError
    from dil_fast.train import TrainConfig

    def config(**kw):
        return TrainConfig(ckpt_save=str(tmp_path / "run"), device="cpu", **kw).validate()

    assert not config().distributed and config().launcher is None
    assert not config(launcher="none").distributed
    assert config(launcher="slurm").distributed  # pytorch and slurm run DDP, as --distributed does
    assert config(launcher="pytorch").distributed
    assert config(distributed=True).launcher is None  # --distributed alone: torchrun's environment
    with pytest.raises(FlagError, match="--distributed runs under a launcher, --launcher none is one process"):
        config(distributed=True, launcher="none")
    with pytest.raises(FlagError, match="--launcher must be one of none, pytorch, slurm, got 'mpi'"):
        config(launcher="mpi")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--launcher", "slurm"], "--launcher slurm needs srun's environment"),
        (["--launcher", "pytorch"], "--launcher pytorch (--distributed) needs torchrun's environment"),
        (["--distributed", "--launcher", "none"], "--launcher none is one process"),
        (["--launcher", "mpi"], "argument --launcher: invalid choice: 'mpi'"),
    ],
    ids=["slurm-without-srun", "pytorch-without-torchrun", "contradiction", "unknown"],
)
def test_launcher_refusals_on_the_command_line(tmp_path, monkeypatch, capsys, args, needle):
    from dil_fast.cli import main

    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", *SLURM):
        monkeypatch.delenv(key, raising=False)
    out = tmp_path / "run"
    make_png_folder(tmp_path / "train", n=4, size=20, seed=3)
    argv = ["train", "--trainset", str(tmp_path / "train"), "--ckpt_save", str(out), "--device", "cpu", *args]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's refusals
        rc = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not out.exists()  # nothing created


def _bindable_port(lo, hi):
    import random

    for port in random.Random().sample(range(lo, hi), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip(f"no free port in {lo}..{hi}")


@pytest.mark.slow
def test_srun_two_gloo_tasks_from_slurms_variables(tmp_path):
    """Two processes started as srun starts them: only SLURM_* set (no RANK/WORLD_SIZE/MASTER_*); the
    ranks, the first node and the port (from SLURM_JOB_ID) come from them."""
    make_png_folder(tmp_path / "train", n=16, size=20, seed=3)
    make_png_folder(tmp_path / "test", n=1, size=16, seed=4)
    out = tmp_path / "slurm"
    port = _bindable_port(10000, 30000)
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
        and not k.startswith("SLURM_")
    }
    base.update(
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]),
        SLURM_NTASKS="2",
        SLURM_JOB_ID=str(port - 10000),
        SLURM_JOB_NODELIST="localhost,node[02-03]",
    )
    flags = ("--launcher", "slurm", "--print_every", "1")
    argv = train_argv(tmp_path / "train", tmp_path / "test", out, *flags, tensorboard=True)
    cmd = [sys.executable, "-m", "dil_fast", *argv]
    procs = [
        subprocess.Popen(
            cmd,
            env=dict(base, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    results = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
        results.append((p.returncode, stdout, stderr))
    for rc, stdout, stderr in results:
        assert rc == 0, stdout[-2000:] + stderr[-3000:]
    log = (out / "train.log").read_text()
    assert log.count("Set random seed to 1") == 1  # rank 0 writes
    assert log.count("Meta net updated!") == 4  # 16 // (2 x 2 ranks) iterations: the data is sharded
    assert "All 2 ranks hold identical meta weights" in log
    options = json.loads((out / "options.json").read_text())["config"]
    assert options["launcher"] == "slurm" and options["distributed"] is True
