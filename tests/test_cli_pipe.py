"""The command line behind a real pipe whose reader goes away (`... | head -6`): it stops quietly, as Unix
tools do, with the status of a process ended by SIGPIPE (128 + 13) and nothing on stderr."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIGPIPE_STATUS = 128 + signal.SIGPIPE
INSPECT = [sys.executable, "-m", "freezelab", "inspect", "llava-1.5-7b", "--train", "@projector"]


def _run_until_reader_leaves(argv: list[str], lines: int) -> tuple[list[bytes], int, bytes]:
    """Read `lines` lines of standard output through a pipe, close it, and wait for the command."""
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read = [proc.stdout.readline() for _ in range(lines)]
        proc.stdout.close()
        err = proc.stderr.read()
        return read, proc.wait(timeout=120), err
    finally:
        proc.kill()
        proc.wait()


def test_head_six_of_a_long_json():
    """The README's `inspect ... --json | head -6`, on the whole tree (250 KB: far more than a pipe holds),
    so the command is still writing when the reader leaves."""
    read, status, err = _run_until_reader_leaves([*INSPECT, "--json", "--depth", "-1"], 6)
    assert read[0] == b"{\n" and read[1] == b'  "model": "llava-1.5-7b",\n'
    assert (status, err) == (SIGPIPE_STATUS, b"")


@pytest.mark.parametrize("extra", [["--json"], ["--depth", "-1"]], ids=["json-at-exit", "rich-table"])
def test_reader_gone_before_the_first_byte(extra):
    """A reader that leaves at once (`| true`): the short JSON fails only at the final flush, which used
    to print "Exception ignored ... BrokenPipeError"; rich's table used to exit 1."""
    _, status, err = _run_until_reader_leaves([*INSPECT, *extra], 0)
    assert (status, err) == (SIGPIPE_STATUS, b"")
