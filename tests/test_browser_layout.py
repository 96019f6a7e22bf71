"""The dashboard's layout in a real browser at a 1440 px desktop and a 1024 px laptop width: no label
or value cut off or overflowing, no label wrapped onto a second line, no dropdown arrow over its value,
no tree row wrapping its counts, no chart text (title, legend, axis titles, tick labels, GPU-line
labels) on top of another, no glyph the system fonts cannot draw. It measures element boxes
(getBoundingClientRect), not pixels.

Needs Chromium at /usr/bin/chromium (see tests/test_browser.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
WAIT_MS = 90_000
WIDTHS = ((1440, 1000), (1024, 768))

if not CHROMIUM.exists():
    if os.environ.get("FREEZELAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"FREEZELAB_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium)",
                    pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the browser test needs it",
                allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")

# Returns one line per problem found on the visible page. Boxes come from getBoundingClientRect;
# text widths inside inputs from the input's own font (canvas measureText).
PROBE_JS = r"""
() => {
  const out = [];
  const shown = (el) => {
    if (el.closest('.hide, .sr-only, [hidden]')) return false;
    const r = el.getBoundingClientRect();
    if (r.width < 2 || r.height < 2) return false;
    for (let e = el; e; e = e.parentElement) {
      const cs = getComputedStyle(e);
      if (cs.display === 'none' || cs.visibility === 'hidden' || cs.opacity === '0') return false;
    }
    return true;
  };
  const text = (el) => (el.innerText || el.value || el.textContent || '').trim().replace(/\s+/g, ' ').slice(0, 50);
  const where = (el) => {
    const block = el.closest('[id^=fl-], .block');
    return block && block.id ? `#${block.id}` : '';
  };
  const say = (kind, el, more) => out.push(`${kind}: "${text(el)}" ${where(el)} ${more || ''}`.trim());
  const lineHeight = (el) => {
    const cs = getComputedStyle(el);
    const lh = parseFloat(cs.lineHeight);
    return Number.isFinite(lh) ? lh : 1.25 * parseFloat(cs.fontSize);
  };
  const LABELS = 'span[data-testid="block-info"], .label-text, label[data-testid="block-label"], .fl-tree .fl-n, ' +
                 '.fl-tree .fl-c';
  const VALUES = 'input[type=number], input[type=text], input[role=combobox], textarea';
  // 1. text that does not fit its box (scrolls or is cut), and labels wrapped onto more lines
  for (const el of document.querySelectorAll(`${LABELS}, ${VALUES}`)) {
    if (!shown(el)) continue;
    if (el.scrollWidth > el.clientWidth + 1) say('overflows', el, `${el.scrollWidth} > ${el.clientWidth} px`);
  }
  for (const el of document.querySelectorAll('button')) {  // its text, not its icons (they may be rotated)
    if (!shown(el)) continue;
    const box = el.getBoundingClientRect();
    const walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    for (let node = walk.nextNode(); node; node = walk.nextNode()) {
      if (!node.textContent.trim()) continue;
      const range = document.createRange();
      range.selectNodeContents(node);
      const r = range.getBoundingClientRect();
      if (r.left < box.left - 1 || r.right > box.right + 1) {
        const px = (a, b) => `${Math.round(a)}-${Math.round(b)}`;
        say('overflows', el, `text ${px(r.left, r.right)} outside ${px(box.left, box.right)}`);
        break;
      }
    }
  }
  for (const el of document.querySelectorAll(LABELS)) {
    if (!shown(el)) continue;
    const rects = [...el.getClientRects()];
    const tall = el.getBoundingClientRect().height > 1.6 * lineHeight(el);
    if (rects.length > 1 || tall) say('wraps', el, `${Math.round(el.getBoundingClientRect().height)} px tall`);
  }
  // 2. text cut off (or scrolled out of sight) by an ancestor that does not show overflow; only the
  //    areas made to scroll (the module tree, code, tables) may hold text beyond their box
  const SCROLLERS = '.fl-tree, .cm-editor, .cm-scroller, [data-testid="dataframe"], .table-wrap';
  for (const el of document.querySelectorAll(`${LABELS}, button, .fl-tree .fl-b, .fl-badge`)) {
    if (!shown(el)) continue;
    const r = el.getBoundingClientRect();
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      if (a.matches(SCROLLERS)) break;
      const cs = getComputedStyle(a);
      const b = a.getBoundingClientRect();
      const outX = r.left < b.left - 1 || r.right > b.right + 1;
      const outY = r.top < b.top - 1 || r.bottom > b.bottom + 1;
      if ((cs.overflowX !== 'visible' && outX) || (cs.overflowY !== 'visible' && outY)) {
        const by = `${a.tagName.toLowerCase()}${a.id ? '#' + a.id : ''}.${String(a.className).split(' ')[0]}`;
        say('cut off', el, `by ${by}`);
        break;
      }
    }
  }
  // 3. a component's floating label under its own icon buttons (download, copy, full screen)
  for (const label of document.querySelectorAll('label[data-testid="block-label"]')) {
    const block = label.closest('.block');
    if (!block || !shown(label)) continue;
    const r = label.getBoundingClientRect();
    for (const button of block.querySelectorAll('.icon-button-wrapper button')) {
      if (shown(button) && !label.contains(button)) {
        const b = button.getBoundingClientRect();
        if (Math.min(r.right, b.right) - Math.max(r.left, b.left) > 1 &&
            Math.min(r.bottom, b.bottom) - Math.max(r.top, b.top) > 1) { say('label under a button', label); break; }
      }
    }
  }
  // 4. a tree row on more than one line
  for (const el of document.querySelectorAll('.fl-tree summary, .fl-tree .fl-leaf')) {
    if (!shown(el)) continue;
    const name = el.querySelector('.fl-n');
    if (name && el.getBoundingClientRect().height > 1.6 * lineHeight(name)) say('tree row wraps', el);
  }
  // 5. a dropdown's arrow over its value
  const canvas = document.createElement('canvas').getContext('2d');
  for (const input of document.querySelectorAll('input[role=combobox]')) {
    const icon = input.parentElement.querySelector('.icon-wrap');
    if (!icon || !shown(input) || !shown(icon) || !input.value) continue;
    const cs = getComputedStyle(input);
    canvas.font = `${cs.fontStyle} ${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
    const end = input.getBoundingClientRect().left + parseFloat(cs.paddingLeft) + canvas.measureText(input.value).width;
    const arrow = icon.getBoundingClientRect().left;
    if (end > arrow) {
      say('arrow covers the value', input, `text ends at ${Math.round(end)}, arrow at ${Math.round(arrow)}`);
    }
  }
  // 6. a placeholder longer than its box (cut, or wrapped out of a one-line box)
  for (const input of document.querySelectorAll('input[placeholder], textarea[placeholder]')) {
    if (!shown(input) || input.value || !input.placeholder) continue;
    const cs = getComputedStyle(input);
    canvas.font = `${cs.fontStyle} ${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
    const room = input.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
    const lines = input.tagName === 'TEXTAREA' ? Math.max(1, Math.floor((input.clientHeight -
      parseFloat(cs.paddingTop) - parseFloat(cs.paddingBottom)) / lineHeight(input))) : 1;
    if (canvas.measureText(input.placeholder).width > room * lines) {
      out.push(`placeholder cut: "${input.placeholder}" ${where(input)}`);
    }
  }
  // 7. chart texts on top of each other or outside the chart
  const overlap = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > 1 &&
                            Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 1;
  for (const plot of document.querySelectorAll('.js-plotly-plot')) {
    if (!shown(plot)) continue;
    const svg = plot.querySelector('.main-svg').getBoundingClientRect();
    const name = (plot.querySelector('.gtitle') || {}).textContent || where(plot);
    const items = [];
    const add = (kind, sel) => plot.querySelectorAll(sel).forEach((el) => {
      const t = (el.textContent || '').trim();
      if ((t || kind === 'legend') && shown(el)) items.push({kind, t, r: el.getBoundingClientRect()});
    });
    add('title', '.gtitle');
    add('legend', '.legend .bg');
    add('x title', '.g-xtitle text');
    add('y title', '.g-ytitle text');
    add('label', '.annotation-text-g text');
    add('x tick', '.xtick text');
    add('y tick', '.ytick text');
    for (const it of items) {
      const r = it.r;
      if (r.left < svg.left - 1 || r.right > svg.right + 1 || r.top < svg.top - 1 || r.bottom > svg.bottom + 1) {
        out.push(`chart text cut off: ${it.kind} "${it.t}" in "${name}"`);
      }
    }
    for (let i = 0; i < items.length; i++) {
      for (let j = i + 1; j < items.length; j++) {
        const [a, b] = [items[i], items[j]];
        if (a.kind === 'x tick' && b.kind === 'y tick') continue;  // they meet at the origin by design
        if (overlap(a.r, b.r)) out.push(`chart texts overlap: ${a.kind} "${a.t}" and ${b.kind} "${b.t}" in "${name}"`);
      }
    }
  }
  // 8. glyphs with no system font behind them (colour emoji): they render as empty boxes
  const missing = document.body.innerText.match(/[\u2705\u274C\u23F3\u231B\u2728\u{1F300}-\u{1FAFF}]/gu);
  if (missing) out.push(`glyphs without a system font: ${[...new Set(missing)].join(' ')}`);
  return out;
}
"""


def settle(page) -> None:
    """No event pending, and every chart drawn."""
    page.wait_for_function("document.querySelectorAll('.pending, .wrap.pending, .generating').length === 0",
                           timeout=WAIT_MS)
    page.wait_for_timeout(400)  # Plotly redraws after its container settles


def problems(page, view: str) -> list[str]:
    settle(page)
    return [f"{view}: {p}" for p in page.evaluate(PROBE_JS)]


def load_model(page, name: str) -> None:
    box = "#fl-custom-model textarea, #fl-custom-model input"
    page.fill(box, name)
    page.press(box, "Enter")
    page.wait_for_function(f"document.querySelector('#fl-header')?.innerText.includes({name!r})", timeout=WAIT_MS)
    settle(page)


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    settle(page)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, server: str, width: int, height: int):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(server)
    page.wait_for_selector("#fl-tree-box [data-p='model.language_model']", timeout=WAIT_MS)
    settle(page)
    return page


@pytest.mark.parametrize(("width", "height"), WIDTHS, ids=[f"{w}px" for w, _ in WIDTHS])
def test_every_label_and_chart_text_is_readable(browser, server, width, height):
    page = open_page(browser, server, width, height)
    found = problems(page, "tiny, stage 1")
    load_model(page, "llava-onevision-qwen2-72b")
    page.click("#fl-preset-full")
    page.wait_for_function("document.querySelector('#fl-verdict')?.textContent.includes('does not fit')",
                           timeout=WAIT_MS)
    found += problems(page, "72b, full fine-tune")
    ticks = page.eval_on_selector_all("#fl-curve-plot .xtick text", "els => els.map(e => e.textContent)")
    if not ticks or not all(re.fullmatch(r"\d+", t) for t in ticks):
        found.append(f"72b, full fine-tune: batch sizes on the curve are not whole numbers: {ticks}")
    load_model(page, "llava-1.5-7b")
    page.click("#fl-preset-stage1")
    found += problems(page, "7b, stage 1")
    tab(page, "Learn")
    page.locator("#fl-learn-buttons button").first.click()
    found += problems(page, "Learn, first lesson")
    load_model(page, "tiny")
    tab(page, "Verify")
    page.get_by_role("button", name="Run the sanity step").click()
    page.wait_for_function("document.querySelector('#fl-step-checks')?.innerText.includes('loss_finite')",
                           timeout=WAIT_MS)
    page.get_by_role("button", name="Simulate the training step").click()
    page.wait_for_function("document.querySelector('#fl-sim-table table')", timeout=WAIT_MS)
    found += problems(page, "Verify, tiny")
    tab(page, "Export")
    found += problems(page, "Export, tiny")
    page.close()
    assert not found, "\n".join(found)
