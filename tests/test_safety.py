"""Safe in public, steady under load: no code from checkpoints, weights only within limits and free memory,
Hub ids config-only, bounded regexes, caches bounded by bytes, sessions that never see each other, runs
cancelled when their browser session ends, and the public-mode switches of the launched app."""

from __future__ import annotations

import ast
import copy
import gc
import json
import os
import random
import threading
import time
import tracemalloc
import urllib.request
import weakref
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import huggingface_hub
import pytest

from freezelab import charts, models, plans, selectors
from freezelab.cli import main
from freezelab.errors import SelectorError, SourceError
from freezelab.index import ModelIndex
from freezelab.model_cache import ModelCache, index_bytes
from freezelab.models import build, index_of, load_weights
from freezelab.plans import Plan, Rule, hits, preset, resolve
from freezelab.policy import LOCAL, PolicyError, from_options, public_policy
from freezelab.selectors import PLAN_BUDGET_S, SELECTOR_BUDGET_S, select
from freezelab.session import Session
from freezelab.sources import KNOWN_DIR, TINY_CONFIG
from freezelab.sources import resolve as resolve_source
from freezelab.step import StepError, WontFitError, iter_step
from freezelab.ui import export_view as export_view_mod
from freezelab.ui import handlers
from freezelab.ui.tree_view import tree_json
from freezelab.ui.verify_view import run_step
from freezelab.workload import Workload

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [*ROOT.glob("freezelab/**/*.py"), ROOT / "app.py"]
LLAVA_7B_TOTAL = 7_063_427_072  # the published llava-1.5-7b (shared calibration README)

# Imported or run, this writes the marker: checkpoints below carry it as custom model / generate code.
MARKER_CODE = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n"


# -- no code from checkpoints ------------------------------------------------------------------

def _calls(path: Path) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, ast.Call)]


def _name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def test_no_call_can_trust_remote_code_and_hub_downloads_are_config_only():
    loaders = 0
    for path in SOURCES:
        for call in _calls(path):
            kwargs = {k.arg: k.value for k in call.keywords if k.arg}
            if "trust_remote_code" in kwargs:
                value = kwargs["trust_remote_code"]
                assert isinstance(value, ast.Constant) and value.value is False, f"{path}:{call.lineno}"
            if _name(call) == "from_pretrained":  # explicit False: a later **kwargs could not override it
                loaders += 1
                assert "trust_remote_code" in kwargs, f"{path}:{call.lineno} leaves trust_remote_code to a prompt"
            if _name(call) == "hf_hub_download":
                assert [a.value for a in call.args[1:2] if isinstance(a, ast.Constant)] == ["config.json"]
            assert _name(call) not in ("load", "loads") or not (
                isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") in ("torch", "pickle")
            ), f"{path}:{call.lineno} unpickles directly"
    assert loaders == 2  # the checkpoint's model (models.load_weights) and its processor (batch.load_processor)


def _checkpoint(directory: Path, model, config_changes: dict, marker: Path) -> Path:
    model.save_pretrained(directory)  # safetensors + config.json
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **config_changes}))
    for module in ("modeling_evil.py", "configuration_evil.py"):
        (directory / module).write_text(MARKER_CODE.format(marker=str(marker)))
    (directory / "custom_generate").mkdir()
    (directory / "custom_generate" / "generate.py").write_text(MARKER_CODE.format(marker=str(marker)))
    return directory


def test_a_llava_checkpoint_that_ships_code_is_refused_in_both_modes(tmp_path, tiny_model, capsys):
    marker = tmp_path / "ran"
    auto_map = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel",
                "AutoModelForImageTextToText": "modeling_evil.EvilModel"}
    ckpt = _checkpoint(tmp_path / "ckpt", tiny_model, {"auto_map": auto_map}, marker)
    refusal = r"ckpt/config.json: its config names model code shipped with the checkpoint \(auto_map\), and " \
              "freezelab never runs code from a checkpoint; remove the auto_map entry to use transformers' own " \
              "LlavaForConditionalGeneration"
    for policy in (LOCAL, public_policy((tmp_path,))):
        with pytest.raises(SourceError, match=refusal):
            resolve_source(str(ckpt), policy=policy)
        with pytest.raises(SourceError, match=refusal):
            handlers.load_model(handlers.App.for_policy(policy), Session(), str(ckpt), weights=True)
    assert main(["step", str(ckpt), "--weights", "--steps", "1"]) == 2
    assert "never runs code from a checkpoint" in capsys.readouterr().err
    assert not marker.exists()


def test_the_step_loads_only_the_checked_config_and_weight_files(tmp_path, tiny_model, monkeypatch):
    """from_pretrained gets the config freezelab read and checked, and a directory holding links to the shards it
    validated: a config.json changed after the check (or a generation_config.json) is never read."""
    tiny_model.save_pretrained(tmp_path, max_shard_size="300KB")  # 4 shards and their index
    source = resolve_source(str(tmp_path))
    assert len(source.weights) == 4 and set(source.weight_map.values()) == {p.name for p in source.weights}
    swapped = json.loads((tmp_path / "config.json").read_text())
    swapped["text_config"]["hidden_size"] = 128  # the weights no longer fit this config
    (tmp_path / "config.json").write_text(json.dumps(swapped))
    (tmp_path / "generation_config.json").write_text("{ not JSON")
    seen: list[list[str]] = []
    original = type(tiny_model).from_pretrained.__func__

    def spy(cls, directory, *args, **kwargs):
        seen.append(sorted(p.name for p in Path(directory).iterdir()))
        assert kwargs["config"].text_config.hidden_size == tiny_model.config.text_config.hidden_size
        return original(cls, directory, *args, **kwargs)

    monkeypatch.setattr(type(tiny_model), "from_pretrained", classmethod(spy))
    loaded = load_weights(source, dtype="fp32")
    assert seen == [sorted(["model.safetensors.index.json", *(p.name for p in source.weights)])]
    assert all((loaded.state_dict()[k] == v).all() for k, v in tiny_model.state_dict().items())


def test_a_shard_named_outside_the_checkpoint_is_refused_in_both_modes(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    index = {"weight_map": {name: "model.safetensors" for name in tiny_model.state_dict()}}
    for shard in ("../../../../etc/passwd", "/etc/passwd", "sub/model.safetensors", "..", "C:\\model.safetensors"):
        index["weight_map"]["lm_head.weight"] = shard
        (tmp_path / "ckpt" / "model.safetensors.index.json").write_text(json.dumps(index))
        for policy in (LOCAL, public_policy((tmp_path,))):
            with pytest.raises(SourceError, match="names a shard that is not a file name inside the checkpoint"):
                resolve_source(str(tmp_path / "ckpt"), policy=policy)


def test_public_mode_refuses_a_checkpoint_with_any_link_leading_outside(tmp_path, tiny_model):
    root, outside = tmp_path / "models", tmp_path / "outside"
    tiny_model.save_pretrained(root / "ckpt")
    tiny_model.save_pretrained(outside)
    policy = public_policy((root,))
    assert resolve_source(str(root / "ckpt"), policy=policy).kind == "checkpoint"
    (root / "ckpt" / "inside.json").symlink_to(root / "ckpt" / "config.json")  # a link within the root is fine
    assert resolve_source(str(root / "ckpt"), policy=policy).kind == "checkpoint"
    (root / "ckpt" / "inside.json").unlink()
    for name, target in (("config.json", outside / "config.json"), ("model.safetensors", outside / "model.safetensors"),
                         ("tokenizer_config.json", outside / "config.json")):
        entry = root / "ckpt" / name
        saved = entry.read_bytes() if entry.exists() else None
        entry.unlink(missing_ok=True)
        entry.symlink_to(target)
        with pytest.raises(PolicyError, match=f"'{name}' in it leads outside the directories this public server"):
            resolve_source(str(root / "ckpt"), policy=policy)
        assert resolve_source(str(root / "ckpt"), policy=LOCAL).kind == "checkpoint"  # the user's own box is open
        entry.unlink()
        if saved is not None:
            entry.write_bytes(saved)


def _evil_bin(path: Path, marker: Path) -> None:
    import torch

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"lm_head.weight": Payload()}, path)


def test_a_pickle_that_runs_code_is_refused_and_safetensors_win(tmp_path, tiny_model):
    marker = tmp_path / "ran"
    only_bin = tmp_path / "only_bin"
    only_bin.mkdir()
    (only_bin / "config.json").write_text(TINY_CONFIG.read_text())
    _evil_bin(only_bin / "pytorch_model.bin", marker)
    with pytest.raises(SourceError, match="refused to load pytorch_model.bin: it holds objects other than tensors"):
        load_weights(resolve_source(str(only_bin)), dtype="fp32")
    assert not marker.exists()
    both = tmp_path / "both"
    tiny_model.save_pretrained(both)
    _evil_bin(both / "pytorch_model.bin", marker)
    source = resolve_source(str(both))
    assert [p.name for p in source.weights] == ["model.safetensors"]
    loaded = load_weights(source, dtype="fp32")
    assert all((loaded.state_dict()[k] == v).all() for k, v in tiny_model.state_dict().items())
    assert not marker.exists()


# -- weights: the public limit and free memory, before anything is read -------------------------

def _sparse_checkpoint(directory: Path, nbytes: int) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(TINY_CONFIG.read_text())
    with open(directory / "model.safetensors", "wb") as f:
        f.truncate(nbytes)  # sparse: the size on paper, nothing on disk
    return directory


def test_public_step_checks_the_weight_files_before_loading(tmp_path, monkeypatch):
    ckpt = _sparse_checkpoint(tmp_path / "models" / "big", 3 * 2**30)
    app = handlers.App.for_policy(public_policy((tmp_path / "models",)))
    with pytest.raises(PolicyError, match=r"its weights \(3.0 GiB\) exceed this server's limit of 2.0 GiB"):
        handlers.load_model(app, Session(), str(ckpt), weights=True)
    monkeypatch.setattr("freezelab.step.live.load_weights", lambda *a, **k: pytest.fail("weights were read"))
    session = replace(Session(), model=str(ckpt), weights=True)  # e.g. the file grew after it was loaded
    with pytest.raises(PolicyError, match="exceed this server's limit"):
        list(run_step(app, session, "cpu", 1, 1e-3))


def test_weights_beyond_free_memory_are_refused_before_reading(tmp_path, tiny_model, monkeypatch):
    tiny_model.save_pretrained(tmp_path)
    source = resolve_source(str(tmp_path))
    assert source.weight_bytes == (tmp_path / "model.safetensors").stat().st_size
    monkeypatch.setattr(models, "available_ram", lambda: source.weight_bytes - 1)
    monkeypatch.setattr(type(tiny_model), "from_pretrained", lambda *a, **k: pytest.fail("weights were read"))
    with pytest.raises(SourceError, match="inspect it architecture-only instead"):
        load_weights(source, dtype="fp32")


# -- Hub ids: config only ---------------------------------------------------------------------

def test_hub_ids_read_nothing_but_their_config(tmp_path, monkeypatch):
    config = tmp_path / "config.json"
    config.write_text(TINY_CONFIG.read_text())
    (tmp_path / "model.safetensors").write_bytes(b"weights next to the cached config are never used")
    asked: list[tuple[str, str]] = []

    def download(repo: str, filename: str, **_: object) -> str:
        asked.append((repo, filename))
        return str(config)

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **_: SimpleNamespace(size=1000))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    source = resolve_source("org/model", policy=public_policy())
    assert (source.kind, source.weights) == ("hub", ())
    app = handlers.App.for_policy(public_policy())
    with pytest.raises(SourceError, match="no weight files"):
        handlers.load_model(app, Session(), "org/model", weights=True)
    with pytest.raises(StepError, match="architecture without weights"):
        list(iter_step(source, Plan(), Workload(dtype="fp32"), weights=True))
    assert set(asked) == {("org/model", "config.json")}


def test_a_huge_hub_config_is_refused_before_it_is_downloaded(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the Hub is asked (patched below)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **_: SimpleNamespace(size=5 * 2**30))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(SourceError, match="5,368,709,120 bytes on the Hub; too large for a config file"):
        resolve_source("org/huge")


# -- configs: absurd sizes refused, large real ones still inspected ------------------------------

def _llama_params(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int) -> int:
    """A Llama decoder with untied head, no biases: embeddings, layers (attention, MLP, 2 norms), norm, head."""
    kv_dim = kv * hidden // heads
    layer = 2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * inter + 2 * hidden
    return 2 * vocab * hidden + layers * layer + hidden


def _projector(vision: int, hidden: int) -> int:
    return vision * hidden + hidden + hidden * hidden + hidden


def test_a_hypothetical_400b_llava_inspects_and_the_step_refuses_before_allocating(tmp_path, monkeypatch):
    base = json.loads((KNOWN_DIR / "llava-1.5-7b.json").read_text())
    vision = LLAVA_7B_TOTAL - _llama_params(32064, 4096, 11008, 32, 32, 32) - _projector(1024, 4096)
    big = copy.deepcopy(base)
    big["text_config"].update(hidden_size=16384, intermediate_size=53248, num_hidden_layers=126,
                              num_attention_heads=128, num_key_value_heads=8, vocab_size=128256)
    path = tmp_path / "llava-400b.json"
    path.write_text(json.dumps(big))
    source = resolve_source(str(path))
    index = index_of(source)
    assert index.total_params == vision + _projector(1024, 16384) + _llama_params(128256, 16384, 53248, 126, 128, 8)
    monkeypatch.setattr("freezelab.step.live.build", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(WontFitError, match="needs about .* at its peak"):
        list(iter_step(source, preset("stage1"), Workload(dtype="bf16")))


# -- regular expressions: one budget each, one per plan -----------------------------------------

def _long_names(index: ModelIndex) -> ModelIndex:
    """The index with 20 parameter names made of long runs of 'a': catastrophic for (a|aa)+$."""
    data = index.to_dict()
    for k, p in enumerate(data["params"][:20]):
        p["name"], p["aliases"] = "a" * 40 + f"b{k}", []
    return ModelIndex.from_dict(data)


def test_catastrophic_regex_against_long_names_stops_at_its_budget(tiny_index):
    index = _long_names(tiny_index)
    # CPU time of this process: the budget is wall-clock, so a stopped regex cannot have used more CPU
    # than it plus the stop's overhead, while a loaded machine's wall clock would only add waiting
    started = time.process_time()
    with pytest.raises(SelectorError, match="takes too long"):
        select(index, "re:(a|aa)+$")
    assert time.process_time() - started < SELECTOR_BUDGET_S + 1.0


def test_the_regexes_of_one_plan_share_one_budget(tiny_index, monkeypatch):
    monkeypatch.setattr(selectors, "SELECTOR_BUDGET_S", 60.0)  # only the plan's budget can stop them now
    index = _long_names(tiny_index)
    plan = Plan(rules=tuple(Rule("train", f"re:(a|aa)+$|x{i}") for i in range(50)))
    started = time.process_time()  # CPU time, as above: a loaded machine's waiting does not count
    with pytest.raises(SelectorError, match="rule 1 .* together take longer than 1 s"):
        resolve(plan, index)  # rule 1: the plan's budget stopped the first regex; the other 49 never ran
    # without the plan budget this would take 50 x 60 s
    assert time.process_time() - started < PLAN_BUDGET_S + 5.0


# -- caches bounded by bytes ---------------------------------------------------------------------

def test_the_index_cache_on_disk_keeps_its_newest_files_within_its_bound(tmp_path, monkeypatch, tiny_index):
    from freezelab import index as index_mod

    monkeypatch.setenv("FREEZELAB_CACHE", str(tmp_path))
    size = len(json.dumps(tiny_index.to_dict()))
    monkeypatch.setattr(index_mod, "CACHE_MAX_BYTES", 3 * size + size // 2)  # room for three
    (tmp_path / "index").mkdir()
    for n in range(6):
        index_mod.store_cached(f"key{n}", tiny_index)
        os.utime(tmp_path / "index" / f"key{n}.json", (1000 * (n + 1),) * 2)  # an ordered history
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["key3.json", "key4.json", "key5.json"]
    assert index_mod.load_cached("key5").total_params == tiny_index.total_params
    monkeypatch.setattr(index_mod, "CACHE_MAX_BYTES", size // 2)  # the one just written stays, whatever its size
    index_mod.store_cached("key6", tiny_index)
    assert [p.name for p in (tmp_path / "index").iterdir()] == ["key6.json"]


def test_the_model_cache_is_a_byte_bounded_lru():
    sizes = {name: ModelCache().get(name).nbytes for name in ("tiny", "llava-1.5-7b", "llava-1.5-13b")}
    assert sizes["tiny"] < sizes["llava-1.5-7b"] < sizes["llava-1.5-13b"]  # 4, 32 and 40 decoder layers
    cache = ModelCache(capacity=10, max_bytes=sizes["tiny"] + sizes["llava-1.5-13b"])
    for name in ("tiny", "llava-1.5-7b", "tiny", "llava-1.5-13b"):  # tiny was used after 7b: 7b goes
        cache.get(name)
    assert ("tiny", "bf16") in cache and ("llava-1.5-7b", "bf16") not in cache
    assert cache.nbytes == sizes["tiny"] + sizes["llava-1.5-13b"] == cache.max_bytes
    lone = ModelCache(capacity=10, max_bytes=1)  # nothing fits: the entry being served still stays
    lone.get("tiny")
    lone.get("llava-1.5-7b")
    assert len(lone) == 1 and ("llava-1.5-7b", "bf16") in lone


def test_the_index_size_estimate_matches_the_measured_memory():
    text = json.dumps(index_of(resolve_source("llava-1.5-7b")).to_dict())
    gc.collect()
    tracemalloc.start()
    fresh = ModelIndex.from_dict(json.loads(text))
    _ = fresh.by_name, fresh.module_by_path, fresh.numels
    measured = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert 0.5 < index_bytes(fresh) / measured < 2.0


def test_derived_data_does_not_keep_a_dropped_index_alive():
    index = index_of(resolve_source("tiny"))  # a fresh object, as the cache holds after a load
    mask = resolve(preset("stage2"), index).mask
    tree_json(index, mask)
    charts.model_map(index, mask)
    hits(index, "@llm")
    ref = weakref.ref(index)
    del index
    gc.collect()
    assert ref() is None


def test_the_selector_memo_is_bounded_by_the_indices_it_holds(monkeypatch):
    monkeypatch.setattr(plans, "MAX_HIT_INDICES", 1000)
    index = index_of(resolve_source("tiny"))
    per = len(select(index, r"re:^model\.|x"))  # every tensor but lm_head
    for i in range(100):
        hits(index, rf"re:^model\.|x{i}")
    memo = plans._hit_cache(index)
    assert memo.held == len(memo) * per <= 1000
    assert memo.get(r"re:^model\.|x99") is not None and memo.get(r"re:^model\.|x0") is None


# -- sessions ------------------------------------------------------------------------------------

class Expected:
    """One session's plan as a mask over the model's named_parameters (meta device), by name prefix."""

    PRESET_PREFIXES: ClassVar[dict[str, tuple[str, ...]]] = {"stage1": ("model.multi_modal_projector.",),
                       "stage2": ("model.multi_modal_projector.", "model.language_model.", "lm_head."),
                       "full": ("",), "llm": ("model.language_model.", "lm_head."),
                       "vision-projector": ("model.vision_tower.", "model.multi_modal_projector."),
                       "lm-head": ("lm_head.",), "frozen": ()}

    def __init__(self, model: str) -> None:
        net = build(resolve_source(model), device="meta")
        params = list(net.named_parameters())
        self.names = [n for n, _ in params]
        self.numels = [p.numel() for _, p in params]
        self.mask = [False] * len(params)
        self.paths = sorted({n.rsplit(".", k)[0] for n in self.names for k in (1, 2)})

    def preset(self, name: str) -> None:
        self.mask = [n.startswith(self.PRESET_PREFIXES[name]) for n in self.names]

    def toggle(self, path: str, on: bool) -> None:
        self.mask = [on if n.startswith(path + ".") else m for n, m in zip(self.names, self.mask)]

    @property
    def trainable(self) -> int:
        return sum(k for k, m in zip(self.numels, self.mask) if m)


def _drive(app: handlers.App, model: str, seed: int, events: int) -> list[str]:
    """One session through random presets and toggles; returns every mismatch with its own count."""
    rng = random.Random(seed)
    expected = Expected(model)
    session = handlers.load_model(app, Session(), model).session
    wrong = []
    for n in range(events):
        if rng.random() < 0.3:
            name = rng.choice(list(Expected.PRESET_PREFIXES))
            view = handlers.apply_preset(app, session, name)
            expected.preset(name)
        else:
            path, on = rng.choice(expected.paths), rng.random() < 0.6
            view = handlers.toggle_module(app, session, path, on)
            expected.toggle(path, on)
        session = view.session
        if view.trainable != expected.trainable or f">{expected.trainable:,}<" not in view.summary:
            wrong.append(f"{model} seed {seed} event {n}: {view.trainable:,} != {expected.trainable:,}")
    return wrong


def test_interleaved_sessions_each_count_their_own_plan():
    app = handlers.App()
    index = app.cache.get("llava-1.5-7b").index
    snapshot = json.dumps(index.to_dict(), sort_keys=True)
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda m=m, s=s: results.append(_drive(app, m, s, 25)))
               for s, m in enumerate(["tiny", "llava-1.5-7b", "tiny", "llava-1.5-7b"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and [w for r in results for w in r] == []
    assert json.dumps(app.cache.get("llava-1.5-7b").index.to_dict(), sort_keys=True) == snapshot


def test_a_closed_browser_session_cancels_its_run():
    import gradio as gr

    from freezelab.ui.blocks import create_app
    from freezelab.ui.verify_panel import CANCELS

    app = handlers.App()
    demo = create_app(app)
    unload = [fn.fn for fn in demo.fns.values() if any(t[1] == "unload" for t in fn.targets)]
    assert [fn.__name__ for fn in unload] == ["release_session"]
    release_session = unload[0]
    flag = CANCELS.start("closed-tab")
    release_session(gr.Request(session_hash="closed-tab"))
    session = replace(handlers.apply_preset(app, Session(), "stage1").session, workload=Workload(dtype="fp32"))
    final = list(run_step(app, session, "cpu", 3, 1e-3, flag))[-1][1]
    assert final.report.status == "cancelled" and final.report.steps == []
    CANCELS.finish("closed-tab", flag)
    assert not CANCELS.cancel("closed-tab")


# -- public mode switches -----------------------------------------------------------------------

def test_the_plan_file_input_never_downloads_a_url(monkeypatch):
    """Gradio downloads a file value whose path is a URL before any handler runs; the app's file input refuses."""
    import asyncio

    import gradio as gr
    from gradio import processing_utils

    from freezelab.ui.blocks import create_app

    fetched = []

    async def download(url: str, cache_dir: str) -> str:
        fetched.append(url)
        return str(ROOT / "README.md")

    monkeypatch.setattr(processing_utils, "async_ssrf_protected_download", download)
    demo = create_app(handlers.App.for_policy(public_policy()))
    upload = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "fl-import")
    value = {"path": "https://example.com/plan.json", "orig_name": "plan.json", "meta": {"_type": "gradio.FileData"}}
    with pytest.raises(gr.Error, match="only a file uploaded from your computer is accepted here, not a URL"):
        asyncio.run(processing_utils.async_move_files_to_cache(value, upload, check_in_upload_folder=True))
    assert fetched == []


def test_command_line_mode_wins_over_the_environment(tmp_path):
    assert from_options(False, (), {"SPACE_ID": "org/space", "FREEZELAB_PUBLIC": "1"}) is LOCAL
    assert from_options(None, (), {"SPACE_ID": "org/space"}).public
    policy = from_options(True, [tmp_path], {"FREEZELAB_MODEL_ROOTS": os.pathsep.join([str(tmp_path), "/srv/m"])})
    assert policy.public and policy.roots == (tmp_path.resolve(), Path("/srv/m").resolve())


def test_the_cli_stays_local_on_a_public_server(tmp_path, monkeypatch, capsys, tiny_model):
    monkeypatch.setenv("SPACE_ID", "org/space")
    monkeypatch.setenv("FREEZELAB_PUBLIC", "1")
    config = tmp_path / "config.json"
    config.write_text(TINY_CONFIG.read_text())
    assert main(["inspect", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_params"] == sum(p.numel() for p in tiny_model.parameters())


def test_the_launched_app_honours_public_and_model_root(tmp_path):
    import gradio_client

    from freezelab.ui.handlers import VIEW_IDS
    from freezelab.ui.launch import launch, stop

    # view outputs as gradio_client returns them: the session state (the first) is dropped
    STATUS, HEADER = VIEW_IDS.index("top.status") - 1, VIEW_IDS.index("top.header") - 1  # noqa: N806

    root, outside = tmp_path / "models", tmp_path / "outside"
    (root / "ckpt").mkdir(parents=True)
    outside.mkdir()
    (root / "ckpt" / "config.json").write_text(TINY_CONFIG.read_text())
    (outside / "config.json").write_text(TINY_CONFIG.read_text())
    proc, url = launch(args=("--public", "--model-root", str(root)))
    try:
        client = gradio_client.Client(url, verbose=False)
        out = client.predict("tiny", str(outside / "config.json"), "architecture only", api_name="/load_model")
        assert "outside the directories this public server may read" in out[STATUS]
        out = client.predict("tiny", str(root / "ckpt"), "architecture only", api_name="/load_model")
        assert out[HEADER].startswith("**ckpt**")
        client.predict(4, api_name="/preset_full")
        # refused by the run's validator, before it waits for the device slot (tests/test_run_limits.py)
        with pytest.raises(gradio_client.exceptions.ValidationError, match="at most 5 steps"):
            client.predict("cpu", 6, 1e-3, api_name="/sanity_step")
        plan = tmp_path / "plan.txt"
        plan.write_bytes(b"# padding\n" * 150_000)  # 1.5 MB: above the upload limit the server announces
        with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):
            client.predict(gradio_client.handle_file(str(plan)), api_name="/import_plan")
        client.close()
        with urllib.request.urlopen(url + "config", timeout=5) as r:
            config = json.loads(r.read().decode())
        assert config["max_file_size"] == 2**20
        mode = [c["props"]["value"] for c in config["components"] if c.get("props", {}).get("elem_id") == "fl-mode"]
        assert mode and f"local paths only under {root.resolve()}" in mode[0]
    finally:
        stop(proc)


def test_export_files_are_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(export_view_mod, "EXPORT_DIR", tmp_path)
    monkeypatch.setattr(export_view_mod, "MAX_EXPORT_FILES", 3)
    app = handlers.App()
    written = []
    for age, name in enumerate(["stage1", "stage2", "full", "llm", "lm-head"]):
        path = Path(export_view_mod.export_view(app, handlers.apply_preset(app, Session(), name).session).json_path)
        os.utime(path, (1000 * (age + 1),) * 2)  # an ordered history, whatever the clock's resolution
        written.append(path)
    assert sorted(tmp_path.iterdir()) == sorted(written[-3:])  # the newest three, and no temporary file


def test_a_load_click_keeps_the_cached_index_while_its_config_is_unchanged(tmp_path):
    """The Load button re-reads the config (`fresh`): the same config keeps the same index object, so
    what other sessions derived from it (kept estimates, layer stages, replays) stays; a changed config
    on disk gives a new index."""
    folder = tmp_path / "m"
    folder.mkdir()
    config = json.loads(TINY_CONFIG.read_text())
    (folder / "config.json").write_text(json.dumps(config))
    cache = ModelCache()
    first = cache.get(str(folder))
    again = cache.get(str(folder), fresh=True)
    assert again is first
    config["text_config"]["num_hidden_layers"] = config["text_config"]["num_hidden_layers"] + 1
    (folder / "config.json").write_text(json.dumps(config))
    changed = cache.get(str(folder), fresh=True)
    assert changed.index is not first.index
    assert len(changed.index.layers["llm"]) == len(first.index.layers["llm"]) + 1
    assert cache.get(str(folder)) is changed
