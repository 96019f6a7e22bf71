"""Tiny configs of every supported LLaVA class, for real forwards in tests (small dims, random weights),
and a tiny checkpoint directory with a processor for real examples."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TINY = json.loads((ROOT / "assets" / "tiny" / "config.json").read_text())
TILE = 28                    # 2 x 2 patches of 14 px per tile
PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]
BIG_PINPOINTS = [[TILE * i, TILE * j] for i in range(1, 7) for j in range(1, 7)]  # OneVision pools these


def _siglip() -> dict[str, Any]:
    return {"model_type": "siglip_vision_model", "hidden_size": 32, "image_size": TILE, "intermediate_size": 64,
            "num_attention_heads": 4, "num_hidden_layers": 3, "patch_size": 14, "vision_use_head": False}


def config(kind: str) -> dict[str, Any]:
    """A tiny config dict of class `kind`: llava, llava-siglip, llava-tied, qwen-tied, next, next-video,
    onevision, vipllava."""
    c = copy.deepcopy(TINY)
    c.pop("architectures")
    if kind == "llava":
        return c
    if kind == "llava-tied":
        c["tie_word_embeddings"] = True
        return c
    if kind == "qwen-tied":  # the shipped 0.5B ones in small: SigLIP + Qwen2 (GQA, q/k/v biases), tied
        c["vision_config"]["image_size"] = TILE
        c.update(vision_config=_siglip(), vision_feature_select_strategy="full", vision_feature_layer=-1,
                 tie_word_embeddings=True)
        c["text_config"].update(model_type="qwen2", tie_word_embeddings=True)
        return c
    c["vision_config"]["image_size"] = TILE
    if kind == "llava-siglip":
        c.update(vision_config=_siglip(), vision_feature_select_strategy="full", vision_feature_layer=-1)
    elif kind == "next":
        c.update(model_type="llava_next", image_grid_pinpoints=PINPOINTS)
    elif kind == "next-video":
        c.update(model_type="llava_next_video", image_grid_pinpoints=PINPOINTS, video_token_index=501)
    elif kind == "onevision":
        c.update(model_type="llava_onevision", vision_config=_siglip(), image_grid_pinpoints=BIG_PINPOINTS,
                 vision_feature_select_strategy="full", vision_feature_layer=-1, video_token_index=502)
    elif kind == "vipllava":
        c.update(model_type="vipllava", vision_feature_layers=[-2, -3, 1], projector_layernorm_eps=1e-5)
        c.pop("vision_feature_layer")
        c.pop("vision_feature_select_strategy")
    else:
        raise ValueError(kind)
    return c


KINDS = ("llava", "llava-siglip", "next", "next-video", "onevision", "vipllava")


def write(directory: Path, kind: str) -> Path:
    """The config of `kind` as `directory/<kind>.json` (a MODEL argument)."""
    path = directory / f"{kind}.json"
    path.write_text(json.dumps(config(kind)))
    return path


WORDS = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(100)]


def make_processor_dir(directory: Path) -> Path:
    """A checkpoint directory with the tiny config and a Llava processor (word-level tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)} | {"<image>": TINY["image_token_index"]}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   extra_special_tokens={"image_token": "<image>"})
    side = TINY["vision_config"]["image_size"]
    images = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    LlavaProcessor(image_processor=images, tokenizer=fast, patch_size=14, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1).save_pretrained(str(directory))
    (directory / "config.json").write_text(json.dumps(config("llava")))
    return directory


def make_image(path: Path, size: tuple[int, int] = (70, 40)) -> Path:
    from PIL import Image

    Image.new("RGB", size, (200, 30, 60)).save(path)
    return path
