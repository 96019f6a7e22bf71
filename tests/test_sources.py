"""Model sources: every way to name a model, and every way to name it wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from freezelab.errors import NotLlavaError, SourceError
from freezelab.sources import TINY_CONFIG, known_names, resolve

CHECKED_TYPES = {"llava", "llava_next", "llava_next_video", "llava_onevision", "vipllava", "qwen2_vl", "qwen2_5_vl",
                 "qwen3_vl", "internvl", "gemma3", "paligemma", "idefics3", "smolvlm", "mistral3"}


def test_tiny_and_known_names_resolve():
    assert resolve("tiny").kind == "tiny"
    assert resolve("TINY").name == "tiny"
    for name in known_names():
        src = resolve(name)
        assert src.kind == "known" and src.model_type in CHECKED_TYPES
    # every checked family ships at least one config; each non-LLaVA one with its processor settings
    shipped = {resolve(name).model_type: resolve(name) for name in known_names()}
    assert set(shipped) == CHECKED_TYPES - {"llava_next_video"}
    for model_type, src in shipped.items():
        if not model_type.startswith(("llava", "vip")):
            assert src.processor["source"][:2] in ("V:", "C:", "R:"), model_type


def test_a_checkpoint_directory_brings_its_processor_settings(tmp_path: Path):
    config = json.loads((Path(__file__).parent.parent / "assets/configs/qwen2-vl-2b-instruct.json").read_text())
    config.pop("_freezelab")
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert resolve(str(tmp_path)).processor == {}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "Qwen2VLImageProcessor", "min_pixels": 3136, "max_pixels": 200704,
         "image_mean": [0.5, 0.5, 0.5]}))
    assert resolve(str(tmp_path)).processor == {"min_pixels": 3136, "max_pixels": 200704,
                                                "source": "the checkpoint's preprocessor_config.json"}


def test_unchecked_builtin_classes_are_accepted_and_auto_map_refused(tmp_path: Path):
    """Any transformers image-text-to-text class is accepted (the classifier decides its shape);
    code shipped with a checkpoint never is."""
    from freezelab.families import check_family, family

    assert check_family({"model_type": "aya_vision"}, "x") == "aya_vision"
    assert not family("aya_vision").checked
    with pytest.raises(SourceError, match="auto_map"):
        check_family({"model_type": "qwen2_vl", "auto_map": {"AutoModel": "m.M"}}, "x")


def test_required_architectures_are_shipped():
    required = {"llava-1.5-7b", "llava-1.5-13b", "llava-v1.6-mistral-7b", "llava-v1.6-34b",
                "llava-onevision-qwen2-0.5b", "llava-onevision-qwen2-7b", "llava-onevision-qwen2-72b",
                "llava-interleave-qwen-0.5b", "bakllava", "vip-llava-7b", "zero-nlp-qwen1.5-4b-clip"}
    assert required <= set(known_names())


def test_config_file_and_checkpoint_dir(tmp_path: Path):
    cfg = tmp_path / "ckpt" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text(TINY_CONFIG.read_text())
    as_file = resolve(str(cfg))
    assert as_file.kind == "config" and not as_file.weights
    as_dir = resolve(str(cfg.parent))
    assert as_dir.kind == "checkpoint" and as_dir.weights == ()
    (cfg.parent / "pytorch_model.bin").write_bytes(b"x")
    (cfg.parent / "model.safetensors").write_bytes(b"x")
    # safetensors is preferred over .bin when both are present
    assert [p.name for p in resolve(str(cfg.parent)).weights] == ["model.safetensors"]
    (cfg.parent / "model.safetensors").unlink()
    assert resolve(str(cfg.parent)).weight_format == "bin"


def test_sharded_index_with_missing_shard(tmp_path: Path):
    (tmp_path / "config.json").write_text(TINY_CONFIG.read_text())
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(SourceError, match="missing shard"):
        resolve(str(tmp_path))


BAD_CONFIGS = [
    ("", "empty"),
    ("{broken", "broken JSON at line 1"),
    ("[1, 2]", "expected a JSON object"),
    ('{"model_type": "bert", "architectures": ["BertModel"]}', "not a vision-language model transformers builds.*bert.*BertModel"),
    ('{"architectures": ["X"]}', "no model_type"),
    ('{"model_type": "llava_llama"}', "original LLaVA repository"),
]


@pytest.mark.parametrize("text,message", BAD_CONFIGS)
def test_bad_config_files(tmp_path: Path, text: str, message: str):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(SourceError, match=message):
        resolve(str(path))


def test_not_llava_is_a_source_error_subclass(tmp_path: Path):
    path = tmp_path / "c.json"
    path.write_text('{"model_type": "qwen2"}')
    with pytest.raises(NotLlavaError):
        resolve(str(path))


def test_bad_specs(tmp_path: Path):
    with pytest.raises(SourceError, match="no such file"):
        resolve(str(tmp_path / "nope.json"))
    with pytest.raises(SourceError, match="did you mean llava-1.5-7b"):
        resolve("llava-1.5-7")
    with pytest.raises(SourceError, match="no model given"):
        resolve("  ")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\x00\x01")
    with pytest.raises(SourceError, match="not a weights file"):
        resolve(str(weights))
    with pytest.raises(SourceError, match="needs a config.json"):
        resolve(str(tmp_path))


def test_binary_file_as_config(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SourceError, match="not a text file"):
        resolve(str(path))


def test_hub_id_offline_without_cache(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(SourceError, match="HF_HUB_OFFLINE is set, and its config.json is not in the local Hugging Face "
                       "cache"):
        resolve("someorg/some-llava")


def test_hub_id_offline_from_cache(monkeypatch, tmp_path: Path):
    """A config already in the HF cache loads with no network (the layout hf_hub_download writes)."""
    hub = tmp_path / "hub"
    repo = hub / "models--someorg--tiny-llava"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(TINY_CONFIG.read_text())
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    src = resolve("someorg/tiny-llava")
    assert src.kind == "hub" and src.model_type == "llava" and not src.weights


@pytest.mark.parametrize("spec", ["a/b..c", "a/b--c", "org-/name", "org/name."])
def test_hub_ids_the_hub_refuses_are_refused_offline(spec, monkeypatch):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("asked the Hub"))
    with pytest.raises(SourceError, match=f"{re.escape(spec)}: not a valid Hub id: "):
        resolve(spec)


@pytest.mark.parametrize("error", [httpx.ProxyError("407 Proxy Authentication Required"),
                                   httpx.ConnectTimeout("timed out"), RuntimeError("anything else")])
def test_any_failure_to_fetch_a_hub_config_is_one_message(error, monkeypatch, tmp_path):
    """Whatever the transport raises (a proxy refusing, a timeout, anything else), the Hub is taken as
    unreachable and the answer is one message naming the cause and the cache that was asked instead."""
    import huggingface_hub
    from huggingface_hub import constants

    from freezelab import hub

    def metadata(*args, **kwargs):
        raise error

    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)
    with pytest.raises(SourceError, match=rf"^org/model: the Hugging Face Hub cannot be reached "
                                          rf"\({type(error).__name__}\), and its config.json is not in the local "
                                          rf"Hugging Face cache "):
        resolve("org/model")


@pytest.mark.parametrize("error", [AssertionError("Padding_idx must be within num_embeddings"),
                                   ZeroDivisionError("division by zero"), NotImplementedError("no such layout"),
                                   type("OddConfigError", (Exception,), {})("transformers refused it")])
def test_whatever_transformers_raises_on_a_config_becomes_one_source_error(error, monkeypatch, tiny_source):
    """One place (models.refused_by_transformers) turns any refusal by transformers or torch into a SourceError."""
    from freezelab import models

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(models, "config_from_dict", refuse)
    with pytest.raises(SourceError, match=f"^tiny: the config could not be read by transformers: {error}$"):
        models.hf_config(tiny_source)
    monkeypatch.undo()
    monkeypatch.setattr(models, "model_class", lambda model_type: refuse)
    with pytest.raises(SourceError, match=f"^tiny: transformers could not build this config: {error}$"):
        models.build(tiny_source, device="meta")


def test_a_pad_token_beyond_the_vocabulary_is_refused_when_building(tmp_path: Path):
    config = json.loads(TINY_CONFIG.read_text())
    config["text_config"].update(vocab_size=19, pad_token_id=501)
    (tmp_path / "config.json").write_text(json.dumps(config))
    from freezelab.models import build
    with pytest.raises(SourceError, match="transformers could not build this config: Padding_idx must be within"):
        build(resolve(str(tmp_path)), device="meta")
