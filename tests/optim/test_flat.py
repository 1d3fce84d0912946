"""FlatParams / StackedParams invariants."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from dil_fast.optim import FlatParams, StackedParams


def small_net():
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(5, 3, 3, padding=1))


def backward(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 5, 5, generator=g)
    model(x).square().mean().backward()


def test_params_are_views_in_order_and_values_kept():
    net = small_net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    ids = [id(p) for p in net.parameters()]
    flat = FlatParams(net)
    assert [id(p) for p in net.parameters()] == ids, "the Parameter objects must be kept"
    assert flat.numel == sum(p.numel() for p in net.parameters()) == flat.data.numel()
    pos = 0
    for (n, p), off in zip(net.named_parameters(), flat.buckets[0].offsets):
        assert off == pos
        assert p.data_ptr() == flat.data[pos:].data_ptr()
        assert torch.equal(p, before[n])
        pos += p.numel()
    assert flat.intact()
    flat.data.add_(1.0)  # writes through to the model
    assert torch.equal(net[0].bias, before["0.bias"] + 1)


def test_backward_accumulates_into_flat_grad():
    net = small_net()
    ref = copy.deepcopy(net)
    flat = FlatParams(net)
    backward(net)
    backward(ref)
    assert torch.equal(flat.grad, torch.cat([p.grad.reshape(-1) for p in ref.parameters()]))
    assert flat.intact()


def test_zero_grad_set_to_none_is_repaired_by_sync():
    net = small_net()
    ref = copy.deepcopy(net)
    flat = FlatParams(net)
    backward(net)
    net.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in net.parameters())
    backward(net, seed=1)  # fresh grad tensors, not views
    backward(ref, seed=1)
    assert not flat.intact()
    flat.sync()
    assert flat.intact()
    assert torch.equal(flat.grad, torch.cat([p.grad.reshape(-1) for p in ref.parameters()]))
    # a parameter without a gradient gets a zeroed view (a missing gradient is a zero in the buffer)
    net.zero_grad(set_to_none=True)
    net[2].weight.grad = torch.ones_like(net[2].weight)
    flat.sync()
    assert flat.intact() and net[0].weight.grad is not None and not net[0].weight.grad.any()
    b = flat.buckets[0]
    assert torch.count_nonzero(flat.grad) == net[2].weight.numel()
    assert torch.equal(b.segment(flat.grad, 2), torch.ones_like(net[2].weight))
    flat.zero_grad()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in net.parameters())
    assert flat.intact()
    # without attached gradients a missing one stays None (its segment still zero)
    loose = FlatParams(small_net(), attach_grads=False)
    loose.params[0].grad = None
    loose.params[2].grad = torch.ones_like(loose.params[2])
    loose.sync()
    assert loose.params[0].grad is None and torch.count_nonzero(loose.grad) == loose.params[2].numel()


def test_refresh_is_o1_and_repairs_what_module_calls_break():
    net = small_net()
    flat = FlatParams(net)
    backward(net)
    flat.refresh()
    assert flat.intact()
    net.zero_grad()  # nn.Module's default sets every grad to None: the sentinels see it
    backward(net, seed=1)
    assert not flat.intact()
    flat.refresh()
    assert flat.intact()
    want = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    assert torch.equal(flat.grad, want)


def test_state_dict_round_trip_keeps_views():
    net = small_net()
    flat = FlatParams(net)
    sd = copy.deepcopy(net.state_dict())
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    flat.data.normal_()
    net.load_state_dict(sd)  # in-place copies: the views survive
    assert flat.intact()
    assert torch.equal(flat.data, torch.cat([t.reshape(-1) for t in sd.values()]))
    buf.seek(0)
    loaded = torch.load(buf)
    fresh = small_net()
    fresh.load_state_dict(loaded)  # a flat model's checkpoint loads into a plain model
    for a, b in zip(fresh.parameters(), net.parameters()):
        assert torch.equal(a, b)
    own = flat.state_dict()
    flat.data.zero_()
    flat.load_state_dict(own)
    assert torch.equal(flat.data, torch.cat([t.reshape(-1) for t in sd.values()]))


def test_module_to_and_param_data_replacement_are_repaired():
    net = small_net()
    flat = FlatParams(net)
    net[0].weight.data = net[0].weight.data * 2  # a replaced tensor
    net.float()  # no-op cast keeps views
    assert not flat.intact()
    flat.sync()
    assert flat.intact()
    assert torch.equal(flat.buckets[0].segment(flat.data, 0), net[0].weight)


def test_flat_to_dtype_moves_buffers_and_repoints():
    net = small_net()
    flat = FlatParams(net)
    backward(net)
    vals = flat.data.clone()
    grads = flat.grad.clone()
    flat.to(torch.float64)
    assert flat.data.dtype == torch.float64 and all(p.dtype == torch.float64 for p in net.parameters())
    assert flat.intact()
    assert torch.equal(flat.data, vals.double()) and torch.equal(flat.grad, grads.double())
    out = net(torch.randn(1, 3, 4, 4, dtype=torch.float64))
    assert out.dtype == torch.float64


@pytest.mark.gpu
def test_flat_to_cuda_and_back():
    net = small_net()
    flat = FlatParams(net)
    vals = flat.data.clone()
    flat.to("cuda")
    assert flat.data.is_cuda and all(p.is_cuda for p in net.parameters()) and flat.intact()
    flat.to("cpu")
    assert torch.equal(flat.data, vals) and flat.intact()


def test_mixed_dtypes_make_buckets_and_adoption_without_copy():
    a = nn.Parameter(torch.randn(3))
    b = nn.Parameter(torch.randn(5, dtype=torch.float64))
    c = nn.Parameter(torch.randn(2))
    flat = FlatParams([a, b, c])
    assert len(flat.buckets) == 2
    with pytest.raises(ValueError):
        flat.data
    assert flat.buckets[0].data.numel() == 5 and flat.buckets[1].data.numel() == 5
    # flattening the same (already tiled) parameters again adopts the buffers: no copy
    again = FlatParams([a, b, c])
    assert again.buckets[0].data.data_ptr() == flat.buckets[0].data.data_ptr()
    assert again.buckets[0].grad.data_ptr() == flat.buckets[0].grad.data_ptr()


def test_stacked_params_rows_and_functional_call():
    net = small_net()
    st = FlatParams.stacked(net, 3)
    assert isinstance(st, StackedParams) and st.data.shape == (3, sum(p.numel() for p in net.parameters()))
    x = torch.randn(2, 3, 5, 5)
    expect = net(x)
    for k in range(3):
        out = torch.func.functional_call(net, st.row(k), (x,))
        assert torch.equal(out, expect)
    st.data[1].add_(0.5)
    assert torch.equal(st.row(1)["0.bias"], net[0].bias.detach() + 0.5)
    batched = st.params_dict()
    assert batched["2.weight"].shape == (3, *net[2].weight.shape)
    flat = FlatParams(net)
    st.broadcast_(flat.data)
    assert torch.equal(st.data, flat.data.expand(3, -1))
    st.load_row(2, torch.zeros_like(flat.data))
    assert st.data[2].abs().sum() == 0 and st.grad.shape == st.data.shape


def test_channels_last_weights_keep_their_layout_in_the_flat_buffer():
    """A 4-D weight in channels_last occupies its segment in NHWC order and keeps NHWC strides;
    gradients land there in the same order, and a copy of the model flattens to the same layout."""
    net = small_net().to(memory_format=torch.channels_last)
    ref = copy.deepcopy(net)  # the same layout, not flattened
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    flat = FlatParams(net)
    b = flat.buckets[0]
    assert b.layouts == ["channels_last", "contiguous", "channels_last", "contiguous"]
    for i, (n, p) in enumerate(net.named_parameters()):
        assert torch.equal(p, before[n])
        seg = flat.data[b.offsets[i] : b.offsets[i] + p.numel()]
        if p.dim() == 4:
            assert p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            assert torch.equal(seg, p.detach().permute(0, 2, 3, 1).reshape(-1))
    backward(net)
    backward(ref)
    for i, ((n, p), q) in enumerate(zip(net.named_parameters(), ref.parameters())):
        assert torch.equal(p.grad, q.grad), n
        assert p.grad.data_ptr() == flat.grad[b.offsets[i] :].data_ptr()
    assert flat.intact()
    again = FlatParams(copy.deepcopy(net))
    assert again.buckets[0].layouts == b.layouts and torch.equal(again.data, flat.data)
    # a state_dict is values; loading one of NCHW tensors keeps the NHWC views
    flat.load_state_dict({n: t.contiguous() * 2 for n, t in flat.state_dict().items()})
    assert all(torch.equal(p, before[n] * 2) for n, p in net.named_parameters()) and flat.intact()
