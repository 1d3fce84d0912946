"""dil_fast.registry and the extension points that use it: a toy variant, a toy confounder family
and a toy architecture, each one file under tests/plugins/, train and evaluate from the command line
with ``--plugin`` and no edit anywhere else; the built-in lists come from the registries."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from dil_fast.errors import FlagError
from dil_fast.registry import Registry, UnknownEntry, load_plugins
from tests.conftest import make_png_folder
from tests.helpers import train_argv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGINS = [
    "--plugin",
    "tests.plugins.toy_variant",
    "--plugin",
    "tests.plugins.toy_family",
    "--plugin=tests.plugins.toy_arch",
]


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "dil_fast", *args], capture_output=True, text=True, env=env, timeout=300, cwd=REPO
    )


def test_registry_names_facts_aliases_and_refusals():
    reg = Registry("widget", "--widget")

    @reg.register("a", aliases=("alpha",), size=3)
    def make_a():
        return "A"

    reg.register("b", str, size=1)
    assert reg.names() == ("a", "b") and reg.names(aliases=True) == ("a", "alpha", "b")
    assert reg["alpha"].obj is make_a and reg["a"]() == "A" and reg["a"].size == 3 and "alpha" in reg
    assert list(reg) == ["a", "b"] and reg.where(lambda e: e.size > 2) == ("a",)
    with pytest.raises(UnknownEntry, match=r"--widget must be one of a, b, got 'c'"):
        reg["c"]
    with pytest.raises(ValueError, match="registered already"):
        reg.register("alpha", int)
    with pytest.raises(AttributeError, match="no fact 'colour'"):
        reg["b"].colour
    reg.unregister("a")
    assert "alpha" not in reg and reg.names() == ("b",)
    with pytest.raises(FlagError, match=r"--plugin no_such_module_x: cannot import it"):
        load_plugins(["no_such_module_x"])


def test_builtin_lists_come_from_the_registries():
    from dil_fast.degrade import FAMILIES
    from dil_fast.eval.levels import NUMERIC_FAMILIES
    from dil_fast.meta import VARIANTS
    from dil_fast.models import ARCHS
    from dil_fast.train.flags import variant_option_fields

    assert VARIANTS.names() == ("sf", "pf", "ss", "ss-fo", "ps", "erm")
    assert VARIANTS["sf"].ops == ("adam_step", "meta_step") and VARIANTS["sf"].released is not None
    assert VARIANTS.where(lambda e: e.trains_module_forward) == ("sf", "pf", "erm")
    assert set(variant_option_fields()) == {"query", "virtual_batching", "alpha", "inner_optimizer"}
    assert {"noise", "gaussian", "blur", "jpeg", "poisson", "bicubic"} == set(NUMERIC_FAMILIES)
    assert {"hybrid", "rain", "isp", "realesrgan", "realsr"} <= set(FAMILIES)
    assert FAMILIES["noise"].fused.op == "noise" and FAMILIES["blur"].fused.op == "blur_separable"
    assert ARCHS.names() == ("rrdb", "rrdb_x4", "rrdb_basicsr", "swinir") and ARCHS["rrdb"].size_flags == (
        "nf",
        "nb",
        "gc",
    )


def test_a_variant_option_given_to_a_variant_without_it_is_refused(tmp_path):
    done = _cli("train", "--ckpt_save", str(tmp_path / "x"), "--trainset", str(tmp_path), "--alpha", "1e-3")
    assert done.returncode == 2 and done.stderr.strip() == (
        "error: --alpha applies to --variant ss, ss-fo, ps; --variant sf has no such option"
    )
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_toy_variant_family_and_architecture_train_and_evaluate_from_the_command_line(tmp_path):
    make_png_folder(tmp_path / "train", n=6, size=24, seed=1)
    make_png_folder(tmp_path / "test", n=2, size=20, seed=2)
    helped = _cli(*PLUGINS, "train", "--help")
    assert helped.returncode == 0 and "toy" in helped.stdout and "--toy_momentum" in helped.stdout
    run = tmp_path / "run"
    toy = (
        "--variant",
        "toy",
        "--toy_momentum",
        "0.5",
        "--loader",
        "folder",
        "--confounders",
        "toyshift:10,20",
        "--test_confounders",
        "toyshift:30",
        "--arch",
        "toynet",
        "--arch_kwargs",
        '{"width": 6}',
        "--print_every",
        "1",
        "--lr",
        "1e-3",
    )
    trained = _cli(*PLUGINS, *train_argv(tmp_path / "train", tmp_path / "test", run, *toy, size=()))
    assert trained.returncode == 0, trained.stderr
    log = (run / "train.log").read_text()
    assert "toyshift10" in log and "toyshift20" in log and "psnr" in log
    ckpt = torch.load(run / "model_1.pt", weights_only=True)
    assert ckpt["model_meta"]["head.weight"].shape[0] == 6
    # eval recognises the toy architecture from the checkpoint's keys and degrades at the toy levels
    evaluated = _cli(
        *PLUGINS,
        "eval",
        "--ckpt",
        str(run / "model_1.pt"),
        "--testset",
        str(tmp_path / "test"),
        "--save",
        str(tmp_path / "ev"),
        "--confounders",
        "toyshift:30,40",
        "--device",
        "cpu",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    rows = list(csv.DictReader(open(tmp_path / "ev" / "results.csv")))
    assert {r["level"] for r in rows} == {"30", "40"} and all(float(r["psnr"]) > 0 for r in rows)
    # without the plugins the names are unknown: one line naming the flag
    plain = _cli(
        "train", "--trainset", str(tmp_path / "train"), "--ckpt_save", str(tmp_path / "r2"), "--variant", "toy"
    )
    assert plain.returncode == 2 and "--variant" in plain.stderr and "invalid choice" in plain.stderr
