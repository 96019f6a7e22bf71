"""The `python -m freezelab` command line: one module per command, each with `register(sub)`."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
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
    """Run one command. Exit status: 0 done, 1 a failed check or a bug, 2 bad input, 130 interrupted,
    141 (128 + SIGPIPE) when the reader of standard output went away (`... | head`)."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
    except BrokenPipeError:
        return _reader_gone()


def _run(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FreezelabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except Exception as err:  # a bug, not bad input: one line unless asked for the traceback
        if os.environ.get("FREEZELAB_DEBUG"):
            raise
        print(f"internal error: {err.__class__.__name__}: {err} (set FREEZELAB_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


def _reader_gone() -> int:
    """Stop quietly, as Unix tools do when the pipe they write to closes: nothing on stderr, and the
    status of a process ended by SIGPIPE. Standard output is pointed at /dev/null so that the
    interpreter's own flush at exit does not fail again ("Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured): nothing left to flush into
        pass
    return 128 + signal.SIGPIPE
