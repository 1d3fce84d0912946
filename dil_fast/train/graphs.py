"""Whole-meta-iteration CUDA graphs (``--cuda_graphs``, the default on CUDA; the flag's rules are in
:mod:`dil_fast.train.fast`): :class:`GraphedStep` runs the first meta-iterations eagerly, captures
the next one into one graph on static input buffers and replays it; a step that cannot be captured
falls back to eager with one warning naming the reason."""

from __future__ import annotations

import contextlib
import warnings

import torch

GRAPH_WARMUP = 3  # eager meta-iterations before capture (cuDNN autotuning, allocator, lr tensors)


def _no_phase(_name):
    return contextlib.nullcontext()


def _optimizers(algo) -> list:
    opts = [algo.meta_optimizer]
    task = algo.task_optimizer
    return opts + ([task] if task is not None and task is not algo.meta_optimizer else [])


def _root_cause(exc: BaseException) -> str:
    """The first exception of a chain (a failed capture raises again when it ends), in one line."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class GraphedStep:
    """``algo.step`` captured as one CUDA graph (see ``--cuda_graphs`` in the module doc).

    ``__call__(batches, *, query=None, timer=None)`` returns the per-pair losses: a static device
    tensor that the next call overwrites (copy it before then; :class:`LossLog` does). Input shapes
    must stay fixed. When the step cannot be captured (``algo.capture_blocker()``, or the capture
    raised) it warns once (``RuntimeWarning``, :attr:`fallback_reason` says why) and every call runs
    ``algo.step`` eagerly. A replay is one phase for a ``timer``: "fwd_bwd".
    """

    def __init__(self, algo, warmup: int = GRAPH_WARMUP):
        self.algo = algo
        self.optimizers = _optimizers(algo)
        self.warmup = max(int(warmup), 1)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.static_query: tuple[torch.Tensor, torch.Tensor] | None = None
        self.static_losses: torch.Tensor | None = None
        self.fallback_reason: str | None = None
        self._side = None
        self._resync_task = False  # an eager step kept the task weights; the graph starts from task == meta
        reason = algo.capture_blocker()
        if reason is not None:
            self._fall_back(reason)

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        warnings.warn(
            f"CUDA graphs: the meta-iteration of --variant {self.algo.name} runs eagerly: {reason}",
            RuntimeWarning,
            stacklevel=3,
        )

    def _step(self, batches, query, timer=None):
        return self.algo.step(batches, query=query, timer=timer)

    def _eager(self, batches, query, timer):
        if self._side is None:
            self._side = torch.cuda.Stream()
        cur = torch.cuda.current_stream()
        self._side.wait_stream(cur)
        with torch.cuda.stream(self._side):
            losses = self._step(batches, query, timer)
        cur.wait_stream(self._side)
        return losses

    def _capture(self, batches, query) -> bool:
        """Capture one meta-iteration on clones of its inputs; False (after the warning) when the
        capture raised. A capture records without running, so the Python-side state the step
        changed is put back and the meta-iteration is still to run."""
        self.static_inputs = [(inp.clone(), tgt.clone()) for inp, tgt in batches]
        self.static_query = None if query is None else (query[0].clone(), query[1].clone())
        before = self.algo.host_state()
        stream = torch.cuda.current_stream()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: a loader's own threads (DALI) may use CUDA while the step is captured
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.static_losses = self._step(self.static_inputs, self.static_query)
        except RuntimeError as exc:
            torch.cuda.set_stream(stream)  # a failed capture_end leaves the capture stream current
            self.algo.restore_host_state(before)
            self.static_inputs, self.static_query, self.static_losses = [], None, None
            self._fall_back(f"the capture raised {_root_cause(exc)}")
            return False
        self.algo.iteration = before["iteration"]  # capture records the work; the replay does it
        self.graph = graph
        return True

    def _load_inputs(self, batches, query) -> None:
        if (
            len(batches) != len(self.static_inputs)
            or (query is None) != (self.static_query is None)
            or any(b[0].shape != s[0].shape or b[1].shape != s[1].shape for b, s in zip(batches, self.static_inputs))
        ):
            raise RuntimeError(
                "--cuda_graphs: the batch shapes changed after capture "
                f"({[tuple(b[0].shape) for b in batches]} vs "
                f"{[tuple(s[0].shape) for s in self.static_inputs]})"
            )
        pairs = list(zip(batches, self.static_inputs))
        if query is not None:
            pairs.append((query, self.static_query))
        for (inp, tgt), (s_inp, s_tgt) in pairs:
            s_inp.copy_(inp, non_blocking=True)
            s_tgt.copy_(tgt, non_blocking=True)

    def __call__(self, batches, *, query=None, timer=None):
        if self.fallback_reason is not None:
            return self._step(batches, query, timer)
        self.calls += 1
        keep = self.algo.keep_task_weights
        if keep and self.algo.task_model is self.algo.meta_model:
            self.algo.keep_task_weights = keep = False  # no separate task network to keep (erm, ss, ps, ss-fo)
        if self.calls <= self.warmup or keep:
            # the captured meta step resets the task network: an epoch's last step (which keeps it
            # for model_N.pt) runs eagerly on the same buffers
            losses = self._eager(batches, query, timer)
            self._resync_task = keep
            return losses
        # before a capture too: an LR tensor filled inside the capture would be a constant of the graph
        for o in self.optimizers:
            o.sync_lr()  # outside the graph: a replay reads the device lr tensors
        if self._resync_task:
            self.algo.sync_task()
            self._resync_task = False
        if self.graph is None:
            if not self._capture(batches, query):
                return self._step(batches, query, timer)
        else:
            self._load_inputs(batches, query)
        with (timer or _no_phase)("fwd_bwd"):
            self.graph.replay()
        self.algo.iteration += 1
        return self.static_losses
