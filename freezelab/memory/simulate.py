"""Simulated memory estimate: run the real Hugging Face training step on fake tensors.

`simulate_step` builds the model from its config on the meta device, moves it
to fake tensors (no weights, no GPU), applies the freeze plan, and runs the
calibration protocol (`shared/calibration/measure.py`): two full steps of
forward (loss computed by the model from `labels`), backward,
`optimizer.step()`, `zero_grad(set_to_none=True)`; the reported peak is the
one of step 2 (optimizer state exists: the steady state).

Every tensor storage the step creates is booked by `_fakecuda.TensorLedger`
(rounded up to the allocator's 512-byte granularity, freed with its last
reference), labelled with a category (`estimate.CATEGORIES`) and, for
activations, the top-level component that produced it. The log is then
replayed through a model of the CUDA caching allocator, so each allocation is
charged the block it is handed (a cached block at most 1 MiB larger than the
request is not split, and `max_memory_allocated` counts it whole) and the
reserved segments give the allocator cache. CUDA behaviour that differs from
what the same code does on CPU is emulated: SDPA backend choice, the
foreach/fused optimizer defaults, autocast's CUDA op lists, cuBLAS workspaces
and flash-attention backward scratch (see `_fakecuda`). Sharding (ZeRO / FSDP)
and optimizer offload are applied analytically on top of the single-rank log.

Accuracy (benchmarks/simulate_accuracy.py): within 0.14% of
`peak_allocated_bytes` on the 11 H100 calibration rows, and within 0.4% on 23
further H200 rows (checkpointing, eager attention, SGD / Adafactor / fused
AdamW, text-only and two-image batches, fp32 + autocast, OneVision, NeXT).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import time
import types
import warnings
from collections.abc import Callable, Collection
from typing import Any

import torch

from freezelab.memory import _fakecuda as fc
from freezelab.memory.estimate import CATEGORIES, GiB, MemoryEstimate
from freezelab.families import CLASSES
from freezelab.optimizers import make_optimizer
from freezelab.tokens import ANYRES_TYPES, image_layout
from freezelab.workload import TORCH_DTYPE_NAMES, Workload

MiB = 2**20

MODEL_CLASSES = CLASSES  # model_type -> class name in transformers

# What the GPU process holds besides tensors. In every calibration row (H100 80GB, CUDA 13,
# PyTorch 2.11) `device_used_bytes - peak_reserved_bytes` is 767-771 MiB: the CUDA context
# plus the cuBLAS / cuDNN / flash kernels loaded into it. It does not depend on the model.
CUDA_CONTEXT_BYTES = 768 * MiB

LR = 1e-5  # measure.py's learning rate (memory does not depend on it)

COMPONENTS = ("vision", "projector", "llm", "lm_head")


class SimulationCancelled(RuntimeError):
    """`cancel()` returned True: the simulation stopped between two phases."""


class SimulationError(RuntimeError):
    """The model's training step cannot run as configured (the real run would fail too)."""


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------

def simulate_step(
    config: Any,
    trainable: Collection[str],
    workload: Workload,
    progress: Callable[[float, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    *,
    input_require_grads: bool = False,
) -> MemoryEstimate:
    """Run two training steps of the real model on fake tensors and account their memory.

    `config` is a LLaVA-family `transformers.PretrainedConfig` (model_type llava,
    llava_next, llava_next_video, llava_onevision or vipllava); it is not modified.
    `trainable` holds parameter names as `model.named_parameters()` spells them
    (transformers 5.x); every other parameter is frozen. Returns the step-2 peak
    (what `torch.cuda.max_memory_allocated()` reports over the steady-state step)
    with its breakdown by category at the moment of the peak.

    `progress(fraction, message)` is called at each phase; `cancel()` is polled
    between phases and, when it returns True, `SimulationCancelled` is raised.

    `input_require_grads=True` installs transformers' input-embedding requires_grad
    hooks (`model.enable_input_require_grads()`) even without gradient checkpointing:
    the state a model is left in when checkpointing was turned off without removing
    them (see shared/notes/pitfalls.md). With `workload.grad_ckpt` they are always on,
    as `gradient_checkpointing_enable()` installs them.
    """
    run = _Run(config, trainable, workload, progress, cancel)
    run.input_require_grads = bool(input_require_grads)
    return run.execute()


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

class _Run:
    def __init__(self, config, trainable, workload: Workload, progress, cancel) -> None:
        from torch._subclasses.fake_tensor import FakeTensorMode

        if not isinstance(workload, Workload):
            raise TypeError("workload must be a freezelab.workload.Workload")
        model_type = getattr(config, "model_type", None)
        if model_type not in MODEL_CLASSES:
            raise ValueError(
                f"model_type {model_type!r} is not a supported LLaVA family model "
                f"({', '.join(sorted(MODEL_CLASSES))})")
        self.config = copy.deepcopy(config)
        self.model_type = model_type
        self.trainable = set(trainable)
        self.w = workload
        self.dtype = getattr(torch, TORCH_DTYPE_NAMES[workload.dtype])
        self.autocast_dtype = None if workload.autocast == "none" else getattr(
            torch, TORCH_DTYPE_NAMES[workload.autocast])
        self._progress = progress
        self._cancel = cancel
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=False)
        self.ledger = fc.TensorLedger()
        self.notes: list[str] = []
        self.details: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self._t_last = time.perf_counter()
        self._t0 = self._t_last
        self.model = None
        self.input_require_grads = False

    # -- progress / cancel ----------------------------------------------------------------
    def phase(self, fraction: float, message: str) -> None:
        if self._cancel is not None and self._cancel():
            raise SimulationCancelled(f"simulation cancelled before: {message}")
        if self._progress is not None:
            self._progress(fraction, message)

    def _lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._t_last, 3)
        self._t_last = now

    # -- model ----------------------------------------------------------------------------
    def build(self) -> None:
        import transformers

        cls = getattr(transformers, MODEL_CLASSES[self.model_type])
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls._from_config(self.config, dtype=self.dtype, attn_implementation=self.w.attn)
        # The calibration protocol's `model.config.use_cache = False`: in transformers 5.x it
        # does not reach the text config, so the language model still fills a KV cache during
        # the training forward (K and V of every layer, held by the output until it is
        # deleted). The H100 measurements include it; so does the simulation.
        model.config.use_cache = False
        self.model = model
        self.inner = model.model
        self.cfg = model.config

    def materialize(self) -> None:
        """Give every meta parameter/buffer fake storage (inside the fake mode), keeping ties.

        Equivalent to `to_empty()` but memoised on the tensor object, so weights that are
        tied (lm_head / embed_tokens with tie_word_embeddings) stay one Parameter; the tie
        is checked afterwards. No initialisation runs (SigLIP's trunc_normal_ is
        data-dependent and would fail on fake tensors).
        """
        memo: dict[int, torch.Tensor] = {}
        for module in self.model.modules():
            for name, p in list(module._parameters.items()):
                if p is None:
                    continue
                new = memo.get(id(p))
                if new is None:
                    data = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype, device="cpu")
                    new = torch.nn.Parameter(data, requires_grad=p.requires_grad)
                    memo[id(p)] = new
                module._parameters[name] = new
            for name, b in list(module._buffers.items()):
                if b is None:
                    continue
                new = memo.get(id(b))
                if new is None:
                    new = torch.empty_strided(b.shape, b.stride(), dtype=b.dtype, device="cpu")
                    memo[id(b)] = new
                module._buffers[name] = new
        text = self.cfg.get_text_config()
        if getattr(self.cfg, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False):
            emb = self.model.get_input_embeddings()
            out = self.model.get_output_embeddings()
            if out is not None and out.weight is not emb.weight:
                out.weight = emb.weight  # re-tie (HF ties at construction; keep it after moving)
        self._install_placeholder_mask()

    def _install_placeholder_mask(self) -> None:
        """Replace the data-dependent placeholder check (`torch_compilable_check` on a tensor
        sum, which fake tensors cannot evaluate) with the same mask and a static check of the
        count we put in the batch. Instance attribute: transformers itself is untouched."""
        inner = self.inner
        orig = type(inner).get_placeholder_mask
        params = inspect.signature(orig).parameters
        with_video = "video_features" in params
        cfg = self.cfg
        run = self

        def get_placeholder_mask(self_, input_ids, inputs_embeds, image_features=None, video_features=None):
            if input_ids is None:
                raise SimulationError("the simulation passes input_ids; inputs_embeds-only is unsupported")
            image_mask = (input_ids == cfg.image_token_id).unsqueeze(-1).to(inputs_embeds.device)
            if image_features is not None:
                want = run.image_tokens_total
                got = image_features.numel() // inputs_embeds.shape[-1]
                if want is not None and got != want:
                    raise SimulationError(
                        f"image features and image tokens do not match: the batch has {want} image "
                        f"tokens, the model produced {got} features")
            if not with_video:
                return image_mask
            vid = getattr(cfg, "video_token_id", getattr(cfg, "video_token_index", -1))
            video_mask = (input_ids == vid).unsqueeze(-1).to(inputs_embeds.device)
            return image_mask, video_mask

        inner.get_placeholder_mask = types.MethodType(get_placeholder_mask, inner)
        self.image_tokens_total: int | None = None

    # -- components -----------------------------------------------------------------------
    def component_roots(self) -> dict[str, list[torch.nn.Module]]:
        inner = self.inner
        roots: dict[str, list[torch.nn.Module]] = {c: [] for c in COMPONENTS}
        for name, child in inner.named_children():
            if name in ("vision_tower", "image_tower", "video_tower", "vision_resampler"):
                roots["vision"].append(child)
            elif name in ("multi_modal_projector", "projector"):
                roots["projector"].append(child)
            elif name == "language_model":
                roots["llm"].append(child)
        roots["lm_head"].append(self.model.get_output_embeddings())
        return roots

    def param_component(self) -> dict[str, str]:
        out = {}
        for name, _ in self.model.named_parameters(remove_duplicate=False):
            if name.startswith("lm_head."):
                c = "lm_head"
            elif any(s in name for s in ("vision_tower.", "image_tower.", "video_tower.", "vision_resampler.")):
                c = "vision"
            elif "multi_modal_projector." in name or name.endswith("image_newline"):
                c = "projector"
            elif "language_model." in name:
                c = "llm"
            else:
                c = "other"
            out[name] = c
        return out

    # -- batch ----------------------------------------------------------------------------
    def image_inputs(self, n_images: int) -> dict[str, Any]:
        """pixel_values (+ image_sizes / batch_num_images for any-res models) for `n_images`
        images, `workload.images` per sample, as the model's processor lays them out."""
        vc = self.cfg.vision_config
        side = vc.image_size
        pix_dtype = self.autocast_dtype or self.dtype  # measure.py: bf16 pixels under autocast
        if self.model_type not in ANYRES_TYPES:
            if self.w.image_size not in (None, side):
                self.notes_once("image_size only changes any-res models; this model resizes every "
                                f"image to its tower's {side}x{side}.")
            return {"pixel_values": torch.empty(n_images, 3, side, side, dtype=pix_dtype)}
        src = self.w.image_size or side
        n_patches = self.layout().tiles
        kw: dict[str, Any] = {
            "pixel_values": torch.empty(n_images, n_patches, 3, side, side, dtype=pix_dtype),
            "image_sizes": [[src, src]] * n_images,
        }
        if self.model_type == "llava_onevision":
            kw["batch_num_images"] = [self.w.images] * (n_images // max(self.w.images, 1))
        self.details["crops_per_image"] = n_patches
        return kw

    def notes_once(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def tokens_per_image(self) -> int:
        """Image tokens one image contributes (freezelab.tokens: tiling, unpadding, newlines);
        the model's forward re-checks the count against the features it produces."""
        return self.layout().image_tokens

    def layout(self):
        return image_layout(self.cfg.to_dict(), self.w.image_size, max(self.w.images, 1))

    def make_batch(self, tokens_per_image: int) -> dict[str, Any]:
        w = self.w
        image_tokens = tokens_per_image * w.images
        seq = image_tokens + w.text_tokens
        ids = torch.empty(w.batch, seq, dtype=torch.long)
        batch: dict[str, Any] = {"input_ids": ids}
        if w.images:
            batch.update(self.image_inputs(w.batch * w.images))
        # labels = ids.clone() with the first 1 + image tokens positions at -100 (in place)
        labels = ids.clone()
        labels[:, : 1 + image_tokens] = -100
        batch["labels"] = labels
        # measure.py passes attention_mask=ones (no padding): transformers then drops it for
        # SDPA and uses is_causal (see _fakecuda._fake_aware_ignore_mask).
        batch["attention_mask"] = torch.ones_like(ids)
        self.image_tokens_total = image_tokens * w.batch
        self.details.update(image_tokens_per_image=tokens_per_image, seq_len=seq,
                            image_tokens_per_sample=image_tokens)
        return batch

    # -- optimizer ------------------------------------------------------------------------
    def make_optimizer(self, params: list[torch.nn.Parameter]):
        if self.w.optimizer == "adamw-8bit":  # bitsandbytes' state layout, emulated (it needs CUDA)
            return AdamW8bitLike(params, lr=LR) if params else None
        # On CUDA the default resolves to foreach=True; on fake tensors it would not (FakeTensor
        # is not a plain Tensor type), so say it explicitly.
        return make_optimizer(self.w.optimizer, params, LR, foreach=True)

    def book_optimizer_state(self, opt) -> None:
        host_step = not getattr(opt, "defaults", {}).get("fused") and not opt.defaults.get("capturable")
        for st in opt.state.values():
            for k, v in st.items():
                if not isinstance(v, torch.Tensor):
                    continue
                if k == "step" and host_step:
                    self.ledger.exclude(v)  # AdamW/Adafactor keep `step` on the host unless fused
                else:
                    self.ledger.classify(v, "optimizer_state", "optimizer")

    # -- the step -------------------------------------------------------------------------
    def execute(self) -> MemoryEstimate:
        w = self.w
        self.phase(0.0, "building the model on the meta device")
        self.build()
        self._lap("build")
        ledger = self.ledger
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            stack.enter_context(self.fake_mode)
            self.phase(0.05, "moving the model to fake tensors")
            self.materialize()
            named = dict(self.model.named_parameters(remove_duplicate=False))
            unknown = sorted(n for n in self.trainable if n not in named)
            if unknown:
                raise ValueError(f"{len(unknown)} trainable name(s) are not parameters of this model: "
                                 + ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else ""))
            train_ids = {id(named[n]) for n in self.trainable}
            for p in self.model.parameters():
                p.requires_grad_(id(p) in train_ids)
            if w.grad_ckpt:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            elif self.input_require_grads:
                self.model.enable_input_require_grads()
            self.model.train()
            stack.enter_context(fc.cuda_emulation_installed(ledger))
            if self.autocast_dtype is not None:
                stack.enter_context(fc.CudaAutocastDelta())
            self._lap("materialize")

            tokens = 0
            if w.images:
                self.phase(0.1, "counting image tokens with the model's own image path")
                tokens = self.tokens_per_image()
                self._lap("image_tokens")

            stack.enter_context(ledger)
            # weights: every parameter and buffer, in construction order (as built on the GPU)
            pcomp = self.param_component()
            for name, p in self.model.named_parameters():
                ledger.track(p, "weights", pcomp.get(name, "other"))
            for b in self.model.buffers():
                ledger.track(b, "weights", "buffers")
            ledger.category, ledger.component = "activations", "inputs"
            batch = self.make_batch(tokens)

            params = [p for p in self.model.parameters() if p.requires_grad]
            opt = self.make_optimizer(params)
            hooks = self._install_hooks(params, pcomp)
            stack.callback(lambda: [h.remove() for h in hooks])

            autocast = (torch.autocast("cpu", dtype=self.autocast_dtype) if self.autocast_dtype is not None
                        else contextlib.nullcontext())
            step_marks: dict[int, dict[str, int]] = {}
            for step in (1, 2):
                base = 0.15 + (step - 1) * 0.4
                if step == 2:
                    ledger.reset_peak()
                step_marks[step] = {"start_t": ledger.t, "start_total": ledger.total}
                self.phase(base, f"step {step}: forward")
                ledger.set_phase("forward")
                ledger.category, ledger.component = "activations", "other"
                with autocast:
                    out = self.model(**batch)
                loss = out.loss
                self._label_outputs(out)
                step_marks[step]["after_forward"] = ledger.total
                self._lap(f"step{step}_forward")

                self.phase(base + 0.2, f"step {step}: backward")
                ledger.set_phase("backward")
                ledger.category, ledger.component = "logits_loss", "lm_head"
                if params and loss.requires_grad:
                    loss.backward()
                elif params:
                    self.notes_once(
                        "No trainable parameter is on the loss's autograd graph (e.g. projector-only "
                        "training on a text-only batch without gradient checkpointing): the real "
                        "backward raises 'element 0 of tensors does not require grad'. The estimate "
                        "covers the forward only.")
                del out
                if step == 1:
                    no_grad = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
                    self.details["trainable_without_grad"] = no_grad
                self._lap(f"step{step}_backward")

                self.phase(base + 0.35, f"step {step}: optimizer")
                ledger.set_phase("optimizer")
                ledger.category, ledger.component = "optimizer_temp", "optimizer"
                if opt is not None:
                    ledger.fake_items = True
                    try:
                        opt.step()
                    finally:
                        ledger.fake_items = False
                    opt.zero_grad(set_to_none=True)
                    self.book_optimizer_state(opt)
                del loss
                ledger.set_phase("idle")
                step_marks[step]["end_t"] = ledger.t
                step_marks[step]["peak"] = ledger.peak
                if step == 1:
                    step1_peak = ledger.peak
                self._lap(f"step{step}_optimizer")
            ledger.category = "activations"
            del batch

        self.phase(0.95, "accounting")
        est = self._result(step_marks, step1_peak, params, pcomp)
        self._lap("accounting")
        est.details["seconds"] = dict(self.timings, total=round(time.perf_counter() - self._t0, 3))
        self.phase(1.0, "done")
        return est

    def _label_outputs(self, out) -> None:
        """Activations the caller holds through the model output until `del out`.

        The KV cache (filled because the protocol's top-level `use_cache=False` does not
        reach the text config) and returned hidden states are labelled `kv_cache` /
        `outputs` unless autograd needs them anyway (they require grad: attention / the
        next layer saved them for backward), in which case they stay with their component.
        """
        led = self.ledger
        for key, value in out.items():
            if key in ("loss", "logits") or value is None:
                continue
            if hasattr(value, "layers") and not isinstance(value, (dict, list, tuple)):
                tensors = [t for layer in value.layers for t in (getattr(layer, "keys", None),
                                                                  getattr(layer, "values", None))
                           if isinstance(t, torch.Tensor)]
                label = "kv_cache"
            else:
                tensors, label = _tensors(value), "outputs"
            for t in tensors:
                e = led.entry_of(t)
                if e is not None and e.cat == "activations" and not t.requires_grad:
                    e.comp = label

    def _install_hooks(self, params, pcomp) -> list[Any]:
        ledger = self.ledger
        hooks: list[Any] = []
        stack: list[tuple[str, str]] = []
        names = {id(p): n for n, p in self.model.named_parameters()}

        def on_grad_of(comp: str):
            cat = "logits_loss" if comp == "lm_head" else "activations"

            def hook(grad):
                if ledger.phase == "backward":
                    ledger.category, ledger.component = cat, comp
                return None
            return hook

        def pre(comp: str):
            def hook(module, args):
                if ledger.phase != "forward":
                    return None
                stack.append((ledger.category, ledger.component))
                if comp == "lm_head":
                    ledger.category = "logits_loss"
                ledger.component = comp
                return None
            return hook

        def post(comp: str):
            def hook(module, args, output):
                if ledger.phase != "forward":
                    return None
                cat, c = stack.pop() if stack else ("activations", "other")
                if comp != "lm_head":  # after the head: logits and the loss
                    ledger.category, ledger.component = cat, "other"
                for t in _tensors(output):
                    if t.requires_grad:
                        t.register_hook(on_grad_of(comp))
                return None
            return hook

        for comp, mods in self.component_roots().items():
            for m in mods:
                if m is None:
                    continue
                hooks.append(m.register_forward_pre_hook(pre(comp)))
                hooks.append(m.register_forward_hook(post(comp)))

        def accumulated(p):
            if p.grad is not None:
                ledger.classify(p.grad, "gradients", pcomp.get(names.get(id(p), ""), "other"))

        for p in params:
            hooks.append(p.register_post_accumulate_grad_hook(accumulated))
        return hooks

    # -- result ---------------------------------------------------------------------------
    def _result(self, marks, step1_peak: int, params, pcomp) -> MemoryEstimate:
        led = self.ledger
        self._pcomp = pcomp
        since = marks[2]["start_t"]
        # What the caching allocator books: replaying the log through its pools gives each
        # allocation its block (a cached block too little larger to be split is handed out
        # whole, and max_memory_allocated counts it whole), and the reserved segments.
        replay = fc.replay_caching_allocator(led.entries, since)
        sizes = replay.booked

        # sharding / offload: scale categories on the single-rank log and find the new peak
        scale, extra, shard_notes = self._sharding()
        sharded = bool(scale) or extra is not None
        t = led.scaled_peak(scale, since, extra, sizes)[1] if sharded else replay.peak_tick
        cats, comps = led.breakdown_at(t, sizes)
        phase = led.phase_at(t)
        if sharded:
            cats = {c: int(v * scale.get(c, 1.0)) for c, v in cats.items()}
            comps = {c: int(v * scale.get("activations", 1.0)) for c, v in comps.items()}
            if extra is not None:
                for c, add in extra(phase).items():
                    cats[c] = cats.get(c, 0) + int(add)
        breakdown = {c: int(cats.get(c, 0)) for c in CATEGORIES}
        other = {c: v for c, v in cats.items() if c not in CATEGORIES and v}
        if other:
            breakdown["activations"] += sum(other.values())
        peak = sum(breakdown.values())
        acts = {c: int(v) for c, v in sorted(comps.items(), key=lambda kv: -kv[1]) if v}

        cache = max(replay.reserved_peak - replay.allocated_peak_window, 0)
        if sharded:  # the replay is of one unsharded rank: keep its cache fraction
            cache = int(peak * cache / max(replay.allocated_peak_window, 1))
        device = peak + cache + CUDA_CONTEXT_BYTES
        step1_booked = led.window_peak(marks[1]["start_t"], since, sizes)

        n_train = sum(p.numel() for p in params)
        n_total = sum(p.numel() for p in self.model.parameters())
        weights_by_comp: dict[str, int] = {}
        for n, p in self.model.named_parameters():
            c = pcomp.get(n, "other")
            weights_by_comp[c] = weights_by_comp.get(c, 0) + fc.rounded(p.numel() * p.element_size())
        phases = {}
        for ph, (b, tp) in led.phase_peaks(since, sizes).items():
            if ph in ("forward", "backward", "optimizer"):
                pc, _ = led.breakdown_at(tp, sizes)
                phases[ph] = {"peak_bytes": int(b), "breakdown": {c: int(pc.get(c, 0)) for c in CATEGORIES}}
        self.details.update(
            step2_phase_peaks=phases,
            model_type=self.model_type,
            trainable_params=n_train,
            total_params=n_total,
            step1_peak_bytes=int(step1_booked),
            step2_peak_unsharded_bytes=int(replay.allocated_peak_window),
            step2_peak_rounded_bytes=int(led.peak),
            step1_peak_rounded_bytes=int(step1_peak),
            weights_plus_optimizer_state_bytes=int(marks[2]["start_total"]),
            reserved_peak_bytes=int(replay.reserved_peak),
            allocator_cache_bytes=int(cache),
            cuda_context_bytes=CUDA_CONTEXT_BYTES,
            weights_by_component=weights_by_comp,
            sdpa_backends=dict(led.sdpa_backends),
            fake_device="cpu (FakeTensorMode)",
            target_gpu="sm90 (H100/H200) defaults: 32 MiB cuBLAS workspace per thread",
        )
        notes = self._notes(breakdown, acts, phase, n_train, shard_notes)
        return MemoryEstimate(
            method="simulate",
            peak_bytes=int(peak),
            breakdown=breakdown,
            phase=phase if phase in ("forward", "backward", "optimizer") else "optimizer",
            device_estimate_bytes=int(device),
            activations_by_component=acts,
            notes=notes,
            details=self.details,
        )

    def _sharding(self):
        w = self.w
        n = w.gpus
        scale: dict[str, float] = {}
        notes: list[str] = []
        extra = None
        if w.offload_optimizer:
            scale["optimizer_state"] = 0.0
            scale["optimizer_temp"] = 0.0
            notes.append("Optimizer offload: optimizer state and the step's temporaries are on the CPU.")
        if n > 1 and w.sharding == "ddp":
            grads = sum(fc.rounded(p.numel() * p.element_size())
                        for p in self.model.parameters() if p.requires_grad)
            if grads:
                extra = lambda phase, g=grads: {"gradients": g}  # noqa: E731
                notes.append(
                    f"DDP on {n} GPUs: nothing is sharded; DDP's gradient buckets "
                    f"(gradient_as_bucket_view=False, the default) hold another copy of the "
                    f"trainable gradients ({grads / GiB:.2f} GiB, under gradients).")
        elif n > 1:
            if not w.offload_optimizer:
                scale["optimizer_state"] = 1.0 / n
                scale["optimizer_temp"] = 1.0 / n
            if w.sharding in ("zero2", "zero3", "fsdp"):
                scale["gradients"] = 1.0 / n
            if w.sharding in ("zero3", "fsdp"):
                scale["weights"] = 1.0 / n
                root, unit, root_grad, unit_grad = self._fsdp_units()
                gathered = root * (1 - 1 / n) + 2 * unit * (1 - 1 / n)
                grad_ws = root_grad * (1 - 1 / n) + unit_grad

                def extra(phase, g=gathered, gw=grad_ws):
                    if phase == "forward":
                        return {"weights": g}
                    if phase == "backward":
                        return {"weights": g, "gradients": gw}
                    return {}
                notes.append(
                    f"{w.sharding.upper()} on {n} GPUs (one rank simulated, sharding applied "
                    f"analytically): weights, gradients and optimizer state are divided by {n}; "
                    f"while computing, the gathered working set is the non-layer weights "
                    f"({root / GiB:.2f} GiB, kept gathered like an FSDP root unit) plus two "
                    f"layers (current and prefetched, {2 * unit / GiB:.2f} GiB); in backward also "
                    f"one layer's unsharded gradients before reduce-scatter.")
            else:
                notes.append(
                    f"{w.sharding.upper()} on {n} GPUs (one rank simulated, sharding applied "
                    f"analytically): optimizer state{' and gradients' if w.sharding == 'zero2' else ''} "
                    f"divided by {n}; communication buckets are not counted.")
        return scale, extra, notes

    def _fsdp_units(self) -> tuple[int, int, int, int]:
        from transformers.modeling_layers import GradientCheckpointingLayer

        seen: set[int] = set()
        unit = unit_grad = 0
        for m in self.model.modules():
            if isinstance(m, GradientCheckpointingLayer):
                b = g = 0
                for p in m.parameters():
                    seen.add(id(p))
                    nb = fc.rounded(p.numel() * p.element_size())
                    b += nb
                    g += nb if p.requires_grad else 0
                unit = max(unit, b)
                unit_grad = max(unit_grad, g)
        root = root_grad = 0
        for p in self.model.parameters():
            if id(p) not in seen:
                nb = fc.rounded(p.numel() * p.element_size())
                root += nb
                root_grad += nb if p.requires_grad else 0
        return root, unit, root_grad, unit_grad

    def _notes(self, bd, acts, phase, n_train, shard_notes) -> list[str]:
        w = self.w
        notes = list(shard_notes)
        g = lambda b: f"{b / GiB:.2f} GiB"  # noqa: E731
        notes.append(
            f"Peak of the steady-state step (step 2) is in the {phase}: weights {g(bd['weights'])}, "
            f"gradients {g(bd['gradients'])}, optimizer state {g(bd['optimizer_state'])}, "
            f"activations {g(bd['activations'])}, logits/loss {g(bd['logits_loss'])}.")
        if n_train == 0:
            notes.append("Nothing is trainable: no backward pass and no optimizer step run.")
        trained = {self._pcomp.get(n, "other") for n, p in self.model.named_parameters() if p.requires_grad}
        if acts.get("llm", 0) and "llm" not in trained and trained & {"vision", "projector"}:
            notes.append(f"The language model is frozen but keeps {g(acts['llm'])} of activations: "
                         "gradients flow back through it to the trainable parts upstream "
                         f"({', '.join(sorted(trained & {'vision', 'projector'}))}).")
        if "vision" not in trained and acts.get("vision", 0) and (w.grad_ckpt or self.input_require_grads):
            notes.append(f"The frozen vision tower keeps {g(acts['vision'])} of activations because the "
                         "input-embedding requires_grad hooks make its patch embedding output require grad.")
        if w.grad_ckpt:
            notes.append(
                "Gradient checkpointing (use_reentrant=False) keeps only each layer's input and "
                "recomputes the layer in backward. transformers' input-embedding requires_grad hooks "
                "are installed with it, so even a frozen vision tower builds an autograd graph.")
        elif self.input_require_grads:
            notes.append(
                "transformers' input-embedding requires_grad hooks are active without checkpointing "
                "(left over from an earlier gradient_checkpointing_enable()): frozen modules upstream "
                "of the trainable ones keep activations. disable_input_require_grads() removes them, "
                "but only the last set registered.")
        if self.autocast_dtype is not None:
            notes.append(
                f"Autocast {w.autocast}: matmul inputs are cast to {w.autocast}; with fp32 weights "
                "a 16-bit copy of each trainable weight is cached during the forward, and the cast "
                "copies of frozen weights needed for backward are kept too.")
        if acts.get("kv_cache"):
            notes.append(
                f"The language model fills a KV cache during the training forward "
                f"({g(acts['kv_cache'])} at the peak, held by the model output until it is deleted): "
                "`model.config.use_cache = False` does not reach the text config in transformers 5.x. "
                "Passing use_cache=False to the forward (or setting it on the text config) drops it.")
        if acts.get("outputs"):
            notes.append(f"Tensors returned in the model output (e.g. the vision tower's hidden states) "
                         f"hold {g(acts['outputs'])} until the output is deleted.")
        tw = self.details.get("trainable_without_grad") or []
        if tw:
            notes.append(f"{len(tw)} trainable parameter(s) never get a gradient (e.g. "
                         f"{tw[0]}); the optimizer keeps no state for them.")
        bk = self.ledger.sdpa_backends
        if bk and w.attn == "sdpa":
            notes.append("SDPA runs as on an H100: " + ", ".join(f"{k} x{v}" for k, v in sorted(bk.items()))
                         + " calls over the two steps (flash / efficient keep only output + logsumexp).")
        notes.append(
            "Device estimate = peak + allocator cache (replay of the CUDA caching allocator's "
            "pools on the step's allocations) + CUDA context (768 MiB, as measured on an H100).")
        return notes + [n for n in self.notes if n not in notes]


def _tensors(obj) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            out.extend(_tensors(v))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out.extend(_tensors(v))
    return out


class AdamW8bitLike(torch.optim.Optimizer):
    """Memory stand-in for bitsandbytes' AdamW8bit (not installed here).

    Per parameter with at least 4096 elements (bnb's `min_8bit_size`): two uint8
    moments (1 byte each per element) plus an fp32 absmax per 256-element block;
    smaller parameters keep fp32 moments, as bnb does. The update is one fused
    in-place kernel, so the step allocates no temporaries; `step` is a host int.
    """

    def __init__(self, params, lr: float = LR) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    if p.numel() >= 4096:
                        blocks = -(-p.numel() // 256)
                        st["state1"] = torch.zeros_like(p, dtype=torch.uint8)
                        st["state2"] = torch.zeros_like(p, dtype=torch.uint8)
                        st["absmax1"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
                        st["absmax2"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
                    else:
                        st["state1"] = torch.zeros_like(p, dtype=torch.float32)
                        st["state2"] = torch.zeros_like(p, dtype=torch.float32)
                st["step"] += 1
        return None
