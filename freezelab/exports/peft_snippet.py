"""Export target Python, for plans with adapters or a quantized base: a snippet that builds the adapted
model with PEFT itself (`LoraConfig(...)`, `get_peft_model`), trains in full what the plan trains, and
asserts the counts PEFT reports, so it fails loudly on a model whose names differ.

The LoraConfig is freezelab.peft_targets' (a `target_modules` regex of the exact adapted layers, and
`rank_pattern` / `alpha_pattern` for rules with their own r / alpha). A quantized base is loaded with the
BitsAndBytesConfig written as a comment: its `llm_int8_skip_modules` keeps every Linear the plan does not
quantize (vision tower, projector, output head, trainable layers) in the parameter dtype.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from freezelab.adapters import Adapters, linears
from freezelab.exports.adapted import counts_line
from freezelab.exports.base import Export, comment_lines, compress, printable
from freezelab.exports.naming import names_line
from freezelab.index import ModelIndex
from freezelab.lora import QuantBits
from freezelab.peft_targets import lora_kwargs
from freezelab.plans import Plan


def skip_modules(index: ModelIndex, adapters: Adapters) -> list[str]:
    """Module prefixes covering exactly the Linear layers the plan keeps unquantized (transformers matches
    a skip entry as a module prefix up to a dot, or as a suffix)."""
    quantized = set(adapters.quantized)
    keep = {lin.weight for lin in linears(index) if lin.weight not in quantized}
    allowed = set(range(len(index.params))) - quantized
    return [p.rstrip(".").removesuffix(".weight") for p in compress(index, keep, allowed)]


def _quant_lines(index: ModelIndex, adapters: Adapters) -> list[str]:
    q = adapters.quant
    if q.bits == QuantBits.NONE:
        return []
    args = ["load_in_4bit=True" if q.bits == QuantBits.NF4 else "load_in_8bit=True"]
    if q.bits == QuantBits.NF4:
        args += [f'bnb_4bit_quant_type="{q.quant_type}"', f"bnb_4bit_use_double_quant={q.double_quant}",
                 "bnb_4bit_compute_dtype=torch.bfloat16"]
    args.append(f"llm_int8_skip_modules={json.dumps(skip_modules(index, adapters))}")
    return ["# Load the model with its frozen base quantized (bitsandbytes, CUDA):",
            "#   import torch",
            "#   from transformers import BitsAndBytesConfig",
            f"#   quantization_config = BitsAndBytesConfig({', '.join(args)})",
            "#   model = <ModelClass>.from_pretrained(<checkpoint>, quantization_config=quantization_config, "
            "dtype=torch.bfloat16)"]


def _literal(value: object) -> str:
    """A Python literal; regular expressions as raw strings."""
    if isinstance(value, str) and "\\" in value and '"' not in value and not value.endswith("\\"):
        return f'r"{value}"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _config_lines(index: ModelIndex, adapters: Adapters) -> list[str]:
    kwargs = lora_kwargs(index, adapters)
    return ["config = LoraConfig(", *(f"    {key}={_literal(value)}," for key, value in kwargs.items()), ")"]


def _train_lines(index: ModelIndex, mask: Sequence[bool]) -> list[str]:
    entries = compress(index, {i for i, on in enumerate(mask) if on})
    if not entries:
        return []
    prefixes = [e for e in entries if e.endswith(".")]
    names = [e for e in entries if not e.endswith(".")]
    tests = (["name.startswith(TRAIN_PREFIXES)"] if prefixes else []) + (["name in TRAIN_NAMES"] if names else [])
    lines = ["# trained in full beside the adapters (get_peft_model froze them): names without PEFT's base_layer"]
    if prefixes:
        lines += ["TRAIN_PREFIXES = (", *(f"    {json.dumps(e)}," for e in prefixes), ")"]
    if names:
        lines += ["TRAIN_NAMES = {", *(f"    {json.dumps(e)}," for e in names), "}"]
    return lines + ["for peft_name, param in model.get_base_model().named_parameters():",
                    '    name = peft_name.replace(".base_layer.", ".")',
                    f"    if '.lora_' not in peft_name and ({' or '.join(tests)}):",
                    "        param.requires_grad_(True)"]


def render(plan: Plan, index: ModelIndex, mask: Sequence[bool], adapters: Adapters) -> Export:
    trainable = sum(n for n, on in zip(index.numels, mask) if on) + adapters.params
    total = index.total_params + adapters.params
    head = [f"# freezelab plan for {printable(index.name)} ({index.model_class}): {counts_line(index, mask, adapters)}",
            *(f"#   {printable(line)}" for line in plan.to_text().splitlines()),
            *comment_lines("# ", names_line(index) + "; adapters as PEFT 0.21 names them. If the model's names "
                           "differ, the assert at the end fails instead of training the wrong set."),
            "# `model` is the loaded transformers model (e.g. from_pretrained(...)).",
            "from peft import LoraConfig, get_peft_model", ""]
    body = [*_quant_lines(index, adapters), *_config_lines(index, adapters), "model = get_peft_model(model, config)",
            *_train_lines(index, mask)]
    tail = ["trainable, total = model.get_nb_trainable_parameters()",
            f"assert (trainable, total) == ({trainable:_}, {total:_}), "
            f'f"expected {trainable:,} of {total:,} parameters trainable, got {{trainable:,}} of {{total:,}}"']
    return Export("python", "\n".join(head + body + tail) + "\n", True,
                  f"PEFT LoraConfig with {len(adapters.layers)} adapted Linear layers, "
                  f"names of transformers {index.transformers_version}", language="python")
