"""The interface every DIL algorithm implements, and the pieces they share."""

from __future__ import annotations

import abc
import contextlib
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.optim import fused_optimizer, nonfinite_check_
from ..ops.reference.optim import GRAD_LIMIT
from ..optim import FusedAdam
from ..registry import Registry
from .options import NoOptions, make_options

#: every DIL variant (and baseline) by its ``--variant`` name; each module registers its class with
#: :func:`register_variant`, and ``dil_fast.meta`` imports them all
VARIANTS = Registry("variant", "--variant")


def register_variant(cls):
    """Class decorator: register a :class:`MetaAlgorithm` subclass under its ``name``, with the facts
    the trainer, the flags and the study read from it."""
    VARIANTS.register(
        cls.name,
        cls,
        summary=cls.summary,
        options=cls.Options,
        ops=cls.ops,
        trains_module_forward=cls.trains_module_forward,
        released=cls.released,
    )
    return cls


class PlainForward:
    """The training forward as written (``module(x)``, no precision or layout change): the policy
    of an algorithm outside the trainer's fast path (:class:`dil_fast.train.fast.FastForward`)."""

    def __call__(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module(x)

    def functional(self):
        """The context of a functional forward (``torch.func.functional_call``) of the same policy."""
        return contextlib.nullcontext()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """A functional forward's input, in the policy's memory layout."""
        return x

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """A functional forward's output, in the dtype the loss is computed in."""
        return out


PLAIN_FORWARD = PlainForward()

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


def _no_phase(_name):
    return contextlib.nullcontext()


def resolve_fused(fused: bool | None, model: nn.Module, backend: str | None = None) -> bool:
    """``fused`` as given, or (``None``) the one rule of :func:`dil_fast.ops.optim.fused_optimizer`
    for the device of ``model``'s parameters and the forced ``backend``."""
    if fused is not None:
        return bool(fused)
    first = next(model.parameters(), None)
    return fused_optimizer("cpu" if first is None else first.device, backend)


def make_adam(
    params, lr: float, betas: tuple[float, float], fused: bool, backend: str | None = None
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

    ``step(batches, *, query=None, timer=None)`` takes one (input, target) pair per confounder (and
    an explicit query batch, for the variants that have one) and returns the per-pair losses as a
    detached tensor on the training device (no host synchronisation); ``timer(phase)`` is a context
    manager around its phases ("fwd_bwd", "optimizer", "other"), for a benchmark's time split.
    ``meta_model`` is the model being trained (the one to evaluate and deploy); ``task_model`` the
    network of the inner steps. Training forwards go through :attr:`forward_policy` (the trainer's
    fast path installs its own with :meth:`use_forward_policy`); the modules are never patched.

    A variant describes itself to the rest of the house with the class attributes below and
    registers with :func:`register_variant`; :meth:`from_config` builds it from a validated
    ``dil-fast train`` config.
    """

    name: str = "base"
    #: one line for ``--variant``'s help
    summary: str = ""
    #: its own options (a dataclass of :func:`dil_fast.meta.options.option` fields): flags of ``dil-fast train``
    Options: type = NoOptions
    #: the dispatcher ops its fused path runs (a forced ``--backend`` must serve them)
    ops: tuple[str, ...] = ()
    #: its inner steps call the task module's forward (``--weight_shadow`` applies); the virtual-model
    #: variants evaluate their models functionally
    trains_module_forward: bool = True
    #: the class that re-creates the released trainer's computation of this variant (``--reference_mode``)
    released: type | None = None
    meta_model: nn.Module
    task_model: nn.Module
    #: the inner steps run a module's forward/backward (DDP can wrap ``task_model``); the virtual-model
    #: variants compute their gradients functionally and average them with :class:`GradSync`
    ddp_task_model: bool = True

    def __init__(self) -> None:
        self.forward_policy = PLAIN_FORWARD
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
        """Set ``flag`` when the loss or any gradient holds a NaN/inf, or a gradient is larger than
        ``GRAD_LIMIT`` (2^62: its square would make Adam's second moment infinite and freeze the
        weight), on the device, no host sync: a flat gradient through the native check (one pass),
        per-tensor gradients through one foreach norm."""
        if loss is not None:
            torch.maximum(flag, (~torch.isfinite(loss.detach())).any().float().reshape(1), out=flag)
        if flat_grad is not None:
            nonfinite_check_(flat_grad, flag)
            return
        if grads:
            largest = torch.stack([n.float() for n in torch._foreach_norm(list(grads), float("inf"))]).amax()
        else:
            return
        torch.maximum(flag, (~(largest <= GRAD_LIMIT)).float().reshape(1), out=flag)  # NaN compares False

    @staticmethod
    def _optimizer_step(opt: torch.optim.Optimizer, flag: torch.Tensor) -> None:
        """One step unless ``flag`` is set: FusedAdam decides on the device; a per-tensor
        ``torch.optim`` optimizer (the reference path) needs the flag on the host (a sync)."""
        if isinstance(opt, FusedAdam):
            opt.step(found_inf=flag)
        elif not bool(flag.item()):
            opt.step()

    @abc.abstractmethod
    def step(self, batches: Sequence[Batch], *, query: Batch | None = None, timer=None) -> torch.Tensor: ...

    @staticmethod
    def _phases(timer):
        return timer or _no_phase

    def _no_query(self, query) -> None:
        if query is not None:
            raise ValueError(f"--variant {self.name} takes no query batch (pf, ss, ps and ss-fo do)")

    # -- how the trainer builds it, and what the fast path needs to know --
    @classmethod
    def options_from(cls, values: dict):
        """The variant's :attr:`Options` from ``values`` (name -> value); ValueError naming the flag."""
        return make_options(cls.Options, dict(values), cls.name)

    @classmethod
    def from_config(cls, cfg, model: nn.Module, task_model: nn.Module | None = None, *, fused: bool | None = None):
        """The algorithm a validated ``dil-fast train`` config asks for, around ``model``
        (``task_model``: the separately built task network, where the variant has one; ``fused``:
        the run plan's decision). Each variant maps the config's learning rates, loss, backend and
        its :attr:`Options` onto its constructor."""
        raise NotImplementedError(f"{cls.__name__} does not say how to build it from a config")

    def capture_blocker(self) -> str | None:
        """Why a meta-iteration cannot be captured in a CUDA graph as it is written, or None. The
        default: every optimizer must be the fused flat-buffer one (a ``torch.optim`` step decides on
        the host whether to skip)."""
        opts = [self.meta_optimizer] + ([self.task_optimizer] if self.task_optimizer is not None else [])
        if not all(isinstance(o, FusedAdam) for o in opts):
            return (
                "its optimizers are not the fused flat-buffer ones (a torch.optim step decides on the host "
                "whether to skip); `dil-fast info` says why the native core is not in use"
            )
        return None

    def use_forward_policy(self, policy=None) -> None:
        """Run the training forwards through ``policy`` (None: as written)."""
        self.forward_policy = policy or PLAIN_FORWARD

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The task network's training forward (its DDP wrapper when distributed) under the policy."""
        return self.forward_policy(self.task_forward, x)

    def host_state(self) -> dict:
        """The Python-side state a step changes (counters, flags, cached tensors), to put back after
        a CUDA-graph capture that recorded a step without running it."""
        return dict(vars(self))

    def restore_host_state(self, state: dict) -> None:
        vars(self).clear()
        vars(self).update(state)

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
    def distribute(
        self,
        wrap: Callable[[nn.Module], nn.Module],
        grad_sync: Callable[[nn.Module], None],
        flag_sync: Callable[[torch.Tensor], None],
    ) -> None:
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
