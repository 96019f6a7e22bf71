"""The vision-language model classes freezelab accepts, keyed by config `model_type`.

Any image-text-to-text model built into transformers is accepted when its shape
is a vision encoder, a projector and a language model (the component classifier,
`freezelab.components`, decides, and says what it did not find). The families
below were checked one by one: their forwards were read to know how the
projector reads the vision tower (`FeatureRead`), and their configs ship in
assets/configs/. freezelab never runs code shipped with a checkpoint: a config
naming such code (`auto_map`) is refused, and `trust_remote_code` is never passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from freezelab.errors import NotLlavaError, SourceError


class FeatureRead(StrEnum):
    """What the projector reads from the vision tower, which decides the tower's dead parameters."""

    HIDDEN_STATE = "hidden_state"            # hidden_states[vision_feature_layer]: later layers and post-norm dead
    LAST_HIDDEN_STATE = "last_hidden_state"  # the tower's output, its final norm included
    LAST_IF_MINUS_ONE = "last_if_minus_one"  # last_hidden_state when vision_feature_layer == -1, else hidden_states


@dataclass(frozen=True)
class Family:
    """One checked family: its title, class and how its projector reads the tower (with the source)."""

    title: str
    class_name: str
    feature_read: FeatureRead
    read_source: str          # where in transformers 5.24 the projector's input is taken
    checked: bool = True      # False: an accepted class whose forward freezelab has not read
    # the forward reads the top-level config.use_cache (itself, or through @merge_with_config_defaults, which
    # fills an unpassed use_cache from the model's own config), so `model.config.use_cache = False` turns the
    # text model's KV cache off; the others leave it to the text config (True by default)
    cache_from_top: bool = False


_LLAVA_READ = "modeling_llava.py LlavaModel.get_image_features: hidden_states[vision_feature_layer]"

FAMILIES: dict[str, Family] = {
    "llava": Family("LLaVA", "LlavaForConditionalGeneration", FeatureRead.HIDDEN_STATE, _LLAVA_READ),
    "llava_next": Family("LLaVA-NeXT", "LlavaNextForConditionalGeneration", FeatureRead.HIDDEN_STATE,
                         _LLAVA_READ.replace("llava.py Llava", "llava_next.py LlavaNext"),
                         cache_from_top=True),  # modeling_llava_next.py:406 LlavaNextModel.forward @merge_with_config_defaults
    "llava_next_video": Family("LLaVA-NeXT-Video", "LlavaNextVideoForConditionalGeneration",
                               FeatureRead.HIDDEN_STATE, "modeling_llava_next_video.py get_image_features",
                               cache_from_top=True),  # LlavaNextVideoModel.forward @merge_with_config_defaults
    "llava_onevision": Family("LLaVA-OneVision", "LlavaOnevisionForConditionalGeneration",
                              FeatureRead.HIDDEN_STATE, "modeling_llava_onevision.py get_image_features",
                              cache_from_top=True),  # LlavaOnevisionModel.forward @merge_with_config_defaults
    "vipllava": Family("VipLLaVA", "VipLlavaForConditionalGeneration", FeatureRead.HIDDEN_STATE,
                       "modeling_vipllava.py get_image_features: hidden_states[i] for vision_feature_layers"),
    "qwen2_vl": Family("Qwen2-VL", "Qwen2VLForConditionalGeneration", FeatureRead.LAST_HIDDEN_STATE,
                       "modeling_qwen2_vl.py Qwen2VisionTransformerPretrainedModel.forward: blocks, then merger"),
    "qwen2_5_vl": Family("Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration", FeatureRead.LAST_HIDDEN_STATE,
                         "modeling_qwen2_5_vl.py Qwen2_5_VisionTransformerPretrainedModel.forward: blocks, merger"),
    "qwen3_vl": Family("Qwen3-VL", "Qwen3VLForConditionalGeneration", FeatureRead.LAST_HIDDEN_STATE,
                       "modeling_qwen3_vl.py Qwen3VLVisionModel.forward: blocks (deepstack taps), merger"),
    "internvl": Family("InternVL", "InternVLForConditionalGeneration", FeatureRead.LAST_IF_MINUS_ONE,
                       "modeling_internvl.py InternVLModel.get_image_features: last_hidden_state if -1"),
    "gemma3": Family("Gemma 3", "Gemma3ForConditionalGeneration", FeatureRead.LAST_HIDDEN_STATE,
                     "modeling_gemma3.py Gemma3Model.get_image_features: vision_tower(...).last_hidden_state"),
    "paligemma": Family("PaliGemma", "PaliGemmaForConditionalGeneration", FeatureRead.LAST_HIDDEN_STATE,
                        "modeling_paligemma.py PaliGemmaModel.get_image_features: last_hidden_state"),
    "idefics3": Family("Idefics3 / SmolVLM", "Idefics3ForConditionalGeneration", FeatureRead.LAST_HIDDEN_STATE,
                       "modeling_idefics3.py Idefics3Model.get_image_features: vision_model(...).last_hidden_state",
                       cache_from_top=True),  # modeling_idefics3.py:621 use_cache = ... self.config.use_cache
    "smolvlm": Family("SmolVLM2", "SmolVLMForConditionalGeneration", FeatureRead.LAST_HIDDEN_STATE,
                      "modeling_smolvlm.py SmolVLMModel.get_image_features: vision_model(...).last_hidden_state",
                      cache_from_top=True),  # modeling_smolvlm.py:511 SmolVLMModel.forward @merge_with_config_defaults
    "mistral3": Family("Mistral 3 (Pixtral)", "Mistral3ForConditionalGeneration", FeatureRead.HIDDEN_STATE,
                       "modeling_mistral3.py Mistral3Model.get_image_features: hidden_states[vision_feature_layer]",
                       cache_from_top=True),  # modeling_mistral3.py Mistral3Model.forward @merge_with_config_defaults
}

# Formats that are LLaVA in spirit but need a conversion first; naming them
# turns a puzzling "unsupported" into an actionable message.
_HINTS: dict[str, str] = {
    "llava_llama": "this is an original LLaVA repository checkpoint; use its transformers "
    "conversion (the llava-hf/... repos) or convert it with transformers' convert_llava_weights_to_hf.py",
    "llava_mistral": "this is an original LLaVA-NeXT repository checkpoint; use the llava-hf/... conversion",
    "llava_qwen": "this is an original LLaVA-NeXT/OneVision repository checkpoint; use the llava-hf/... conversion",
    "internvl_chat": "this is an original InternVL repository checkpoint (custom code); use its transformers "
    "conversion (the OpenGVLab/...-hf repos)",
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


def _builtin_classes() -> dict[str, str]:
    """transformers' own image-text-to-text classes by model_type (imports transformers' auto tables:
    only asked for a model_type outside FAMILIES)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return dict(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def class_name(model_type: str) -> str | None:
    """The transformers class for a model_type, or None when transformers has no image-text-to-text class."""
    if model_type in FAMILIES:
        return FAMILIES[model_type].class_name
    return _builtin_classes().get(model_type)


def family(model_type: str, config: dict[str, Any] | None = None) -> Family:
    """The family facts of a model_type; an unchecked built-in class gets assumed ones (from its config)."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    reads_layer = bool(config) and ("vision_feature_layer" in config or "vision_feature_layers" in config)
    read = FeatureRead.HIDDEN_STATE if reads_layer else FeatureRead.LAST_HIDDEN_STATE
    return Family(model_type, class_name(model_type) or "?", read,
                  "assumed from the config (vision_feature_layer present or not)", checked=False)


def check_family(config: dict[str, Any], origin: str) -> str:
    """Return the config's model_type if transformers builds it as an image-text-to-text model, else raise a
    clear error. A config naming code shipped with the checkpoint (auto_map) is refused even when its
    model_type is built in: freezelab never runs that code, and says so rather than quietly using
    transformers' class instead."""
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    remote = _remote_code(config)
    known = class_name(model_type) if isinstance(model_type, str) and model_type else None
    if known is not None:
        if remote:
            raise SourceError(f"{origin}: its config names model code shipped with the checkpoint ({remote}), and "
                              "freezelab never runs code from a checkpoint; remove the auto_map entry to use "
                              f"transformers' own {known}")
        return str(model_type)
    archs = archs if isinstance(archs, list) else [archs]
    found = f"model_type {_short(model_type)}" if model_type else "no model_type"
    if archs:
        found += f", architectures {', '.join(_short(a) for a in archs[:3])}{', ...' if len(archs) > 3 else ''}"
    hint = _HINTS.get(str(model_type), "supported: transformers' image-text-to-text classes, checked families: "
                      + ", ".join(f.title for f in FAMILIES.values()))
    if remote:  # custom code shipped with the checkpoint: never imported, never run
        hint = "it needs the model code shipped with the checkpoint (auto_map), and freezelab never runs " \
               "code from a checkpoint; " + hint
    raise NotLlavaError(f"{origin} is not a vision-language model transformers builds ({found}); {hint}")


def model_class(model_type: str) -> Any:
    import transformers

    name = class_name(model_type)
    if name is None:
        raise SourceError(f"transformers has no image-text-to-text class for model_type {_short(model_type)}")
    return getattr(transformers, name)


def config_from_dict(config: dict[str, Any]) -> Any:
    """A transformers config object for a (validated) config dict.

    Weight tying: transformers 5.24 ties lm_head to the input embeddings when the *top-level*
    `tie_word_embeddings` is true, and for a key missing from the file it takes the class default,
    True for InternVLConfig (configuration_internvl.py:122) and Mistral3Config
    (configuration_mistral3.py:98). Their Hub configs, saved before 5.0, carry the flag in
    `text_config` only (where the text class default, False for Qwen2 and Mistral, applies), and their
    checkpoints store a separate lm_head, which `from_pretrained` keeps untied. So a flag missing at
    the top level is taken from the text config, as the checkpoints were saved."""
    from transformers import CONFIG_MAPPING

    clean = {k: v for k, v in config.items() if not k.startswith("_freezelab")}
    built = CONFIG_MAPPING[clean["model_type"]].from_dict(clean)
    text = built.get_text_config()
    if "tie_word_embeddings" not in clean and text is not built and hasattr(text, "tie_word_embeddings"):
        built.tie_word_embeddings = bool(text.tie_word_embeddings)
    return built
