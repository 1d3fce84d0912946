"""Evaluation levels: confounder lists, sweep ranges, training ranges read from a run's config."""

from __future__ import annotations

import pytest

from dil_fast.degrade import JPEG, GaussianBlur, GaussianNoise, Resize
from dil_fast.errors import FlagError
from dil_fast.eval import as_level, noise_level, parse_levels, parse_sweep, training_range


def test_parse_levels_one_per_value():
    levels = parse_levels("noise:30,40.0;blur:4.2;hybrid:Mild;jpeg:10;bicubic:4")
    assert [lv.name for lv in levels] == ["noise:30", "noise:40", "blur:4.2", "hybrid:mild", "jpeg:10", "bicubic:4"]
    assert [lv.folder for lv in levels][:3] == ["noise-30", "noise-40", "blur-4.2"]
    assert isinstance(levels[0].spec, GaussianNoise) and levels[0].numpy_sigma == 30.0
    assert isinstance(levels[2].spec, GaussianBlur) and levels[2].numpy_sigma is None
    assert isinstance(levels[4].spec, JPEG) and isinstance(levels[5].spec, Resize)
    assert [lv.value for lv in levels] == [30.0, 40.0, 4.2, None, 10.0, 4.0]
    assert [lv.name for lv in parse_levels("5,10")] == ["noise:5", "noise:10"]  # bare numbers: noise


def test_parse_levels_expands_realsr_and_refuses_bad_lists():
    realsr = parse_levels("realsr:1")
    assert len(realsr) == 4 and all(lv.family == "realsr" for lv in realsr)
    assert len({lv.level for lv in realsr}) == 4
    with pytest.raises(FlagError, match="--confounders: .*listed more than once"):
        parse_levels("noise:30,30.0")
    with pytest.raises(FlagError, match="^--confounders: .*'blur:x'"):
        parse_levels("blur:x")
    with pytest.raises(FlagError, match="unknown confounder family"):
        parse_levels("sharpen:2")


def test_as_level_forms():
    assert as_level(50).name == "noise:50" and as_level(50).numpy_sigma == 50.0
    assert as_level("noise:50") == noise_level(50.0)
    assert as_level("blur:5").spec == GaussianBlur(5.0)
    assert as_level(GaussianNoise(25.0)).numpy_sigma == 25.0  # plain noise takes the numpy path however given
    assert as_level(GaussianNoise((5.0, 10.0))).numpy_sigma is None  # a drawn sigma is not the released path
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="finite number >= 0"):
            as_level(bad)
    with pytest.raises(ValueError, match="names 2 levels"):
        as_level("noise:10,20")


def test_parse_sweep_ranges_and_lists():
    assert [lv.level for lv in parse_sweep("noise:5:70:5")] == [str(v) for v in range(5, 71, 5)]
    assert [lv.level for lv in parse_sweep("blur:0.1:0.5:0.1")] == ["0.1", "0.2", "0.3", "0.4", "0.5"]
    assert [lv.level for lv in parse_sweep("noise:5:12:5")] == ["5", "10"]  # stop inclusive only when reached
    assert [lv.name for lv in parse_sweep("jpeg:10,30")] == ["jpeg:10", "jpeg:30"]
    assert [lv.level for lv in parse_sweep("noise:7:7:1")] == ["7"]


@pytest.mark.parametrize(
    "text, match",
    [
        ("noise:5:70:0", "step > 0"),
        ("noise:70:5:5", "start <= stop"),
        ("noise:5:nan:5", "finite"),
        ("noise:a:b:c", "numbers"),
        ("hybrid:mild,severe", "numeric level"),
        ("noise:5;blur:1", "one family"),
        ("noise:0:100000:1", "at most"),
        ("jpeg:10.5:20:1", "jpeg"),
    ],
)
def test_parse_sweep_errors(text, match):
    with pytest.raises(FlagError, match=match) as info:
        parse_sweep(text)
    assert str(info.value).startswith("--sweep") and "\n" not in str(info.value)


def test_training_range_from_config():
    assert training_range({"levels": [5.0, 10.0, 15.0, 20.0]}, "noise") == (5.0, 20.0)
    assert training_range({"levels": [5.0, 20.0]}, "gaussian") == (5.0, 20.0)  # one distortion, two names
    assert training_range({"levels": [5.0], "confounders": "blur:1,2,3,4"}, "blur") == (1.0, 4.0)
    assert training_range({"levels": [5.0], "confounders": "blur:1,2,3,4"}, "noise") is None
    assert training_range({"confounders": "noise:15;blur:2,3"}, "noise") == (15.0, 15.0)
    assert training_range({"task": "jpeg"}, "jpeg") == (40.0, 70.0)
    assert training_range(None, "noise") is None
    assert training_range({"confounders": "not a spec:1"}, "noise") is None
