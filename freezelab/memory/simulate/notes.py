"""Plain sentences about a simulated step: where its peak is, and why the memory goes there."""

from __future__ import annotations

from freezelab.memory.cuda_facts import CUDA_CONTEXT
from freezelab.memory.fake.ledger import Label
from freezelab.memory.result import Category
from freezelab.memory.simulate.run import Run
from freezelab.units import GiB, MiB


def _g(b: float) -> str:
    return f"{b / GiB:.2f} GiB"


def write(run: Run, bd: dict[Category, int], acts: dict[Label, int], phase: str, n_train: int,
          labels: dict[str, Label], shard_notes: list[str]) -> list[str]:
    trained = {labels.get(n, Label.OTHER) for n, p in run.model.named_parameters() if p.requires_grad}
    notes = list(shard_notes)
    notes.append(
        f"Peak of the steady-state step (step 2) is in the {phase}: weights {_g(bd[Category.WEIGHTS])}, "
        f"gradients {_g(bd[Category.GRADIENTS])}, optimizer state {_g(bd[Category.OPTIMIZER_STATE])}, "
        f"activations {_g(bd[Category.ACTIVATIONS])}, logits/loss {_g(bd[Category.LOGITS_LOSS])}.")
    if n_train == 0:
        notes.append("Nothing is trainable: no backward pass and no optimizer step run.")
    notes += _frozen_towers(run, acts, trained)
    notes += _workload(run)
    notes += _held_by_output(run, acts)
    bk = run.ledger.sdpa_backends
    if bk and run.w.attn == "sdpa":
        notes.append("SDPA runs as on an H100: " + ", ".join(f"{k} x{v}" for k, v in sorted(bk.items()))
                     + " calls over the two steps (flash / efficient keep only output + logsumexp).")
    notes.append(
        "Device estimate = peak + allocator cache (replay of the CUDA caching allocator's "
        f"pools on the step's allocations) + CUDA context ({CUDA_CONTEXT // MiB} MiB, as measured on an H100).")
    return notes + [n for n in run.notes if n not in notes]


def _frozen_towers(run: Run, acts: dict[Label, int], trained: set[Label]) -> list[str]:
    out = []
    upstream = trained & {Label.VISION, Label.PROJECTOR}
    if acts.get(Label.LLM, 0) and Label.LLM not in trained and upstream:
        out.append(f"The language model is frozen but keeps {_g(acts[Label.LLM])} of activations: "
                   "gradients flow back through it to the trainable parts upstream "
                   f"({', '.join(sorted(upstream))}).")
    if Label.VISION not in trained and acts.get(Label.VISION, 0) and (run.w.grad_ckpt or run.input_require_grads):
        out.append(f"The frozen vision tower keeps {_g(acts[Label.VISION])} of activations because the "
                   "input-embedding requires_grad hooks make its patch embedding output require grad.")
    return out


def _workload(run: Run) -> list[str]:
    w, out = run.w, []
    if w.grad_ckpt:
        out.append(
            "Gradient checkpointing (use_reentrant=False) keeps only each layer's input and "
            "recomputes the layer in backward. transformers' input-embedding requires_grad hooks "
            "are installed with it, so even a frozen vision tower builds an autograd graph.")
    elif run.input_require_grads:
        out.append(
            "transformers' input-embedding requires_grad hooks are active without checkpointing "
            "(left over from an earlier gradient_checkpointing_enable()): frozen modules upstream "
            "of the trainable ones keep activations. disable_input_require_grads() removes them, "
            "but only the last set registered.")
    if run.autocast_dtype is not None:
        out.append(
            f"Autocast {w.autocast}: matmul inputs are cast to {w.autocast}; with fp32 weights "
            "a 16-bit copy of each trainable weight is cached during the forward, and the cast "
            "copies of frozen weights needed for backward are kept too.")
    return out


def _held_by_output(run: Run, acts: dict[Label, int]) -> list[str]:
    out = []
    if acts.get(Label.KV_CACHE):
        out.append(
            f"The language model fills a KV cache during the training forward "
            f"({_g(acts[Label.KV_CACHE])} at the peak, held by the model output until it is deleted): "
            "`model.config.use_cache = False` does not reach the text config in transformers 5.x. "
            "Passing use_cache=False to the forward (or setting it on the text config) drops it.")
    if acts.get(Label.OUTPUTS):
        out.append(f"Tensors returned in the model output (e.g. the vision tower's hidden states) "
                   f"hold {_g(acts[Label.OUTPUTS])} until the output is deleted.")
    tw = run.details.get("trainable_without_grad") or []
    if tw:
        out.append(f"{len(tw)} trainable parameter(s) never get a gradient (e.g. "
                   f"{tw[0]}); the optimizer keeps no state for them.")
    return out
