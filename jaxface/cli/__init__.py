"""The ``jaxface`` command line: one module per subcommand, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> module (imported lazily so `jaxface --help` stays fast)
SUBCOMMANDS = {
    "demo": ("jaxface.cli.demo", "fit the default model to a photo and write the results"),
    "fit": ("jaxface.cli.fit", "fit a face model to images, a folder or a video"),
    "models": ("jaxface.cli.models", "inspect, convert and cache morphable models"),
    "edit": ("jaxface.cli.edit", "texture, frontalise, relight or change the expression of a "
                                 "fitted photo"),
    "train": ("jaxface.cli.train", "train a parameter-regression encoder (generate&render, "
                                   "fit&render or self-supervised)"),
    "predict": ("jaxface.cli.predict", "predict model parameters of faces with a trained encoder"),
    "bench": ("jaxface.cli.bench", "run the benchmark suite and print a table"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxface",
        description="3D face reconstruction from photos on one differentiable JAX pipeline.")
    from jaxface import __version__

    parser.add_argument("--version", action="version", version=f"jaxface {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # user-facing errors: one line, no traceback
        from jaxface.errors import JaxfaceError

        if isinstance(e, JaxfaceError | FileNotFoundError):
            print(f"jaxface {args.command}: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
