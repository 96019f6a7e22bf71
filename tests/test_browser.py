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


def open_dashboard(page, url: str) -> None:
    """Open the app and wait until the default model's tree is on the page."""
    page.goto(url)
    page.wait_for_selector("#fl-tree-box [data-p='model.language_model']", timeout=WAIT_MS)


def settle(page) -> None:
    """Wait until no output shows Gradio's pending overlay (the last event has fully landed)."""
    page.wait_for_function("document.querySelectorAll('.pending, .wrap.pending').length === 0", timeout=WAIT_MS)


def test_preset_and_tree_toggle_change_counts_and_verdict(server, counts_7b, tmp_path):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            open_dashboard(page, server)
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
            open_dashboard(page, server)
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
            sizes = page.locator("#fl-w-image_sizes textarea, #fl-w-image_sizes input")
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


def launch(p, width: int = 1024, height: int = 768):
    browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
    page = browser.new_page(viewport={"width": width, "height": height})
    return browser, page


def test_a_refused_workload_value_shows_at_its_field_and_the_results_go_stale(server):
    with sync_api.sync_playwright() as p:
        browser, page = launch(p)
        try:
            open_dashboard(page, server)
            settle(page)
            batch = page.locator("#fl-w-batch input")
            page.eval_on_selector("#fl-w-batch", "e => e.scrollIntoView({block: 'center'})")
            batch.fill("0")
            page.wait_for_selector("#fl-workload-error li[data-field='batch']", timeout=WAIT_MS)
            settle(page)
            error = page.locator("#fl-workload-error .fl-field-error")
            assert "batch: must be between 1 and 4,096, got 0" in error.inner_text()
            # where the user is looking: in view, right under the controls, the control itself outlined
            page.wait_for_timeout(300)  # the scroll to the message, if it was below the fold
            box, field = error.bounding_box(), page.locator("#fl-w-batch").bounding_box()
            height = page.viewport_size["height"]
            # both on screen (scrollIntoView aligns to whole pixels; boxes are fractional)
            assert field["y"] >= 0 and box["y"] + box["height"] <= height + 1
            assert 0 < box["y"] - (field["y"] + field["height"]) < 400
            assert "rgb(179, 38, 30)" in page.eval_on_selector("#fl-w-batch", "e => getComputedStyle(e).boxShadow")
            # the verdict and every chart computed from the workload are marked out of date
            assert "out of date" in page.inner_text("#fl-verdict").lower()
            for chart in ("#fl-memory-plot", "#fl-curve-plot"):
                assert float(page.eval_on_selector(chart, "e => getComputedStyle(e).opacity")) < 0.5, chart
            assert "the estimate still shows the last valid workload" in page.inner_text("#fl-status")
            batch.fill("2")
            page.wait_for_function("!document.querySelector('#fl-workload-error .fl-field-error')", timeout=WAIT_MS)
            settle(page)
            assert "out of date" not in page.inner_text("#fl-verdict").lower()
            assert float(page.eval_on_selector("#fl-memory-plot", "e => getComputedStyle(e).opacity")) == 1.0
            # after a workload change the status line says what changed: it never goes blank
            assert page.inner_text("#fl-status").startswith("Workload: batch 2")
        finally:
            browser.close()


def test_verify_results_say_what_they_ran_for_and_go_stale_after_a_change(server):
    with sync_api.sync_playwright() as p:
        browser, page = launch(p)
        try:
            open_dashboard(page, server)
            page.get_by_role("tab", name="Verify").click()
            page.get_by_role("button", name="Simulate the training step").click()
            page.wait_for_selector("#fl-sim-table table", timeout=WAIT_MS)
            settle(page)
            label = page.locator("#fl-sim-for .fl-for")
            assert label.inner_text().startswith("Simulated for tiny · plan: preset stage1; train @projector")
            assert "batch 1 × (64 text tokens + 1 image)" in label.inner_text()
            assert "fl-stale" not in label.get_attribute("class")
            page.get_by_role("tab", name="Plan & memory").click()
            page.locator("#fl-w-batch input").fill("3")
            page.wait_for_function("document.querySelector('#fl-status')?.innerText.startsWith('Workload: batch 3')",
                                   timeout=WAIT_MS)
            settle(page)
            page.get_by_role("tab", name="Verify").click()
            page.wait_for_selector("#fl-sim-for .fl-for.fl-stale", timeout=WAIT_MS)
            assert "Out of date" in label.inner_text()
            assert "batch 3 ×" in page.inner_text("#fl-verify-now")
            assert float(page.eval_on_selector("#fl-sim-table", "e => getComputedStyle(e).opacity")) < 0.5
            page.get_by_role("button", name="Simulate the training step").click()  # run again: current again
            page.wait_for_selector("#fl-sim-for .fl-for:not(.fl-stale)", timeout=WAIT_MS)
            assert "batch 3 ×" in label.inner_text()
        finally:
            browser.close()


def test_a_paused_session_is_told_why_in_a_toast_and_its_page_stays_as_it_was():
    """Public mode: three selectors over the regex limit pause the tab's session (freezelab.throttle);
    its next click is answered by the gate (HTTP 429, freezelab.ui.pause_gate), and the page shows the
    throttle's message as an error, the trainable count unchanged."""
    from freezelab.throttle import PAUSE_S, STRIKES
    from freezelab.ui.launch import launch as launch_app
    from freezelab.ui.launch import stop

    proc, url = launch_app(args=("--public",))
    try:
        with sync_api.sync_playwright() as p:
            browser, page = launch(p)
            try:
                open_dashboard(page, url)
                settle(page)
                before = shown_count(page)
                selector = page.locator("#fl-selector textarea, #fl-selector input").first
                for i in range(STRIKES):
                    selector.fill(f"re:a{{{4294967290 + i}}}")
                    shown = f"document.querySelector('#fl-preview').innerText.includes('{4294967290 + i}')"
                    page.wait_for_function(shown, timeout=WAIT_MS)
                page.click("#fl-preset-stage2")
                toast = page.locator(".toast-body").filter(has_text=f"paused for {PAUSE_S:.0f} s")
                toast.first.wait_for(timeout=WAIT_MS)
                settle(page)
                assert shown_count(page) == before
            finally:
                browser.close()
    finally:
        stop(proc)
