"""The `python -m freezelab` command line: one module per command, each with `register(sub)`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from freezelab.errors import FreezelabError

COMMANDS = ("inspect", "catalog", "export", "step", "estimate")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m freezelab",
                                description="See and verify what a freeze plan trains in a LLaVA-family model.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"freezelab.cli.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FreezelabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not bad input: one line unless asked for the traceback
        if os.environ.get("FREEZELAB_DEBUG"):
            raise
        print(f"internal error: {err.__class__.__name__}: {err} (set FREEZELAB_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1
