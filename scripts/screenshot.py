"""Retake the README's screenshot (assets/screenshot.png): the launched app in Chromium at 1440 px,
llava-1.5-7b with its last 4 LLM layers and the projector trainable, batch 4 × 1,024 text tokens.

    python scripts/screenshot.py [--out assets/screenshot.png] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.app_server import launch, stop  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
WAIT_MS = 90_000
VIEW = {"width": 1440, "height": 2360}


def settle(page) -> None:
    page.wait_for_function("document.querySelectorAll('.pending, .wrap.pending').length === 0", timeout=WAIT_MS)
    page.wait_for_timeout(600)


def take(url: str, out: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport=VIEW)
        page.goto(url)
        page.wait_for_selector("#fl-tree-box [data-p='model.language_model']", timeout=WAIT_MS)
        box = "#fl-custom-model textarea, #fl-custom-model input"
        page.fill(box, "llava-1.5-7b")
        page.press(box, "Enter")
        page.wait_for_function("document.querySelector('#fl-header')?.innerText.includes('llava-1.5-7b')",
                               timeout=WAIT_MS)
        settle(page)
        page.click("#fl-preset-last-n")
        settle(page)
        page.click("#fl-tree-box [data-p='model.multi_modal_projector'] > summary > input")
        settle(page)
        for name, value in (("batch", "4"), ("text_tokens", "1024")):
            page.fill(f"#fl-w-{name} input", value)
            settle(page)
        for path in ("model.language_model", "model.language_model.layers"):
            page.click(f"#fl-tree-box [data-p='{path}'] > summary .fl-n")
        settle(page)
        page.screenshot(path=str(out))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "screenshot.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    proc, url = launch()
    try:
        take(url, args.out, args.chromium)
    finally:
        stop(proc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
