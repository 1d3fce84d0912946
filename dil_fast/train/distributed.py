"""Distributed training under ``torchrun``: process-group set-up (with ``--ddp_timeout``), identical
starting weights on every rank, the inner steps' gradient averaging through torch's
``DistributedDataParallel``, the end-of-run check that the ranks agree, and one-line errors when a
peer dies or stops answering.

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

import torch

from ..errors import FlagError, TrainingStopped
from ..meta import GradSync, MetaAlgorithm
from .config import TrainConfig


def setup(cfg: TrainConfig) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)``; initialises the default process group for ``--distributed``
    (NCCL on CUDA, gloo on the CPU) with ``--ddp_timeout`` as every collective's limit. Without
    ``--distributed``: ``(0, 1, cfg.local_rank)``."""
    if not cfg.distributed:
        return 0, 1, cfg.local_rank
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise FlagError(
            "--distributed needs a launcher that sets RANK/WORLD_SIZE "
            "(torchrun --nproc_per_node=N -m dil_fast train --distributed ...)"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", cfg.local_rank))
    use_cuda = torch.cuda.is_available() and (cfg.device is None or cfg.device.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        with collective_errors(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), cfg.ddp_timeout):
            dist.init_process_group(
                backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=cfg.ddp_timeout)
            )
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if cfg.gpus not in (1, world_size):
        raise FlagError(f"--gpus {cfg.gpus} does not match the {world_size} launched processes")
    return rank, world_size, local_rank


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
