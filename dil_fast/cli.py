"""``dil-fast`` (also ``python -m dil_fast``): train, eval, restore, crop, pack, bench, study, convert, info, demo.

Errors caused by the user's input print one line, ``error: <what, naming the file or flag>``, and
exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import copy
import sys

from ._version import __version__
from .errors import DilFastError


def add_train_parser(sub) -> argparse.ArgumentParser:
    from .train.flags import add_train_arguments

    p = sub.add_parser(
        "train",
        help="train a restoration model with DIL (drop-in for DIL_sf_noise.py)",
        description="Flags of the released trainer keep their names and defaults.",
    )
    add_train_arguments(p)
    add_plugin_argument(p)
    p.set_defaults(func=run_train)
    return p


def run_train(args) -> int:
    from .train import TrainConfig, Trainer

    return Trainer(TrainConfig.from_args(args)).run()


def add_info_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="versions, native core, Triton and GPU this installation uses")
    p.set_defaults(func=run_info)
    return p


def run_info(_args) -> int:
    from ._info import collect, format_info

    print(format_info(collect()))
    return 0


def add_demo_parser(sub) -> argparse.ArgumentParser:
    from .demo import add_demo_arguments

    p = sub.add_parser("demo", help="a short DIL training on built-in sample images, then PSNR at seen/unseen noise")
    add_demo_arguments(p)
    return p


class _HelpWithDefaults(argparse.HelpFormatter):
    """``--help`` that ends every option's text with ``(default: X)``, also for options defined
    without a help text, unless the text already states a default or there is none to state
    (``None``, a switch's ``False``)."""

    @staticmethod
    def _states_no_default(action) -> bool:
        d = action.default
        return (
            not action.option_strings
            or d is None
            or d is argparse.SUPPRESS
            or isinstance(d, bool)
            or "default" in (action.help or "").lower()
        )

    def _get_help_string(self, action):
        if self._states_no_default(action):
            return action.help
        return f"{action.help} (default: %(default)s)" if action.help else "default: %(default)s"

    def add_argument(self, action):
        if not action.help and not self._states_no_default(action):
            action = copy.copy(action)  # argparse prints no help column for an option without help
            action.help = self._get_help_string(action)
        super().add_argument(action)


class _OneLineErrors(argparse.ArgumentParser):
    """Usage errors as one line (``error: dil-fast train: argument --x: ...``), exit status 2; the
    parser class of every sub-command too, so they all get :class:`_HelpWithDefaults`."""

    def __init__(self, *args, formatter_class=_HelpWithDefaults, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


PLUGIN_HELP = (
    "import MODULE before anything else (repeatable): a module of one's own that registers DIL variants "
    "(dil_fast.meta.register_variant), confounder families (dil_fast.degrade.register_family) or "
    "architectures (dil_fast.models.register_arch)"
)


def add_plugin_argument(p: argparse.ArgumentParser) -> None:
    """``--plugin MODULE``: read by :func:`plugins_in` before the parser is built (the flags and
    choices come from the registries); declared here so argparse accepts it."""
    p.add_argument("--plugin", action="append", default=None, metavar="MODULE", help=PLUGIN_HELP)


def plugins_in(argv: list[str]) -> list[str]:
    """The ``--plugin MODULE`` / ``--plugin=MODULE`` values of ``argv``, wherever they stand."""
    out = []
    for i, word in enumerate(argv):
        if word == "--plugin" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif word.startswith("--plugin="):
            out.append(word.split("=", 1)[1])
    return out


def build_parser() -> argparse.ArgumentParser:

    parser = _OneLineErrors(prog="dil-fast", description=__doc__.splitlines()[0], formatter_class=_HelpWithDefaults)
    parser.add_argument("--version", action="version", version=f"dil-fast {__version__}")
    add_plugin_argument(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineErrors)
    sub.required = True
    parser.train_parser = add_train_parser(sub)
    for command, module in (
        ("eval", "dil_fast.eval"),
        ("restore", "dil_fast.eval.restore"),
        ("crop", "dil_fast.data.crop"),
        ("pack", "dil_fast.data.pack"),
        ("bench", "dil_fast.bench_cli"),
        ("study", "dil_fast.study"),
        ("convert", "dil_fast.models.convert"),
    ):
        _command_parser(sub, command, module)
    add_info_parser(sub)
    add_demo_parser(sub)
    return parser


def _with_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``train --config FILE``: parsed again with the file's flags first (the command line wins)."""
    from .train.config_file import with_config_file

    at = argv.index("train") + 1
    return parser.parse_args(argv[:at] + with_config_file(argv[at:], parser.train_parser))


def _command_parser(sub, command: str, module: str) -> None:
    """Add ``command`` from ``module``'s ``add_<command>_parser`` / ``run_<command>`` pair."""
    import importlib

    mod = importlib.import_module(module)
    p = getattr(mod, f"add_{command}_parser")(sub)
    if command in ("eval", "restore", "convert"):  # the commands that read confounder families or architectures
        add_plugin_argument(p)
    p.set_defaults(func=getattr(mod, f"run_{command}"))


def main(argv=None) -> int:
    from .registry import load_plugins

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        load_plugins(plugins_in(argv))  # before the parser: its flags and choices come from the registries
    except DilFastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train" and getattr(args, "config", None):
            args = _with_config_file(parser, argv)
        rc = args.func(args)
    except DilFastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
