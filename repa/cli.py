"""The `repa` command. Subcommands import their heavy modules only when they run."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from repa import __version__
from repa.errors import RepaError

COMMANDS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment TOML file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key, typed by the schema (repeatable), e.g. --set train.max_steps=1000",
    )


def _load(args):
    from repa.config import load_experiment

    return load_experiment(args.experiment, args.overrides)


# ============================================================================
# validate / plugins
# ============================================================================


def cmd_validate(args) -> int:
    from repa.config import config_hash, to_toml

    config = _load(args)
    print(f"# {args.experiment}: valid; config hash {config_hash(config)}")
    print(to_toml(config), end="")
    return 0


def cmd_run(args) -> int:
    from repa.engine.run import run_experiment

    config = _load(args)
    resume = True if args.resume == "latest" else args.resume
    return run_experiment(config, args.experiment, resume=resume, progress=not args.no_progress)


def cmd_plugins(args) -> int:
    from repa.cli_tables import print_plugins

    return print_plugins(args.kind)


# ============================================================================
# parser
# ============================================================================


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repa", description="REPA: representation alignment for diffusion transformers."
    )
    parser.add_argument("--version", action="version", version=f"repa {__version__}")
    parser.add_argument(
        "-p", "--plugin", dest="plugins", action="append", default=[], metavar="NAME",
        help="also load this plugin (entry-point name, distribution or module path); see REPA_PLUGINS",
    )
    parser.add_argument(
        "--no-autoload", action="store_true",
        help="load only built-ins and --plugin ones (same as REPA_DISABLE_PLUGIN_AUTOLOAD=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("validate", help="check an experiment file and print the resolved config")
    _add_config_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="train an experiment (under accelerate launch / torchrun for several GPUs)")
    _add_config_args(p)
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the latest complete checkpoint, or from this checkpoint folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("plugins", help="list registered components, their parameters and providers")
    p.add_argument("kind", nargs="?", help="only this kind (backbone, encoder, sampler, ...)")
    p.set_defaults(func=cmd_plugins)

    for register in COMMANDS.values():
        register(sub)
    return parser


def _configure_plugins(args) -> None:
    if not (args.plugins or args.no_autoload):
        return
    from repa.plugins import manager

    manager._default = manager.load_components(
        autoload=False if args.no_autoload else None, plugins=args.plugins
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        _configure_plugins(args)
        return args.func(args) or 0
    except RepaError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
