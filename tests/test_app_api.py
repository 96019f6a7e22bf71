"""The launched app (`python app.py` in a subprocess, loopback only) through gradio_client."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import gradio_client
import pytest


def client(url: str):
    return gradio_client.Client(url, verbose=False)


# Outputs of every view endpoint, in order (the session state travels separately).
STATUS, HEADER, SUMMARY, TREE, RULES, WARNINGS = range(6)
VERDICT = 9


def trainable(summary_html: str) -> int:
    start = summary_html.index('id="fl-trainable">') + len('id="fl-trainable">')
    return int(summary_html[start:summary_html.index("<", start)].replace(",", ""))


def numel(model, prefixes: tuple[str, ...]) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))


def test_page_answers_with_the_app(server):
    with urllib.request.urlopen(server + "config", timeout=5) as r:
        config = json.loads(r.read().decode())
    assert config["title"] == "freezelab"
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"fl-tree-box", "fl-summary", "fl-verdict-box", "fl-memory-plot"} <= ids


def test_preset_then_selector_rule(server, tiny_model):
    c = client(server)
    out = c.predict(4, api_name="/preset_stage1")
    projector = numel(tiny_model, ("model.multi_modal_projector.",))
    assert trainable(out[SUMMARY]) == projector
    out = c.predict("model.language_model.layers.1", api_name="/train")
    assert trainable(out[SUMMARY]) == projector + numel(tiny_model, ("model.language_model.layers.1.",))
    assert out[RULES].splitlines()[-1] == "train model.language_model.layers.1"
    rows = json.loads(out[TREE])["rows"]
    assert rows[0][4] == "p"  # the root is partly trainable
    preview = c.predict("*q_proj*", api_name="/preview")
    assert "reaches into several components" in preview


def test_an_error_changes_nothing_and_says_why(server, tiny_model):
    c = client(server)
    c.predict(4, api_name="/preset_stage1")
    out = c.predict("nonexistent_module", api_name="/train")
    assert "matches no parameter of tiny" in out[STATUS]
    bad = c.predict(0, 64, 1, "bf16", "none", "adamw", False, "sdpa", 1, "ddp", False, api_name="/set_workload")
    assert "batch must be between 1" in bad[STATUS]
    now = c.predict("", api_name="/filter_tree")  # re-renders the session's current view
    assert trainable(now[SUMMARY]) == numel(tiny_model, ("model.multi_modal_projector.",))


def test_sessions_are_separate(server, tiny_model):
    a, b = client(server), client(server)
    a.predict(4, api_name="/preset_full")
    # b still has the opening plan, LLaVA stage 1
    assert trainable(b.predict("", api_name="/filter_tree")[SUMMARY]) == numel(tiny_model, ("model.multi_modal_projector.",))
    assert trainable(a.predict("", api_name="/filter_tree")[SUMMARY]) == numel(tiny_model, ("",))


def test_load_7b_and_export(server):
    c = client(server)
    out = c.predict("tiny", "llava-1.5-7b", "architecture only", api_name="/load_model")
    assert out[HEADER].startswith("**llava-1.5-7b**")
    assert "of 7,063,427,072 parameters" in out[SUMMARY]
    out = c.predict(4, api_name="/preset_last_n")
    assert "fits" in out[VERDICT]
    exported = c.predict(api_name="/export")
    plan_file, json_text = exported[0], exported[1]
    data = json.loads(json_text)
    assert [r["selector"] for r in data["rules"]] == ["@llm.layers[-4:]"]
    assert Path(plan_file).read_text(encoding="utf-8").strip() == json_text.strip()


def test_the_plan_file_input_takes_uploads_and_never_fetches_a_url(server, tmp_path, tiny_model):
    c = client(server)
    plan = tmp_path / "plan.txt"
    plan.write_text("train @projector\ntrain model.language_model.layers.1\n")
    out = c.predict(gradio_client.handle_file(str(plan)), api_name="/import_plan")  # uploaded first, as the page does
    assert trainable(out[SUMMARY]) == numel(tiny_model, ("model.multi_modal_projector.", "model.language_model.layers.1."))
    # a URL as the file's path: Gradio would download it server-side before the handler runs
    with pytest.raises(gradio_client.exceptions.AppError, match="only a file uploaded from your computer"):
        c.predict(gradio_client.handle_file("https://example.com/plan.json"), api_name="/import_plan")
