"""Kernel-throughput profile of one meta-iteration: ``dil-fast bench train --profile``.

:func:`profile_meta_iteration` runs a step function a few times (warm-up), then once under
``torch.profiler`` (CPU + CUDA activities, shapes, FLOPs), writes the Chrome trace
``trace_meta_iteration.json`` (open it in Perfetto or chrome://tracing) and returns a per-op table:
for every outermost ``aten::`` / ``dil_fast::`` op (the kernels it launches counted with it) the
calls, device time (CPU time on a CPU run), share of the iteration, and the achieved rate:

* TFLOP/s for convolutions (forward ``2*N*O*H*W*C*kh*kw``, backward twice that: input and weight
  gradients) and for ops whose FLOPs the profiler counts, as a fraction of the measured matmul
  ceiling at the run's precision;
* GB/s for everything else, as a fraction of the measured device-to-device copy bandwidth. Bytes are
  an estimate from the recorded input shapes and dtypes (inputs read once, one output the size of the
  largest input written); the fused optimizer ops use their exact traffic (Adam 28 B/parameter,
  meta step with task reset 32 B/parameter).

On CUDA a second table lists the kernels themselves (device time, share, the op that launched them;
kernels replayed from a CUDA graph have no launching op, so under ``--cuda_graphs`` that table is
the one to read). Ceilings come from :func:`measure_ceilings` unless given.
"""

from __future__ import annotations

import math
import os

import torch

from ..timing import mean_time, synchronize

_ELEM = {
    "float": 4,
    "c10::BFloat16": 2,
    "c10::Half": 2,
    "double": 8,
    "unsigned char": 1,
    "long int": 8,
    "int": 4,
    "bool": 1,
    "signed char": 1,
    "short int": 2,
}
_CONV = (
    "aten::conv2d",
    "aten::convolution",
    "aten::_convolution",
    "aten::cudnn_convolution",
    "aten::mkldnn_convolution",
    "aten::convolution_backward",
)
# exact bytes per parameter of the fused optimizer ops (fp32 buffers)
_OPT_BYTES = {"dil_fast::adam_step_": 28, "dil_fast::meta_step_": 32}


def measure_ceilings(device, precision: str = "fp32") -> dict:
    """Measured copy bandwidth (bytes/s, read + write) and matmul FLOP/s at ``precision``."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = (1 << 28) if cuda else (1 << 24)
    src = torch.empty(n, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    bw = 2 * n / mean_time(lambda: dst.copy_(src), device)
    m = 4096 if cuda else 384
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(m, m, device=device, dtype=dtype)
    b = torch.randn(m, m, device=device, dtype=dtype)
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
        flops = 2 * m**3 / mean_time(lambda: a @ b, device)
    finally:
        torch.set_float32_matmul_precision(old)
    return {"bytes_per_s": bw, "flops_per_s": {precision: flops}}


def _conv_flops(name: str, shapes) -> float | None:
    if name == "aten::convolution_backward":
        out, inp, w = shapes[0], shapes[1], shapes[2]
        if len(out) != 4 or len(w) != 4:
            return None
        return 2 * 2 * math.prod(out) * w[1] * w[2] * w[3]
    inp, w = shapes[0], shapes[1]
    if len(inp) != 4 or len(w) != 4:
        return None
    # 'same' output size assumed for the spatial dims (RRDB: 3x3, stride 1, padding 1)
    return 2 * inp[0] * w[0] * inp[2] * inp[3] * w[1] * w[2] * w[3]


# ops that move no data (views, no-op casts): no GB/s for them
_VIEWS = {
    "aten::" + n
    for n in (
        "narrow",
        "select",
        "slice",
        "expand",
        "view",
        "reshape",
        "_reshape_alias",
        "detach",
        "as_strided",
        "unsqueeze",
        "squeeze",
        "permute",
        "transpose",
        "t",
        "alias",
        "to",
        "broadcast_tensors",
        "split",
        "chunk",
        "unbind",
        "view_as",
        "expand_as",
        "lift_fresh",
    )
}
_WRITE_ONLY = {"aten::zero_", "aten::fill_", "aten::ones_like", "aten::zeros_like", "aten::empty_like"}


def _bytes(evt) -> float | None:
    shapes, dtypes = evt.input_shapes or [], getattr(evt, "input_dtypes", None) or []
    if evt.name in _VIEWS:
        return None
    if evt.name in _OPT_BYTES and shapes and shapes[0]:
        return _OPT_BYTES[evt.name] * math.prod(shapes[0])
    sizes = [math.prod(s) * _ELEM[d] for s, d in zip(shapes, dtypes) if s and d in _ELEM]
    if not sizes:
        return None
    return max(sizes) if evt.name in _WRITE_ONLY else sum(sizes) + max(sizes)


def _is_op(name: str) -> bool:
    return name.startswith("aten::") or name.startswith("dil_fast::")


def _outermost(evt):
    """The outermost aten/dil_fast op enclosing ``evt`` (itself when none encloses it)."""
    top, parent = evt, evt.cpu_parent
    while parent is not None:
        if _is_op(parent.name):
            top = parent
        parent = parent.cpu_parent
    return top


def _outermost_ops(events):
    for evt in events:
        if _is_op(evt.name) and evt.device_type == torch.autograd.DeviceType.CPU and _outermost(evt) is evt:
            yield evt


def _kernel_rows(events, op_rows: dict) -> list[dict]:
    """CUDA kernels (and copies/memsets) by name, each with the outermost op that launched it;
    kernels replayed from a CUDA graph have no launching op. Rates are those of the launching op."""
    cpu = torch.autograd.DeviceType.CPU
    by_id = {e.id: e for e in events if e.device_type == cpu}
    agg: dict[str, dict] = {}
    for k in events:
        if k.device_type != torch.autograd.DeviceType.CUDA:
            continue
        launcher = by_id.get(getattr(k, "linked_correlation_id", 0) or -1)
        op = _outermost(launcher).name if launcher is not None and _is_op(_outermost(launcher).name) else None
        row = agg.setdefault(
            k.name, {"kernel": k.name, "op": op or "(graph replay / no op)", "calls": 0, "time_s": 0.0}
        )
        row["calls"] += 1
        row["time_s"] += (k.time_range.end - k.time_range.start) * 1e-6
    total = sum(r["time_s"] for r in agg.values()) or 1.0
    out = []
    for r in sorted(agg.values(), key=lambda r: -r["time_s"]):
        op = op_rows.get(r["op"], {})
        out.append({**r, "share": r["time_s"] / total, "op_tflops": op.get("tflops"), "op_gbps": op.get("gbps")})
    return out


def profile_meta_iteration(
    step, device, out_dir: str, *, warmup: int = 2, ceilings: dict | None = None, precision: str = "fp32"
) -> dict:
    """Profile one call of ``step()`` (a whole meta-iteration) after ``warmup`` calls.

    Returns ``{"rows": [...], "kernels": [...], "total_s", "trace", "ceilings", "device", "precision"}``;
    each row has ``op, calls, time_s, share, tflops, flop_frac, gbps, bw_frac`` (rates ``None`` when
    unknown); each kernel row ``kernel, op, calls, time_s, share, op_tflops, op_gbps`` (CUDA only).
    """
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    cuda = device.type == "cuda"
    for _ in range(warmup):
        step()
    synchronize(device)
    if ceilings is None:
        ceilings = measure_ceilings(device, precision)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True, with_flops=True) as prof:
        step()
        synchronize(device)
    os.makedirs(out_dir, exist_ok=True)
    trace = os.path.join(out_dir, "trace_meta_iteration.json")
    prof.export_chrome_trace(trace)

    agg: dict[str, dict] = {}
    for evt in _outermost_ops(prof.events()):
        t = (evt.device_time_total if cuda else evt.cpu_time_total) * 1e-6
        row = agg.setdefault(
            evt.name,
            {
                "op": evt.name,
                "calls": 0,
                "time_s": 0.0,
                "flops": 0.0,
                "bytes": 0.0,
                "has_flops": False,
                "has_bytes": False,
            },
        )
        row["calls"] += 1
        row["time_s"] += t
        flops = _conv_flops(evt.name, evt.input_shapes) if evt.name in _CONV else (evt.flops or None)
        if flops:
            row["flops"] += flops
            row["has_flops"] = True
            continue
        nbytes = _bytes(evt)
        if nbytes:
            row["bytes"] += nbytes
            row["has_bytes"] = True
    rows = [r for r in agg.values() if r["time_s"] > 0]
    total = sum(r["time_s"] for r in rows) or 1.0
    peak_flops = ceilings["flops_per_s"].get(precision) or next(iter(ceilings["flops_per_s"].values()))
    out = []
    for r in sorted(rows, key=lambda r: -r["time_s"]):
        tflops = r["flops"] / r["time_s"] / 1e12 if r["has_flops"] else None
        gbps = r["bytes"] / r["time_s"] / 1e9 if r["has_bytes"] and not r["has_flops"] else None
        out.append(
            {
                "op": r["op"],
                "calls": r["calls"],
                "time_s": r["time_s"],
                "share": r["time_s"] / total,
                "tflops": tflops,
                "flop_frac": None if tflops is None else tflops * 1e12 / peak_flops,
                "gbps": gbps,
                "bw_frac": None if gbps is None else gbps * 1e9 / ceilings["bytes_per_s"],
            }
        )
    kernels = _kernel_rows(prof.events(), {r["op"]: r for r in out}) if cuda else []
    return {
        "rows": out,
        "kernels": kernels,
        "total_s": total,
        "trace": trace,
        "ceilings": ceilings,
        "device": str(device),
        "precision": precision,
    }


def format_table(result: dict, top: int = 25) -> str:
    """The per-op table as text (the ``top`` ops by time, the rest summed in one line)."""
    c = result["ceilings"]
    peak = c["flops_per_s"].get(result["precision"]) or next(iter(c["flops_per_s"].values()))
    lines = [
        f"one meta-iteration on {result['device']} ({result['precision']}): {result['total_s'] * 1e3:.2f} ms "
        f"in ops; ceilings: copy {c['bytes_per_s'] / 1e9:.1f} GB/s, matmul {peak / 1e12:.2f} TFLOP/s",
        f"{'op':<42} {'calls':>6} {'ms':>9} {'share':>7} {'TFLOP/s':>9} {'%peak':>6} {'GB/s':>8} {'%copy':>6}",
    ]

    def fmt(v, spec):
        return format(v, spec) if v is not None else "-"

    rows = result["rows"]
    for r in rows[:top]:
        lines.append(
            f"{r['op'][:42]:<42} {r['calls']:>6} {r['time_s'] * 1e3:>9.3f} {r['share']:>7.1%} "
            f"{fmt(r['tflops'], '>9.3f'):>9} {fmt(r['flop_frac'] and 100 * r['flop_frac'], '>6.1f'):>6} "
            f"{fmt(r['gbps'], '>8.1f'):>8} {fmt(r['bw_frac'] and 100 * r['bw_frac'], '>6.1f'):>6}"
        )
    rest = rows[top:]
    if rest:
        lines.append(
            f"{f'({len(rest)} more ops)':<42} {sum(r['calls'] for r in rest):>6} "
            f"{sum(r['time_s'] for r in rest) * 1e3:>9.3f} {sum(r['share'] for r in rest):>7.1%}"
        )
    kernels = result.get("kernels") or []
    if kernels:
        lines.append(
            f"\nper kernel ({sum(k['time_s'] for k in kernels) * 1e3:.2f} ms of device time; rates are "
            "the launching op's)"
        )
        lines.append(f"{'kernel':<58} {'calls':>6} {'ms':>9} {'share':>7} {'op':<28} {'TFLOP/s':>8} {'GB/s':>8}")
        for k in kernels[:top]:
            lines.append(
                f"{k['kernel'][:58]:<58} {k['calls']:>6} {k['time_s'] * 1e3:>9.3f} {k['share']:>7.1%} "
                f"{k['op'][:28]:<28} {fmt(k['op_tflops'], '>8.2f'):>8} {fmt(k['op_gbps'], '>8.1f'):>8}"
            )
    lines.append(f"trace: {result['trace']}")
    return "\n".join(lines)
