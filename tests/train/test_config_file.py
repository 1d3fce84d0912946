"""``dil-fast train --config FILE``: JSON/YAML flag values under the command line, a run's
options.json repeats the run, bad files end with one line naming the file."""

from __future__ import annotations

import json

import pytest

from dil_fast.cli import _with_config_file, build_parser, main
from dil_fast.train import TrainConfig
from tests.conftest import make_png_folder
from tests.helpers import RRDB_NF4, train_argv


def _config_of(argv):
    parser = build_parser()
    return TrainConfig.from_args(_with_config_file(parser, argv))


def test_file_values_are_read_and_the_command_line_wins(tmp_path):
    f = tmp_path / "exp.json"
    f.write_text(
        json.dumps(
            {
                "patch_size": 96,
                "levels": [5, 25],
                "no_tensorboard": True,
                "y": False,
                "channels_last": False,
                "variant": "pf",
                "query": "split",
                "num-workers": 3,
                "arch_kwargs": {"nf": 8},
                "distributed": False,
                "resume": None,
            }
        )
    )
    cfg = _config_of(["train", "--config", str(f), "--ckpt_save", "out", "--patch_size", "48"])
    assert cfg.patch_size == 48  # the command line wins
    assert cfg.levels == (5.0, 25.0) and cfg.tensorboard is False and cfg.y is False
    assert cfg.channels_last is False and cfg.variant == "pf" and cfg.variant_options["query"] == "split"
    assert cfg.num_workers == 3 and json.loads(cfg.arch_kwargs) == {"nf": 8} and cfg.resume is None
    plain = _config_of(["train", "--ckpt_save", "out"])
    assert plain.patch_size == 64 and plain.tensorboard is True and plain.channels_last is None


def test_yaml_files_are_read(tmp_path):
    pytest.importorskip("yaml")
    f = tmp_path / "exp.yaml"
    f.write_text("batch_size: 4\nlevels: [10, 20]\ny: true\n")
    cfg = _config_of(["train", "--ckpt_save", "out", "--config", str(f)])
    assert cfg.batch_size == 4 and cfg.levels == (10.0, 20.0) and cfg.y is True


def test_a_runs_options_json_repeats_the_run(tmp_path):
    make_png_folder(tmp_path / "train", n=4, size=20, seed=1)
    make_png_folder(tmp_path / "test", n=1, size=16, seed=2)
    flags = ("--levels", "5,15", "--variant", "ss", "--alpha", "0.01", "--print_every", "1")
    first = train_argv(tmp_path / "train", tmp_path / "test", tmp_path / "a", *flags, size=RRDB_NF4)
    assert main(first) == 0
    options = tmp_path / "a" / "options.json"
    again = _config_of(["train", "--config", str(options), "--ckpt_save", str(tmp_path / "b")])
    before = json.loads(options.read_text())["config"]
    after = again.to_dict()
    assert after.pop("ckpt_save") == str(tmp_path / "b") and before.pop("ckpt_save") == str(tmp_path / "a")
    assert after == before


@pytest.mark.parametrize(
    "content,says",
    [
        ('{"patch_sise": 32}', "'patch_sise' is not a flag of dil-fast train"),
        ('{"patch_size": "big"}', "argument --patch_size: invalid int value: 'big'"),
        ('{"variant": "xx"}', "argument --variant: invalid choice: 'xx'"),
        ('{"no_tensorboard": "yes"}', "no_tensorboard is a switch; give true or false"),
        ('{"config": "other.json"}', "a config file cannot name another --config"),
        ("[1, 2]", "expected a mapping of flag names to values"),
        ('{"patch_size": 32', "not valid JSON"),
    ],
)
def test_a_bad_file_ends_with_one_line_naming_it(tmp_path, capsys, content, says):
    f = tmp_path / "bad.json"
    f.write_text(content)
    rc = main(["train", "--config", str(f), "--ckpt_save", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: --config {f}: ") and says in err, err
    assert not (tmp_path / "out").exists()


def test_a_missing_file_is_named(tmp_path, capsys):
    rc = main(["train", "--config", str(tmp_path / "nope.json"), "--ckpt_save", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"error: --config {tmp_path / 'nope.json'}: no such file\n"
