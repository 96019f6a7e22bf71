"""The state of one simulated training step: its inputs, the fake world it runs in, the ledger
that books its memory, and what it learns on the way (details, notes, timings)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Collection
from typing import Any

import torch

from freezelab.adapters import Adapters
from freezelab.components import ModelComponents
from freezelab.errors import SimulationCancelled, SimulationError
from freezelab.families import class_name
from freezelab.index import ModelIndex
from freezelab.memory.fake.ledger import TensorLedger
from freezelab.workload import TORCH_DTYPE_NAMES, Workload

Progress = Callable[[float, str], None]


class Run:
    """One simulation: built by `simulate_step`, advanced by the phase functions."""

    def __init__(self, config: Any, trainable: Collection[str], workload: Workload,
                 progress: Progress | None = None, cancel: Callable[[], bool] | None = None, *,
                 input_require_grads: bool = False, adapters: Adapters | None = None,
                 index: ModelIndex | None = None, processor: dict[str, Any] | None = None,
                 count_flops: bool = True) -> None:
        from torch._subclasses.fake_tensor import FakeTensorMode

        if not isinstance(workload, Workload):
            raise SimulationError(f"workload must be a freezelab.workload.Workload, got {type(workload).__name__}")
        model_type = getattr(config, "model_type", None)
        if not isinstance(model_type, str) or class_name(model_type) is None:
            raise SimulationError(
                f"model_type {model_type!r} is not a vision-language model transformers builds "
                "(an image-text-to-text class)")
        self.config = copy.deepcopy(config)
        self.model_type: str = model_type
        self.trainable = set(trainable)
        self.w = workload
        self.input_require_grads = bool(input_require_grads)
        self.adapters = adapters if adapters is not None and (adapters.layers or adapters.quantized) else None
        self.index = index                          # the index the adapters were resolved on
        self.processor: dict[str, Any] = dict(processor or {})
        self.count_flops = bool(count_flops)   # FlopCounterMode over step 2 (simulate.flops)
        self.dtype = getattr(torch, TORCH_DTYPE_NAMES[workload.dtype])
        self.autocast_dtype = None if workload.autocast == "none" else getattr(
            torch, TORCH_DTYPE_NAMES[workload.autocast])
        self._progress = progress
        self._cancel = cancel
        self.doing = "setup"                        # the phase under way, for a cancellation's message
        # the batch's ids, grids and pixels are real (freezelab.memory.fake.concrete)
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.ledger = TensorLedger()
        self.notes: list[str] = []
        self.details: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self._t_last = time.perf_counter()
        self.t0 = self._t_last
        self.model: Any = None
        self.cfg: Any = None                        # the built model's config
        self.parts: ModelComponents | None = None   # where its components are
        self.image_tokens_total: int | None = None  # image tokens in the batch, checked by the model

    @property
    def sharded(self) -> bool:
        """Whether the step runs through FSDP2 over a fake process group (ZeRO-2/3 and FSDP on N > 1 GPUs);
        otherwise one unsharded rank runs and sharding is applied on its log (freezelab.memory.simulate.sharding)."""
        return self.w.gpus > 1 and self.w.sharding in ("zero2", "zero3", "fsdp")

    def phase(self, fraction: float, message: str) -> None:
        """Report progress; stop here when the caller cancelled."""
        if self._cancel is not None and self._cancel():
            raise SimulationCancelled(f"simulation cancelled before: {message}")
        self.doing = message
        if self._progress is not None:
            self._progress(fraction, message)

    @property
    def cancellable(self) -> bool:
        return self._cancel is not None

    def check(self) -> None:
        """Stop inside a phase when the caller cancelled (the model's hooks call this: raising from
        them is safe, unlike from inside an op, where torch may not expect an exception)."""
        if self._cancel is not None and self._cancel():
            raise SimulationCancelled(f"simulation cancelled during: {self.doing}")

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._t_last, 3)
        self._t_last = now

    def note_once(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
