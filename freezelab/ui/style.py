"""Theme and CSS of the dashboard (Gradio 6 takes both in launch())."""

from __future__ import annotations

from typing import Any

from freezelab.ui.tree_view import TREE_CSS

CSS = TREE_CSS + """
#fl-tree-box { border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 6px 8px; }
.fl-summary .fl-big { font-size: 1.05rem; margin-bottom: .3rem; }
.fl-summary table { font-size: .85rem; width: 100%; border-collapse: collapse; }
.fl-summary td, .fl-summary th { padding: 2px 8px; text-align: left; border: none;
                                 border-bottom: 1px solid var(--border-color-primary); }
.fl-summary td:nth-child(2), .fl-summary td:nth-child(3) { text-align: right; font-variant-numeric: tabular-nums; }
.fl-verdict { font-size: 1rem; padding: .4rem .6rem; border-radius: 6px; background: var(--block-background-fill); }
.fl-verdict .fl-ok, .fl-verdict .fl-bad, .fl-verdict .fl-tight { color: white; font-weight: 700; border-radius: 4px; padding: 1px 8px;
                                          text-transform: uppercase; font-size: .85rem; letter-spacing: .03em; }
.fl-verdict .fl-ok { background: #237a46; }
.fl-verdict .fl-bad { background: #b3261e; }
.fl-verdict .fl-tight { background: #b26b00; }
#fl-status { min-height: 1.5rem; }
.fl-presets button { min-width: 0 !important; }
footer { display: none !important; }
"""


def theme() -> Any:
    import gradio as gr

    # System fonts only: no web-font request, so the page renders the same without internet
    # (workshops, air-gapped boxes) and never mixes a partly loaded font with its fallback.
    return gr.themes.Soft(primary_hue="green", neutral_hue="slate",
                          font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])
