"""Distributed training under ``torchrun`` or Slurm's ``srun``: the launcher's environment read once
(``--launcher pytorch``: torchrun's RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*; ``--launcher slurm``:
srun's SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and the first node of the step, docs/SLURM.md),
process-group set-up (with ``--ddp_timeout``), identical starting weights on every rank, the inner
steps' gradient averaging through torch's ``DistributedDataParallel``, the end-of-run check that the
ranks agree, and one-line errors when a peer dies or stops answering.

Gradient averaging. The variants with a task network (sf, pf, erm and reference mode) run their
inner steps through ``DistributedDataParallel(task_model)``: bucketed all-reduces that start while
backward is still running. DDP copies each gradient into its bucket and the averaged bucket back
into ``p.grad`` in place (``gradient_as_bucket_view`` stays off): ``p.grad`` of a fused optimizer is
a view of its flat gradient buffer, which must stay one buffer for the one-launch Adam step. The
cost is two extra copies of the gradients per inner step (2 × 4 bytes × P; 133 MB for RRDB-23's
16.6 M parameters, well under a millisecond at HBM bandwidth). The virtual-model variants (ss,
ss-fo, ps) compute one meta-gradient through ``torch.func`` outside any module's backward and
average it with :class:`dil_fast.meta.GradSync` (one flat all-reduce).

Skipped steps agree across ranks: the non-finite flag is all-reduced (max) before each step that
must match, so a NaN on one rank skips that step on every rank.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import FlagError, TrainingStopped
from ..meta import GradSync, MetaAlgorithm
from .config import TrainConfig


def setup(cfg: TrainConfig) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)``; for ``--launcher pytorch|slurm`` (``--distributed`` is
    ``pytorch``) initialises the default process group (NCCL on CUDA, gloo on the CPU) with
    ``--ddp_timeout`` as every collective's limit, from the launcher's environment
    (:func:`launch_from_environment`). On CUDA ``local_rank`` is this process's device index
    (:func:`cuda_index`). One process (``--launcher none``): ``(0, 1, cfg.local_rank)``."""
    if not cfg.distributed:
        return 0, 1, cfg.local_rank
    import torch.distributed as dist

    launch = launch_from_environment(cfg.launcher or "pytorch", os.environ, cfg.local_rank)
    local_rank = launch.local_rank
    use_cuda = torch.cuda.is_available() and (cfg.device is None or cfg.device.startswith("cuda"))
    if use_cuda:
        local_rank = cuda_index(launch.local_rank, torch.cuda.device_count(), launch.rank)
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        with collective_errors(launch.rank, launch.world_size, cfg.ddp_timeout):
            dist.init_process_group(
                backend="nccl" if use_cuda else "gloo",
                timeout=datetime.timedelta(seconds=cfg.ddp_timeout),
                **launch.init_kwargs(),
            )
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if cfg.gpus not in (1, world_size):
        raise FlagError(f"--gpus {cfg.gpus} does not match the {world_size} launched processes")
    return rank, world_size, local_rank


# ---------------------------------------------------------------------- launchers
@dataclass(frozen=True)
class Launch:
    """This process's place in the job, read from its launcher's environment."""

    rank: int
    world_size: int
    local_rank: int
    master: tuple[str, int] | None = None  # (address, port) for a launcher that is not torchrun

    def init_kwargs(self) -> dict:
        """``init_process_group``'s rendezvous: torchrun's ``env://`` (its RANK, WORLD_SIZE and
        MASTER_*), else a TCP address with the rank and world size given explicitly."""
        if self.master is None:
            return {}
        host, port = self.master
        host = f"[{host}]" if ":" in host else host  # an IPv6 address
        return {"init_method": f"tcp://{host}:{port}", "rank": self.rank, "world_size": self.world_size}


DEFAULT_MASTER_PORT = 29500  # torch's


def launch_from_environment(launcher: str, env: Mapping[str, str], local_rank: int = 0) -> Launch:
    """Rank, world size, local rank and rendezvous of ``--launcher pytorch`` (torchrun's RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or ``slurm`` (:func:`slurm_environment`),
    from ``env`` (``os.environ``); :class:`FlagError` naming the flag and what is missing."""
    if launcher == "slurm":
        torch_env = slurm_environment(env)
        return Launch(
            int(torch_env["RANK"]),
            int(torch_env["WORLD_SIZE"]),
            int(torch_env["LOCAL_RANK"]),
            (torch_env["MASTER_ADDR"], int(torch_env["MASTER_PORT"])),
        )
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        hint = " (under srun without torchrun: --launcher slurm)" if "SLURM_PROCID" in env else ""
        raise FlagError(
            f"--launcher pytorch (--distributed) needs torchrun's environment (missing {', '.join(missing)}): "
            f"torchrun --nproc_per_node=N -m dil_fast train --distributed ...{hint}"
        )
    rank, world_size = _whole(env, "RANK", "pytorch"), _whole(env, "WORLD_SIZE", "pytorch")
    local = _whole(env, "LOCAL_RANK", "pytorch") if env.get("LOCAL_RANK") else local_rank
    _check_ranks("pytorch", rank, world_size, local, ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    return Launch(rank, world_size, local)


def slurm_environment(env: Mapping[str, str]) -> dict[str, str]:
    """torch's variables from srun's: ``SLURM_PROCID`` -> RANK, ``SLURM_NTASKS`` -> WORLD_SIZE,
    ``SLURM_LOCALID`` -> LOCAL_RANK; MASTER_ADDR (unless set) the first host of the step's node
    list (``SLURM_STEP_NODELIST``, else ``SLURM_JOB_NODELIST`` / ``SLURM_NODELIST``), where task 0
    runs; MASTER_PORT (unless set) ``10000 + SLURM_JOB_ID % 20000``, so jobs sharing a node differ,
    below Linux's ephemeral ports. A pure function of ``env``; :class:`FlagError` on what is missing."""
    if env.get("TORCHELASTIC_RUN_ID"):
        raise FlagError(
            "--launcher slurm gives every srun task a rank, but torchrun started this process "
            "(TORCHELASTIC_RUN_ID is set): use --launcher pytorch (or srun without torchrun)"
        )
    names = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
    missing = [k for k in names if not env.get(k)]
    if missing:
        raise FlagError(
            f"--launcher slurm needs srun's environment (missing {', '.join(missing)}): "
            "srun dil-fast train --launcher slurm ... (docs/SLURM.md)"
        )
    rank, world_size, local = (_whole(env, k, "slurm") for k in names)
    _check_ranks("slurm", rank, world_size, local, names)
    addr = env.get("MASTER_ADDR")
    if not addr:
        key = next((k for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST") if env.get(k)), None)
        if key is None:
            raise FlagError(
                "--launcher slurm: no node list (SLURM_STEP_NODELIST, SLURM_JOB_NODELIST, SLURM_NODELIST) "
                "to find the first node in; set MASTER_ADDR"
            )
        try:
            addr = expand_hostlist(env[key])[0]
        except ValueError as exc:
            raise FlagError(f"--launcher slurm: {key}={env[key]!r}: {exc}; set MASTER_ADDR") from None
    port = env.get("MASTER_PORT")
    if not port:
        job = env.get("SLURM_JOB_ID", "")
        port = str(10000 + int(job) % 20000 if job.isdigit() else DEFAULT_MASTER_PORT)
    elif not port.isdigit() or not 0 < int(port) < 65536:
        raise FlagError(f"--launcher slurm: MASTER_PORT={port!r} is not a port number")
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(local),
        "MASTER_ADDR": addr,
        "MASTER_PORT": port,
    }


def expand_hostlist(text: str) -> list[str]:
    """A Slurm host list, expanded as ``scontrol show hostnames`` does: ``node[01-03,07],gpu5`` ->
    ``node01 node02 node03 node07 gpu5`` (a range keeps its lower bound's zero padding; several
    brackets in one name multiply, the first varying slowest). ValueError names what is malformed."""
    hosts: list[str] = []
    for name in _split_outside_brackets(text.strip()):
        if not name:
            raise ValueError("an empty host name")
        expanded = [""]
        rest = name
        while rest:
            head, bracket, rest = rest.partition("[")
            if "]" in head:
                raise ValueError(f"a ']' without '[' in {name!r}")
            expanded = [e + head for e in expanded]
            if not bracket:
                break
            inner, closed, rest = rest.partition("]")
            if not closed:
                raise ValueError(f"a '[' without ']' in {name!r}")
            expanded = [e + n for e in expanded for n in _expand_ranges(inner, name)]
        hosts.extend(expanded)
    if not hosts:
        raise ValueError("no host")
    return hosts


def _split_outside_brackets(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"nested brackets in {text!r}")
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _expand_ranges(inner: str, name: str) -> list[str]:
    out = []
    for item in inner.split(","):
        lo, dash, hi = item.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"[{inner}] in {name!r} is not a list of numbers and ranges")
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first:
            raise ValueError(f"the range {item.strip()} in {name!r} runs backwards")
        out.extend(str(n).zfill(len(lo)) for n in range(first, last + 1))
    return out


def _whole(env: Mapping[str, str], key: str, launcher: str) -> int:
    value = env[key].strip()
    if not value.isdigit():
        raise FlagError(f"--launcher {launcher}: {key}={env[key]!r} is not a whole number")
    return int(value)


def _check_ranks(launcher: str, rank: int, world_size: int, local: int, names: tuple[str, str, str]) -> None:
    if world_size < 1 or rank >= world_size or local >= world_size:
        raise FlagError(
            f"--launcher {launcher}: {names[0]}={rank}, {names[1]}={world_size}, {names[2]}={local} "
            f"do not fit together (0 <= rank < world size)"
        )


def cuda_index(local_rank: int, device_count: int, rank: int = 0) -> int:
    """The CUDA device of a process: its local rank among the GPUs it sees, or 0 when it sees
    exactly one (``srun --gpus-per-task=1`` gives each task its own GPU as device 0)."""
    if local_rank < device_count:
        return local_rank
    if device_count == 1:
        return 0
    raise FlagError(
        f"rank {rank}: local rank {local_rank} but this process sees {device_count} GPU(s); give each "
        "node one task per GPU (srun --ntasks-per-node=GPUS, or --gpus-per-task=1)"
    )


def attach(algo: MetaAlgorithm, world_size: int, device: torch.device) -> None:
    """Rank 0's weights on every rank, then the algorithm's gradient averaging across ranks:
    DDP around the task network (or :class:`GradSync` for the virtual-model variants)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    tensors = list(algo.meta_model.parameters()) + list(algo.meta_model.buffers())
    if algo.task_model is not algo.meta_model:
        tensors += list(algo.task_model.parameters()) + list(algo.task_model.buffers())
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t, 0)
    device = torch.device(device)

    # buffers are constants, or copied from the meta network by its step: never synced in forward
    # (torch 2.13 renamed the flag; 2.11 knows only the old name)
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_buffer_sync = (
        {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    )

    def wrap(module):
        return DistributedDataParallel(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=False,  # keep p.grad a view of the fused optimizer's flat buffer
            **no_buffer_sync,
        )

    def flag_sync(flag: torch.Tensor) -> None:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)

    algo.distribute(wrap, GradSync(world_size), flag_sync)


def check_in_sync(algo: MetaAlgorithm, world_size: int, logger) -> None:
    """Every rank must hold the same meta weights: compare a checksum across ranks (once, at the end)."""
    import torch.distributed as dist

    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1).double() for p in algo.meta_model.parameters()])
        pos = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
        checksum = torch.stack([flat.sum(), (flat * pos.remainder(97)).sum()])
    lo, hi = checksum.clone(), checksum.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if torch.equal(lo, hi):
        logger.info(f"All {world_size} ranks hold identical meta weights")
    else:
        logger.warning(f"Meta weights differ across ranks (checksums {lo.tolist()} .. {hi.tolist()})")


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def _collective_failure(exc: BaseException) -> str | None:
    """What went wrong, when ``exc`` is a failed collective or rendezvous (else ``None``)."""
    import torch.distributed as dist

    text = str(exc)
    low = text.lower()
    dist_error = getattr(dist, "DistError", None)
    if not (isinstance(exc, RuntimeError) or (dist_error is not None and isinstance(exc, dist_error))):
        return None
    if "timed out" in low or "timeout" in low:
        return "timeout"
    if any(
        k in low
        for k in (
            "connection closed",
            "connection reset",
            "broken pipe",
            "connection refused",
            "nccl",
            "gloo",
            "socket",
        )
    ) or (dist_error is not None and isinstance(exc, dist_error)):
        return "peer"
    return None


@contextlib.contextmanager
def collective_errors(rank: int, world_size: int, timeout: float):
    """Turn a failed collective into one line naming this rank (:class:`TrainingStopped`): a peer
    that died closes its connections (seen at once), one that hangs is given up on after
    ``--ddp_timeout`` seconds."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only collective failures are translated
        kind = _collective_failure(exc)
        if kind is None:
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        first = first.split("] ", 1)[-1].split(". ", 1)[0][:160]  # gloo's first sentence, no source path
        if kind == "timeout":
            why = f"a peer did not answer within --ddp_timeout {timeout:g} s (it hangs or died)"
        else:
            why = "a peer closed its connection (it crashed or was killed; see its log)"
        raise TrainingStopped(f"rank {rank} of {world_size}: distributed training stopped: {why} [{first}]") from None
