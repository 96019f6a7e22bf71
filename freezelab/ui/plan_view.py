"""What the plan part of the page shows: the trainable counts, the rules, their warnings, the
parameter charts and the module tree's rows. The counts, charts and rows are pure functions of the
index and the plan's mask (and the tree options), kept per index and shared between sessions: a
class clicks the same presets."""

from __future__ import annotations

from freezelab import charts, units
from freezelab.anatomy import component_counts, count, summary
from freezelab.chart_spec import Chart
from freezelab.index import ModelIndex
from freezelab.index_memo import Kept, per_index
from freezelab.plans import Plan, Resolution
from freezelab.session import TreeOptions
from freezelab.ui.tree_view import tree_json

KEPT_PLAN_PARTS = 256  # per model index: masks (counts and charts) and masks with tree options (rows)
SUMMARY_ROWS = (("vision", "vision tower"), ("projector", "projector"), ("llm", "language model"),
                ("embeddings", "of which embeddings"), ("lm_head", "of which lm_head"))


def summary_html(index: ModelIndex, mask: list[bool]) -> str:
    """Counts on the (adapted) index: with adapters, totals are base plus adapters, as PEFT counts them."""
    total = count(index, mask)
    comps = component_counts(index, mask)
    rows = "".join(
        f"<tr><td>{label}</td><td>{units.params(comps[key].total)}</td><td>{units.params(comps[key].trainable)}</td>"
        f"<td>{comps[key].state}</td></tr>" for key, label in SUMMARY_ROWS if comps[key].total)
    adapter = summary(index, mask)["adapter_params"]
    extra = f" <small>({adapter:,} in adapters)</small>" if adapter else ""
    return (f'<div class="fl-summary"><div class="fl-big">trainable <b id="fl-trainable">{total.trainable:,}</b> '
            f'of {total.total:,} parameters (<span id="fl-percent">{units.percent(total.trainable, total.total)}'
            f"</span>){extra}</div><table><tr><th>component</th><th>total</th><th>trainable</th><th>state</th></tr>"
            f"{rows}</table></div>")


def warnings_md(res: Resolution) -> str:
    return "\n".join(f"- {w}" for w in res.warnings) if res.warnings else "No warnings for this plan."


def rules_text(plan: Plan) -> str:
    start = f"# started from preset {plan.preset}\n" if plan.preset else ""
    return start + plan.to_text()


@per_index
def _plan_parts(index: ModelIndex) -> Kept:
    return Kept(KEPT_PLAN_PARTS)


def plan_charts(index: ModelIndex, mask: list[bool], adapted: ModelIndex,
                adapted_mask: list[bool]) -> tuple[str, Chart, Chart]:
    """The counts (HTML) and the parameters-per-component chart of the adapted index (the index itself
    without adapters), and the model map of the base mask, kept."""
    counts = _plan_parts(adapted).get(bytes(adapted_mask), lambda: (
        summary_html(adapted, adapted_mask), charts.params_by_component(adapted, adapted_mask)))
    return (*counts, _plan_parts(index).get(("map", bytes(mask)), lambda: charts.model_map(index, mask)))


def tree_rows(index: ModelIndex, mask: list[bool], tree: TreeOptions) -> str:
    """The tree widget's rows (JSON) of a mask under the tree options, kept."""
    return _plan_parts(index).get((bytes(mask), tree), lambda: tree_json(index, mask, tree.query, tree.depth))
