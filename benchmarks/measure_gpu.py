"""Measure the GPU memory of LLaVA training steps with the calibration protocol (needs CUDA).

Same protocol as the calibration rows (../shared/calibration/measure.py): the
model is built from its config with random weights directly on the GPU,
`use_cache=False`, the plan sets requires_grad, an optimizer is created
before step 1, two full steps run (forward with labels, backward,
optimizer.step(), zero_grad(set_to_none=True)), and the peak of step 2 is
`torch.cuda.max_memory_allocated()` (forward + backward and the optimizer
step measured separately, the step's peak is the larger). Gradient
checkpointing, when on, is HF's non-reentrant one with its input hooks.

    python benchmarks/measure_gpu.py OUT.jsonl [--budget-s 360]

Writes one JSON line per case (same field names as the calibration file, plus
`attn`, `optimizer_name`, `image_size`, `text_use_cache`, and `device_name` and
`step_seconds`, the wall-clock time of step 2 from forward to zero_grad, which
benchmarks/time_accuracy.py compares with the time model; a traced case's time
includes the tracing and is left out). Cases marked `trace`
also record the allocator's history over step 2 and list the blocks alive at
the peak (how the KV-cache and autocast effects were found). Only torch,
transformers and freezelab.tokens (pure Python) are imported.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from freezelab.tokens import image_layout  # noqa: E402

DEV = "cuda"
PLANS = {
    "projector": [r"multi_modal_projector\.|image_newline"],
    "projector+llm": [r"multi_modal_projector\.|image_newline", r"language_model\.|lm_head\."],
    "llm": [r"language_model\.|lm_head\."],
    "all": [r"."],
    "vision": [r"vision_tower\."],
    "vision+projector": [r"vision_tower\.", r"multi_modal_projector\.|image_newline"],
    "lm_head": [r"^lm_head\."],
}


def last_n(n_layers: int, n: int = 4) -> str:
    return "|".join(rf"language_model\.layers\.{i}\." for i in range(n_layers - n, n_layers))


def trainable(model: torch.nn.Module, plan: str, n_layers: int) -> set[str]:
    names = [n for n, _ in model.named_parameters()]
    rules = list(PLANS.get(plan, []))
    if plan in ("last4", "projector+last4"):
        rules.append(last_n(n_layers))
    if plan == "projector+last4":
        rules.append(PLANS["projector"][0])
    if plan == "lm_head" and not any(n.startswith("lm_head.") for n in names):
        rules = [r"embed_tokens\."]  # tied: lm_head is the input embedding
    return {n for n in names if any(re.search(r, n) for r in rules)}


def build(config_path: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, dict]:
    import transformers

    raw = {k: v for k, v in json.loads(config_path.read_text()).items() if not k.startswith("_freezelab")}
    # transformers 5 builds each sub-model in its config's own dtype: drop them so every tensor
    # takes the dtype asked for, as in the calibration protocol
    for sub in (raw, raw.get("text_config") or {}, raw.get("vision_config") or {}):
        sub.pop("torch_dtype", None)
        sub.pop("dtype", None)
    cfg = transformers.CONFIG_MAPPING[raw["model_type"]].from_dict(raw)
    cls = getattr(transformers, raw["architectures"][0])
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(DEV):
        model = cls(cfg)
    torch.set_default_dtype(old)
    model.config.use_cache = False
    return model, cfg.to_dict()


def batch(model: torch.nn.Module, cfg: dict, bs: int, text: int, images: int, size: int | None,
          pix_dtype: torch.dtype) -> tuple[dict, int, int]:
    hf = model.config
    vocab = hf.text_config.vocab_size
    layout = image_layout(cfg, size, images) if images else None
    img_tokens = images * layout.image_tokens if layout else 0
    seq = text + img_tokens
    ids = torch.randint(10, min(1000, vocab - 20), (bs, seq), device=DEV)
    ids[:, 1:1 + img_tokens] = hf.image_token_id if hasattr(hf, "image_token_id") else hf.image_token_index
    labels = ids.clone()
    labels[:, :1 + img_tokens] = -100
    out = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    if layout:
        side = hf.vision_config.image_size
        if cfg["model_type"] in ("llava_next", "llava_onevision"):
            out["pixel_values"] = torch.randn(bs * images, layout.tiles, 3, side, side, device=DEV, dtype=pix_dtype)
            out["image_sizes"] = torch.tensor([[layout.image_size] * 2] * (bs * images), device=DEV)
        else:
            out["pixel_values"] = torch.randn(bs * images, 3, side, side, device=DEV, dtype=pix_dtype)
    return out, seq, img_tokens


def make_optimizer(name: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if name == "adamw-fused":
        return torch.optim.AdamW(params, lr=1e-5, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-5)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=1e-5, momentum=0.9)
    if name == "adafactor":
        return torch.optim.Adafactor(params, lr=1e-5)
    return torch.optim.AdamW(params, lr=1e-5)


def set_attn(model: torch.nn.Module, attn: str) -> None:
    model.set_attn_implementation(attn)


def run_case(model: torch.nn.Module, cfg: dict, name: str, case: dict, trace: bool = False) -> dict:
    plan, bs, text = case["plan"], case["batch"], case["text"]
    images, size = case.get("images", 1), case.get("image_size")
    ckpt, amp, attn, optim = case.get("ckpt", False), case.get("amp", False), case.get("attn", "sdpa"), \
        case.get("optim", "adamw")
    n_layers = model.config.text_config.num_hidden_layers
    train = trainable(model, plan, n_layers)
    for n, p in model.named_parameters():
        p.requires_grad_(n in train)
        p.grad = None
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
        model.disable_input_require_grads()
    set_attn(model, attn)
    model.config.text_config.use_cache = not case.get("no_cache", False)
    model.train()
    gc.collect()
    torch.cuda.empty_cache()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(optim, params)
    pdtype = next(model.parameters()).dtype
    b, seq, img_tokens = batch(model, cfg, bs, text, images, size, torch.bfloat16 if amp else pdtype)
    rec = dict(model=name, plan=plan, batch=bs, text_tokens=text, images_per_sample=images, image_size=size,
               seq_len=seq, image_tokens=img_tokens, param_dtype=str(pdtype).replace("torch.", ""),
               autocast_bf16=amp, grad_checkpointing=ckpt, attn=attn, optimizer_name=optim,
               text_use_cache=model.config.text_config.use_cache,
               trainable_params=sum(p.numel() for p in params),
               total_params=sum(p.numel() for p in model.parameters()))
    steps = []
    try:
        for step in range(2):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            if trace and step == 1:
                torch.cuda.memory._record_memory_history(max_entries=200000, stacks="python")
            with torch.autocast(DEV, dtype=torch.bfloat16, enabled=amp):
                out = model(**b)
            loss = out.loss
            loss.backward()
            del out
            torch.cuda.synchronize()
            peak_fb = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            peak_opt = torch.cuda.max_memory_allocated()
            free, total = torch.cuda.mem_get_info()
            steps.append(dict(base=base, peak_fwd_bwd=peak_fb, peak_opt=peak_opt, seconds=time.perf_counter() - t0,
                              reserved_peak=torch.cuda.max_memory_reserved(), device_used=total - free))
            if trace and step == 1:
                rec["trace"] = analyse_trace(torch.cuda.memory._snapshot())
                torch.cuda.memory._record_memory_history(enabled=None)
            del loss
        last = steps[-1]
        rec.update(peak_allocated_bytes=max(last["peak_fwd_bwd"], last["peak_opt"]),
                   step1_peak_allocated_bytes=max(steps[0]["peak_fwd_bwd"], steps[0]["peak_opt"]),
                   weights_plus_optimizer_state_bytes=last["base"], peak_reserved_bytes=last["reserved_peak"],
                   device_used_bytes=last["device_used"], peak_phase="optimizer" if last["peak_opt"] >
                   last["peak_fwd_bwd"] else "forward/backward", steps=steps, ok=True,
                   device_name=torch.cuda.get_device_name())
        if not trace:
            rec["step_seconds"] = last["seconds"]
    except torch.OutOfMemoryError:
        rec.update(ok=False, error="OOM", steps=steps)
    except Exception as err:  # one broken case must not cost the rest of a short GPU lease
        rec.update(ok=False, error=f"{type(err).__name__}: {err}"[:300], steps=steps)
    finally:
        del opt, params
        for p in model.parameters():
            p.grad = None
        gc.collect()
        torch.cuda.empty_cache()
    return rec


def analyse_trace(snapshot: dict) -> list[str]:
    """Replay the allocator trace, find the peak, and group the blocks alive there (over 1 MiB) by size,
    Python frame (blank: allocated on autograd's backward thread) and allocation order."""
    events = [e for dev in snapshot.get("device_traces", []) for e in dev]
    live: dict[int, tuple[int, str, int]] = {}
    cur = best = 0
    best_live: dict[int, tuple[int, str, int]] = {}
    best_at = 0
    for n, e in enumerate(events):
        if e["action"] == "alloc":
            frames = [f for f in e.get("frames", []) if "/torch/" not in f["filename"]
                      and "measure_gpu" not in f["filename"]]
            where = ";".join(f"{Path(f['filename']).name}:{f['line']}:{f['name']}" for f in frames[:2])
            live[e["addr"]] = (e["size"], where, n)
            cur += e["size"]
            if cur > best:
                best, best_live, best_at = cur, dict(live), n
        elif e["action"] == "free_completed" and e["addr"] in live:
            cur -= live.pop(e["addr"])[0]
    groups: dict[tuple[int, str], list[int]] = {}
    for size, where, n in best_live.values():
        if size >= 2**20:
            groups.setdefault((size, where), []).append(n)
    rows = sorted(groups.items(), key=lambda kv: -kv[0][0] * len(kv[1]))
    out = [f"peak delta {best / 2**20:.1f} MiB at event {best_at}/{len(events)}"]
    for (size, where), ns in rows[:30]:
        out.append(f"{len(ns):3d} x {size / 2**20:9.2f} MiB = {len(ns) * size / 2**20:9.1f}  first@{min(ns)} {where}")
    return out


# The cases behind tests/data/measured-extra-h100.jsonl, in the order they ran. Every
# gradient_checkpointing_enable() call overwrites the list of input hooks the previous call installed,
# so after two checkpointed cases in a row those hooks stay on for the rest of that model's cases
# (the rows after the three checkpointed 7B bf16 cases are marked input_require_grads_hooks).
CASES = [
    # (model config, dtype, [cases])
    ("llava-1.5-7b", torch.bfloat16, [
        dict(plan="lm_head", batch=1, text=64, trace=True),
        dict(plan="projector", batch=4, text=448, ckpt=True),
        dict(plan="last4", batch=4, text=448, ckpt=True),
        dict(plan="vision+projector", batch=2, text=448, ckpt=True),
        dict(plan="projector", batch=2, text=448, attn="eager"),
        dict(plan="last4", batch=4, text=1024, images=0),
        dict(plan="last4", batch=2, text=448, optim="adamw-fused"),
        dict(plan="last4", batch=2, text=448, optim="sgd-momentum"),
        dict(plan="last4", batch=2, text=448, optim="adafactor"),
        dict(plan="projector+llm", batch=2, text=448, ckpt=True, optim="sgd"),
        dict(plan="vision", batch=4, text=448),
        dict(plan="projector", batch=8, text=448),
    ]),
    ("llava-interleave-qwen-0.5b", torch.bfloat16, [
        dict(plan="all", batch=4, text=295),
        dict(plan="projector", batch=4, text=295),
        dict(plan="lm_head", batch=4, text=295),
        dict(plan="all", batch=4, text=295, ckpt=True),
        dict(plan="last4", batch=8, text=295, trace=True),
    ]),
    ("llava-onevision-qwen2-0.5b", torch.bfloat16, [
        dict(plan="projector", batch=2, text=256, image_size=384),
        dict(plan="all", batch=2, text=256, image_size=768),
        dict(plan="vision+projector", batch=1, text=256, image_size=1000, ckpt=True),
    ]),
    ("llava-1.5-7b", torch.float32, [
        dict(plan="projector", batch=4, text=448, amp=True, trace=True),
        dict(plan="last4", batch=2, text=448, amp=True),
        dict(plan="lm_head", batch=2, text=448, amp=True, trace=True),
        dict(plan="projector", batch=2, text=448),
        dict(plan="projector", batch=1, text=64, amp=True),
        dict(plan="vision", batch=2, text=448, amp=True),
    ]),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--budget-s", type=float, default=360.0)
    args = ap.parse_args()
    start = time.time()
    with args.out.open("a") as f:
        for name, dtype, cases in CASES:
            if time.time() - start > args.budget_s:
                break
            t0 = time.time()
            model, cfg = build(ROOT / "assets" / "configs" / f"{name}.json", dtype)
            print(f"built {name} {dtype} in {time.time() - t0:.1f}s", flush=True)
            for case in cases:
                if time.time() - start > args.budget_s:
                    print("budget spent; stopping", flush=True)
                    break
                t0 = time.time()
                rec = run_case(model, cfg, name, case, trace=case.get("trace", False))
                f.write(json.dumps(rec) + "\n")
                f.flush()
                peak = rec.get("peak_allocated_bytes", 0) / 2**30
                print(f"{name} {case} -> {peak:.3f} GiB {rec.get('peak_phase', rec.get('error'))} "
                      f"({time.time() - t0:.1f}s)", flush=True)
                for line in rec.get("trace", []):
                    print("   ", line, flush=True)
            del model
            gc.collect()
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
