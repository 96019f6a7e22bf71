"""GPU measurements behind tests/data/validation-h200.jsonl (needs CUDA).

shared/calibration/measure.py's protocol (model built on the GPU in the row's
dtype, `model.config.use_cache = False`, two steps, peak over step 2) with the
knobs the calibration file does not vary: gradient checkpointing, eager
attention, optimizers, text-only and multi-image batches, fp32 weights with bf16
autocast, and LLaVA-OneVision / LLaVA-NeXT configs. Writes $OUT/validation.jsonl
(one row per case) and $OUT/diag.json (the caching allocator's history of step 2
for the cases marked diag: live allocations at the peak).

Configs are looked up beside this file, in assets/configs and in
../shared/calibration (llava-1.5-7b.config.json). `TINY=1` runs every case on the
tiny model (a CPU smoke test).

    OUT=out python benchmarks/measure_validation_gpu.py

As run for the committed data (torch 2.11 + CUDA 13, transformers 5.17, H200): the
cases of one model share the model object, like measure.py. Three checkpointing
cases in a row each called gradient_checkpointing_enable(), which registers a new
set of input-embedding requires_grad hooks and keeps handles only to the last set,
so the later gradient_checkpointing_disable() + disable_input_require_grads() left
hooks active; the affected rows carry `input_require_grads_hooks: true`.
"""
import gc, json, os, re, sys, time, traceback
import torch
import transformers
from transformers import AutoConfig

DEV = "cuda" if torch.cuda.is_available() else "cpu"
OUT = os.environ.get("OUT", "/tmp/gpuout")
os.makedirs(OUT, exist_ok=True)
HERE = os.path.dirname(os.path.abspath(__file__))
T0 = time.time()
LIMIT = float(os.environ.get("TIME_LIMIT", "400"))
TINY = os.environ.get("TINY") == "1"
MiB = 2**20


def mem():
    return torch.cuda.memory_allocated() if DEV == "cuda" else 0


def peak():
    return torch.cuda.max_memory_allocated() if DEV == "cuda" else 0


def reset():
    if DEV == "cuda":
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()


def plan(names, name, n_llm_layers):
    def m(rx): return {n for n in names if re.search(rx, n)}
    V, P, L = r"vision_tower\.", r"multi_modal_projector\.", r"(language_model\.|lm_head\.)"
    last4 = "|".join(rf"language_model\.layers\.{i}\." for i in range(n_llm_layers - 4, n_llm_layers))
    return {"projector": m(P), "projector+llm": m(P) | m(L), "llm": m(L), "all": set(names),
            "vision": m(V), "vision+projector": m(V) | m(P), "projector+last4": m(P) | m(last4),
            "last4": m(last4), "lm_head": m(r"lm_head\."), "none": set()}[name]


def find(name):
    root = os.path.dirname(HERE)
    for d in (HERE, os.path.join(root, "assets", "configs"), os.path.join(root, "..", "shared", "calibration")):
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    if name == "tiny.config.json":
        return os.path.join(root, "assets", "tiny", "config.json")
    raise FileNotFoundError(name)


def load_config(path):
    d = json.load(open(path)); d.pop("_freezelab", None); d.pop("architectures", None)
    mt = d.pop("model_type", "llava")
    return AutoConfig.for_model(mt, **d)


CLASSES = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration",
           "llava_onevision": "LlavaOnevisionForConditionalGeneration"}


def build(cfg, dtype):
    cls = getattr(transformers, CLASSES[cfg.model_type])
    reset()
    with torch.device(DEV):
        old = torch.get_default_dtype(); torch.set_default_dtype(dtype)
        model = cls(cfg)
        torch.set_default_dtype(old)
    model.config.use_cache = False
    return model


def image_inputs(model, cfg, n_images, per_sample, image_size, dtype):
    vc = cfg.vision_config
    S = vc.image_size
    if cfg.model_type == "llava":
        return {"pixel_values": torch.randn(n_images, 3, S, S, device=DEV, dtype=dtype)}
    mod = sys.modules[type(model.model).__module__]
    src = image_size or S
    patching = not (cfg.model_type == "llava_onevision" and per_sample > 1)
    P = mod.image_size_to_num_patches(image_size=[src, src], grid_pinpoints=cfg.image_grid_pinpoints,
                                      patch_size=S) if patching else 1
    kw = {"pixel_values": torch.randn(n_images, P, 3, S, S, device=DEV, dtype=dtype),
          "image_sizes": torch.tensor([[src, src]] * n_images, device=DEV)}
    if cfg.model_type == "llava_onevision":
        kw["batch_num_images"] = torch.tensor([per_sample] * (n_images // per_sample), device=DEV)
    return kw


def tokens_per_image(model, cfg, per_sample, image_size, dtype):
    n = per_sample if cfg.model_type == "llava_onevision" else 1
    kw = image_inputs(model, cfg, n, per_sample, image_size, dtype)
    with torch.no_grad():
        out = model.model.get_image_features(**kw)
    feats = getattr(out, "pooler_output", out)
    if isinstance(feats, tuple) and not isinstance(feats[0], torch.Tensor):
        feats = feats[0]
    if isinstance(feats, torch.Tensor):
        feats = [feats] if feats.dim() == 2 else list(feats)
    n_tok = feats[0].shape[0]
    del out, feats, kw
    return n_tok


def make_batch(model, cfg, case, dtype):
    bs, text, per = case["batch"], case["text_tokens"], case.get("images", 1)
    tok = tokens_per_image(model, cfg, per, case.get("image_size"), dtype) if per else 0
    itok = tok * per
    vocab = cfg.text_config.vocab_size
    ids = torch.randint(10, min(1000, vocab - 20), (bs, text + itok), device=DEV)
    ids[:, 1:1 + itok] = cfg.image_token_index if hasattr(cfg, "image_token_index") else cfg.image_token_id
    b = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    if per:
        b.update(image_inputs(model, cfg, bs * per, per, case.get("image_size"), dtype))
    labels = ids.clone(); labels[:, :1 + itok] = -100
    b["labels"] = labels
    return b, tok


def make_opt(name, params):
    if not params:
        return None
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-5)
    if name == "adamw-fused":
        return torch.optim.AdamW(params, lr=1e-5, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-5)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=1e-5, momentum=0.9)
    if name == "adafactor":
        return torch.optim.Adafactor(params)
    raise ValueError(name)


def analyze_history(snap, base):
    """Live allocations made during step 2 at the step-2 peak, grouped by frames."""
    traces = snap["device_traces"][0] if snap["device_traces"] else []
    cur = base; best = base; best_i = -1
    live = {}
    for i, ev in enumerate(traces):
        a = ev["action"]
        if a == "alloc":
            cur += ev["size"]; live[ev["addr"]] = (i, ev)
        elif a == "free_completed":
            if ev["addr"] in live:
                cur -= ev["size"]; live.pop(ev["addr"])
        if cur > best:
            best, best_i = cur, i
    # replay up to best_i
    live = {}
    for ev in traces[: best_i + 1]:
        if ev["action"] == "alloc":
            live[ev["addr"]] = ev
        elif ev["action"] == "free_completed":
            live.pop(ev["addr"], None)
    groups = {}
    for ev in live.values():
        fr = [f"{os.path.basename(f['filename'])}:{f['line']}:{f['name']}" for f in ev.get("frames", [])
              if "site-packages/torch/" not in f["filename"] or "optim" in f["filename"]][:5]
        key = (ev["size"], tuple(fr))
        g = groups.setdefault(key, [0, 0]); g[0] += 1; g[1] += ev["size"]
    top = sorted(groups.items(), key=lambda kv: -kv[1][1])[:40]
    at = traces[best_i] if best_i >= 0 else {}
    at_fr = [f"{os.path.basename(f['filename'])}:{f['line']}:{f['name']}" for f in at.get("frames", [])][:12]
    return dict(peak_from_trace=best, base=base, n_events=len(traces), peak_index=best_i,
                event_at_peak=dict(action=at.get("action"), size=at.get("size"), frames=at_fr),
                live_step2_allocs=[dict(size=k[0], count=v[0], bytes=v[1], frames=list(k[1])) for k, v in top])


def run_case(model, cfg, case, mname, diag=None):
    name = case["plan"]
    n_layers = cfg.text_config.num_hidden_layers
    train = plan([n for n, _ in model.named_parameters()], name, n_layers)
    for n, p in model.named_parameters():
        p.requires_grad_(n in train); p.grad = None
    if case.get("attn", "sdpa") != "sdpa":
        model.set_attn_implementation(case["attn"])
    if case.get("grad_ckpt"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
        model.disable_input_require_grads()
    model.train()
    gc.collect(); torch.cuda.empty_cache() if DEV == "cuda" else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_opt(case.get("optimizer", "adamw"), params)
    pdtype = next(model.parameters()).dtype
    amp = case.get("autocast") == "bf16"
    b, tok = make_batch(model, cfg, case, torch.bfloat16 if amp else pdtype)
    rec = dict(case, model=mname, param_dtype=str(pdtype), trainable_params=sum(p.numel() for p in params),
               image_tokens_per_image=tok, seq_len=b["input_ids"].shape[1], torch=torch.__version__,
               transformers=transformers.__version__)
    # measure.py keeps this snapshot during the steps; it is part of what was measured
    _snap = {n: p.detach()[..., :1].clone() for n, p in list(model.named_parameters())[::25]}
    steps = []
    try:
        for step in range(2):
            reset(); base = mem(); t0 = time.time()
            if diag is not None and step == 1 and DEV == "cuda":
                torch.cuda.memory._record_memory_history(max_entries=400000, stacks="python")
            with torch.autocast(DEV, dtype=torch.bfloat16, enabled=amp):
                out = model(**b)
            loss = out.loss
            pf = peak(); af = mem()
            if params:
                loss.backward()
            del out
            pb = peak(); ab = mem()
            reset()
            if opt: opt.step(); opt.zero_grad(set_to_none=True)
            po = peak(); ao = mem()
            extra = {}
            if DEV == "cuda":
                torch.cuda.synchronize(); free, total = torch.cuda.mem_get_info()
                extra = dict(reserved_peak=torch.cuda.max_memory_reserved(), device_used=total - free)
            steps.append(dict(base=base, peak_fwd=pf, after_fwd=af, peak_bwd=pb, after_bwd=ab, peak_opt=po,
                              after_step=ao, peak=max(pf, pb, po), seconds=time.time() - t0, **extra))
            if diag is not None and step == 1 and DEV == "cuda":
                s = torch.cuda.memory._snapshot()
                torch.cuda.memory._record_memory_history(enabled=None)
                diag[f"{mname}/{name}/b{case['batch']}"] = analyze_history(s, base)
                del s
            del loss
        s1, s2 = steps
        rec.update(ok=True, peak_allocated_bytes=s2["peak"], step1_peak_allocated_bytes=s1["peak"],
                   weights_plus_optimizer_state_bytes=s2["base"], peak_reserved_bytes=s2.get("reserved_peak"),
                   device_used_bytes=s2.get("device_used"), steps=steps)
    except torch.OutOfMemoryError:
        rec.update(ok=False, error="OOM", steps=steps)
    except Exception as e:
        rec.update(ok=False, error=f"{type(e).__name__}: {e}"[:500], steps=steps)
        traceback.print_exc()
    finally:
        del opt, params, b
        for p in model.parameters(): p.grad = None
        if case.get("attn", "sdpa") != "sdpa":
            model.set_attn_implementation("sdpa")
        gc.collect(); torch.cuda.empty_cache() if DEV == "cuda" else None
    return rec


MODELS = [
    ("llava-1.5-7b", "llava-1.5-7b.config.json", torch.bfloat16, [
        dict(plan="lm_head", batch=1, text_tokens=64, diag=True),
        dict(plan="projector+last4", batch=1, text_tokens=64, diag=True),
        dict(plan="projector", batch=2, text_tokens=256, grad_ckpt=True),
        dict(plan="last4", batch=2, text_tokens=256, grad_ckpt=True),
        dict(plan="vision+projector", batch=2, text_tokens=128, grad_ckpt=True),
        dict(plan="projector", batch=2, text_tokens=128, attn="eager"),
        dict(plan="last4", batch=1, text_tokens=256, optimizer="sgd-momentum"),
        dict(plan="last4", batch=1, text_tokens=256, optimizer="adafactor"),
        dict(plan="last4", batch=1, text_tokens=256, optimizer="adamw-fused"),
        dict(plan="last4", batch=2, text_tokens=512, images=0),
        dict(plan="projector", batch=2, text_tokens=64, images=2),
        dict(plan="llm", batch=2, text_tokens=448, grad_ckpt=True),
        dict(plan="all", batch=1, text_tokens=64, diag=True),
    ]),
    ("llava-onevision-qwen2-0.5b", "llava-onevision-qwen2-0.5b.json", torch.bfloat16, [
        dict(plan="projector", batch=1, text_tokens=64),
        dict(plan="llm", batch=2, text_tokens=256, grad_ckpt=True),
        dict(plan="all", batch=1, text_tokens=64),
        dict(plan="last4", batch=1, text_tokens=64, images=2, image_size=800),
        dict(plan="lm_head", batch=2, text_tokens=512, diag=True),
    ]),
    ("llava-1.5-7b-fp32", "llava-1.5-7b.config.json", torch.float32, [
        dict(plan="last4", batch=1, text_tokens=64, autocast="bf16"),
        dict(plan="projector", batch=2, text_tokens=256, autocast="bf16", grad_ckpt=True),
        dict(plan="projector", batch=1, text_tokens=64),
    ]),
    ("llava-v1.6-mistral-7b", "llava-v1.6-mistral-7b.json", torch.bfloat16, [
        dict(plan="projector", batch=1, text_tokens=64),
        dict(plan="last4", batch=1, text_tokens=64, image_size=672, grad_ckpt=True),
    ]),
]


def main():
    only = os.environ.get("ONLY")
    rows, diag = [], {}
    out = open(os.path.join(OUT, "validation.jsonl"), "w")
    print("device", torch.cuda.get_device_name() if DEV == "cuda" else "cpu", torch.__version__,
          transformers.__version__, flush=True)
    for mname, cfile, dtype, cases in MODELS:
        if only and mname not in only.split(","):
            continue
        if time.time() - T0 > LIMIT:
            print("time limit: skipping", mname); continue
        cfg = load_config(find("tiny.config.json" if TINY else cfile))
        t0 = time.time()
        model = build(cfg, dtype)
        print(mname, "built", round(time.time() - t0, 1), "s", round(mem() / 2**30, 2), "GiB", flush=True)
        for case in cases:
            if time.time() - T0 > LIMIT:
                print("time limit: skipping", case); continue
            want = case.pop("diag", False)
            if os.environ.get("DIAG_ONLY") == "1" and not want:
                continue
            d = diag if want else None
            rec = run_case(model, cfg, case, mname, d)
            out.write(json.dumps(rec) + "\n"); out.flush()
            rows.append(rec)
            print(f"{mname:26s} {json.dumps({k: v for k, v in case.items()})[:90]:90s} "
                  f"{'ok' if rec['ok'] else rec.get('error', '')[:60]} peak={rec.get('peak_allocated_bytes', 0) / MiB:.1f}MiB "
                  f"s1={rec.get('step1_peak_allocated_bytes', 0) / MiB:.1f} tok={rec.get('image_tokens_per_image')} "
                  f"t={time.time() - T0:.0f}s", flush=True)
        del model; gc.collect(); torch.cuda.empty_cache() if DEV == "cuda" else None
    json.dump(diag, open(os.path.join(OUT, "diag.json"), "w"), indent=1)
    print("done", round(time.time() - T0, 1), "s")


if __name__ == "__main__":
    main()
