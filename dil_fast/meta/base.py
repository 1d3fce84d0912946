"""The interface every DIL algorithm implements, and the pieces they share."""
from __future__ import annotations

import abc
import contextlib
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.optim import fused_optimizer, nonfinite_check_
from ..optim import FusedAdam

Batch = tuple[torch.Tensor, torch.Tensor]  # (input [N, C, H, W], target [N, C, H', W'])


def _charbonnier(out: torch.Tensor, target: torch.Tensor, reduction: str = "mean", eps: float = 1e-3):
    val = torch.sqrt((out - target) ** 2 + eps * eps)
    return val.mean() if reduction == "mean" else val


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "l1": F.l1_loss,
    "l2": F.mse_loss,
    "mse": F.mse_loss,
    "charbonnier": _charbonnier,
}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"loss must be one of {', '.join(sorted(LOSSES))}, got {name!r}") from None


def as_float_betas(betas, what: str) -> tuple[float, float]:
    """torch >= 2 refuses betas mixing int and float (the released ``betas=(0, 0.999)``)."""
    try:
        b1, b2 = (float(b) for b in betas)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be two numbers, got {betas!r}") from None
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"{what} must lie in [0, 1), got {betas!r}")
    return b1, b2


def resolve_fused(fused: bool | None, model: nn.Module, backend: str | None = None) -> bool:
    """``fused`` as given, or (``None``) the one rule of :func:`dil_fast.ops.optim.fused_optimizer`
    for the device of ``model``'s parameters and the forced ``backend``."""
    if fused is not None:
        return bool(fused)
    first = next(model.parameters(), None)
    return fused_optimizer("cpu" if first is None else first.device, backend)


def make_adam(params, lr: float, betas: tuple[float, float], fused: bool, backend: str | None = None
              ) -> torch.optim.Optimizer:
    """Adam over ``params``: :class:`dil_fast.optim.FusedAdam` (flat buffers; the same state_dict
    layout; ``backend`` forces its kernels) when ``fused``, else ``torch.optim.Adam``."""
    if fused:
        return FusedAdam(params, lr=lr, betas=betas, backend=backend)
    return torch.optim.Adam(params, lr=lr, betas=betas)


@torch.no_grad()
def copy_weights_(dst: nn.Module, src: nn.Module) -> None:
    """dst <- src for every parameter and buffer (the reference's ``load_state_dict(state_dict())``)."""
    dst_t = [t for t in dst.parameters()] + [t for t in dst.buffers()]
    src_t = [t for t in src.parameters()] + [t for t in src.buffers()]
    torch._foreach_copy_(dst_t, src_t) if dst_t else None


class GradSync:
    """All-reduces (averages) the gradients of a module across the default process group, in one
    flat bucket per call. Only the virtual-model variants (ss, ss-fo, ps) use it, for their one
    meta-gradient per iteration (computed through ``torch.func``, outside any module's backward);
    the variants with a task network average their inner-step gradients through
    ``DistributedDataParallel`` (:meth:`MetaAlgorithm.distribute`)."""

    def __init__(self, world_size: int):
        self.world_size = world_size

    def __call__(self, module: nn.Module) -> None:
        import torch.distributed as dist

        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        torch._foreach_copy_(grads, [c.view_as(g) for c, g in zip(flat.split([g.numel() for g in grads]), grads)])


class MetaAlgorithm(abc.ABC):
    """One DIL (or baseline) training algorithm.

    ``step(batches)`` takes one (input, target) pair per confounder and returns the per-pair losses as
    a detached tensor on the training device (no host synchronisation). ``meta_model`` is the model
    being trained (the one to evaluate and deploy); ``task_model`` the network of the inner steps.
    """

    name: str = "base"
    meta_model: nn.Module
    task_model: nn.Module
    #: the inner steps run a module's forward/backward (DDP can wrap ``task_model``); the virtual-model
    #: variants compute their gradients functionally and average them with :class:`GradSync`
    ddp_task_model: bool = True

    def __init__(self) -> None:
        self.iteration = 0
        self.grad_sync: Callable[[nn.Module], None] | None = None
        self._ddp: nn.Module | None = None  # DistributedDataParallel around task_model (--distributed)
        self._flag_sync: Callable[[torch.Tensor], None] | None = None  # max of the skip flag over ranks
        self.last_skipped: torch.Tensor | None = None  # [1] float32 on the device: 1 when the last step was skipped
        self.keep_task_weights = False  # the next meta step leaves the task network as the inner steps left it

    # -- non-finite steps: flagged on the device, skipped through the optimizers' found_inf path --
    def _begin_checks(self, device) -> torch.Tensor:
        """The step's non-finite flag, zeroed (a device op: no host sync)."""
        if self.last_skipped is None or self.last_skipped.device != torch.device(device):
            self.last_skipped = torch.zeros(1, dtype=torch.float32, device=device)
        else:
            self.last_skipped.zero_()
        return self.last_skipped

    @staticmethod
    def _flag_nonfinite(flag: torch.Tensor, loss: torch.Tensor | None = None, grads=None, flat_grad=None) -> None:
        """Set ``flag`` when the loss or any gradient holds a NaN/inf (on the device)."""
        if loss is not None:
            torch.maximum(flag, (~torch.isfinite(loss.detach())).any().float().reshape(1), out=flag)
        if flat_grad is not None:
            nonfinite_check_(flat_grad, flag)
        elif grads:
            torch._amp_foreach_non_finite_check_and_unscale_(list(grads), flag, torch.ones(1, device=flag.device))

    @staticmethod
    def _optimizer_step(opt: torch.optim.Optimizer, flag: torch.Tensor) -> None:
        """One step unless ``flag`` is set: FusedAdam decides on the device; a per-tensor
        ``torch.optim`` optimizer (the reference path) needs the flag on the host (a sync)."""
        if isinstance(opt, FusedAdam):
            opt.step(found_inf=flag)
        elif not bool(flag.item()):
            opt.step()

    @abc.abstractmethod
    def step(self, batches: Sequence[Batch]) -> torch.Tensor: ...

    @property
    @abc.abstractmethod
    def meta_optimizer(self) -> torch.optim.Optimizer: ...

    @property
    def task_optimizer(self) -> torch.optim.Optimizer | None:
        return None

    @property
    def meta_lr(self) -> float:
        return float(self.meta_optimizer.param_groups[0]["lr"])

    @meta_lr.setter
    def meta_lr(self, value: float) -> None:
        for g in self.meta_optimizer.param_groups:
            g["lr"] = value

    @property
    def task_lr(self) -> float:
        opt = self.task_optimizer or self.meta_optimizer
        return float(opt.param_groups[0]["lr"])

    def _sync_grads(self, module: nn.Module) -> None:
        if self.grad_sync is not None:
            self.grad_sync(module)

    # -- distributed training --
    def distribute(self, wrap: Callable[[nn.Module], nn.Module], grad_sync: Callable[[nn.Module], None],
                   flag_sync: Callable[[torch.Tensor], None]) -> None:
        """Train across ranks: ``wrap(task_model)`` (a ``DistributedDataParallel``) runs the inner
        steps' forward and averages their gradients during backward; variants without a task-network
        backward (:attr:`ddp_task_model` False) average with ``grad_sync`` instead. ``flag_sync``
        makes the skip flag the maximum over ranks before any step that must agree (a NaN on one rank
        skips the step on all)."""
        if self.ddp_task_model:
            self._ddp = wrap(self.task_model)
        else:
            self.grad_sync = grad_sync
        self._flag_sync = flag_sync

    @property
    def task_forward(self) -> nn.Module:
        """The module the inner steps call: ``task_model``, or its DDP wrapper when distributed."""
        return self.task_model if self._ddp is None else self._ddp

    def no_grad_sync(self):
        """A context in which backward accumulates locally (DDP's ``no_sync``); the next backward
        outside it averages the accumulated gradients. A no-op on one process."""
        return contextlib.nullcontext() if self._ddp is None else self._ddp.no_sync()

    def _agree(self, flag: torch.Tensor) -> torch.Tensor:
        """``flag`` made the maximum over ranks (in place, on the device); unchanged on one process."""
        if self._flag_sync is not None:
            self._flag_sync(flag)
        return flag

    def hparams(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        state = {
            "variant": self.name,
            "iteration": self.iteration,
            "hparams": self.hparams(),
            "meta_model": self.meta_model.state_dict(),
            "task_model": self.task_model.state_dict(),
            "meta_optimizer": self.meta_optimizer.state_dict(),
        }
        if self.task_optimizer is not None:
            state["task_optimizer"] = self.task_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("variant") != self.name:
            raise ValueError(f"state is for variant {state.get('variant')!r}, this algorithm is {self.name!r}")
        self.meta_model.load_state_dict(state["meta_model"])
        if self.task_model is not self.meta_model:
            self.task_model.load_state_dict(state["task_model"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        if self.task_optimizer is not None:
            self.task_optimizer.load_state_dict(state["task_optimizer"])
        self.iteration = int(state["iteration"])
