"""FusedAdam: ``torch.optim.Adam`` math over flat buffers, one launch per (device, dtype) group.

The parameters are flattened (:class:`~dil_fast.optim.flat.FlatParams`) at construction and the
moments live in flat buffers; ``self.state[p]`` holds views into them, so everything that reads
optimizer state keeps working. ``state_dict()`` has exactly ``torch.optim.Adam``'s layout
(per-parameter ``step`` as a CPU float32 tensor, ``exp_avg``, ``exp_avg_sq``, Adam's param-group
keys), and ``load_state_dict`` accepts the state of a ``torch.optim.Adam`` (and vice versa).

Parameters of a bucket step together while all of them have gradients (one launch; step
counters advance on the device). A step where only some have gradients falls back to one launch
per parameter (those without a gradient are skipped, like torch), and so do later steps.

``check_finite=True`` checks the gradients on the device each step and skips the whole bucket
update (step counters included) when one is NaN/inf, without a host sync. ``GradScaler`` is
supported (``grad_scale`` / ``found_inf``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import functional as F
from .flat import FlatBucket, FlatParams

__all__ = ["FusedAdam"]


@dataclass
class _BucketState:
    exp_avg: Tensor  # [P]
    exp_avg_sq: Tensor  # [P]
    steps: Tensor  # [n_params] float32, on the parameters' device
    uniform: bool = True  # all step counters equal -> one launch per step
    lr: Tensor | None = None
    lr_value: float | None = None
    flag: Tensor | None = None


class FusedAdam(torch.optim.Optimizer):
    """Adam / AdamW on flat buffers with the interface and state_dict of ``torch.optim.Adam``.

    ``decoupled_weight_decay=True`` gives AdamW. ``backend``: ``None`` (automatic), ``"cuda"``
    (native core, CUDA or its CPU twin) or ``"torch"`` (references); see
    :mod:`dil_fast.optim.functional`. ``zero_grad(set_to_none=False)`` keeps the gradients as views
    of the flat buffer (one memset); with the default ``set_to_none=True`` each step first copies
    the fresh gradients in.
    """

    _step_supports_amp_scaling = True

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
        check_finite: bool = False,
        backend: str | None = None,
    ):
        if not 0.0 <= float(lr):
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        for i, b in enumerate(betas):
            if not 0.0 <= float(b) < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        self._flats: list[FlatParams] = []
        self._bstates: list[list[_BucketState]] = []
        self.check_finite = check_finite
        self.backend = backend
        defaults = dict(
            lr=lr, betas=(float(betas[0]), float(betas[1])), eps=eps, weight_decay=weight_decay, amsgrad=False,
            maximize=False, foreach=None, capturable=False, differentiable=False, fused=None,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ groups and state
    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if not p.is_contiguous() or p.is_sparse:
                raise ValueError("FusedAdam needs dense parameters")
        flat = FlatParams(group["params"], attach_grads=False)
        self._flats.append(flat)
        states = []
        for b in flat.buckets:
            st = _BucketState(
                exp_avg=torch.zeros_like(b.data),
                exp_avg_sq=torch.zeros_like(b.data),
                steps=torch.zeros(len(b.params), dtype=torch.float32, device=b.data.device),
            )
            states.append(st)
            self._point_state(b, st)
        self._bstates.append(states)

    def _point_state(self, b: FlatBucket, st: _BucketState) -> None:
        for i, p in enumerate(b.params):
            self.state[p] = {
                "step": st.steps[i],
                "exp_avg": b.segment(st.exp_avg, i),
                "exp_avg_sq": b.segment(st.exp_avg_sq, i),
            }

    def state_dict(self) -> dict:
        """``torch.optim.Adam``'s layout: per-parameter CPU ``step`` and copies of the moments."""
        sd = super().state_dict()
        state = {}
        for idx, s in sd["state"].items():
            state[idx] = {
                "step": s["step"].detach().to("cpu", torch.float32, copy=True).reshape(()),
                "exp_avg": s["exp_avg"].detach().clone(),
                "exp_avg_sq": s["exp_avg_sq"].detach().clone(),
            }
        sd["state"] = state
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a FusedAdam or ``torch.optim.Adam`` state (copied into the flat buffers)."""
        for g in state_dict["param_groups"]:
            if g.get("amsgrad", False) or g.get("maximize", False):
                raise ValueError("FusedAdam implements neither amsgrad nor maximize; the state asks for them")
        super().load_state_dict(state_dict)
        with torch.no_grad():
            for flat, states in zip(self._flats, self._bstates):
                for b, st in zip(flat.buckets, states):
                    steps = []
                    for i, p in enumerate(b.params):
                        s = self.state.get(p, {})
                        b.segment(st.exp_avg, i).copy_(s["exp_avg"]) if "exp_avg" in s else b.segment(st.exp_avg, i).zero_()
                        b.segment(st.exp_avg_sq, i).copy_(s["exp_avg_sq"]) if "exp_avg_sq" in s else b.segment(
                            st.exp_avg_sq, i).zero_()
                        steps.append(float(s["step"]) if "step" in s else 0.0)
                    st.steps.copy_(torch.tensor(steps, dtype=torch.float32))
                    st.uniform = len(set(steps)) <= 1
                    self._point_state(b, st)

    # ------------------------------------------------------------------ the step
    def _lr_tensor(self, st: _BucketState, lr, device) -> Tensor:
        if isinstance(lr, Tensor):
            return lr.to(device=device, dtype=torch.float64) if lr.device != device else lr
        lr = float(lr)
        if st.lr is None:
            st.lr = torch.tensor(lr, dtype=torch.float64, device=device)
        elif st.lr_value != lr:
            st.lr.fill_(lr)
        st.lr_value = lr
        return st.lr

    @torch.no_grad()
    def step(self, closure=None, *, grad_scale: Tensor | None = None, found_inf: Tensor | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # GradScaler sets these attributes on optimizers that support AMP scaling.
        grad_scale = grad_scale if grad_scale is not None else getattr(self, "grad_scale", None)
        found_inf = found_inf if found_inf is not None else getattr(self, "found_inf", None)
        for group, flat, states in zip(self.param_groups, self._flats, self._bstates):
            if group.get("amsgrad") or group.get("maximize"):
                raise ValueError("FusedAdam implements neither amsgrad nor maximize")
            beta1, beta2 = (float(b) for b in group["betas"])
            hyper = dict(beta1=beta1, beta2=beta2, eps=float(group["eps"]), weight_decay=float(group["weight_decay"]),
                         adamw=bool(group.get("decoupled_weight_decay", False)))
            present_any = False
            for b in flat.buckets:
                present_any |= any(p.grad is not None for p in b.params)
            if not present_any:
                continue
            flat.sync()
            for b, st in zip(flat.buckets, states):
                present = flat.grads_present(b)
                if not any(present):
                    continue
                dev = b.data.device
                lr = self._lr_tensor(st, group["lr"], dev)
                flag = None if found_inf is None else found_inf.to(dev, torch.float32).reshape(1)
                scale = None if grad_scale is None else grad_scale.to(dev, torch.float32).reshape(1)
                if self.check_finite:
                    if st.flag is None:
                        st.flag = torch.zeros(1, dtype=torch.float32, device=dev)
                    st.flag.zero_() if flag is None else st.flag.copy_(flag)
                    F.nonfinite_check_(b.grad, st.flag, backend=self.backend)
                    flag = st.flag
                if all(present) and st.uniform:
                    F.adam_step_(b.data, b.grad, st.exp_avg, st.exp_avg_sq, st.steps, lr, **hyper, found_inf=flag,
                                 grad_scale=scale, backend=self.backend)
                    continue
                st.uniform = False
                for i, p in enumerate(b.params):
                    if not present[i]:
                        continue
                    seg = slice(b.offsets[i], b.offsets[i] + p.numel())
                    F.adam_step_(b.data[seg], b.grad[seg], st.exp_avg[seg], st.exp_avg_sq[seg], st.steps[i:i + 1], lr,
                                 **hyper, found_inf=flag, grad_scale=scale, backend=self.backend)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``set_to_none=False`` zeroes each flat gradient in one op and keeps the views."""
        if set_to_none:
            super().zero_grad(set_to_none=True)
            return
        for flat in self._flats:
            flat.sync()  # existing grads become views; missing ones stay None, like torch
            for b in flat.buckets:
                b.grad.zero_()

    def flat_params(self, group: int = 0) -> FlatParams:
        """The FlatParams of param group ``group`` (its buckets' ``data``/``grad`` are [P])."""
        return self._flats[group]

    @torch.no_grad()
    def meta_step_(self, task: FlatParams, *, reset_task: bool = False) -> None:
        """The Reptile meta step in one launch per bucket: the gradient of this optimizer's parameters
        is (param - task weights), then the Adam update; with ``reset_task`` the task weights become
        the new parameters in the same pass. ``task`` holds the same architecture's parameters in the
        same order (e.g. another FusedAdam's :meth:`flat_params`)."""
        if len(self._flats) != 1:
            raise ValueError("meta_step_ needs an optimizer with a single param group")
        group, flat, states = self.param_groups[0], self._flats[0], self._bstates[0]
        if len(task.buckets) != len(flat.buckets) or any(
                tb.data.shape != mb.data.shape for tb, mb in zip(task.buckets, flat.buckets)):
            raise ValueError("meta_step_: the task parameters do not match this optimizer's parameters")
        beta1, beta2 = (float(b) for b in group["betas"])
        for mb, tb, st in zip(flat.buckets, task.buckets, states):
            if not st.uniform:
                raise ValueError("meta_step_ needs uniform step counters (every parameter stepped together)")
            lr = self._lr_tensor(st, group["lr"], mb.data.device)
            F.meta_step_(mb.data, tb.data, st.exp_avg, st.exp_avg_sq, st.steps, lr, beta1, beta2,
                         float(group["eps"]), float(group["weight_decay"]),
                         bool(group.get("decoupled_weight_decay", False)), reset_task=reset_task,
                         backend=self.backend)

    @torch.no_grad()
    def sync_lr(self) -> None:
        """Write each param group's ``lr`` into the device-side learning-rate tensors now.

        ``step`` does this itself; call it before replaying a captured CUDA graph, whose launches
        read those tensors, after changing a group's ``lr``.
        """
        for group, flat, states in zip(self.param_groups, self._flats, self._bstates):
            for b, st in zip(flat.buckets, states):
                self._lr_tensor(st, group["lr"], b.data.device)
