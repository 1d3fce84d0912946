"""FusedAdam: ``torch.optim.Adam`` math over flat buffers, one launch per (device, dtype) bucket.

The parameters are flattened (:class:`~dil_fast.optim.flat.FlatParams`) at construction and the
moments live in flat buffers; ``self.state[p]`` holds views into them, so everything that reads
optimizer state keeps working. ``state_dict()`` has exactly ``torch.optim.Adam``'s layout
(per-parameter ``step`` as a CPU float32 tensor, ``exp_avg``, ``exp_avg_sq``, Adam's param-group
keys), and ``load_state_dict`` accepts the state of a ``torch.optim.Adam`` (and vice versa) whose
parameters share one step count.

The hot path does O(1) host work per bucket, whatever the number of tensors: the launch arguments
are validated once, when the bucket is built (:class:`~dil_fast.ops.optim.NativeLaunch`); a step is
an O(1) check of the parameter views (:meth:`FlatParams.refresh`), the learning-rate tensor kept in
step with the param group, and one native call. Every parameter steps together: a parameter
without a gradient contributes a zero gradient (its moments decay and it moves with its momentum;
``torch.optim.Adam`` would skip it), never a fallback to per-tensor launches.

``check_finite=True`` checks the gradients on the device each step and skips the whole bucket
update (step counters included) when one is NaN/inf, without a host sync. ``GradScaler`` is
supported (``grad_scale`` / ``found_inf``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import backends
from ..ops import optim as optim_ops
from ..ops.reference.optim import adam_step_ref_, meta_step_ref_
from .flat import FlatBucket, FlatParams, dense_layout

__all__ = ["FusedAdam"]


@dataclass
class _BucketState:
    exp_avg: Tensor  # [P]
    exp_avg_sq: Tensor  # [P]
    steps: Tensor  # [n_params] float32 on the parameters' device, all equal
    lr: Tensor  # [] float64 on the device: the group's lr as the kernels read it
    lr_value: float | None = None
    flag: Tensor | None = None  # check_finite's device flag
    hyper: tuple | None = None  # (beta1, beta2, eps, weight_decay, adamw) the launch was built with
    launch: object | None = None  # a zero-argument callable: this bucket's Adam step
    meta_launches: dict = field(default_factory=dict)  # (id(task FlatParams), reset, hyper) -> callable


class FusedAdam(torch.optim.Optimizer):
    """Adam / AdamW on flat buffers with the interface and state_dict of ``torch.optim.Adam``.

    ``decoupled_weight_decay=True`` gives AdamW. ``backend``: ``None`` (the dispatcher's choice),
    ``"cuda"`` (native core: CUDA kernels or their CPU twins) or ``"torch"`` (the references); see
    :mod:`dil_fast.backends`. ``zero_grad()`` keeps the gradients as views of the flat buffer and
    zeroes it in one op (``set_to_none=True`` drops them, like torch, at the cost of a full repair
    of the views on the next step).
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
            lr=lr,
            betas=(float(betas[0]), float(betas[1])),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=False,
            maximize=False,
            foreach=None,
            capturable=False,
            differentiable=False,
            fused=None,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ groups and state
    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if p.is_sparse or dense_layout(p) is None:
                raise ValueError("FusedAdam needs dense parameters (contiguous, or channels_last 4-D)")
        flat = FlatParams(group["params"])
        self._flats.append(flat)
        states = []
        for b in flat.buckets:
            backends.select("adam_step", b.data.device, b.data.dtype, backends.forced_backend(self.backend))
            st = _BucketState(
                exp_avg=torch.zeros_like(b.data),
                exp_avg_sq=torch.zeros_like(b.data),
                steps=torch.zeros(len(b.params), dtype=torch.float32, device=b.data.device),
                lr=torch.zeros((), dtype=torch.float64, device=b.data.device),
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
        counts = {float(s["step"]) for s in state_dict["state"].values() if "step" in s}
        if len(counts) > 1:
            raise ValueError(
                f"FusedAdam steps all parameters together; this state has per-parameter step counts "
                f"{min(counts):g}..{max(counts):g}"
            )
        super().load_state_dict(state_dict)
        with torch.no_grad():
            for flat, states in zip(self._flats, self._bstates):
                for b, st in zip(flat.buckets, states):
                    steps = []
                    for i, p in enumerate(b.params):
                        s = self.state.get(p, {})
                        for name, buf in (("exp_avg", st.exp_avg), ("exp_avg_sq", st.exp_avg_sq)):
                            seg = b.segment(buf, i)
                            seg.copy_(s[name]) if name in s else seg.zero_()
                        steps.append(float(s["step"]) if "step" in s else 0.0)
                    st.steps.copy_(torch.tensor(steps, dtype=torch.float32))
                    self._point_state(b, st)

    # ------------------------------------------------------------------ launches
    def _sync_lr(self, st: _BucketState, lr) -> Tensor:
        """The device lr the kernels read, refreshed when the group's lr changed (a fill: no sync)."""
        if isinstance(lr, Tensor):
            return lr.to(device=st.lr.device, dtype=torch.float64) if lr.device != st.lr.device else lr
        lr = float(lr)
        if st.lr_value != lr:
            st.lr.fill_(lr)
            st.lr_value = lr
        return st.lr

    @staticmethod
    def _hyper(group: dict) -> tuple:
        beta1, beta2 = (float(b) for b in group["betas"])
        return (
            beta1,
            beta2,
            float(group["eps"]),
            float(group["weight_decay"]),
            bool(group.get("decoupled_weight_decay", False)),
        )

    def _adam_launch(self, b: FlatBucket, st: _BucketState, hyper: tuple):
        backend = backends.backend_for("adam_step", b.data.device, b.data.dtype, self.backend)
        if backend == "cuda":
            args = optim_ops.adam_args(b.data, b.grad, st.exp_avg, st.exp_avg_sq, st.steps, st.lr, *hyper)
            return optim_ops.NativeLaunch("adam", args, b.data.device)

        def reference(found_inf=None, grad_scale=None, lr=st.lr):
            adam_step_ref_(b.data, b.grad, st.exp_avg, st.exp_avg_sq, st.steps, lr, *hyper, found_inf, grad_scale)

        return reference

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
            hyper = self._hyper(group)
            flat.refresh()
            for b, st in zip(flat.buckets, states):
                lr = self._sync_lr(st, group["lr"])
                if st.launch is None or st.hyper != hyper:
                    st.launch, st.hyper = self._adam_launch(b, st, hyper), hyper
                dev = b.data.device
                flag = None if found_inf is None else found_inf.to(dev, torch.float32).reshape(1)
                scale = None if grad_scale is None else grad_scale.to(dev, torch.float32).reshape(1)
                if self.check_finite:
                    if st.flag is None:
                        st.flag = torch.zeros(1, dtype=torch.float32, device=dev)
                    st.flag.zero_() if flag is None else st.flag.copy_(flag)
                    optim_ops.nonfinite_check_(b.grad, st.flag, backend=self.backend)
                    flag = st.flag
                self._run(st.launch, lr, st.lr, flag, scale)
        return loss

    @staticmethod
    def _run(launch, lr: Tensor, own_lr: Tensor, flag: Tensor | None, scale: Tensor | None) -> None:
        if isinstance(launch, optim_ops.NativeLaunch):
            a = launch.args
            a.found_inf = 0 if flag is None else flag.data_ptr()
            a.grad_scale = 0 if scale is None else scale.data_ptr()
            if lr is not own_lr:  # a tensor lr of the group's own
                a.lr, a.lr_dtype, a.lr_numel = lr.data_ptr(), optim_ops.DTYPE_CODES[lr.dtype], 1
            else:
                a.lr, a.lr_dtype, a.lr_numel = own_lr.data_ptr(), 1, 1
            launch()
        else:
            launch(flag, scale, lr)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero each flat gradient in one op and keep the views (``set_to_none=True``: drop them)."""
        if set_to_none:
            super().zero_grad(set_to_none=True)
            return
        for flat in self._flats:
            flat.refresh()
            for b in flat.buckets:
                b.grad.zero_()

    def flat_params(self, group: int = 0) -> FlatParams:
        """The FlatParams of param group ``group`` (its buckets' ``data``/``grad`` are [P])."""
        return self._flats[group]

    @torch.no_grad()
    def meta_step_(self, task: FlatParams, *, reset_task: bool = False, found_inf: Tensor | None = None) -> None:
        """The Reptile meta step in one launch per bucket: the gradient of this optimizer's parameters
        is (param - task weights), then the Adam update; with ``reset_task`` the task weights become
        the new parameters in the same pass. ``task`` holds the same architecture's parameters in the
        same order (e.g. another FusedAdam's :meth:`flat_params`). ``found_inf`` (float32 [1] on the
        device): when non-zero nothing is updated, but the reset still copies the meta weights."""
        if len(self._flats) != 1:
            raise ValueError("meta_step_ needs an optimizer with a single param group")
        group, flat, states = self.param_groups[0], self._flats[0], self._bstates[0]
        if len(task.buckets) != len(flat.buckets) or any(
            tb.data.shape != mb.data.shape for tb, mb in zip(task.buckets, flat.buckets)
        ):
            raise ValueError("meta_step_: the task parameters do not match this optimizer's parameters")
        hyper = self._hyper(group)
        for mb, tb, st in zip(flat.buckets, task.buckets, states):
            lr = self._sync_lr(st, group["lr"])
            flag = None if found_inf is None else found_inf.to(mb.data.device, torch.float32).reshape(1)
            if lr is not st.lr:  # a tensor lr of the group's own: nothing to cache
                self._meta_launch(mb, tb, st, lr, hyper, reset_task)(flag)
                continue
            key = (id(task), bool(reset_task), hyper)
            launch = st.meta_launches.get(key)
            if launch is None:
                launch = st.meta_launches[key] = self._meta_launch(mb, tb, st, lr, hyper, reset_task)
            launch(flag)

    def _meta_launch(self, mb: FlatBucket, tb: FlatBucket, st: _BucketState, lr: Tensor, hyper: tuple, reset: bool):
        backend = backends.backend_for("meta_step", mb.data.device, mb.data.dtype, self.backend)
        if backend == "cuda":
            args = optim_ops.meta_args(mb.data, tb.data, st.exp_avg, st.exp_avg_sq, st.steps, lr, *hyper, 0, reset)
            launch = optim_ops.NativeLaunch("meta_adam", args, mb.data.device)

            def native(flag=None):
                adam = launch.args.adam  # the nested struct is read and written back whole
                adam.found_inf = 0 if flag is None else flag.data_ptr()
                launch.args.adam = adam
                launch()

            return native
        return lambda flag=None: meta_step_ref_(
            mb.data, tb.data, st.exp_avg, st.exp_avg_sq, st.steps, lr, *hyper, 0, reset, flag
        )

    @torch.no_grad()
    def sync_lr(self) -> None:
        """Write each param group's ``lr`` into the device-side learning-rate tensors now.

        ``step`` does this itself; call it before replaying a captured CUDA graph, whose launches
        read those tensors, after changing a group's ``lr``.
        """
        for group, states in zip(self.param_groups, self._bstates):
            for st in states:
                self._sync_lr(st, group["lr"])
