"""K virtual models in one pass: the machinery the virtual-update DIL variants share.

The serial second-order variant (and its first-order approximation) builds K virtual models
``φ_k = θ − α ∇L_k(θ)``, each from the same θ. Given θ they are independent, so their forwards and
backwards can run as one pass over K-stacked parameters (``[K, *shape]`` per tensor):
:class:`FunctionalModel` evaluates a module as a pure function of its parameters with
``torch.func.functional_call``, and ``torch.func.vmap`` over the stacked parameters turns each
convolution into one grouped convolution over the K models. The looped path (one model at a time)
is the oracle the batched path is tested against.

Also here: the K-stacked virtual update and the meta reduction over K (:func:`virtual_update`,
differentiable, per tensor; :func:`stacked_virtual_sgd` on flat ``[K, P]`` buffers, through the
native core's fused ``sgd_step_`` when it serves the device; :func:`meta_reduce`), the support/query
construction (:func:`support_and_query`), and the record of path choices (:class:`PathChooser`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..ops.optim import sgd_step_
from ..timing import best_of

Batch = tuple[torch.Tensor, torch.Tensor]

QUERY_MODES = ("mixture", "split", "explicit")


def check_choice(value: str, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


# --------------------------------------------------------------------------- model as a function
class FunctionalModel:
    """A module as a pure function ``(params, x) -> out`` of its parameters (in ``parameters()``
    order). Buffers are read from the module and must not be mutated in the forward (vmap cannot
    batch an in-place buffer update; RRDBNet has none)."""

    def __init__(self, model: nn.Module, policy=None):
        from .base import PLAIN_FORWARD

        self.model = model
        self.names = [name for name, _ in model.named_parameters()]
        self.policy = policy or PLAIN_FORWARD  # the training forward's precision and layout

    def __call__(self, params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        policy = self.policy
        with policy.functional():
            out = functional_call(self.model, dict(zip(self.names, params)), (policy.prepare(x),))
        return policy.finish(out)

    def stacked(self, params_k: Sequence[torch.Tensor], x: torch.Tensor, *, shared_input: bool) -> torch.Tensor:
        """K models in one pass. ``params_k``: ``[K, *shape]`` each; ``x``: ``[K, N, C, H, W]``
        (one batch per model) or ``[N, C, H, W]`` (``shared_input``, the same batch for all K).
        Returns ``[K, N, C', H', W']``."""
        # randomness="different": each virtual model draws its own masks (stochastic depth, dropout),
        # as the looped path does one model at a time
        return vmap(self.__call__, in_dims=(0, None if shared_input else 0), randomness="different")(list(params_k), x)


def per_model_loss(loss_fn: Callable, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean loss of each of K models: ``out [K, N, ...]``, ``target [K, N, ...]`` or ``[N, ...]`` -> ``[K]``."""
    per_elem = loss_fn(out, target.expand_as(out), reduction="none")
    return per_elem.flatten(1).mean(1)


# ------------------------------------------------------------------ virtual update, meta reduction
class InnerAdamState:
    """Moments of the inner Adam of a second-order variant, K-stacked (``[K, *shape]``) or single.

    They persist across meta-iterations like the task Adam of ``sf``. Only the tensors and the
    step count are state; ``betas`` and ``eps`` are hyper-parameters.
    """

    def __init__(self, betas: tuple[float, float], eps: float = 1e-8):
        self.betas = betas
        self.eps = eps
        self.step = 0
        self.exp_avg: list[torch.Tensor] | None = None
        self.exp_avg_sq: list[torch.Tensor] | None = None

    def ensure(self, like: Sequence[torch.Tensor]) -> None:
        if self.exp_avg is None:
            self.exp_avg = [torch.zeros_like(t) for t in like]
            self.exp_avg_sq = [torch.zeros_like(t) for t in like]
        elif any(a.shape != t.shape for a, t in zip(self.exp_avg, like)):
            raise ValueError(
                "the inner Adam state was built for a different number of confounders or model; "
                f"got shapes {tuple(like[0].shape)} vs {tuple(self.exp_avg[0].shape)}"
            )

    def state_dict(self) -> dict:
        return {"step": self.step, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.exp_avg = None if state["exp_avg"] is None else [t.clone() for t in state["exp_avg"]]
        self.exp_avg_sq = None if state["exp_avg_sq"] is None else [t.clone() for t in state["exp_avg_sq"]]


def virtual_update(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    *,
    alpha: float,
    adam: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor], int, tuple[float, float], float] | None = None,
):
    """``φ = θ − α g`` (plain step), or one Adam step from the given moments.

    Works on K-stacked (``[K, *shape]``) or single tensors alike and stays differentiable in
    ``params`` and ``grads`` (second-order variants backpropagate through it). With ``adam =
    (exp_avg, exp_avg_sq, step, betas, eps)`` (``step`` = the count *after* this update):
    ``m = β1 m + (1−β1) g``, ``v = β2 v + (1−β2) g²``, ``φ = θ − α m̂ / (sqrt(v̂) + eps)``; the
    denominator is computed from the detached gradient, so the meta-gradient sees the Adam step as a
    diagonal preconditioner held constant (the Hessian term goes through ``m`` only). Returns
    ``(phi, new_exp_avg, new_exp_avg_sq)`` (the moments detached; ``None`` for a plain step).

    This per-tensor form serves every path that differentiates through the step (``ss``, ``ps``)
    and the inner-Adam paths; where no gradient flows through a plain step (``ss-fo``, batched)
    :func:`stacked_virtual_sgd` does it on a flat ``[K, P]`` buffer, natively when available.
    """
    if adam is None:
        return [p - alpha * g for p, g in zip(params, grads)], None, None
    exp_avg, exp_avg_sq, step, (b1, b2), eps = adam
    bc1 = 1.0 - b1**step
    bc2 = 1.0 - b2**step
    phi, new_m, new_v = [], [], []
    for p, g, m, v in zip(params, grads, exp_avg, exp_avg_sq):
        m_new = b1 * m + (1.0 - b1) * g
        gd = g.detach()
        v_new = b2 * v + (1.0 - b2) * gd * gd
        denom = (v_new / bc2).sqrt() + eps
        phi.append(p - (alpha / bc1) * m_new / denom)
        new_m.append(m_new.detach())
        new_v.append(v_new)
    return phi, new_m, new_v


def meta_reduce(grads_k: Sequence[torch.Tensor], reduction: str) -> list[torch.Tensor]:
    """Reduce K-stacked per-model gradients ``[K, *shape]`` to the meta-gradient ``[*shape]``:
    ``"sum"`` (Eq. 4 as written) or ``"mean"``."""
    if reduction == "sum":
        return [g.sum(0) for g in grads_k]
    return [g.mean(0) for g in grads_k]


def flat_views(flat: torch.Tensor, shapes: Sequence[torch.Size]) -> list[torch.Tensor]:
    """Per-parameter views ``[K, *shape]`` of a K-stacked flat buffer ``[K, P]`` (no copy; one
    split node, so autograd gathers their gradients back into one ``[K, P]`` tensor)."""
    k = flat.shape[0]
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    return [t.view(k, *s) for t, s in zip(flat.split(sizes, dim=1), shapes)]


def stacked_virtual_sgd(
    theta: torch.Tensor, grads: torch.Tensor, alpha: float | torch.Tensor, *, fused: bool, backend: str | None = None
) -> torch.Tensor:
    """K plain virtual steps from one set of weights, no autograd: ``φ[k] = θ − α g[k]``.
    ``theta`` ``[P]``, ``grads`` ``[K, P]`` -> ``[K, P]``. ``fused``: one ``sgd_step_`` op
    (:mod:`dil_fast.ops.optim`, ``backend`` forcing its implementation; ``alpha`` a float or a
    one-element tensor on the device, which spares the op a host-to-device copy); otherwise torch."""
    if fused:
        phi = torch.empty_like(grads)
        sgd_step_(phi, grads, alpha, base=theta, backend=backend)
        return phi
    return theta - alpha * grads


# ---------------------------------------------------------------------------------- support / query
def mixture_batch(batches: Sequence[Batch]) -> Batch:
    """A batch from the uniform mixture of the K confounders, built from the given batches without
    randomness: sample j is sample j of confounder ``j mod K``; size = the smallest batch size.
    ``[N, C, H, W]`` each."""
    k = len(batches)
    n = min(b[0].shape[0] for b in batches)
    xs = torch.stack([b[0][:n] for b in batches])
    ys = torch.stack([b[1][:n] for b in batches])
    j = torch.arange(n, device=xs.device)
    return xs[j % k, j], ys[j % k, j]


def support_and_query(batches: Sequence[Batch], mode: str, query: Batch | None) -> tuple[list[Batch], Batch]:
    """Split one meta-iteration's data into the K support batches and the query batch.

    * an explicit ``query`` (``(x, y)``) is always used as the query; the batches are the support;
    * ``"explicit"``: a query must be passed;
    * ``"mixture"``: support = the batches; query = :func:`mixture_batch` of them (the query samples
      are also support samples);
    * ``"split"``: each batch of N is split, the first ``N − N//2`` samples are that confounder's
      support and the last ``N//2`` go to the query, which is their union (a held-out mixture).
    """
    if len(batches) == 0:
        raise ValueError("step() needs at least one (input, target) pair")
    if query is not None:
        return list(batches), (query[0], query[1])
    if mode == "explicit":
        raise ValueError('query="explicit": pass the query batch as step(batches, query=(input, target))')
    if mode == "mixture":
        return list(batches), mixture_batch(batches)
    support, qx, qy = [], [], []
    for x, y in batches:
        n = x.shape[0]
        if n < 2:
            raise ValueError(f'query="split" needs at least 2 samples per batch, got {n}')
        s = n - n // 2
        support.append((x[:s], y[:s]))
        qx.append(x[s:])
        qy.append(y[s:])
    return support, (torch.cat(qx), torch.cat(qy))


def stackable(batches: Sequence[Batch]) -> bool:
    """True when the batches have identical shapes (so they stack to ``[K, N, ...]``)."""
    return all(b[0].shape == batches[0][0].shape and b[1].shape == batches[0][1].shape for b in batches)


def concatenable(batches: Sequence[Batch]) -> bool:
    """True when the batches differ at most in batch size (so they concatenate)."""
    return all(b[0].shape[1:] == batches[0][0].shape[1:] and b[1].shape[1:] == batches[0][1].shape[1:] for b in batches)


# ---------------------------------------------------------------------------------------- "auto"
class PathChooser:
    """The batched/looped path chosen per input signature (K, the shapes, dtype and device of the
    support and query batches), kept per algorithm instance and saved in its state_dict, so a
    resumed run uses the same path.

    ``"auto"`` records a deterministic choice (the caller's rule: looped on CPU, else batched unless
    it raised), so two
    runs with the same seed take the same path and give the same numbers. ``"tune"`` calls
    :meth:`choose`: for each new signature it runs the meta-gradient computation (pure: no
    optimizer step, no state change) once per path to warm up, times each twice and keeps the path
    with the smaller best time; a path that raises is never picked. Timings vary between runs, so
    two ``"tune"`` runs may take different paths and differ in the last bits.
    """

    def __init__(self):
        self.choices: dict[str, str] = {}
        self.timings: dict[str, dict[str, float]] = {}

    @staticmethod
    def signature(support: Sequence[Batch], query: Batch) -> str:
        shapes = [tuple(b[0].shape) + tuple(b[1].shape) for b in support]
        x = support[0][0]
        return f"K={len(support)}|{shapes}|q={tuple(query[0].shape)}|{x.dtype}|{x.device}"

    def record(self, key: str, path: str) -> str:
        self.choices[key] = path
        return path

    def choose(self, key: str, runners: dict[str, Callable[[], object]], device: torch.device) -> str:
        if key in self.choices:
            return self.choices[key]
        times: dict[str, float] = {}
        for name, fn in runners.items():
            try:
                fn()
                times[name] = best_of(fn, device, repeat=2)
            except (RuntimeError, ValueError, NotImplementedError):
                continue
        if not times:
            raise RuntimeError(f"no virtual-batching path could run for inputs {key}")
        self.timings[key] = times
        self.choices[key] = min(times, key=times.get)
        return self.choices[key]
