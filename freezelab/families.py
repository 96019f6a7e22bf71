"""The LLaVA-family model classes freezelab supports, keyed by config `model_type`.

Every supported class is built into transformers: freezelab never runs code
shipped with a checkpoint.
"""

from __future__ import annotations

from typing import Any

from freezelab.errors import NotLlavaError, SourceError

CLASSES: dict[str, str] = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_next_video": "LlavaNextVideoForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "vipllava": "VipLlavaForConditionalGeneration",
}

# Formats that are LLaVA in spirit but need a conversion first; naming them
# turns a puzzling "unsupported" into an actionable message.
_HINTS: dict[str, str] = {
    "llava_llama": "this is an original LLaVA repository checkpoint; use its transformers "
    "conversion (the llava-hf/... repos) or convert it with transformers' convert_llava_weights_to_hf.py",
    "llava_mistral": "this is an original LLaVA-NeXT repository checkpoint; use the llava-hf/... conversion",
    "llava_qwen": "this is an original LLaVA-NeXT/OneVision repository checkpoint; use the llava-hf/... conversion",
    "video_llava": "Video-LLaVA has separate image and video towers and is not supported yet",
}


def _short(value: Any) -> str:
    """A config value for a message: a hostile config must not make the message huge."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _remote_code(config: dict[str, Any]) -> str | None:
    """Where the config maps classes to code shipped with the checkpoint (`auto_map`), if anywhere."""
    for where, cfg in (("", config), ("text_config.", config.get("text_config")),
                       ("vision_config.", config.get("vision_config"))):
        if isinstance(cfg, dict) and cfg.get("auto_map"):
            return f"{where}auto_map"
    return None


def check_family(config: dict[str, Any], origin: str) -> str:
    """Return the config's model_type if freezelab supports it, else raise a clear error. A config naming
    code shipped with the checkpoint (auto_map) is refused even when its model_type is supported: freezelab
    never runs that code, and says so rather than quietly using transformers' class instead."""
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    remote = _remote_code(config)
    if isinstance(model_type, str) and model_type in CLASSES:
        if remote:
            raise SourceError(f"{origin}: its config names model code shipped with the checkpoint ({remote}), and "
                              "freezelab never runs code from a checkpoint; remove the auto_map entry to use "
                              f"transformers' own {CLASSES[model_type]}")
        return model_type
    archs = archs if isinstance(archs, list) else [archs]
    found = f"model_type {_short(model_type)}" if model_type else "no model_type"
    if archs:
        found += f", architectures {', '.join(_short(a) for a in archs[:3])}{', ...' if len(archs) > 3 else ''}"
    hint = _HINTS.get(str(model_type), "supported: " + ", ".join(CLASSES.values()))
    if remote:  # custom code shipped with the checkpoint: never imported, never run
        hint = "it needs the model code shipped with the checkpoint (auto_map), and freezelab never runs " \
               "code from a checkpoint; " + hint
    raise NotLlavaError(f"{origin} is not a LLaVA-family model ({found}); {hint}")


def model_class(model_type: str) -> Any:
    import transformers

    return getattr(transformers, CLASSES[model_type])


def config_from_dict(config: dict[str, Any]) -> Any:
    """A transformers config object for a (validated) LLaVA-family config dict."""
    from transformers import CONFIG_MAPPING

    clean = {k: v for k, v in config.items() if not k.startswith("_freezelab")}
    return CONFIG_MAPPING[clean["model_type"]].from_dict(clean)
