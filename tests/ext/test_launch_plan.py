"""The launch plan of the flat-buffer CUDA kernels (csrc/launch_plan.h), checked on the CPU through
dil_fast._C.flat_launch_plan, and on a GPU the kernels that follow it, at every remainder.

A [K, P] buffer's row k starts at element k * P, so for P not a multiple of the vector width the
rows start at different offsets inside a 16-byte vector and a 128-byte cache line (RRDB-23:
P = 16,624,131, odd). Every row is a scalar head up to the first line boundary, a body of 16-byte
vectors and a scalar tail; the grid is at most a few waves of resident blocks, each striding over
its row.
"""

from __future__ import annotations

import math

import pytest
import torch

import dil_fast.ops  # noqa: F401 - defines the dil_fast:: optimizer ops

pytestmark = pytest.mark.ext

RRDB23 = 16_624_131
SMS, BLOCKS_PER_SM = 132, 6  # an H100/H200 and the resident blocks of a ~40-register kernel
WAVES = 4  # kGridWaves of csrc/launch_plan.h
ELEM_BYTES = {"fp32": 4, "fp64": 8}
TINY = (0, 1, 2, 3, 5)
REMAINDERS = tuple(range(1024, 1032))  # every P mod 8
HUGE = (RRDB23, 2**31 + 3, 2**40 + 5)


def plan_of(native, rows, cols, elem_bytes, lead_bytes=0, *, sms=SMS, blocks=BLOCKS_PER_SM, buffers=4, **side):
    base = 4096 + lead_bytes
    return native.flat_launch_plan(
        rows, cols, elem_bytes, [base + 1024 * i for i in range(buffers)], sms, blocks, **side
    )


def touched(plan, k):
    """How often the kernel's loops (optim_cuda.cu) touch each element of row k: threads tid < head
    take the head, tid < tail the tail, and every thread strides over the body's vectors."""
    head, body, tail = plan["splits"][k]
    vec, threads = plan["vec"], plan["grid_x"] * plan["block"]
    count = [0] * plan["cols"]
    for tid in range(threads):
        if tid < head:
            count[tid] += 1
        if tid < tail:
            count[head + body + tid] += 1
        for i in range(head + tid * vec, head + body, threads * vec):
            for e in range(vec):
                count[i + e] += 1
    return count


def leads(elem_bytes):
    """Offsets of row 0 inside a 128-byte line: inside a vector, on vector boundaries, the last one."""
    return sorted({b for b in (0, 4, 8, 12, 16, 20, 48, 64, 112, 120, 124) if b % elem_bytes == 0})


def check_rows(plan, elem_bytes, lead_bytes, line_bytes=128):
    vec, line, cols = plan["vec"], plan["line"], plan["cols"]
    assert line * elem_bytes == line_bytes and vec * elem_bytes == 16
    assert len(plan["splits"]) == plan["rows"]
    for k, (head, body, tail) in enumerate(plan["splits"]):
        assert head + body + tail == cols and min(head, body, tail) >= 0, (k, plan["splits"][k])
        assert head < line and tail < vec and body % vec == 0, (k, plan["splits"][k])
        start = (lead_bytes + k * cols * elem_bytes) // elem_bytes  # row k's first element, from a line boundary
        assert head == min(cols, -start % line), f"row {k}: the head does not end on the first line boundary"
        if body:
            assert (start + head) % line == 0, f"row {k}: the body starts off a line boundary"
        assert cols - head - body < vec, f"row {k}: a whole vector left to the scalar tail"


@pytest.mark.parametrize("dtype", ELEM_BYTES)
@pytest.mark.parametrize("rows", (1, 3, 4))
@pytest.mark.parametrize("cols", TINY + REMAINDERS + (4099,))
def test_every_element_once_for_every_remainder_and_lead(native, dtype, rows, cols):
    elem = ELEM_BYTES[dtype]
    for lead_bytes in leads(elem):
        # one block (every thread strides) and the blocks a real device gets (at most one vector each)
        for sms, blocks in ((1, 1), (SMS, BLOCKS_PER_SM)):
            plan = plan_of(native, rows, cols, elem, lead_bytes, sms=sms, blocks=blocks)
            assert plan["vec"] == 16 // elem and plan["line"] == 128 // elem and plan["lead"] == lead_bytes // elem
            check_rows(plan, elem, lead_bytes)
            for k in range(rows):
                count = touched(plan, k)
                assert set(count) <= {1}, f"lead {lead_bytes} B, row {k}: elements touched {sorted(set(count))} times"


@pytest.mark.parametrize("dtype", ELEM_BYTES)
@pytest.mark.parametrize("rows", (1, 4, 23))
@pytest.mark.parametrize("cols", HUGE)
def test_huge_rows_get_a_vector_body_and_a_few_waves(native, dtype, rows, cols):
    elem = ELEM_BYTES[dtype]
    for lead_bytes in leads(elem):
        plan = plan_of(native, rows, cols, elem, lead_bytes)
        check_rows(plan, elem, lead_bytes)
        most = WAVES * SMS * BLOCKS_PER_SM
        blocks = plan["grid_x"] * plan["grid_y"]
        assert plan["grid_y"] == rows and most - rows < blocks <= most, plan
        # every row's threads cover it in whole strides: at most one vector more per thread than the mean
        per_thread = plan["splits"][0][1] / plan["vec"] / (plan["grid_x"] * plan["block"])
        assert per_thread > 1


def test_rrdb23_takes_the_vector_path(native):
    """P = 16,624,131 is odd: before the plan, the whole buffer went down the scalar loop with one
    block per 256 elements (64,938 blocks per row)."""
    one = plan_of(native, 1, RRDB23, 4)
    assert one["vec"] == 4 and one["splits"] == [(0, RRDB23 - 3, 3)]
    assert one["grid_x"] * one["grid_y"] <= WAVES * SMS * BLOCKS_PER_SM < math.ceil(RRDB23 / 256)
    four = plan_of(native, 4, RRDB23, 4)  # P = 3 (mod 32): rows 1-3 start 3, 6, 9 elements into a line
    assert four["splits"] == [(0, RRDB23 - 3, 3), (29, RRDB23 - 31, 2), (26, RRDB23 - 27, 1), (23, RRDB23 - 23, 0)]
    assert four["grid_y"] == 4 and four["grid_x"] * 4 <= WAVES * SMS * BLOCKS_PER_SM


@pytest.mark.parametrize("cols", TINY + (64, 1000, 1024, 4097))
def test_small_buffers_get_no_idle_blocks(native, cols):
    plan = plan_of(native, 2, cols, 4)
    if cols == 0:
        assert plan["grid_x"] == plan["grid_y"] == 0  # nothing to launch
    else:
        assert plan["grid_x"] == max(1, math.ceil(cols // 4 / 256)) and plan["grid_y"] == 2


def test_more_rows_than_a_few_waves_get_one_block_each(native):
    plan = plan_of(native, 5000, 1031, 4, sms=2, blocks=4)
    assert plan["grid_x"] == 1 and plan["grid_y"] == 5000
    check_rows(plan, 4, 0)


@pytest.mark.parametrize("apart,line_bytes", [(1024, 128), (64, 64), (32, 32), (16, 16)])
def test_body_starts_on_the_longest_line_all_buffers_share(native, apart, line_bytes):
    """Buffers whose starts agree modulo 16 bytes but not 128 still get the vector body."""
    for lead_bytes in (0, 4, 12):
        plan = native.flat_launch_plan(
            4, 1031, 4, [4096 + lead_bytes + apart * i for i in range(4)], SMS, BLOCKS_PER_SM
        )
        assert plan["vec"] == 4 and plan["line"] == line_bytes // 4
        check_rows(plan, 4, lead_bytes % line_bytes, line_bytes)


def test_buffers_at_different_offsets_take_the_scalar_path(native):
    plan = native.flat_launch_plan(3, 1031, 4, [4096, 4100, 4096, 4096], SMS, BLOCKS_PER_SM)
    assert plan["vec"] == plan["line"] == 1 and plan["splits"] == [(0, 1031, 0)] * 3
    assert plan["grid_x"] == math.ceil(1031 / 256)
    plan = native.flat_launch_plan(1, 1031, 4, [4098], SMS, BLOCKS_PER_SM)  # not even element-aligned
    assert plan["vec"] == 1


@pytest.mark.parametrize("cols", (1024, 1031))
@pytest.mark.parametrize("side_rows", (1, 4))
@pytest.mark.parametrize("side_lead", (0, 4))
def test_meta_sources_are_vectors_only_when_they_line_up(native, cols, side_rows, side_lead):
    """The meta step: meta/exp_avg/exp_avg_sq are one row; its sources [K, P] are the side buffer."""
    plan = native.flat_launch_plan(
        1, cols, 4, [4096, 8192, 12288], SMS, BLOCKS_PER_SM, side=16384 + side_lead, side_rows=side_rows
    )
    assert plan["vec"] == 4 and plan["grid_y"] == 1
    assert plan["side_vec"] == (side_lead == 0 and (cols % 4 == 0 or side_rows == 1))


@pytest.mark.parametrize("rows", (1, 3))
@pytest.mark.parametrize("cols", (1024, 1031))
def test_sgd_base_is_read_in_vectors_only_when_it_lines_up(native, rows, cols):
    plan = native.flat_launch_plan(rows, cols, 4, [4096, 8192], SMS, BLOCKS_PER_SM, side=16384, side_rows=1)
    assert plan["side_vec"] == (cols % 4 == 0 or rows == 1)
    assert native.flat_launch_plan(rows, cols, 4, [4096, 8192], SMS, BLOCKS_PER_SM)["side_vec"]  # no base


@pytest.mark.parametrize(
    "args,match",
    [
        ((70000, 10, 4, [0]), "at most 65535 rows"),
        ((-1, 10, 4, [0]), "non-negative"),
        ((1, 10, 3, [0]), "element size must divide 16"),
        ((1, 10, 4, []), "at least one buffer"),
    ],
    ids=["rows", "negative", "elem", "buffers"],
)
def test_bad_plan_arguments_raise_with_a_sentence(native, args, match):
    with pytest.raises(ValueError, match=match):
        native.flat_launch_plan(*args, SMS, BLOCKS_PER_SM)
    with pytest.raises(ValueError, match="SM count"):
        native.flat_launch_plan(1, 10, 4, [0], 0, 1)


# ------------------------------------------------------------------------------------------- GPU
def offset_view(shape, dtype, offset, gen, device):
    """A fresh random [shape] tensor starting `offset` elements into its allocation."""
    n = math.prod(shape)
    flat = torch.randn(n + offset, generator=gen, dtype=dtype)
    return flat[offset:].view(shape).to(device) if device == "cpu" else flat.to(device)[offset:].view(shape)


def assert_matches_twin(cuda, cpu, what, dtype):
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-13, rtol=1e-11)
    for i, (a, b) in enumerate(zip(cuda, cpu)):
        a = a.cpu()
        bad = ~torch.isclose(a, b, **tol)
        assert not bad.any(), (
            f"{what}[{i}]: {int(bad.sum())}/{bad.numel()} elements differ from the CPU twin, "
            f"first at {tuple(int(j) for j in bad.nonzero()[0])}"
        )


GPU_COLS = TINY[1:] + (4093, 4094, 4095, 4096, 4097)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("rows", (1, 3, 4))
@pytest.mark.parametrize("cols", GPU_COLS)
def test_gpu_adam_every_remainder_and_offset_matches_the_twin(native, dtype, rows, cols):
    for offset in range(4):
        built = {}
        for device in ("cpu", "cuda"):
            gen = torch.Generator().manual_seed(cols * 7 + rows)
            p, g = (offset_view((rows, cols), dtype, offset, gen, device) for _ in range(2))
            m = offset_view((rows, cols), dtype, offset, gen, device) * 0.1
            v = offset_view((rows, cols), dtype, offset, gen, device).abs() * 0.01
            step = torch.full((rows,), 3.0, device=device)
            lr = torch.tensor([1e-3], dtype=torch.float64, device=device)
            scale = torch.tensor([2.0], device=device)
            torch.ops.dil_fast.adam_step_(p, g, m, v, step, lr, 0.9, 0.999, 1e-8, 0.01, True, None, scale)
            built[device] = (p, m, v)
        assert_matches_twin(built["cuda"], built["cpu"], f"adam {rows}x{cols} offset {offset}", dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("cols", GPU_COLS)
def test_gpu_meta_and_sgd_every_remainder_and_offset_match_the_twin(native, dtype, cols):
    for meta_offset, side_offset in ((0, 0), (1, 1), (0, 1), (3, 2)):
        built = {}
        for device in ("cpu", "cuda"):
            gen = torch.Generator().manual_seed(cols)
            meta = offset_view((cols,), dtype, meta_offset, gen, device)
            sources = offset_view((4, cols), dtype, side_offset, gen, device)
            m = offset_view((cols,), dtype, meta_offset, gen, device) * 0.1
            v = offset_view((cols,), dtype, meta_offset, gen, device).abs() * 0.01
            step, lr = torch.full((1,), 5.0, device=device), torch.tensor([1e-3], device=device)
            torch.ops.dil_fast.meta_step_(meta, sources, m, v, step, lr, 0.9, 0.999, 1e-8, 0.0, False, 0, True, None)
            p = offset_view((3, cols), dtype, meta_offset, gen, device)
            grad = offset_view((3, cols), dtype, meta_offset, gen, device)
            base = offset_view((cols,), dtype, side_offset, gen, device)
            torch.ops.dil_fast.sgd_step_(p, grad, torch.tensor([0.1, 0.2, 0.3], device=device), 0.01, base, None)
            built[device] = (meta, m, v, sources, p)
        assert_matches_twin(built["cuda"], built["cpu"], f"meta/sgd {cols} offsets {meta_offset}/{side_offset}", dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("rows", (1, 4))
def test_gpu_adam_at_rrdb23_size_matches_the_twin(native, rows):
    gen = torch.Generator().manual_seed(rows)
    state = [torch.randn(rows, RRDB23, generator=gen) for _ in range(4)]
    state[3] = state[3].abs() * 0.01
    cuda = [t.cuda() for t in state]
    for p, g, m, v in (state, cuda):
        step = torch.zeros(rows, device=p.device)
        lr = torch.tensor([1e-3], device=p.device)
        torch.ops.dil_fast.adam_step_(p, g, m, v, step, lr, 0.9, 0.999, 1e-8, 0.0, False, None, None)
    assert_matches_twin(
        [cuda[0], cuda[2], cuda[3]], [state[0], state[2], state[3]], f"adam {rows}x{RRDB23}", torch.float32
    )
