"""``dil-fast train --config FILE``: flag values from a JSON or YAML file; the command line wins.

A file is a mapping of flag names to values, spelled as on the command line without the dashes
(``patch_size: 96``; ``num-workers`` and ``--num_workers`` are accepted too). Lists give the
values of a many-valued flag (``levels: [5, 10, 15, 20]``); ``true``/``false`` pick a switch
(``no_tensorboard: true``; ``channels_last: false`` is ``--no_channels_last``); ``null`` leaves
the default. A run folder's ``options.json`` / ``options.yaml`` is accepted as it is: its
``config`` section (the resolved flags of that run) is read, so ``--config run/options.json``
repeats a run.

The values are turned into command-line words placed *before* the real command line, so argparse
converts and checks them exactly as typed flags, and a flag given on the command line (coming
later) overrides the file's.
"""

from __future__ import annotations

import argparse
import json
import os

from ..errors import FlagError, InputError

# options.json keys (TrainConfig fields) that are not flag names, and the flag they come from
_FIELD_TO_FLAG = {"tensorboard": ("no_tensorboard", lambda v: not v), "progress": ("no_progress", lambda v: v is False)}
_NOT_FLAGS = {"variant_options"}  # flattened into their flags (alpha, query, ...)


def read_config_file(path: str) -> dict:
    """The flag values of a JSON/YAML file (``options.json`` of a run: its ``config`` section)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise InputError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    if path.lower().endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise InputError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml), or give JSON") from None
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise InputError(f"--config {path}: not valid YAML ({' '.join(str(exc).split())[:160]})") from None
    else:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"--config {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"--config {path}: expected a mapping of flag names to values, got {type(data).__name__}")
    if isinstance(data.get("config"), dict) and "resolved" in data:  # a run's options.json
        data = _flags_of_options(data["config"])
    return data


def _flags_of_options(config: dict) -> dict:
    flags = {}
    for key, value in config.items():
        if key in _FIELD_TO_FLAG:
            name, convert = _FIELD_TO_FLAG[key]
            flags[name] = convert(value)
        elif key in _NOT_FLAGS:
            flags.update(value or {})
        else:
            flags[key] = value
    if flags.get("backend") is None:
        flags.pop("backend", None)
    return flags


def _actions_by_dest(parser: argparse.ArgumentParser) -> dict[str, list[argparse.Action]]:
    by_dest: dict[str, list[argparse.Action]] = {}
    for action in parser._actions:  # argparse keeps its actions here; there is no public listing
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            by_dest.setdefault(action.dest, []).append(action)
    return by_dest


def _option_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``name without dashes (and with _ for -)`` -> dest, for every option spelling."""
    names = {}
    for action in parser._actions:
        for opt in action.option_strings:
            names[opt.lstrip("-").replace("-", "_")] = action.dest
    return names


def config_words(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """The command-line words that set the flags of ``path`` (checked against ``parser``)."""
    values = read_config_file(path)
    by_dest, names = _actions_by_dest(parser), _option_names(parser)
    words: list[str] = []
    for key, value in values.items():
        name = str(key).lstrip("-").replace("-", "_")
        dest = names.get(name)
        if dest is None or dest == "config":
            raise FlagError(
                f"--config {path}: {key!r} is not a flag of dil-fast train"
                if dest is None
                else f"--config {path}: a config file cannot name another --config"
            )
        if value is None:
            continue
        actions = by_dest[dest]
        if isinstance(actions[0], (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)):
            if not isinstance(value, bool):
                raise FlagError(f"--config {path}: {key} is a switch; give true or false, not {value!r}")
            # the spelling named in the file means "on" (no_tensorboard: true); its partner (--rgb for y) the rest
            chosen = [a for a in actions if a.const == value]
            if not chosen and len(actions) == 1 and actions[0].const == (not value):
                continue  # a plain switch set to its default
            if not chosen:
                raise FlagError(f"--config {path}: {key} cannot be {value!r}")
            words.append(chosen[0].option_strings[0])
            continue
        opt = (
            actions[0].option_strings[-1]
            if actions[0].option_strings[-1].startswith("--")
            else actions[0].option_strings[0]
        )
        many = actions[0].nargs in ("+", "*") or isinstance(actions[0].nargs, int)
        if isinstance(value, dict):
            items = [json.dumps(value)]  # --arch_kwargs
        elif isinstance(value, (list, tuple)):
            # a one-word flag that takes a comma list (--levels 5,10,15,20)
            items = [str(v) for v in value] if many else [",".join(str(v) for v in value)]
        else:
            items = [str(value)]
        if not items or items == [""]:
            continue
        words.append(opt)
        words.extend(items)
    return words


def check_config_words(path: str, parser: argparse.ArgumentParser, words: list[str]) -> None:
    """Parse the file's words alone, so a bad value is reported naming the file."""
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:  # the same options, with an error that raises instead of exiting
        if action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            probe._add_action(action)

    def fail(message):
        raise FlagError(f"--config {path}: {message}")

    probe.error = fail
    probe.parse_args(words)


def with_config_file(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``argv`` (the words after ``train``) with the words of its ``--config FILE`` placed first."""
    path = None
    for i, word in enumerate(argv):
        if word == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif word.startswith("--config="):
            path = word.split("=", 1)[1]
    if path is None:
        return list(argv)
    if not os.path.isfile(path):
        raise InputError(f"--config {path}: no such file")
    words = config_words(path, parser)
    check_config_words(path, parser, words)
    return words + list(argv)
