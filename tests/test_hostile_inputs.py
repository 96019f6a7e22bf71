"""Broken and hostile input, one table: every row goes to the CLI (`freezelab.cli.main`) or to a dashboard
handler under a local or public policy. Each must give one clear one-line message (exit status 2 and a single
`error:` line for the CLI; a FreezelabError, or a warning the page shows, for a handler), run no code from the
input, leave the session as it was, and leave the app answering a normal request with the right count."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from freezelab.cli import main
from freezelab.errors import (FreezelabError, NotLlavaError, PlanError, PlanLimitError, SelectorError,
                              SelectorLimitError, SourceError)
from freezelab.models import build
from freezelab.plans import MAX_PLAN_BYTES
from freezelab.policy import PolicyError, public_policy
from freezelab.sources import TINY_CONFIG, resolve
from freezelab.step import StepError
from freezelab.ui import handlers
from freezelab.ui.handlers import OptionError
from freezelab.ui.verify_view import VerifyError, run_step, simulate
from freezelab.workload import Workload, WorkloadError

TINY = json.loads(TINY_CONFIG.read_text())
SLOW_REGEX = r"re:(?:[a-z_]|[a-z])+\d$"   # backtracks on every real parameter name: only the budget stops it
SLOW_GLOB = "*?" * 12 + "Z"    # a backtracking matcher tries every split of each name segment: 22 s on a 72B model
BUSY_GLOB = "*?" * 12 + "*"    # matches (segments of 12+ characters) after a full pass over every name
WIDE_REGEX = "lm_head|" + "|".join(rf"layers\.{i}\.mlp" for i in range(30))  # a millisecond or two to compile
HANG_S = 10.0   # far above any refusal here (regex budgets: 0.25 s each, 1 s per plan); a hang would take minutes


def tiny_with(changes: dict[str, Any]) -> dict[str, Any]:
    """The tiny config with dotted keys replaced (`text_config.hidden_size`)."""
    config = copy.deepcopy(TINY)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        target = config
        for key in parents:
            target = target[key]
        target[last] = value
    return config


# -- the files the rows use, and the apps they go to ------------------------------------------

CONFIGS: dict[str, Any] = {
    "empty.json": b"",
    "truncated.json": TINY_CONFIG.read_bytes()[:100],
    "binary.json": bytes(range(256)) * 8,
    "llama.json": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64},
    # a built-in image-text-to-text class without a vision tower: not a shape freezelab recognises
    "fuyu.json": {"model_type": "fuyu", "architectures": ["FuyuForCausalLM"],
                  "text_config": {"model_type": "persimmon", "num_hidden_layers": 2, "hidden_size": 64,
                                  "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 1000}},
    "remote.json": {"model_type": "evilnet", "architectures": ["EvilForCausalLM"],
                    "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}},
    "layers.json": tiny_with({"text_config.num_hidden_layers": 10**7}),
    "hidden.json": tiny_with({"text_config.hidden_size": 10**9}),
    "vocab.json": tiny_with({"text_config.vocab_size": 10**12}),
    "negative.json": tiny_with({"text_config.intermediate_size": -8}),
    "fraction.json": tiny_with({"text_config.hidden_size": 64.5}),
    "image0.json": tiny_with({"vision_config.image_size": 0}),
    "patch0.json": tiny_with({"vision_config.patch_size": 0}),
    "heads0.json": tiny_with({"text_config.num_attention_heads": 0}),
    "deep.json": b"[" * 100_000,
    "bigint.json": b'{"model_type": "llava", "vocab_size": ' + b"9" * 5000 + b"}",
    "pad.json": tiny_with({"text_config.vocab_size": 19, "text_config.pad_token_id": 501}),  # torch asserts
    "text_remote.json": tiny_with({"text_config.auto_map": {"AutoModel": "modeling_evil.EvilModel"}}),
}
PLANS: dict[str, bytes] = {
    "plan_bad.json": b'{"schema": "freezelab.plan/1", "rules": [',
    "plan_big.json": b"# " + b"x" * (MAX_PLAN_BYTES + 10),
    "plan_deep.json": b"[" * 100_000,
    "plan_bigint.json": b'{"schema": "freezelab.plan/1", "trainable_params": ' + b"9" * 5000 + b', "rules": []}',
    "plan_schema.json": b'{"schema": "someone.else/2", "rules": []}',
    "plan_rules.json": b'{"schema": "freezelab.plan/1", "rules": {"train": "@llm"}}',
    "plan_binary.json": bytes(range(1, 256)) * 4,
    "plan_slow.txt": "\n".join(f"train {SLOW_REGEX}|x{i}" for i in range(400)).encode(),
    "plan_many.txt": b"train @llm\n" * 1001,
    "plan_nothing.txt": b"train model.nothing.here\n",
    "plan_upload.json": b" " * 2_000_000,
    "plan_slow_globs.txt": "\n".join(f"train {SLOW_GLOB}" for _ in range(10)).encode(),
    # distinct rules (a memoised resolve runs identical selectors once), each a full pass over every name
    "plan_busy_globs.txt": "\n".join(f"train [!{chr(0x4E00 + k)}]{BUSY_GLOB}" for k in range(1000)).encode(),
    "plan_wide_regexes.txt": "\n".join(f"train re:{WIDE_REGEX}|x{i}" for i in range(500)).encode(),  # 250 KB
}


class Evil:
    """Pickled into a .bin: loading it with plain torch.load would create the marker directory."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


@dataclass
class Ctx:
    root: Path                         # the public app's model root
    outside: Path                      # a directory with a valid config, outside the root
    marker: Path                       # created only if code from an input ran
    apps: dict[str, handlers.App]
    sessions: dict[tuple[str, str], Any]
    stage2: dict[str, int]             # independent count of LLaVA stage 2 per model

    def file(self, name: str) -> str:
        return str(self.root / name)


def write_inputs(root: Path, outside: Path, marker: Path) -> None:
    for name, content in {**CONFIGS, **PLANS}.items():
        data = content if isinstance(content, bytes) else json.dumps(content).encode()
        (root / name).write_bytes(data)
    (outside / "config.json").write_text(TINY_CONFIG.read_text())
    (root / "link").symlink_to(outside, target_is_directory=True)
    evil = root / "evil"
    evil.mkdir()
    (evil / "config.json").write_text(TINY_CONFIG.read_text())
    torch.save({"model.multi_modal_projector.linear_1.weight": Evil(marker)}, evil / "pytorch_model.bin")
    big = root / "big"
    big.mkdir()
    (big / "config.json").write_text(TINY_CONFIG.read_text())
    with open(big / "model.safetensors", "wb") as f:
        f.truncate(3 * 2**30)  # sparse: 3 GiB on paper, nothing on disk
    write_escapes(root, outside, marker)


def write_escapes(root: Path, outside: Path, marker: Path) -> None:
    """Checkpoint directories inside the root whose files lead elsewhere, and a LLaVA checkpoint with code."""
    (outside / "model.safetensors").write_bytes(b"{}")
    (outside / "secret.txt").write_text("not for visitors")
    for name, entry, target in (("cfglink", "config.json", outside / "config.json"),
                                ("shardlink", "model.safetensors", outside / "model.safetensors"),
                                ("proclink", "tokenizer.json", outside / "secret.txt")):
        (root / name).mkdir()
        if entry != "config.json":
            (root / name / "config.json").write_text(TINY_CONFIG.read_text())
        (root / name / entry).symlink_to(target)
    traversal = root / "traversal"
    traversal.mkdir()
    (traversal / "config.json").write_text(TINY_CONFIG.read_text())
    (traversal / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "../../../../etc/passwd"}}))
    remote = root / "remote_llava"
    remote.mkdir()
    auto_map = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForImageTextToText": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps({**TINY, "auto_map": auto_map}))
    for module in ("modeling_evil.py", "configuration_evil.py"):
        (remote / module).write_text(f"import os\nos.mkdir({str(marker)!r})\n")


def stage2_count(model: torch.nn.Module) -> int:
    """LLaVA stage 2 by name: the projector (LLaVA-NeXT's learned image_newline too), the LLM and its head."""
    prefixes = ("model.multi_modal_projector.", "model.image_newline", "model.language_model.", "lm_head.")
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_source) -> Ctx:
    base = tmp_path_factory.mktemp("hostile")
    root, outside, marker = base / "models", base / "outside", base / "PWNED"
    root.mkdir()
    outside.mkdir()
    write_inputs(root, outside, marker)
    apps = {"local": handlers.App(), "public": handlers.App.for_policy(public_policy((root,))),
            "public-noroot": handlers.App.for_policy(public_policy())}
    sessions = {}
    for where, app in apps.items():
        start = handlers.initial_view(app).session
        sessions[(where, "tiny")] = handlers.apply_preset(app, start, "stage1").session
    for model in ("llava-1.5-7b", "llava-onevision-qwen2-72b"):
        loaded = handlers.load_model(apps["public"], sessions[("public", "tiny")], model).session
        sessions[("public", model)] = handlers.apply_preset(apps["public"], loaded, "stage1").session
    evil = handlers.load_model(apps["local"], sessions[("local", "tiny")], str(root / "evil"), weights=True)
    sessions[("local", "evil")] = evil.session
    counts = {name: stage2_count(build(resolve(name), device="meta"))
              for name in ("tiny", "llava-1.5-7b", "llava-onevision-qwen2-72b")}
    counts["evil"] = counts["tiny"]  # the tiny architecture with a hostile weights file
    return Ctx(root, outside, marker, apps, sessions, counts)


# -- the table ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    where: str                       # "cli", or the policy of the app a handler runs in
    call: Callable[..., Any]         # cli: ctx -> argv; handler: (app, session, ctx) -> result
    match: str                       # a regular expression the message must contain
    error: type[Exception] | None = FreezelabError   # handler: the error raised; None: a message returned
    model: str = "tiny"              # handler: the session's model


def cli(name: str, argv: Callable[[Ctx], list[str]], match: str) -> Case:
    return Case(name, "cli", argv, match)


def ui(name: str, where: str, call: Callable[..., Any], error: type[Exception] | None, match: str,
       model: str = "tiny") -> Case:
    return Case(name, where, call, match, error, model)


def load(name: str, weights: bool = False) -> Callable[..., Any]:
    return lambda app, s, c: handlers.load_model(app, s, c.file(name), weights)


def plan_bytes(name: str) -> Callable[..., Any]:
    return lambda app, s, c: handlers.import_plan(app, s, (c.root / name).read_bytes())


def workload(**values: Any) -> Callable[..., Any]:
    return lambda app, s, c: handlers.set_workload(app, s, **values)


def step(device: str = "cpu", steps: Any = 2, lr: Any = 1e-3) -> Callable[..., Any]:
    return lambda app, s, c: list(run_step(app, s, device, steps, lr))


def on(run: Callable[..., Any], **values: Any) -> Callable[..., Any]:
    """`run` on the session with another workload (the session itself is left as it was)."""
    return lambda app, s, c: run(app, dataclasses.replace(s, workload=Workload(**values)), c)


CASES = [
    # -- command line: files, configs, numbers, selectors, checkpoints
    cli("cli missing file", lambda c: ["inspect", c.file("nope.json")], "no such file"),
    cli("cli empty config", lambda c: ["inspect", c.file("empty.json")], "the file is empty"),
    cli("cli truncated config", lambda c: ["inspect", c.file("truncated.json")], "broken JSON"),
    cli("cli binary config", lambda c: ["inspect", c.file("binary.json")], "not a text file"),
    cli("cli non-LLaVA config", lambda c: ["inspect", c.file("llama.json")], "not a vision-language model transformers builds"),
    cli("cli unrecognised shape", lambda c: ["inspect", c.file("fuyu.json")], "could not find its vision tower"),
    cli("cli remote-code config", lambda c: ["inspect", c.file("remote.json")], "never runs code"),
    cli("cli 10**7 layers", lambda c: ["inspect", c.file("layers.json")], "num_hidden_layers .* outside"),
    cli("cli hidden 10**9", lambda c: ["inspect", c.file("hidden.json")], "hidden_size .* outside"),
    cli("cli patch size 0", lambda c: ["inspect", c.file("patch0.json")], "patch_size = 0 is outside"),
    cli("cli nested JSON bomb", lambda c: ["inspect", c.file("deep.json")], "deep nesting"),
    cli("cli 5000-digit number", lambda c: ["inspect", c.file("bigint.json")], "absurdly long numbers"),
    cli("cli malformed plan", lambda c: ["inspect", "tiny", "--plan", c.file("plan_bad.json")], "not valid JSON"),
    cli("cli oversized plan", lambda c: ["inspect", "tiny", "--plan", c.file("plan_big.json")], "at most 256,000"),
    cli("cli plan JSON bomb", lambda c: ["inspect", "tiny", "--plan", c.file("plan_deep.json")], "deep nesting"),
    cli("cli batch -1", lambda c: ["estimate", "tiny", "--batch", "-1"], "batch must be between 1 and 4,096"),
    cli("cli batch NaN", lambda c: ["estimate", "tiny", "--batch", "nan"], "invalid int value: 'nan'"),
    cli("cli huge tokens", lambda c: ["estimate", "tiny", "--text-tokens", "10" * 12], "text_tokens must be between"),
    cli("cli lr NaN", lambda c: ["step", "tiny", "--lr", "nan"], "learning rate must be a number above 0"),
    cli("cli lr inf", lambda c: ["step", "tiny", "--lr", "inf"], "learning rate must be a number above 0"),
    cli("cli zero steps", lambda c: ["step", "tiny", "--steps", "0"], "steps must be a whole number from 1"),
    cli("cli catastrophic regex", lambda c: ["inspect", "llava-1.5-7b", "--train", SLOW_REGEX], "takes too long"),
    cli("cli regex count 2**32", lambda c: ["inspect", "tiny", "--train", "re:a{4294967294}"],
        "repetition count 4,294,967,294 is above the limit of 1,000"),
    cli("cli backtracking glob", lambda c: ["inspect", "llava-onevision-qwen2-72b", "--train", SLOW_GLOB],
        "matches no parameter"),
    cli("cli escape sequence selector", lambda c: ["inspect", "tiny", "--train", "model.\x1b[2J"], "U\\+001B"),
    cli("cli right-to-left override", lambda c: ["inspect", "tiny", "--train", "lm_\u202edaeh"], "U\\+202E"),
    cli("cli pickle in .bin", lambda c: ["step", c.file("evil"), "--weights", "--steps", "1"], "refused to load"),
    cli("cli shard path traversal", lambda c: ["step", c.file("traversal"), "--weights", "--steps", "1"],
        "names a shard that is not a file name inside the checkpoint directory: '../../../../etc/passwd'"),
    cli("cli LLaVA config with auto_map", lambda c: ["step", c.file("remote_llava"), "--steps", "1"],
        r"\(auto_map\), and freezelab never runs code"),
    cli("cli Hub id with ..", lambda c: ["inspect", "a/b..c"], "not a valid Hub id: Cannot have -- or .."),
    cli("cli pad_token_id beyond the vocabulary", lambda c: ["inspect", c.file("pad.json")],
        "transformers could not build this config: Padding_idx must be within num_embeddings"),
    cli("cli unknown export format", lambda c: ["export", "tiny", "--format", "exe"], "invalid choice: 'exe'"),
    # -- dashboard, public server: model files inside and outside its root
    ui("missing file", "public", load("nope.json"), SourceError, "no such file"),
    ui("empty config", "public", load("empty.json"), SourceError, "the file is empty"),
    ui("truncated config", "public", load("truncated.json"), SourceError, "broken JSON"),
    ui("binary config", "public", load("binary.json"), SourceError, "not a text file"),
    ui("non-LLaVA config", "public", load("llama.json"), NotLlavaError, "not a vision-language model transformers builds"),
    ui("unrecognised shape", "public", load("fuyu.json"), SourceError, "FuyuForCausalLM: not a vision encoder"),
    ui("remote-code config", "public", load("remote.json"), NotLlavaError, "auto_map.*never runs code"),
    ui("path traversal", "public", lambda app, s, c: handlers.load_model(app, s, f"{c.root}/../outside/config.json"),
       PolicyError, "'..' is not allowed"),
    ui("symlink escape", "public", load("link/config.json"), PolicyError, "outside the directories"),
    ui("config.json links outside", "public", load("cfglink"), PolicyError,
       "'config.json' in it leads outside the directories"),
    ui("shard links outside", "public", load("shardlink", weights=True), PolicyError,
       "'model.safetensors' in it leads outside"),
    ui("tokenizer links outside", "public", load("proclink"), PolicyError, "'tokenizer.json' in it leads outside"),
    ui("shard path traversal", "public", load("traversal", weights=True), SourceError,
       "names a shard that is not a file name inside the checkpoint directory: '../../../../etc/passwd'"),
    ui("shard path traversal, local", "local", load("traversal", weights=True), SourceError,
       "not a file name inside the checkpoint directory"),
    ui("LLaVA config with auto_map", "public", load("remote_llava"), SourceError,
       r"\(auto_map\), and freezelab never runs code from a checkpoint"),
    ui("LLaVA config with auto_map, local", "local", load("remote_llava", weights=True), SourceError,
       r"\(auto_map\), and freezelab never runs code"),
    ui("text_config with auto_map", "public", load("text_remote.json"), SourceError, r"\(text_config.auto_map\)"),
    ui("pad_token_id beyond the vocabulary", "public", load("pad.json"), SourceError,
       "transformers could not build this config: Padding_idx must be within num_embeddings"),
    ui("Hub id with ..", "public", lambda app, s, c: handlers.load_model(app, s, "a/b..c"), SourceError,
       "a/b..c: not a valid Hub id: Cannot have -- or .."),
    ui("Hub id with --", "public", lambda app, s, c: handlers.load_model(app, s, "a/b--c"), SourceError,
       "a/b--c: not a valid Hub id: Cannot have -- or .."),
    ui("paths disabled", "public-noroot", lambda app, s, c: handlers.load_model(app, s, str(c.outside)),
       PolicyError, "local paths are disabled"),
    ui("10**7 layers", "public", load("layers.json"), SourceError, "num_hidden_layers = 10000000 is outside"),
    ui("hidden 10**9", "public", load("hidden.json"), SourceError, "hidden_size = 1000000000 is outside"),
    ui("vocab 10**12", "public", load("vocab.json"), SourceError, "vocab_size = 1000000000000 is outside"),
    ui("negative size", "public", load("negative.json"), SourceError, "intermediate_size = -8 is outside"),
    ui("fractional size", "public", load("fraction.json"), SourceError, "hidden_size must be a whole number"),
    ui("image size 0", "public", load("image0.json"), SourceError, "image_size = 0 is outside"),
    ui("zero heads", "public", load("heads0.json"), SourceError, "num_attention_heads = 0 is outside"),
    ui("nested JSON bomb", "public", load("deep.json"), SourceError, "deep nesting"),
    ui("weights above the limit", "public", load("big", weights=True), PolicyError, "exceed this server's limit"),
    # -- numbers from the page: floats, None, NaN, inf, text
    ui("batch NaN", "public", workload(batch=float("nan")), WorkloadError, "batch must be a whole number, got nan"),
    ui("GPUs inf", "public", workload(gpus=float("inf")), WorkloadError, "gpus must be a whole number, got inf"),
    ui("images -1", "public", workload(images=-1.0), WorkloadError, "images must be between 0 and 64, got -1"),
    ui("batch 1e300", "public", workload(batch=1e300), WorkloadError, "got 1e\\+300"),
    ui("tokens cleared", "public", workload(text_tokens=None), WorkloadError, "text_tokens must be a whole number"),
    ui("batch as text", "public", workload(batch="4; rm -rf /"), WorkloadError, "batch must be a whole number"),
    ui("unknown field", "public", workload(evil=1), WorkloadError, "unknown workload field"),
    ui("last-N NaN", "public", lambda app, s, c: handlers.apply_preset(app, s, "last-n", float("nan")), OptionError,
       "whole number from 1 to 1000, got nan"),
    ui("tree depth inf", "public", lambda app, s, c: handlers.set_tree_options(app, s, "", float("inf")),
       OptionError, "tree depth must be a whole number"),
    ui("tree filter 10k", "public", lambda app, s, c: handlers.set_tree_options(app, s, "q" * 10_000, None),
       OptionError, "limited to 200 characters"),
    # -- selectors: catastrophic regexes, control and unicode characters, huge text, odd module paths
    ui("catastrophic regex", "public", lambda app, s, c: handlers.add_rule(app, s, "train", SLOW_REGEX),
       SelectorLimitError, "takes too long", model="llava-1.5-7b"),
    ui("catastrophic regex preview", "public", lambda app, s, c: handlers.preview_selector(app, s, SLOW_REGEX),
       None, "takes too long", model="llava-1.5-7b"),
    ui("400 slow regex rules", "public", plan_bytes("plan_slow.txt"), SelectorLimitError,
       "takes too long|together take longer", model="llava-1.5-7b"),
    ui("escape sequence", "public", lambda app, s, c: handlers.add_rule(app, s, "train", "\x1b]0;owned\x07"),
       SelectorError, "control character U\\+001B"),
    ui("right-to-left override", "public", lambda app, s, c: handlers.add_rule(app, s, "train", "lm_\u202edaeh"),
       SelectorError, "U\\+202E"),
    ui("lone surrogate", "public", lambda app, s, c: handlers.add_rule(app, s, "train", "re:\ud800|."),
       SelectorError, "U\\+D800"),
    ui("unicode glob", "public", lambda app, s, c: handlers.add_rule(app, s, "train", "mödel.🔥*"),
       SelectorError, "matches no parameter of tiny"),
    ui("regex count 2**32 preview", "public", lambda app, s, c: handlers.preview_selector(app, s, "re:a{4294967294}"),
       None, "bad regular expression: the repetition count 4,294,967,294 is above the limit of 1,000"),
    ui("regex count 2,000,000", "public", lambda app, s, c: handlers.add_rule(app, s, "train", "re:a{2000000}"),
       SelectorLimitError, "repetition count 2,000,000 is above the limit of 1,000"),
    ui("nested regex counts", "public", lambda app, s, c: handlers.preview_selector(app, s, "re:(?:[a-z]{1000}){1000}"),
       None, "could expand it to more than 100,000 elements"),
    ui("backtracking glob preview", "public", lambda app, s, c: handlers.preview_selector(app, s, SLOW_GLOB),
       None, "matches no parameter", model="llava-onevision-qwen2-72b"),
    ui("backtracking glob rule", "public", lambda app, s, c: handlers.add_rule(app, s, "train", SLOW_GLOB),
       SelectorError, "matches no parameter", model="llava-onevision-qwen2-72b"),
    ui("10 backtracking glob rules", "public", plan_bytes("plan_slow_globs.txt"), SelectorError,
       "rule 1 .* matches no parameter", model="llava-onevision-qwen2-72b"),
    ui("1000 busy glob rules", "public", plan_bytes("plan_busy_globs.txt"), SelectorLimitError,
       "the plan's selectors together take longer than 1 s", model="llava-onevision-qwen2-72b"),
    ui("500 regexes to compile", "public", plan_bytes("plan_wide_regexes.txt"), FreezelabError,
       "longer than 1 s to compile", model="llava-onevision-qwen2-72b"),
    ui("100k selector preview", "public", lambda app, s, c: handlers.preview_selector(app, s, "a" * 100_000),
       None, "100000 characters long"),
    ui("module path not text", "public", lambda app, s, c: handlers.toggle_module(app, s, ["model"], True),
       SelectorError, "must be text"),
    ui("module path traversal", "public", lambda app, s, c: handlers.toggle_module(app, s, "../../etc/passwd", True),
       SelectorError, "is not a module of tiny"),
    # -- plan files: malformed, oversized, bombs, wrong schema, binary
    ui("malformed plan", "public", plan_bytes("plan_bad.json"), PlanError, "not valid JSON"),
    ui("oversized plan", "public", plan_bytes("plan_big.json"), PlanLimitError, "the limit is 256,000"),
    ui("plan JSON bomb", "public", plan_bytes("plan_deep.json"), PlanError, "deep nesting"),
    ui("plan 5000-digit number", "public", plan_bytes("plan_bigint.json"), PlanError, "absurdly long numbers"),
    ui("plan of another schema", "public", plan_bytes("plan_schema.json"), PlanError, "not a freezelab plan"),
    ui("plan rules not a list", "public", plan_bytes("plan_rules.json"), PlanError, "'rules' must be a list"),
    ui("binary plan", "public", plan_bytes("plan_binary.json"), PlanError, "not UTF-8 text"),
    ui("1001 rules", "public", plan_bytes("plan_many.txt"), PlanLimitError, "at most 1000 rules"),
    ui("plan matching nothing", "public", plan_bytes("plan_nothing.txt"), SelectorError, "matches no parameter"),
    ui("2 MB upload", "public", lambda app, s, c: handlers.import_plan_file(app, s, c.file("plan_upload.json")),
       PlanLimitError, "the limit is 256,000"),
    # -- verification: what a public server may run, and checkpoints that carry code
    ui("simulate 72B in public", "public", lambda app, s, c: simulate(app, s), PolicyError,
       "takes too long on this server", model="llava-onevision-qwen2-72b"),
    ui("step on 7B in public", "public", step(), PolicyError, "too large for a sanity step", model="llava-1.5-7b"),
    ui("step on cuda in public", "public", step(device="cuda"), PolicyError, "runs only on cpu"),
    ui("step of 262,144 tokens in public", "public", on(step(), text_tokens=262_144, dtype="bf16"), PolicyError,
       "this sanity step would take about .* of CPU time .*; this server allows 60 s of CPU time per run"),
    ui("simulate 4096 x 1,048,576 tokens x 64 images in public", "public",
       on(lambda app, s, c: simulate(app, s), batch=4096, text_tokens=1_048_576, images=64), PolicyError,
       "this simulation would take about .* 262,144 images.*; this server allows 60 s of CPU time per run"),
    ui("step 6 steps in public", "public", step(steps=6), PolicyError, "at most 5 steps"),
    ui("step NaN steps", "public", step(steps=float("nan")), VerifyError, "steps must be a whole number"),
    ui("step lr inf", "local", step(lr=float("inf")), StepError, "learning rate must be a number above 0"),
    ui("pickle in .bin", "local", step(steps=1), SourceError, "refused to load pytorch_model.bin", model="evil"),
]


def run_cli(case: Case, ctx: Ctx, capsys: pytest.CaptureFixture[str]) -> None:
    argv = case.call(ctx)
    capsys.readouterr()
    started = time.monotonic()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse rejects the value itself
        code = exit_.code
    assert time.monotonic() - started < HANG_S  # refused, not hung
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, err
    assert len(errors) == 1 and re.search(case.match, errors[0]), err
    assert "Traceback" not in err
    assert main(["inspect", "tiny", "--preset", "stage2", "--json"]) == 0  # still answers
    assert json.loads(capsys.readouterr().out)["trainable_params"] == ctx.stage2["tiny"]


def run_handler(case: Case, ctx: Ctx) -> None:
    app = ctx.apps[case.where]
    session = ctx.sessions[(case.where, case.model)]
    snapshot = copy.deepcopy(session)
    before = handlers.build_view(app, session)
    started = time.monotonic()
    if case.error is None:  # the page shows the message in place of a preview
        message = case.call(app, session, ctx)
    else:
        with pytest.raises(case.error) as info:
            result = case.call(app, session, ctx)
            if inspect.isgenerator(result):
                list(result)
        message = str(info.value)
    assert time.monotonic() - started < HANG_S  # refused, not hung: nothing here may run to completion
    assert re.search(case.match, message), message
    assert "\n" not in message and "Traceback" not in message
    assert session == snapshot
    after = handlers.build_view(app, session)
    assert (after.summary, after.tree, after.rules) == (before.summary, before.tree, before.rules)
    assert handlers.apply_preset(app, session, "stage2").trainable == ctx.stage2[case.model]  # still answers


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_gets_one_clear_message(case: Case, ctx: Ctx, capsys: pytest.CaptureFixture[str]) -> None:
    if case.where == "cli":
        run_cli(case, ctx, capsys)
    else:
        run_handler(case, ctx)
    assert not ctx.marker.exists(), "code from an input ran"
