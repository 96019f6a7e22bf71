"""The module tree for the page: compact rows for a small JavaScript renderer (no gradio here).

The server sends the (filtered) hierarchy as JSON rows in pre-order, each
`[depth, name, type, counts, state, flags, tie note]`; the script in the page
turns them into nested <details> with tri-state checkboxes, keeps the user's
expand/collapse choices across updates and sends clicks back as events.
Rows instead of HTML keep a 72B model's 1,400-module tree to ~60 KB per update.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from freezelab import units
from freezelab.adapter_index import ADAPTED_TYPE
from freezelab.components import Part
from freezelab.index import ModelIndex
from freezelab.index_memo import per_index

OPEN_DEPTH = 1  # rows at or above this depth start expanded (model -> towers)


def _ancestors(path: str) -> list[str]:
    """Strict ancestors of `path`, the root ("") included."""
    parts = path.split(".") if path else []
    return [".".join(parts[:k]) for k in range(len(parts))]


@dataclass(frozen=True)
class _Static:
    """What does not depend on the plan, computed once per index."""

    head: list[list[Any]]          # per module: [depth, name, type]
    totals: list[int]
    total_text: list[str]
    ties: list[str]                # tie note or ""
    dead: list[bool]               # no gradient ever reaches any of its parameters
    adapter: list[str]             # "A": a Linear with an adapter, "X": an adapter's own module, else ""


def _tie_note(index: ModelIndex, pos: int) -> str:
    m = index.modules[pos]
    notes = []
    for i in m.own:
        p = index.params[i]
        if p.aliases:
            notes.append("tied with " + ", ".join(n for n in p.names if not n.startswith(m.path + ".")))
    return "; ".join(notes)


@per_index
def _static(index: ModelIndex) -> _Static:
    numels = index.numels
    totals = [sum(numels[i] for i in m.params) for m in index.modules]
    dead = index.dead
    return _Static(
        head=[[m.depth, m.path.rpartition(".")[2] if m.path else index.name, m.type] for m in index.modules],
        totals=totals,
        total_text=[units.params(t) for t in totals],
        ties=[_tie_note(index, pos) for pos in range(len(index.modules))],
        dead=[bool(dead) and bool(m.params) and all(index.params[i].name in dead for i in m.params)
              for m in index.modules],
        adapter=[_adapter_flag(index, m) for m in index.modules],
    )


def _adapter_flag(index: ModelIndex, m: Any) -> str:
    if m.type == ADAPTED_TYPE:
        return "A"
    if m.own and all(index.params[i].part == Part.ADAPTER for i in m.own):
        return "X"
    return ""


def _visible(index: ModelIndex, query: str, depth: int | None) -> tuple[list[bool], set[str], set[str]]:
    """(shown flag per module, paths that matched the query, paths to open so every match shows)."""
    q = query.strip().lower()
    hits = {m.path for m in index.modules if q and (q in m.path.lower() or q in m.type.lower())}
    opened: set[str] = set()
    for path in hits:
        opened.update(_ancestors(path))
    shown = [(not q or m.path in hits or m.path in opened) and (depth is None or m.depth <= depth)
             for m in index.modules]
    return shown, hits, opened


def _state(trainable: int, total: int) -> str:
    if total == 0:
        return "e"
    return "f" if trainable == 0 else "t" if trainable == total else "p"


def tree_data(index: ModelIndex, mask: list[bool], query: str = "", depth: int | None = None) -> dict[str, Any]:
    """The rows the page renders, in module registration order; `query` keeps matching modules
    (path or class name) and their ancestors, `depth` drops deeper rows. Counts are per unique
    tensor, as anatomy.count computes them."""
    st = _static(index)
    shown, hits, opened = _visible(index, query, depth)
    on = [n if m else 0 for n, m in zip(index.numels, mask)]
    rows: list[list[Any]] = []
    for pos, m in enumerate(index.modules):
        if not shown[pos]:
            continue
        total = st.totals[pos]
        trainable = sum(on[i] for i in m.params)
        flags = ("T" if st.ties[pos] else "") + ("D" if st.dead[pos] else "") + ("H" if m.path in hits else "") \
            + ("O" if m.path in opened else "") + st.adapter[pos]
        # most modules are wholly frozen or wholly trainable: their text is already known (~800 rows on 7B)
        part = st.total_text[pos] if trainable == total else "0" if trainable == 0 else units.params(trainable)
        counts = f"{part} / {st.total_text[pos]}" if total else "no parameters"
        # an adapter's own rows show counts but no checkbox: the lora rule decides them
        row = [*st.head[pos], counts, "e" if st.adapter[pos] == "X" else _state(trainable, total), flags]
        if st.ties[pos]:
            row.append(st.ties[pos])
        rows.append(row)
    return {"q": query.strip(), "open_depth": OPEN_DEPTH, "rows": rows}


def tree_json(index: ModelIndex, mask: list[bool], query: str = "", depth: int | None = None) -> str:
    return json.dumps(tree_data(index, mask, query, depth), separators=(",", ":"))


# Runs once when the gr.HTML mounts; `element`, `props`, `trigger` and `watch` come from Gradio.
# Event data avoids the key `path`: Gradio treats any dict with a `path` as an uploaded file.
TREE_JS = r"""
const open = new Map();
let lastQ = null;
const ENTITIES = {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'};
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ENTITIES[c]);
const inner = (r) => {
  const [d, name, type, counts, s, flags, note] = r;
  const box = s === 'e' ? '' : `<input type="checkbox" data-s="${s}"${s === 't' ? ' checked' : ''}>`;
  let badges = '';
  if (flags.includes('T')) badges += `<span class="fl-b fl-tie" title="${esc(note || '')}">tied</span>`;
  if (flags.includes('A')) badges += '<span class="fl-b fl-lora" title="gets a LoRA adapter">LoRA</span>';
  if (flags.includes('X')) badges += '<span class="fl-b fl-lora" title="adapter tensor (trains)">adapter</span>';
  if (flags.includes('D')) {
    badges += '<span class="fl-b fl-dead" title="no gradient ever reaches these parameters">no grad</span>';
  }
  const pick = s === 'e' ? '' : '<button class="fl-pick" title="use this module as the selector">&#8599;</button>';
  return `${box}<span class="fl-n">${esc(name)}</span><span class="fl-c">${esc(counts)}</span>${badges}${pick}` +
         `<span class="fl-t">${esc(type)}</span>`;
};
const render = () => {
  const host = element.querySelector('.fl-tree');
  if (!host) return;
  let data;
  try { data = JSON.parse(props.value || '{}'); } catch (e) { return; }
  const rows = data.rows || [];
  if (data.q !== lastQ) { open.clear(); lastQ = data.q; }
  if (!rows.length) { host.innerHTML = `<p class="fl-empty">no module matches ${esc(data.q || '')}</p>`; return; }
  const out = [], stack = [];
  rows.forEach((r, i) => {
    const d = r[0];
    while (stack.length > d) { if (stack.pop().kids) out.push('</details>'); }
    const path = d === 0 ? '' : (d === 1 ? r[1] : stack[d - 1].path + '.' + r[1]);
    const kids = i + 1 < rows.length && rows[i + 1][0] > d;
    const cls = `fl-s-${r[4]}${r[5].includes('H') ? ' fl-hit' : ''}`;
    if (kids) {
      const isOpen = open.has(path) ? open.get(path) : (d <= data.open_depth || r[5].includes('O'));
      out.push(`<details class="${cls}" data-p="${esc(path)}"${isOpen ? ' open' : ''}><summary>${inner(r)}</summary>`);
    } else {
      out.push(`<div class="fl-leaf ${cls}" data-p="${esc(path)}">${inner(r)}</div>`);
    }
    stack.push({path, kids});
  });
  while (stack.length) { if (stack.pop().kids) out.push('</details>'); }
  host.innerHTML = out.join('');
  host.querySelectorAll('input[data-s="p"]').forEach((c) => { c.indeterminate = true; });
};
element.addEventListener('click', (e) => {
  const row = e.target.closest('[data-p]');
  if (!row) return;
  if (e.target.matches('input[data-s]')) {
    e.preventDefault();
    trigger('module_toggle', {module: row.dataset.p, on: e.target.dataset.s !== 't'});
  } else if (e.target.closest('.fl-pick')) {
    e.preventDefault();
    trigger('module_pick', {module: row.dataset.p});
  } else if (e.target.closest('summary') && row.tagName === 'DETAILS') {
    open.set(row.dataset.p, !row.open);
  }
});
watch('value', render);
render();
"""

TREE_TEMPLATE = '<div class="fl-tree"></div>'

TREE_CSS = """
.fl-tree { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; line-height: 1.6;
           overflow-x: auto; }
.fl-tree summary, .fl-tree .fl-leaf { white-space: nowrap; }
.fl-tree details > :not(summary), .fl-tree details > .fl-leaf { margin-left: 1.15em; }
.fl-tree summary { cursor: pointer; }
.fl-tree .fl-leaf { padding-left: 1em; }
.fl-tree input[type=checkbox] { appearance: auto; -webkit-appearance: checkbox; accent-color: #2e9e5b;
                                width: 14px; height: 14px; margin: 0 .35em 0 0; vertical-align: -2px; cursor: pointer; }
.fl-tree .fl-t { color: #8a94a0; margin-left: .3em; }
.fl-tree .fl-c { color: #3d4852; margin-left: .55em; }
.fl-tree .fl-b { font-size: 10.5px; border-radius: 3px; padding: 0 .3em; margin-left: .4em; }
.fl-tree .fl-tie { background: #e8e1f5; color: #5a3e99; }
.fl-tree .fl-dead { background: #fbe7d3; color: #8a4b10; }
.fl-tree .fl-lora { background: #fbefcc; color: #7a5a00; }
.fl-tree .fl-hit > summary, .fl-tree .fl-leaf.fl-hit { background: #fff6c8; }
.fl-tree .fl-pick { border: none; background: none; color: #8a94a0; cursor: pointer; padding: 0 .3em; }
.fl-tree .fl-pick:hover { color: #2e9e5b; }
.fl-tree .fl-s-t > summary .fl-n, .fl-tree .fl-leaf.fl-s-t .fl-n { color: #2e7d4f; font-weight: 600; }
.fl-tree .fl-empty { color: #8a94a0; }
"""
