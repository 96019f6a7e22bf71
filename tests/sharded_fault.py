"""A torchrun entry point for the sharded sanity step with one injected fault, for tests/test_sharded_step.py:
`torchrun ... tests/sharded_fault.py FAULT RANK -- <freezelab step arguments>`.

FAULT is `raise` (a plain exception on that rank after its model is sharded), `oom` (torch's
out-of-memory error in its first training step) or `kill` (SIGKILL after sharding: the rank dies
without a word)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import freezelab.step.shard as shard  # noqa: E402
import freezelab.step.train as train  # noqa: E402
from freezelab.cli import main  # noqa: E402

FAULT, RANK = sys.argv[1], int(sys.argv[2])
ARGS = sys.argv[sys.argv.index("--") + 1:]
ME = int(os.environ["RANK"])
_wrap, _step = shard.ShardedLive.wrap, train._train_step


def wrap(self, *args, **kwargs):
    _wrap(self, *args, **kwargs)
    if ME == RANK and FAULT == "raise":
        raise ValueError("injected fault")
    if ME == RANK and FAULT == "kill":
        os.kill(os.getpid(), signal.SIGKILL)


def step(*args, **kwargs):
    if ME == RANK and FAULT == "oom":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
    return _step(*args, **kwargs)


shard.ShardedLive.wrap = wrap
train._train_step = step
sys.exit(main(ARGS))
