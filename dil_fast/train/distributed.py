"""Distributed training under ``torchrun``: process-group set-up, identical starting weights on
every rank, the inner-step gradient averaging, and the end-of-run check that the ranks agree."""
from __future__ import annotations

import os

import torch

from ..errors import FlagError
from ..meta import GradSync, MetaAlgorithm
from .config import TrainConfig


def setup(cfg: TrainConfig) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)``; initialises the default process group for ``--distributed``
    (NCCL on CUDA, gloo on the CPU). Without ``--distributed``: ``(0, 1, cfg.local_rank)``."""
    if not cfg.distributed:
        return 0, 1, cfg.local_rank
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise FlagError("--distributed needs a launcher that sets RANK/WORLD_SIZE "
                        "(torchrun --nproc_per_node=N -m dil_fast train --distributed ...)")
    local_rank = int(os.environ.get("LOCAL_RANK", cfg.local_rank))
    use_cuda = torch.cuda.is_available() and (cfg.device is None or cfg.device.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if cfg.gpus not in (1, world_size):
        raise FlagError(f"--gpus {cfg.gpus} does not match the {world_size} launched processes")
    return rank, world_size, local_rank


def share_weights(algo: MetaAlgorithm, world_size: int) -> None:
    """Rank 0's weights everywhere, and the inner steps' gradients averaged across ranks."""
    import torch.distributed as dist

    for t in list(algo.meta_model.parameters()) + list(algo.task_model.parameters()):
        dist.broadcast(t.data, 0)
    algo.grad_sync = GradSync(world_size)


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
