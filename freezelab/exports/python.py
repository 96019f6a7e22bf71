"""Export target: a Python snippet that reproduces the resolved plan with plain
`requires_grad_` calls on a transformers model (no freezelab needed to run it).

It freezes (or unfreezes) everything, then flips the fewest whole-module
prefixes and exact names, matched with `startswith` on dotted names whose
prefixes end in '.', so `layers.1.` never reaches `layers.10`. It ends with an
assert of the exact trainable count, which also catches names that another
transformers version spells differently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from freezelab.exports.base import Export, comment_lines, compress, counts_line, printable
from freezelab.exports.naming import names_line
from freezelab.index import ModelIndex
from freezelab.plans import Plan


def minimal_rules(index: ModelIndex, mask: Sequence[bool]) -> tuple[bool, list[str]]:
    """(base_trainable, entries): whichever direction needs fewer entries; a tie keeps a frozen base."""
    train = {i for i, on in enumerate(mask) if on}
    frozen = set(range(len(mask))) - train
    up, down = compress(index, train), compress(index, frozen)
    return (True, down) if len(down) < len(up) else (False, up)


def _literal(entries: list[str], opener: str, closer: str) -> list[str]:
    return [opener, *(f"    {json.dumps(e)}," for e in entries), closer]


def _loop(base_trainable: bool, entries: list[str]) -> list[str]:
    verb = "FREEZE" if base_trainable else "TRAIN"
    prefixes = [e for e in entries if e.endswith(".")]
    names = [e for e in entries if not e.endswith(".")]
    lines, tests = [], []
    if prefixes:
        lines += _literal(prefixes, f"{verb}_PREFIXES = (", ")")
        tests.append(f"name.startswith({verb}_PREFIXES)")
    if names:
        lines += _literal(names, f"{verb}_NAMES = {{", "}")
        tests.append(f"name in {verb}_NAMES")
    return lines + [
        "for name, param in model.named_parameters():",
        f"    if {' or '.join(tests)}:",
        f"        param.requires_grad_({not base_trainable})",
    ]


def _text(plan: Plan, index: ModelIndex, mask: Sequence[bool], base_trainable: bool, entries: list[str]) -> str:
    trainable = sum(n for n, on in zip(index.numels, mask) if on)
    head = [
        f"# freezelab plan for {printable(index.name)} ({index.model_class}): {counts_line(index, mask)}",
        *(f"#   {printable(line)}" for line in (f"base {plan.effective_base}", *map(str, plan.rules))),
        *comment_lines("# ", names_line(index) + ". If the model's names differ, the assert at the end "
                       "fails instead of training the wrong set."),
        "# `model` is the loaded transformers model (e.g. from_pretrained(...)).",
        f"model.requires_grad_({base_trainable})",
    ]
    body = _loop(base_trainable, entries) if entries else []
    tail = [
        "trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)",
        f'assert trainable == {trainable:_}, f"expected {trainable:,} trainable parameters, got {{trainable:,}}"',
    ]
    return "\n".join(head + body + tail) + "\n"


def render(plan: Plan, index: ModelIndex, mask: Sequence[bool]) -> Export:
    base_trainable, entries = minimal_rules(index, mask)
    return Export("python", _text(plan, index, mask, base_trainable, entries), True,
                  f"plain requires_grad_ calls: {len(entries)} prefix/name rule(s), names of transformers "
                  f"{index.transformers_version}", language="python")
