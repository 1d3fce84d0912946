"""The run plan: every decision about how a run computes, made once, from the config and the
registries, before anything is built or written.

* the device and the fast-path options (precision, activation and weight layout, bf16 weight
  shadow, compile, CUDA graphs or why not: :func:`dil_fast.train.fast.resolve_options`);
* the optimizer: the fused flat-buffer one or ``torch.optim.Adam`` per tensor, and why
  (:func:`dil_fast.ops.optim.fused_optimizer`, the one rule);
* the implementation serving each dil_fast op of the run (the loader's, the degradation's and, on
  the fused path, the variant's ops: :data:`dil_fast.meta.VARIANTS`), a forced ``--backend`` refused
  up front when it cannot serve one.

:class:`RunPlan` is printed once (the ``Fast path:`` line of ``train.log``), saved in
``options.json`` and handed down: the algorithm gets ``fused`` from it, the fast path its options;
nothing below decides these again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import backends
from ..backends import BackendError
from ..errors import FlagError
from ..ops import optim as optim_ops
from .fast import FastOptions, describe_options, resolve_options

__all__ = ["RunPlan"]


@dataclass
class RunPlan:
    """How a run computes (see the module doc)."""

    device: torch.device
    fast: FastOptions
    fused: bool
    fused_why: str | None = None  # why the fused optimizer is not used (None when it is)
    backends: dict = field(default_factory=dict)  # op -> the implementation serving it
    reference_mode: bool = False

    @classmethod
    def resolve(cls, cfg, device, stage_ops=()) -> "RunPlan":
        """The plan of a validated config on ``device``; ``stage_ops``: the dispatcher ops the run's
        loader and degradation use. :class:`FlagError` (one line naming the flag) when a forced
        setting cannot be honoured."""
        device = torch.device(device)
        entry = cfg.variant_entry()
        if cfg.reference_mode:
            fast = FastOptions(precision=None, deterministic=cfg.deterministic)
            fused, why = False, "--reference_mode steps per-tensor torch.optim.Adam, as released"
        else:
            try:
                fused = optim_ops.fused_optimizer(device, cfg.backend)
                why = (
                    None
                    if fused
                    else (
                        "--backend torch steps the optimizers with the torch references"
                        if cfg.backend == "torch"
                        else "the native core does not serve the optimizer ops (`dil-fast info` says why)"
                    )
                )
            except BackendError as exc:  # refused below, with every op the forced backend cannot serve
                fused, why = False, str(exc)
            cls._check_forced(cfg, device, fused, why)
            fast = resolve_options(
                device,
                precision=cfg.precision,
                channels_last=cfg.channels_last,
                compile=cfg.compile,
                cuda_graphs=cfg.cuda_graphs,
                deterministic=cfg.deterministic,
                distributed=cfg.distributed,
                fused=fused,
                channels_last_weights=cfg.channels_last_weights,
                weight_shadow=cfg.weight_shadow,
            )
        ops = list(stage_ops) + (list(entry.ops) if fused else [])
        plan = backends.plan(ops, device, backends.check_forced(ops, device, cfg.backend))  # BackendError: one line
        return cls(
            device=device, fast=fast, fused=fused, fused_why=why, backends=plan, reference_mode=bool(cfg.reference_mode)
        )

    @staticmethod
    def _check_forced(cfg, device: torch.device, fused: bool, why: str | None) -> None:
        """Flags that need the fused optimizer or CUDA, refused when the run cannot have them."""
        if cfg.cuda_graphs:
            if device.type != "cuda":
                raise FlagError(
                    f"--cuda_graphs needs a CUDA device; this run trains on {device} "
                    "(drop --cuda_graphs, or pass --device cuda on a machine with a GPU)"
                )
            if cfg.distributed:
                raise FlagError(
                    "--cuda_graphs is single-process for now: the per-step gradient all-reduce of "
                    "--distributed is not captured; drop one of the two"
                )
            if not fused:
                raise FlagError(
                    f"--cuda_graphs needs the fused optimizer (the native core dil_fast._C with its "
                    f"CUDA kernels); {why}"
                )
        if cfg.weight_shadow and not fused:
            raise FlagError(
                f"--weight_shadow reads the flat weight buffers of the fused optimizer, which this run "
                f"does not use ({why})"
            )

    def describe(self, fallback: str | None = None) -> str:
        """The ``Fast path:`` line: precision, layouts, compile, CUDA graph or why not, optimizer.
        ``fallback``: why a capture that failed mid-run left the step eager."""
        text = describe_options(self.fast, fallback)
        return text + ", " + ("fused optimizer" if self.fused else f"per-tensor optimizer ({self.fused_why})")

    def to_dict(self) -> dict:
        return {
            "device": str(self.device),
            "fast_path": self.describe(),
            "fused_optimizer": self.fused,
            "backends": dict(self.backends),
            "reference_mode": self.reference_mode,
        }
