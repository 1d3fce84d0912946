"""The camera-noise confounder spec: every stage through counterfactual, reproducibility, batch-split
independence, names, serialisation, validation, the forced-backend refusal and the CLI family."""

from __future__ import annotations

import json

import pytest
import torch

from dil_fast import backends
from dil_fast.degrade import CameraNoise, confounder_ops, counterfactual, parse_confounders, spec_from_dict
from dil_fast.ops.reference.isp import ISP_STAGES
from dil_fast.tasks import TASKS

SPECS = [CameraNoise(stage) for stage in ISP_STAGES]


def _clean(b=4, h=17, w=23):
    # a smooth image (as natural patches are) so the pipeline's demosaicking error stays small
    rows = torch.linspace(0.1, 0.9, h).reshape(1, 1, -1, 1)
    cols = torch.linspace(0.2, 0.8, w).reshape(1, 1, 1, -1)
    tint = torch.rand(b, 3, 1, 1) * 0.2
    return (0.5 * rows + 0.4 * cols + tint).clamp(0, 1)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_each_stage_runs_through_counterfactual(spec):
    x = _clean()
    y = counterfactual(x, [spec], seed=3, step=7)
    assert y.shape == (1, *x.shape) and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1
    assert 0.005 < (y[0] - x).abs().mean() < 0.2  # noisy, still the image
    assert torch.equal(y, counterfactual(x, [spec], seed=3, step=7))
    assert not torch.equal(y, counterfactual(x, [spec], seed=3, step=8))
    assert not torch.equal(y, counterfactual(x, [spec], seed=4, step=7))


def test_the_stages_are_different_distortions_of_the_same_batch():
    x = _clean()
    y = counterfactual(x, SPECS, seed=0, step=0)
    assert y.shape == (len(SPECS), *x.shape)
    for i in range(len(SPECS)):
        for j in range(i):
            assert not torch.allclose(y[i], y[j]), (SPECS[i].name, SPECS[j].name)


def test_a_sample_does_not_depend_on_its_batch_split():
    x = _clean(b=5)
    whole = counterfactual(x, SPECS, seed=11, step=2, sample_offset=100)
    parts = torch.cat(
        [
            counterfactual(x[:2], SPECS, seed=11, step=2, sample_offset=100),
            counterfactual(x[2:], SPECS, seed=11, step=2, sample_offset=102),
        ],
        dim=1,
    )
    assert torch.equal(whole, parts)


def test_names_are_distinct_and_ops_name_the_jpeg_stage():
    assert len({s.name for s in SPECS}) == len(SPECS)
    assert [s.name for s in SPECS] == ["isp-raw", "isp-linear", "isp-srgb", "isp-jpeg", "isp-mixed"]
    assert {s.stage: s.ops() for s in SPECS} == {
        "raw": ("isp",),
        "linear": ("isp",),
        "srgb": ("isp",),
        "jpeg": ("isp", "jpeg"),
        "mixed": ("isp", "jpeg"),
    }
    assert confounder_ops(SPECS) == ("isp", "jpeg")


def test_to_dict_round_trips():
    specs = [*SPECS, CameraNoise("raw", shot=0.05, read=(0.01, 0.02), gamma=2.2, jpeg_quality=80)]
    for s in specs:
        d = s.to_dict()
        assert d["type"] == "camera_noise"
        assert spec_from_dict(d) == s
        assert spec_from_dict(json.loads(json.dumps(d))) == s


def test_fixed_parameters_draw_nothing_per_sample():
    """Fixed shot/read/gamma: samples of a flat image differ only by their noise fields."""
    x = torch.full((2, 3, 16, 16), 0.5)
    spec = CameraNoise("srgb", shot=0.0, read=0.0, gamma=2.2)
    y = counterfactual(x, [spec], seed=0, step=0)[0]
    assert (y - x).abs().max() < 1e-6  # zero noise: the pipeline is exact on a flat image


def test_bad_stage_and_ranges_are_one_line_value_errors():
    for kw, match in (
        (dict(stage="sensor"), "CameraNoise.stage must be one of raw, linear, srgb, jpeg, mixed"),
        (dict(stage="raw", shot=(0.2, 0.1)), "CameraNoise.shot"),
        (dict(stage="raw", gamma=0.5), "CameraNoise.gamma"),
        (dict(stage="jpeg", jpeg_quality=(0, 100)), "CameraNoise.jpeg_quality"),
    ):
        with pytest.raises(ValueError, match=match) as exc:
            CameraNoise(**kw)
        assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="bad isp confounder 'sensor'") as exc:
        parse_confounders("isp:raw,sensor")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[3]], ids=lambda s: s.name)
def test_a_forced_triton_backend_is_refused_naming_isp(spec):
    x = _clean(b=1, h=8, w=8)
    refusal = r"isp: backend 'triton' cannot serve cpu tensors \(no implementation\)"
    with pytest.raises(backends.BackendError, match=refusal):
        counterfactual(x, [spec], seed=0, step=0, backend="triton")
    with pytest.raises(backends.BackendError, match="isp"):
        backends.check_forced(confounder_ops([spec]), "cpu", "triton")


def test_parse_confounders_isp_family_gives_the_task_confounders():
    train = parse_confounders("isp:raw,linear,srgb,jpeg")
    assert train == SPECS[:4]
    assert parse_confounders("isp:mixed") == [CameraNoise("mixed")]
    assert parse_confounders("ISP:Raw") == [CameraNoise("raw")]
    task = TASKS["realnoise"]
    assert parse_confounders(task.confounders) == train
    assert [c.name for c in parse_confounders(task.eval_levels)] == [s.name for s in SPECS]
