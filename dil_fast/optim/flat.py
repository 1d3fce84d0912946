"""FlatParams: a model's parameters (and gradients) as views into one contiguous buffer per
(device, dtype), and StackedParams: K parameter sets of one architecture as ``[K, P]``.

Once flattened, every ``Parameter`` object is kept (modules, optimizers and hooks still hold the
same objects) but its ``.data`` is a view of ``bucket.data[offset:offset + numel]`` and its
``.grad`` a view of ``bucket.grad``. Autograd accumulates into an existing ``.grad`` in place, so
the flat gradient fills itself during backward. Things that break the views are repaired by
:meth:`FlatParams.sync` (a pass over every parameter):

* ``zero_grad(set_to_none=True)`` -> the next backward makes fresh ``.grad`` tensors; sync copies
  them into the buffer and re-points them; a parameter left without a gradient gets a zeroed view
  (a missing gradient is a zero in the flat buffer);
* ``module.to(...)`` / ``param.data = ...`` -> sync copies the new values in and re-points;
* ``load_state_dict`` copies in place, so the views survive it.

The hot path calls :meth:`FlatParams.refresh` instead: O(1), it looks at the first and the last
parameter of each bucket (their data and gradient views) and runs the full :meth:`sync` only when
one of them was replaced (``module.zero_grad()`` or ``module.to()`` replace all of them). Replacing
a single parameter in the middle by hand needs an explicit :meth:`sync`.

:meth:`FlatParams.to` moves the buffers and re-points the parameters.

Layout: each parameter keeps the memory layout it had when it was flattened. A 4-D parameter in
``torch.channels_last`` (``model.to(memory_format=torch.channels_last)``) occupies its segment in
NHWC order and its view has channels-last strides, so a convolution fed channels-last
activations needs no copy of its weight into NHWC (cuDNN makes one in every forward and
backward-input otherwise). The flat optimizers are elementwise, so the layout changes nothing
they compute; two flat sets paired element by element (meta and task networks) must share the
layout, which a copy of the model does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["FlatParams", "FlatBucket", "StackedParams", "adjacent_views", "dense_layout", "segment_view"]


CONTIGUOUS, CHANNELS_LAST = "contiguous", "channels_last"


def dense_layout(t: Tensor) -> str | None:
    """The layout a flat segment can hold ``t`` in: ``"contiguous"``, ``"channels_last"`` (a 4-D
    tensor with NHWC strides and more than one channel or pixel), or None (any other strides)."""
    if t.is_contiguous():
        return CONTIGUOUS
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return CHANNELS_LAST
    return None


def segment_view(flat: Tensor, shape: torch.Size, layout: str = CONTIGUOUS) -> Tensor:
    """``flat`` ([numel]) seen as a tensor of ``shape`` in ``layout``: a view, whose autograd
    backward is a view too (no as_strided)."""
    if layout == CHANNELS_LAST:
        o, i, h, w = shape
        return flat.view(o, h, w, i).permute(0, 3, 1, 2)
    return flat.view(shape)


@dataclass
class FlatBucket:
    """Parameters of one (device, dtype): ``data``/``grad`` are [P]; ``offsets[i]`` places param i,
    ``layouts[i]`` its memory layout inside its segment (:func:`dense_layout`)."""

    params: list[nn.Parameter]
    names: list[str]
    offsets: list[int]
    data: Tensor
    grad: Tensor | None = None
    shapes: list[torch.Size] = field(default_factory=list)
    layouts: list[str] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return self.data.numel()

    def addr(self, buf: Tensor, i: int) -> int:
        """Address where parameter i's segment of ``buf`` starts (no view is made)."""
        return buf.data_ptr() + self.offsets[i] * buf.element_size()

    def segment(self, buf: Tensor, i: int) -> Tensor:
        n = math.prod(self.shapes[i])
        layout = self.layouts[i] if self.layouts else CONTIGUOUS
        return segment_view(buf[self.offsets[i] : self.offsets[i] + n], self.shapes[i], layout)


def adjacent_views(tensors: list[Tensor], layouts: list[str] | None = None) -> Tensor | None:
    """The [P] tensor that ``tensors`` already tile in order (same storage, each dense in its layout,
    ``layouts[i]`` when given), or None."""
    if not tensors or any(t is None for t in tensors):
        return None
    first = tensors[0]
    storage = first.untyped_storage().data_ptr()
    pos = first.storage_offset()
    for i, t in enumerate(tensors):
        layout = dense_layout(t)
        if (
            t.untyped_storage().data_ptr() != storage
            or t.storage_offset() != pos
            or layout is None
            or (layouts is not None and layout != layouts[i])
            or t.dtype != first.dtype
            or t.device != first.device
        ):
            return None
        pos += t.numel()
    total = pos - first.storage_offset()
    return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (total,), (1,))


class FlatParams:
    """Flatten ``model_or_params`` (an ``nn.Module`` or an iterable of parameters / (name, param)).

    ``with_grad``: keep a flat gradient buffer; existing ``.grad`` tensors are copied in and
    re-pointed. ``attach_grads`` (default True): parameters without a gradient get a zeroed view
    too, so the first backward already accumulates into the buffer. With ``attach_grads=False``
    missing gradients stay ``None`` (``torch.optim`` then skips those parameters).
    Parameters already tiling one buffer in order (e.g. flattened before) are adopted without a
    copy, so an optimizer and a trainer can both wrap the same model.
    """

    def __init__(self, model_or_params, *, with_grad: bool = True, attach_grads: bool = True):
        if isinstance(model_or_params, nn.Module):
            named = list(model_or_params.named_parameters())
        else:
            items = list(model_or_params)
            named = [it if isinstance(it, tuple) else (str(i), it) for i, it in enumerate(items)]
        seen: set[int] = set()
        groups: dict[tuple, list[tuple[str, nn.Parameter]]] = {}
        for name, p in named:
            if id(p) in seen:
                continue
            seen.add(id(p))
            groups.setdefault((p.device, p.dtype), []).append((name, p))
        self.with_grad = with_grad
        self.attach_grads = with_grad and attach_grads
        self.buckets: list[FlatBucket] = [self._flatten(items) for items in groups.values()]

    # ------------------------------------------------------------------ construction / repair
    def _flatten(self, items: list[tuple[str, nn.Parameter]]) -> FlatBucket:
        params = [p for _, p in items]
        shapes = [p.shape for p in params]
        layouts = [dense_layout(p) or CONTIGUOUS for p in params]
        offsets, pos = [], 0
        for p in params:
            offsets.append(pos)
            pos += p.numel()
        data = adjacent_views([p.data for p in params], layouts)
        if data is None:
            data = torch.empty(pos, dtype=params[0].dtype, device=params[0].device)
        bucket = FlatBucket(params, [n for n, _ in items], offsets, data, None, shapes, layouts)
        with torch.no_grad():
            for i, p in enumerate(params):
                view = bucket.segment(data, i)
                if p.data.data_ptr() != view.data_ptr():
                    view.copy_(p.data)
                p.data = view
        if self.with_grad:
            grads = [p.grad for p in params]
            bucket.grad = adjacent_views(grads, layouts)
            if bucket.grad is None:
                bucket.grad = torch.zeros_like(data)
            self._point_grads(bucket, attach=self.attach_grads)
        return bucket

    def _point_grads(self, bucket: FlatBucket, *, attach: bool) -> None:
        with torch.no_grad():
            gbase, size = bucket.grad.data_ptr(), bucket.grad.element_size()
            for i, p in enumerate(bucket.params):
                if p.grad is not None and p.grad.data_ptr() == gbase + bucket.offsets[i] * size:
                    continue  # already a view (the steady state): make no tensor
                view = bucket.segment(bucket.grad, i)
                if p.grad is None:
                    view.zero_()
                    if attach:
                        p.grad = view
                elif p.grad.data_ptr() != view.data_ptr():
                    view.copy_(p.grad)
                    p.grad = view

    def refresh(self) -> None:
        """O(1) check of the views (first and last parameter of every bucket); :meth:`sync` when
        one was replaced. Called before every fused optimizer step."""
        for b in self.buckets:
            first, last = b.params[0], b.params[-1]
            if first.data_ptr() != b.data.data_ptr() or last.data_ptr() != b.addr(b.data, len(b.params) - 1):
                return self.sync()
            if b.grad is not None and (
                first.grad is None
                or last.grad is None
                or first.grad.data_ptr() != b.grad.data_ptr()
                or last.grad.data_ptr() != b.addr(b.grad, len(b.params) - 1)
            ):
                return self.sync()

    def sync(self) -> None:
        """Repair the views: copy replaced ``.data``/``.grad`` tensors into the buffers.

        A missing grad (``None``) becomes a zeroed view when the FlatParams attaches gradients
        (``attach_grads``); otherwise it stays missing (see :meth:`grads_present`) and its buffer
        segment is zeroed, so the flat gradient holds no stale values.
        """
        with torch.no_grad():
            for b in self.buckets:
                base, gbase = b.data.data_ptr(), (b.grad.data_ptr() if b.grad is not None else 0)
                size = b.data.element_size()
                for i, p in enumerate(b.params):
                    # compare addresses first: the common case (all intact) makes no tensors
                    if p.data_ptr() != base + b.offsets[i] * size:
                        if p.device != b.data.device or p.dtype != b.data.dtype:
                            raise RuntimeError(
                                f"parameter {b.names[i]!r} moved to {p.device}/{p.dtype}; use FlatParams.to(...) "
                                "to move flattened parameters"
                            )
                        view = b.segment(b.data, i)
                        view.copy_(p.data)
                        p.data = view
                    if gbase:
                        g = p.grad
                        if g is None:
                            view = b.segment(b.grad, i)
                            view.zero_()
                            if self.attach_grads:
                                p.grad = view
                        elif g.data_ptr() != gbase + b.offsets[i] * size:
                            gview = b.segment(b.grad, i)
                            gview.copy_(g)
                            p.grad = gview

    def grads_present(self, bucket: FlatBucket) -> list[bool]:
        """Which parameters of ``bucket`` currently have a gradient."""
        return [p.grad is not None for p in bucket.params]

    def intact(self) -> bool:
        """True when every parameter (and every gradient that exists) is a view of its bucket."""
        for b in self.buckets:
            for i, p in enumerate(b.params):
                if p.data_ptr() != b.addr(b.data, i):
                    return False
                if b.grad is not None and p.grad is not None and p.grad.data_ptr() != b.addr(b.grad, i):
                    return False
        return True

    # ------------------------------------------------------------------ public buffers
    def _single(self) -> FlatBucket:
        if len(self.buckets) != 1:
            raise ValueError(f"FlatParams holds {len(self.buckets)} buckets (one per device/dtype); use .buckets[i]")
        return self.buckets[0]

    @property
    def data(self) -> Tensor:
        """The [P] parameter buffer (only when all parameters share one device and dtype)."""
        return self._single().data

    @property
    def grad(self) -> Tensor | None:
        """The [P] gradient buffer (only when all parameters share one device and dtype)."""
        return self._single().grad

    @property
    def views(self) -> dict[str, Tensor]:
        """Name -> parameter view (the ``Parameter`` objects themselves)."""
        return {n: p for b in self.buckets for n, p in zip(b.names, b.params)}

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for b in self.buckets for p in b.params]

    @property
    def numel(self) -> int:
        return sum(b.numel for b in self.buckets)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero the flat gradients in one op per bucket, every parameter getting a zeroed view
        (``set_to_none`` drops the views instead, like ``torch.optim``)."""
        if set_to_none:
            for p in self.params:
                p.grad = None
            return
        self.sync()
        for b in self.buckets:
            if b.grad is not None:
                b.grad.zero_()
                self._point_grads(b, attach=True)

    def to(self, *args, **kwargs) -> "FlatParams":
        """Move (or cast) every bucket like ``Tensor.to`` and re-point the parameters, in place."""
        self.sync()
        with torch.no_grad():
            for b in self.buckets:
                b.data = b.data.to(*args, **kwargs)
                if b.grad is not None:
                    b.grad = b.grad.to(*args, **kwargs)
                for i, p in enumerate(b.params):
                    p.data = b.segment(b.data, i)
                    if b.grad is not None and p.grad is not None:
                        p.grad = b.segment(b.grad, i)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """Name -> detached copy of each parameter (plain tensors, no shared storage)."""
        return {n: p.detach().clone() for n, p in self.views.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Copy values in place (the views survive); every name must be present."""
        views = self.views
        missing = sorted(set(views) - set(state))
        if missing:
            raise KeyError(f"FlatParams.load_state_dict: missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        with torch.no_grad():
            for n, p in views.items():
                p.copy_(state[n])

    def copy_from(self, other: "FlatParams") -> None:
        """``self <- other`` for a FlatParams of the same architecture (one copy per bucket)."""
        if len(self.buckets) != len(other.buckets) or any(
            a.numel != b.numel for a, b in zip(self.buckets, other.buckets)
        ):
            raise ValueError("FlatParams.copy_from: the two parameter sets have different layouts")
        self.sync()
        other.sync()
        with torch.no_grad():
            for a, b in zip(self.buckets, other.buckets):
                a.data.copy_(b.data)

    @staticmethod
    def stacked(model: nn.Module, k: int, *, with_grad: bool = True) -> "StackedParams":
        """K copies of ``model``'s parameters as one [K, P] buffer (see :class:`StackedParams`)."""
        return StackedParams(model, k, with_grad=with_grad)


class StackedParams:
    """K parameter sets of one architecture as ``data`` [K, P] (and ``grad`` [K, P]).

    Row ``k`` starts as a copy of ``model``'s parameters (the model itself is not modified).
    :meth:`row` gives name -> view dicts for ``torch.func.functional_call``; :meth:`params_dict`
    gives name -> [K, *shape] views for ``torch.func.vmap`` over the K sets.
    """

    def __init__(self, model: nn.Module, k: int, *, with_grad: bool = True):
        named = [(n, p) for n, p in model.named_parameters()]
        if not named:
            raise ValueError("StackedParams: the model has no parameters")
        dtypes = {(p.device, p.dtype) for _, p in named}
        if len(dtypes) != 1:
            raise ValueError(
                f"StackedParams needs one device and dtype for all parameters, got {sorted(map(str, dtypes))}"
            )
        if k < 1:
            raise ValueError(f"StackedParams: k must be >= 1, got {k}")
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.offsets, pos = [], 0
        for _, p in named:
            self.offsets.append(pos)
            pos += p.numel()
        self.k = k
        ref = named[0][1]
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for _, p in named])
            self.data = flat.unsqueeze(0).repeat(k, 1).contiguous()
        self.grad = torch.zeros_like(self.data) if with_grad else None
        self.device, self.dtype = ref.device, ref.dtype

    @property
    def numel(self) -> int:
        return self.data.shape[1]

    def _split(self, buf: Tensor, batched: bool) -> dict[str, Tensor]:
        out = {}
        for n, off, shape in zip(self.names, self.offsets, self.shapes):
            size = math.prod(shape)
            out[n] = buf[:, off : off + size].view(self.k, *shape) if batched else buf[off : off + size].view(shape)
        return out

    def row(self, k: int, *, grad: bool = False) -> dict[str, Tensor]:
        """Name -> view of row ``k`` (of the gradient buffer with ``grad=True``)."""
        buf = self.grad if grad else self.data
        if buf is None:
            raise ValueError("StackedParams was built with with_grad=False")
        return self._split(buf[k], batched=False)

    def params_dict(self, *, grad: bool = False) -> dict[str, Tensor]:
        """Name -> [K, *shape] view of all rows."""
        buf = self.grad if grad else self.data
        if buf is None:
            raise ValueError("StackedParams was built with with_grad=False")
        return self._split(buf, batched=True)

    def load_row(self, k: int, flat: Tensor) -> None:
        """Row ``k`` <- a [P] buffer (e.g. ``FlatParams.data``)."""
        self.data[k].copy_(flat.reshape(-1))

    def broadcast_(self, flat: Tensor) -> None:
        """Every row <- a [P] buffer (all K sets restart from one set of weights)."""
        self.data.copy_(flat.reshape(1, -1).expand_as(self.data))

    def zero_grad(self) -> None:
        if self.grad is not None:
            self.grad.zero_()

    def to(self, *args, **kwargs) -> "StackedParams":
        self.data = self.data.to(*args, **kwargs)
        if self.grad is not None:
            self.grad = self.grad.to(*args, **kwargs)
        self.device, self.dtype = self.data.device, self.data.dtype
        return self
