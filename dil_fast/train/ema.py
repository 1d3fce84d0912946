"""``--ema DECAY``: an exponential moving average of the trained network's weights, as BasicSR and
Real-ESRGAN keep one (``net_g_ema``, saved as ``params_ema``).

After every meta-iteration, on the device and without a host sync: ``ema = decay * ema + (1 - decay)
* weights`` for every parameter of the meta network (one ``lerp`` over the flat buffer when the
parameters tile one, as the fused optimizer keeps them; else one ``foreach`` lerp), buffers copied.
It starts from the weights the run starts from (a resumed training state restores it bitwise).
The periodic test scores the EMA network when there is one; ``model_N.pt`` carries it as
``params_ema`` beside the released keys (the released scripts read only theirs), the training state
in ``models["params_ema"]``; ``dil-fast eval --key params_ema`` and ``restore --key params_ema``
evaluate it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..optim.flat import FlatParams, adjacent_views, dense_layout

__all__ = ["ModelEMA"]


class ModelEMA:
    """The EMA of ``model``'s weights; :attr:`model` is the averaged network (eval mode, no grad)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"--ema must be a decay in (0, 1), e.g. 0.999, got {decay!r}")
        self.decay = float(decay)
        self.source = model
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        FlatParams(self.model, with_grad=False)  # one buffer in the source's order and layouts: one lerp
        self._src = list(model.parameters())
        self._dst = list(self.model.parameters())
        self._src_buffers = list(model.buffers())
        self._dst_buffers = list(self.model.buffers())

    def _flat(self, tensors) -> torch.Tensor | None:
        return adjacent_views([t.data for t in tensors], [dense_layout(t) or "contiguous" for t in tensors])

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average (device ops only)."""
        src, dst = self._flat(self._src), self._flat(self._dst)
        if src is not None and dst is not None and src.shape == dst.shape:
            dst.lerp_(src, 1.0 - self.decay)
        else:
            torch._foreach_lerp_(self._dst, self._src, 1.0 - self.decay)
        if self._dst_buffers:
            torch._foreach_copy_(self._dst_buffers, self._src_buffers)

    @torch.no_grad()
    def reset(self) -> None:
        """Start the average again from the network's current weights."""
        torch._foreach_copy_(self._dst + self._dst_buffers, self._src + self._src_buffers)

    def state_dict(self) -> dict:
        """The averaged network's state_dict (tensors; the ``params_ema`` of a checkpoint)."""
        return self.model.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd, strict=True)
