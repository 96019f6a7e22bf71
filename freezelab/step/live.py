"""What a sanity step allocates, in one place so that it can all be released: its own model
(built or loaded in the parameter dtype on the device, plan applied, adapters added with PEFT and
the frozen base quantized when the plan says so, configured as the calibration protocol sets it),
the optimizer over exactly the trainable tensors, and the batch."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freezelab.batch import Batch, Example, example, load_processor, synthetic
from freezelab.fingerprint import fingerprints
from freezelab.index import ModelIndex
from freezelab.models import build, lift_zero_projections, load_weights, torch_dtype
from freezelab.optimizers import make_optimizer
from freezelab.peft_build import tensors as adapted_tensors
from freezelab.peft_build import wrap
from freezelab.plans import Resolution, apply
from freezelab.quantize import quantize
from freezelab.sources import Source
from freezelab.step.gate import StepError
from freezelab.step.report import StepReport, Weights
from freezelab.workload import Autocast, Dtype, Workload

if TYPE_CHECKING:
    import torch


class Live:
    """Everything a run allocates, so one place can release it. A sharded run (freezelab.step.shard)
    overrides how the model is built and wrapped and how its parameters are read."""

    rank = 0                               # this process's rank (its batch seed is seed + rank)

    def __init__(self, device: str) -> None:
        self.device = device
        self.model: Any = None
        self.engine: Any = None            # the module a step calls when it wraps the model (DDP)
        self.optimizer: Any = None
        self.batch: Batch | None = None
        self.tensors: list[Any] = []       # the model's parameters in the order of `index`
        self.peft: Any = None              # the PeftModel around `model` when the plan has adapters
        self.index: ModelIndex | None = None  # the model's index (the adapted one with adapters)

    @property
    def call(self) -> Any:
        """The module a training step calls."""
        return self.engine if self.engine is not None else self.model

    def build_model(self, source: Source, workload: Workload, seed: int,
                    weights: bool) -> tuple[torch.nn.Module, Weights]:
        return _model(source, workload, self.device, seed, weights)

    def wrap(self, source: Source, workload: Workload, seed: int, weights: bool) -> None:
        """After the plan is applied, before the optimizer is made: nothing on one device."""

    def fingerprints(self) -> list[tuple[int, int]]:
        return fingerprints(self.tensors)

    def grad_norms(self) -> list[float | None]:
        return local_grad_norms(self.tensors)

    def close(self) -> None:
        import weakref

        for t in self.tensors:
            t.grad = None
        alive = [weakref.ref(x) for x in (self.model, self.engine, self.optimizer, self.peft) if x is not None]
        self.model = self.engine = self.optimizer = self.batch = self.peft = None
        self.tensors = []
        if any(ref() is not None for ref in alive):
            gc.collect()  # only when a reference cycle keeps them: a full collection costs ~0.25 s
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def local_grad_norms(tensors: list[torch.Tensor]) -> list[float | None]:
    """Gradient L2 norm per parameter (None: no gradient), read before zero_grad; one host sync."""
    import torch

    have = [i for i, t in enumerate(tensors) if t.grad is not None]
    out: list[float | None] = [None] * len(tensors)
    if have:
        values = torch.stack([torch.linalg.vector_norm(tensors[i].grad, dtype=torch.float32) for i in have])
        for i, v in zip(have, values.cpu().tolist()):
            out[i] = v
    return out


# -- the model --------------------------------------------------------------------------

def _model(source: Source, workload: Workload, device: str, seed: int,
           weights: bool) -> tuple[torch.nn.Module, Weights]:
    if weights and source.kind == "checkpoint":
        return load_weights(source, dtype=workload.dtype, device=device), Weights.CHECKPOINT
    return build(source, device=device, dtype=workload.dtype, seed=seed), Weights.RANDOM


def _configure(model: torch.nn.Module, workload: Workload) -> None:
    """Attention, train mode, checkpointing exactly as the calibration protocol sets them."""
    if model.config._attn_implementation != workload.attn:
        try:
            model.set_attn_implementation(workload.attn)
        except (ValueError, ImportError) as err:
            raise StepError(f"attention {workload.attn!r} is not available for this model: {err}") from None
    model.train()
    if workload.grad_ckpt:
        enable = getattr(model, "activation_checkpointing_enable", None)  # the non-deprecated name in 5.x
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        # A fresh model has no input-grad hooks; checkpointing's disable() would leave them (pitfalls).
        model.disable_input_require_grads()


def input_grad_hooks(model: torch.nn.Module) -> int:
    """How many input-embedding requires_grad hooks gradient checkpointing installed."""
    return len(getattr(model, "_require_grads_hooks", None) or [])


def reentrant(model: torch.nn.Module) -> bool:
    """Whether some block checkpoints reentrantly (torch's default when use_reentrant is not given)."""
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) is True:
            func = getattr(module, "_gradient_checkpointing_func", None)
            if getattr(func, "keywords", {}).get("use_reentrant", True):
                return True
    return False


def _lift(live: Live, index: ModelIndex, report: StepReport, seed: int) -> None:
    """Random weights: projections transformers initialises at zero get small random values."""
    if report.weights == Weights.RANDOM:
        lifted = lift_zero_projections(live.model, index, seed)
        if lifted:
            report.warnings.append(f"random weights: {', '.join(lifted)} start at zero in transformers' init, which "
                                   "would keep every gradient from the vision tower; they got small random values")


def _hook_warning(n: int) -> str:
    return (f"gradient checkpointing installed {n} input-embedding requires_grad hooks (the vision tower's patch "
            "embedding included): frozen modules before the first trainable one now build an autograd graph "
            "and keep activations")


def setup(live: Live, source: Source, res: Resolution, index: ModelIndex, workload: Workload, report: StepReport,
          seed: int, weights: bool, lr: float, prepare: Callable[..., None] | None) -> None:
    """Own model, configured, plan applied, optimizer over exactly the trainable parameters. With adapters:
    plan applied, the frozen base quantized (built on the CPU, moved to the device layer by layer, quantized
    on the way), the adapters added with PEFT, then configured (checkpointing after the adapters, as a
    Trainer does)."""
    adapters = res.adapters
    live.index = index
    if adapters or adapters.quant.on:
        live.model, report.weights = _model(source, workload, "cpu" if adapters.quant.on else live.device, seed,
                                            weights)
        _lift(live, index, report, seed)
        apply(res.plan, live.model, index)
        if adapters.quant.on:
            quantize(live.model, index, adapters, live.device)
            live.model.to(live.device)
        if adapters:
            live.peft = wrap(live.model, index, adapters, res.mask)
            live.index = res.adapted(index)[0]
        _configure(live.model, workload)
    else:
        live.model, report.weights = live.build_model(source, workload, seed, weights)
        _lift(live, index, report, seed)
        _configure(live.model, workload)
        apply(res.plan, live.model, index)
    live.wrap(source, workload, seed, weights)
    if adapters:
        live.tensors = adapted_tensors(live.model, live.index, adapters)
    else:
        named = dict(live.model.named_parameters())
        live.tensors = [named[p.name] for p in index.params]
    live.optimizer = make_optimizer(workload.optimizer, [t for t in live.tensors if t.requires_grad], lr)
    if prepare is not None:
        prepare(live.model, live.optimizer)
    report.input_grad_hooks = input_grad_hooks(live.model)
    if report.input_grad_hooks:
        report.warnings.append(_hook_warning(report.input_grad_hooks))


# -- the batch --------------------------------------------------------------------------

def _pixel_dtype(workload: Workload) -> torch.dtype:
    return torch_dtype(Dtype(workload.autocast) if workload.autocast != Autocast.NONE else workload.dtype)


def _processor_dir(source: Source) -> Path:
    if source.kind not in ("checkpoint", "config"):
        raise StepError(f"a real example needs a checkpoint directory with a processor/tokenizer; "
                        f"{source.name} has none (run without an image for a synthetic batch)")
    path = Path(source.spec).expanduser()
    return path if path.is_dir() else path.parent


def make_batch(source: Source, index: ModelIndex, workload: Workload, device: str, seed: int,
               item: Example | None) -> Batch:
    """The synthetic batch the workload describes, or `item` through the checkpoint's processor."""
    if item is None:
        return synthetic(index.config, workload, device=device, pixel_dtype=_pixel_dtype(workload), seed=seed,
                         processor=index.processor)
    processor = load_processor(_processor_dir(source))
    return example(processor, item, workload, device=device, pixel_dtype=_pixel_dtype(workload))
