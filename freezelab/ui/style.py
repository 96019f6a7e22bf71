"""Theme and CSS of the dashboard (Gradio 6 takes both in launch()).

Layout rules are checked in a real browser at 1440 and 1024 px (tests/test_browser_layout.py):
labels stay on one line and uncut, dropdown values clear of their arrows, tree rows on one line.
"""

from __future__ import annotations

from typing import Any

from freezelab.ui.memory_view import FIELDS, RESULTS, control_id
from freezelab.ui.tree_view import TREE_CSS

RED = "#b3261e"
# While a workload value is refused (the error box under the controls is not empty): outline the
# control it came from, and mark everything computed from the workload as out of date.
REFUSED = ".gradio-container:has(#fl-workload-error .fl-field-error)"
FIELD_RULES = "\n".join(
    f'.gradio-container:has(#fl-workload-error li[data-field="{name}"]) #{control_id(name)} '
    f"{{ box-shadow: inset 0 0 0 2px {RED} !important; }}" for name in FIELDS)  # Gradio sets none !important

CSS = TREE_CSS + FIELD_RULES + f"""
#fl-tree-box {{ border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 6px 8px; }}
.fl-summary .fl-big {{ font-size: 1.05rem; margin-bottom: .3rem; }}
.fl-summary table {{ font-size: .85rem; width: 100%; border-collapse: collapse; }}
.fl-summary td, .fl-summary th {{ padding: 2px 8px; text-align: left; border: none;
                                 border-bottom: 1px solid var(--border-color-primary); }}
.fl-summary td:nth-child(2), .fl-summary td:nth-child(3) {{ text-align: right; font-variant-numeric: tabular-nums; }}
.fl-verdict {{ font-size: 1rem; padding: .4rem .6rem; border-radius: 6px; background: var(--block-background-fill); }}
.fl-verdict .fl-ok, .fl-verdict .fl-bad, .fl-badge {{ color: white; font-weight: 700; border-radius: 4px;
    padding: 1px 8px; text-transform: uppercase; font-size: .8rem; letter-spacing: .03em; white-space: nowrap; }}
.fl-ok {{ background: #237a46; }}
.fl-bad {{ background: {RED}; }}
.fl-warn {{ background: #8a5a00; }}
.fl-run {{ background: #5b6b7b; }}
#fl-status {{ min-height: 1.5rem; }}
footer {{ display: none !important; }}
button.label-wrap > .icon {{ margin-right: 6px; }}  /* an accordion's arrow is a rotated ▼: keep it inside */

/* preset buttons: as many per row as their one-line labels allow */
.fl-presets {{ flex-wrap: wrap !important; gap: 6px !important; }}
.fl-presets button {{ min-width: 0 !important; flex: 1 1 auto !important; white-space: nowrap; }}

/* workload controls: a grid of equal cells, as many per row as fit, then the two ticks side by side
   (Gradio wraps a row's form controls in one .form element: that is the grid) */
.fl-workload-grid > .form {{ display: grid !important; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr));
                            gap: 8px !important; border: none !important; background: none !important; }}
.fl-workload-grid > .form > * {{ min-width: 0 !important; width: auto !important; flex: none !important;
                                margin: 0 !important; border: 1px solid var(--border-color-primary) !important;
                                border-radius: 6px; }}
.fl-workload-grid label > span, .fl-workload-ticks .label-text {{ white-space: nowrap; }}
.fl-workload-ticks > .form {{ flex-wrap: wrap !important; }}
.fl-workload-ticks > .form > * {{ min-width: 200px !important; }}
.fl-field-error {{ color: {RED}; background: #fdecea; border: 1px solid {RED}; border-radius: 6px;
                  padding: 6px 10px; margin-top: 6px; }}
.fl-field-error ul {{ margin: 0 0 4px 0; padding-left: 1.2em; }}

/* results computed from the workload: greyed with a note while a workload value is refused */
{REFUSED} .{RESULTS} > :not(#fl-verdict-box) {{ opacity: .35; filter: grayscale(1); }}
{REFUSED} .{RESULTS}::before {{ content: "Out of date: the workload above has a value the estimate cannot take.";
    color: {RED}; font-weight: 600; }}
.fl-verdict.fl-stale {{ border: 2px dashed {RED}; color: #6b6b6b; }}
.fl-verdict.fl-stale .fl-ok, .fl-verdict.fl-stale .fl-bad {{ background: #9aa3ab; }}
.fl-stale-badge {{ color: white; background: {RED}; border-radius: 4px; padding: 1px 8px; font-weight: 700;
                  text-transform: uppercase; font-size: .8rem; }}

/* Verify: what each result ran for; once the plan or workload changes, the result is marked stale */
.fl-now, .fl-for {{ font-size: .9rem; padding: .35rem .6rem; border-radius: 6px;
                   background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }}
.fl-now code, .fl-for code {{ white-space: normal; overflow-wrap: anywhere; }}
.fl-for .fl-stale-note {{ display: none; }}
.fl-for.fl-stale {{ border: 2px dashed {RED}; }}
.fl-for.fl-stale .fl-stale-note {{ display: block; color: {RED}; font-weight: 600; margin-top: 2px; }}
.fl-checked.fl-stale .fl-result {{ opacity: .35; filter: grayscale(1); }}
"""


def badge(text: str, kind: str) -> str:
    """A coloured word (kind: ok, bad, warn, run) drawn by CSS, so it renders with any font, unlike
    emoji such as ✅, for which most Linux systems have no glyph (an empty box instead)."""
    return f'<span class="fl-badge fl-{kind}">{text}</span>'


def theme() -> Any:
    import gradio as gr

    # System fonts only: no web-font request, so the page renders the same without internet
    # (workshops, air-gapped boxes) and never mixes a partly loaded font with its fallback.
    return gr.themes.Soft(primary_hue="green", neutral_hue="slate",
                          font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])
