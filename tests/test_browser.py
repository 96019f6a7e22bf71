"""A real browser on the launched app: load llava-1.5-7b, apply a preset, tick a module in the tree,
and watch the trainable count and the memory verdict change on the page.

Needs Chromium at /usr/bin/chromium (Debian package `chromium`): Playwright's own browser
download is not used. Without it the test skips, unless FREEZELAB_REQUIRE_BROWSER=1 (CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from freezelab.models import build
from freezelab.sources import resolve

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
WAIT_MS = 60_000  # generous: CI machines are often shared

if not CHROMIUM.exists():
    if os.environ.get("FREEZELAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"FREEZELAB_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium)",
                    pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the browser test needs it",
                allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def counts_7b() -> dict[str, int]:
    """Independent counts from the model transformers builds (meta device: no memory)."""
    model = build(resolve("llava-1.5-7b"), device="meta")
    named = dict(model.named_parameters())

    def under(prefix: str) -> int:
        return sum(p.numel() for n, p in named.items() if n.startswith(prefix))

    return {"projector": under("model.multi_modal_projector."), "language_model": under("model.language_model.")}


def shown_count(page) -> int:
    return int(page.inner_text("#fl-trainable").replace(",", ""))


def wait_count(page, value: int) -> None:
    try:
        page.wait_for_function(f"document.querySelector('#fl-trainable')?.innerText.replace(/,/g, '') === '{value}'",
                               timeout=WAIT_MS)
    except sync_api.TimeoutError:
        raise AssertionError(f"trainable count stayed {page.inner_text('#fl-trainable')} (wanted {value:,}); "
                             f"model: {page.inner_text('#fl-header')!r}; status: {page.inner_text('#fl-status')!r}"
                             ) from None


def settle(page) -> None:
    """Wait until no output shows Gradio's pending overlay (the last event has fully landed)."""
    page.wait_for_function("document.querySelectorAll('.pending, .wrap.pending').length === 0", timeout=WAIT_MS)


def test_preset_and_tree_toggle_change_counts_and_verdict(server, counts_7b, tmp_path):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(server)
            page.wait_for_selector("#fl-tree-box [data-p='model.language_model']", timeout=WAIT_MS)
            # opens ready on the tiny model with LLaVA stage 1: only the projector trains
            tiny = build(resolve("tiny"), device="meta")
            assert shown_count(page) == sum(p.numel() for n, p in tiny.named_parameters()
                                            if n.startswith("model.multi_modal_projector.")) > 0

            page.fill("#fl-custom-model textarea, #fl-custom-model input", "llava-1.5-7b")
            page.press("#fl-custom-model textarea, #fl-custom-model input", "Enter")
            page.wait_for_function("document.querySelector('#fl-header')?.innerText.includes('llava-1.5-7b')",
                                   timeout=WAIT_MS)
            settle(page)

            page.click("#fl-preset-stage1")
            wait_count(page, counts_7b["projector"])
            settle(page)
            before = page.inner_text("#fl-verdict")

            box = page.locator("#fl-tree-box [data-p='model.language_model'] > summary > input[type=checkbox]")
            assert box.is_checked() is False
            box.click()
            wait_count(page, counts_7b["projector"] + counts_7b["language_model"])
            page.wait_for_function(f"document.querySelector('#fl-verdict')?.innerText !== {before!r}",
                                   timeout=WAIT_MS)
            after = page.inner_text("#fl-verdict")
            assert "GiB per GPU" in before and "GiB per GPU" in after and after != before
            assert page.locator("#fl-tree-box [data-p='model.language_model'] > summary > input").is_checked()
            # the root mixes trainable and frozen modules: the browser shows it indeterminate
            assert page.evaluate("document.querySelector(\"#fl-tree-box [data-p=''] > summary > input\")"
                                 ".indeterminate") is True
            assert page.locator("#fl-memory-plot .js-plotly-plot").count() == 1
            shot = Path(os.environ.get("FREEZELAB_SCREENSHOT") or tmp_path / "dashboard.png")
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 50_000
        finally:
            browser.close()


def test_qwen25_vl_loads_with_its_merger_as_projector_and_a_token_layout(server):
    """Beyond LLaVA: Qwen2.5-VL's projector is visual.merger, inside the vision module; the image sizes box
    shows the token layout and the memory panel answers for this family."""
    model = build(resolve("qwen2.5-vl-7b-instruct"), device="meta")
    merger = sum(p.numel() for n, p in model.named_parameters() if n.startswith("model.visual.merger."))
    language = sum(p.numel() for n, p in model.named_parameters() if n.startswith("model.language_model."))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(server)
            page.wait_for_selector("#fl-tree-box [data-p='model.language_model']", timeout=WAIT_MS)
            page.fill("#fl-custom-model textarea, #fl-custom-model input", "qwen2.5-vl-7b-instruct")
            page.press("#fl-custom-model textarea, #fl-custom-model input", "Enter")
            page.wait_for_function("document.querySelector('#fl-header')?.innerText.includes('Qwen2_5_VL')",
                                   timeout=WAIT_MS)
            settle(page)
            page.click("#fl-preset-stage1")
            wait_count(page, merger)
            settle(page)
            page.wait_for_selector("#fl-tree-box [data-p='model.visual']", timeout=WAIT_MS)
            box = page.locator("#fl-tree-box [data-p='model.language_model'] > summary > input[type=checkbox]")
            box.click()
            wait_count(page, merger + language)
            settle(page)
            sizes = page.locator("#fl-image-sizes textarea, #fl-image-sizes input")
            if not sizes.is_visible():
                page.get_by_text("Images: sizes and token layout").click()
            sizes.fill("448x448")
            sizes.press("Enter")
            page.wait_for_function("document.querySelector('#fl-tokens')?.innerText.includes('image tokens: 256')",
                                   timeout=WAIT_MS)
            verdict = page.inner_text("#fl-verdict")
            assert "GiB per GPU" in verdict  # the analytic estimate follows Qwen2.5-VL
            assert page.locator("#fl-memory-plot .js-plotly-plot").count() == 1
        finally:
            browser.close()
