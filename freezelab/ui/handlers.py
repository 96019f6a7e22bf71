"""Dashboard events as plain functions: (session, inputs) -> new session + what the page shows.

No gradio here, so every event can be tested (and timed) without a browser or a server. A handler
either returns a complete `View` or raises a FreezelabError with the message to show; it never returns
a half-updated session, so on error the page keeps the previous state. A refused workload value is
the one error shown where it was typed (`WorkloadRefused`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from freezelab import units
from freezelab.anatomy import count
from freezelab.chart_spec import Chart
from freezelab.errors import FreezelabError, PlanError, SelectorError, SourceError
from freezelab.exports import import_plan as parse_plan
from freezelab.memory.analytic import estimate, followed
from freezelab.model_cache import INDEX_DTYPE, Loaded, ModelCache
from freezelab.plans import MAX_PLAN_BYTES, PRESETS, Plan, append_rule, module_selector, preset, resolve
from freezelab.policy import LOCAL, Policy
from freezelab.selectors import parse, reach, select
from freezelab.session import Session, TreeOptions
from freezelab.sources import known_info
from freezelab.throttle import Throttle
from freezelab.ui.adapter_settings import AdapterSettings
from freezelab.ui.compute_view import ComputeView, kept_compute_view
from freezelab.ui.context_view import current_html, workload_text
from freezelab.ui.memory_view import (LABELS, MemoryView, field_error_html, memory_view, not_followed,
                                      refused_fields, verdict_html)
from freezelab.ui.registry import field_ids, shown, shown_ids, shown_within
from freezelab.ui.plan_view import plan_charts, rules_text, summary_html, tree_rows, warnings_md  # noqa: F401
from freezelab.tokens import sample_layouts
from freezelab.workload import Workload, WorkloadError, parse_sizes

Progress = Callable[[float, str], None]
MAX_QUERY_CHARS = 200  # the tree filter is a substring, not a pattern: long input only costs time
SELECTOR_PROMPT = ("Type a selector: `@llm`, `@llm.layers[-4:]`, a glob such as `*q_proj*` or "
                   "`model.language_model.layers.31`, or `re:` and a regular expression.")



class OptionError(FreezelabError):
    """A dashboard control sent a value out of its range."""


@dataclass
class App:
    """Process-wide context shared by all sessions: the model cache and what this deployment allows."""

    cache: ModelCache = field(default_factory=ModelCache)
    policy: Policy = LOCAL
    throttle: Throttle | None = None   # public mode: sessions that keep hitting limits are paused

    @classmethod
    def for_policy(cls, policy: Policy) -> App:
        return cls(cache=ModelCache(policy.max_session_models, policy.max_cache_bytes), policy=policy,
                   throttle=Throttle() if policy.public else None)

    def loaded(self, session: Session) -> Loaded:
        return self.cache.get(session.model, INDEX_DTYPE, policy=self.policy)


STATE = "top.state"     # the session value (a gr.State)
STATUS = "top.status"   # what the last action did, or why it failed


@dataclass(kw_only=True)
class View:
    """Everything the dashboard shows for one session state. Each shown field fills the component
    registered under its id, in field order (the order API clients receive the values in). A part
    that is None is one its event does not change (see `build_view`): the event does not list its
    components among its outputs, so nothing is computed or sent for it."""

    session: Session = shown(STATE)
    status: str = shown(STATUS, default="")             # markdown: what the last action did
    header: str | None = shown("top.header")            # markdown: model and mode
    summary: str | None = shown("summary.counts")       # HTML: trainable count and per-component table
    tree: str | None = shown("tree.tree")               # JSON rows for the tree widget
    rules: str | None = shown("plan.rules")             # the plan as text
    warnings: str | None = shown("plan.warnings")       # markdown list
    params_fig: Chart | None = shown("summary.params_plot")
    map_fig: Chart | None = shown("map.plot")
    memory: MemoryView | None = shown_within()
    compute: ComputeView | None = shown_within()
    current: str | None = shown("verify.now")           # HTML: what a simulation or sanity step would run now
    adapter_settings: AdapterSettings | None = shown_within()  # the plan's adapter settings, kept in the controls
    trainable: int                                      # trainable parameters under the plan


VIEW_IDS = shown_ids(View)  # the outputs of every event that shows a whole View

# The parts of a View (its fields by what they are computed from), and the parts an event changes.
PART_FIELDS: dict[str, tuple[str, ...]] = {
    "header": ("header",),                                                 # model and weights
    "plan": ("summary", "tree", "rules", "warnings", "params_fig", "map_fig", "adapter_settings"),  # + tree options
    "memory": ("memory",),                                                 # + plan, workload, context
    "compute": ("compute",),                                               # + plan, workload, efficiency
    "current": ("current",),                                               # + plan, workload
}
ALL_PARTS = tuple(PART_FIELDS)
WORKLOAD_PARTS = ("memory", "compute", "current")  # a workload edit: the plan, its tree and charts stay as they are
COMPUTE_PARTS = ("compute",)  # an efficiency edit changes the step times only


def view_ids(parts: tuple[str, ...] = ALL_PARTS) -> tuple[str, ...]:
    """The components a View with these parts fills, in field order: an event's outputs. Gradio
    rebuilds a component for every output an event leaves out of its answer (1-3 ms each), so an
    event lists exactly what it changes rather than skipping outputs at run time."""
    wanted = {n for p in parts for n in PART_FIELDS[p]}
    return tuple(i for name, ids in field_ids(View).items() if name in ("session", "status") or name in wanted
                 for i in ids)


# -- building a view ------------------------------------------------------------------

def _mode(loaded: Loaded, weights: bool) -> str:
    return "random weights" if loaded.source.kind == "tiny" else (
        "weights from the checkpoint" if weights else "architecture only")


@functools.cache
def _titles() -> dict[str, str]:
    """The shipped architectures' titles by name, plus the built-in tiny model's."""
    return {"tiny": "built-in tiny LLaVA", **{r["name"]: r["title"] for r in known_info()}}


def _header(loaded: Loaded, session: Session) -> str:
    ix = loaded.index
    title = _titles().get(ix.name) if loaded.source.kind in ("tiny", "known") else None
    named = f"**{ix.name}** ({title})" if title else f"**{ix.name}**"
    return (f"{named} · {ix.model_class} · {len(ix.params):,} tensors, {len(ix.modules):,} modules · "
            f"{units.params(ix.total_params)} parameters · {_mode(loaded, session.weights)}")


def build_view(app: App, session: Session, status: str = "", parts: tuple[str, ...] = ALL_PARTS) -> View:
    """Resolve the session's plan and render the view's `parts` (see PART_FIELDS; the others are
    None); raises FreezelabError on a bad plan."""
    loaded = app.loaded(session)
    index = loaded.index
    res = resolve(session.plan, index)
    adapted, mask = res.adapted(index)  # the adapters' tensors too, under the Linear layers they wrap
    trainable = count(adapted, mask).trainable
    plan = "plan" in parts
    summary, params_fig, map_fig = plan_charts(index, res.mask, adapted, mask) if plan else (None, None, None)
    return View(
        session=session,
        header=_header(loaded, session) if "header" in parts else None,
        summary=summary,
        tree=tree_rows(adapted, mask, session.tree) if plan else None,
        rules=rules_text(session.plan) if plan else None,
        warnings=warnings_md(res) if plan else None,
        params_fig=params_fig,
        map_fig=map_fig,
        memory=memory_view(index, res.mask, session.workload, session.context, session.gpu_count, res.adapters)
        if "memory" in parts else None,
        compute=kept_compute_view(index, res.mask, session.workload, session.efficiency, res.adapters)
        if "compute" in parts else None,
        current=current_html(session, trainable) if "current" in parts else None,
        adapter_settings=AdapterSettings.of(session.plan) if plan else None,
        trainable=trainable,
        status=status,
    )


def initial_view(app: App) -> View:
    # LLaVA stage 1 (projector only) is where most fine-tunes start, and a first page with something
    # trainable shows every chart at work; any preset or checkbox changes it
    view = build_view(app, Session(plan=preset("stage1")))
    view.status = ("Ready: the built-in tiny model is loaded with **LLaVA stage 1** (only the projector trains). "
                   "Pick another preset or click a checkbox in the module tree.")
    return view


# -- model ----------------------------------------------------------------------------------

def load_model(app: App, session: Session, spec: str, weights: bool = False,
               progress: Progress | None = None) -> View:
    """Load a model (re-reading its config); keeps the plan when it still resolves, else resets it."""
    spec = (spec or "").strip()
    if not spec:
        raise SourceError("no model given: choose a known architecture or type a path or Hub id")
    if progress:
        progress(0.1, f"reading {spec}")
    loaded = app.cache.get(spec, INDEX_DTYPE, fresh=True, policy=app.policy)
    if progress:
        progress(0.8, "indexing parameters")
    if weights:
        _check_weights(app, loaded)
    new = replace(session, model=spec, weights=weights, tree=TreeOptions(), context=None)
    status = f"Loaded {loaded.index.name} ({_mode(loaded, weights)})."
    try:
        resolve(session.plan, loaded.index)
    except FreezelabError as err:
        new = new.with_plan(Plan())
        status += (f" The previous plan does not fit this model ({err}); it was reset. Load the previous "
                   "model again and undo to get it back.")
    return build_view(app, new, status)


def _check_weights(app: App, loaded: Loaded) -> None:
    src = loaded.source
    if not src.has_weights:
        raise SourceError(f"{src.spec}: no weight files (*.safetensors or *.bin) next to its config.json; "
                          "choose 'architecture only'")
    if src.kind != "tiny":
        app.policy.check_weights(src.weight_bytes, src.name)


# -- plan -------------------------------------------------------------------------------

def apply_preset(app: App, session: Session, name: str, n: Any = 4) -> View:
    plan = preset(name, _whole(n, "N (the number of last layers)", low=1))
    view = build_view(app, session.with_plan(plan))
    p = PRESETS["last-n" if plan.preset and plan.preset.startswith("last") else plan.preset or name]
    view.status = f"Preset **{p.title}**: {units.params(view.trainable)} parameters train. {p.explanation}"
    layers = len(app.loaded(session).index.layers.get("llm", []))
    if p.name == "last-n" and int(n) > layers:
        view.status += f" ({session.model} has only {layers} LLM layers: all of them train.)"
    return view


def add_rule(app: App, session: Session, action: str, selector: str) -> View:
    """Train or freeze what a selector names (rules made redundant by it are dropped)."""
    selector = (selector or "").strip()
    index = app.loaded(session).index
    plan = append_rule(session.plan, index, action, selector)
    if plan == session.plan:
        state = "trainable" if action == "train" else "frozen"
        status = f"No change: everything `{selector}` selects is already {state}."
    else:
        status = f"Rule added: `{action} {selector}`."
    return build_view(app, session.with_plan(plan), status)


def toggle_module(app: App, session: Session, path: str, on: bool) -> View:
    """A tree checkbox: train (`on`) or freeze the module's whole subtree."""
    index = app.loaded(session).index
    selector = module_selector(index, path)
    return add_rule(app, session, "train" if on else "freeze", selector)


def undo(app: App, session: Session) -> View:
    if not session.can_undo:
        return build_view(app, session, "Nothing to undo.")
    return build_view(app, session.undo(), "Undone.")


def reset(app: App, session: Session) -> View:
    return build_view(app, session.with_plan(Plan()), "Plan reset: everything is frozen (undo brings it back).")


def import_plan(app: App, session: Session, data: bytes | str) -> View:
    """A plan from the user (freezelab plan JSON or one rule per line): validated, then
    checked against the current model before it replaces the session's plan."""
    plan = parse_plan(data)
    resolve(plan, app.loaded(session).index)  # a rule matching nothing is reported now, not later
    return build_view(app, session.with_plan(plan), f"Imported a plan with {len(plan.rules)} rule(s).")


def import_plan_file(app: App, session: Session, path: str | None) -> View:
    """An uploaded plan file; read with a size cap so a huge upload is refused, not loaded."""
    if not path:
        raise PlanError("no plan file was uploaded")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PLAN_BYTES + 1)
    except OSError as err:
        raise PlanError(f"the uploaded plan could not be read: {err.strerror or err}") from None
    return import_plan(app, session, data)


def preview_selector(app: App, session: Session, text: str,
                     refused: Callable[[SelectorError], Any] = lambda err: None) -> str:
    """What a selector would match, per component, with warnings (markdown); `refused` hears of its error."""
    text = (text or "").strip()
    if not text:
        return SELECTOR_PROMPT
    index = app.loaded(session).index
    try:
        hits = select(index, parse(text))
    except SelectorError as err:
        refused(err)
        return f"⚠️ {err}"
    by_comp: dict[str, list[int]] = {}
    for i in hits:
        by_comp.setdefault(index.params[i].component, []).append(i)
    parts = [f"{c}: {len(ix)} tensors, {units.params(sum(index.numels[i] for i in ix))}"
             for c, ix in by_comp.items()]
    total = sum(index.numels[i] for i in hits)
    out = f"Matches **{len(hits)} tensors, {units.params(total)} parameters** ({'; '.join(parts)})."
    note = reach(index, text, hits)
    if note:
        out += f"\n\n⚠️ {note}."
    return out


def pick_module(app: App, session: Session, path: str) -> tuple[str, str]:
    """A tree row's arrow: the module as selector text, and its preview."""
    selector = module_selector(app.loaded(session).index, path)
    return selector, preview_selector(app, session, selector)


# -- tree and workload ------------------------------------------------------------------------

def set_tree_options(app: App, session: Session, query: str, depth: Any) -> View:
    """The tree's filter text and depth limit (None or "all": every level)."""
    depth_value = None if depth in (None, "", "all") else _whole(depth, "the tree depth", low=0)
    if len(str(query or "")) > MAX_QUERY_CHARS:
        raise OptionError(f"the filter is limited to {MAX_QUERY_CHARS} characters")
    query = str(query or "")
    shows = f"modules matching `{query.strip()}`" if query.strip() else "every module"
    levels = f", down to level {depth_value}" if depth_value is not None else ""
    return build_view(app, replace(session, tree=TreeOptions(query, depth_value)), f"The tree shows {shows}{levels}.")


def _whole(value: Any, name: str, *, low: int, high: int = 1000) -> int:
    """A whole number from the page (numbers may arrive as floats or text) or one clear error."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be a whole number, got {value!r}") from None
    if not number.is_integer() or not low <= number <= high:
        raise OptionError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(number)


@dataclass(kw_only=True)
class WorkloadRefused:
    """A workload value the estimate cannot take: the session keeps its last valid workload, the
    error shows at the field, and the verdict (with the charts, see style.CSS) is marked out of date."""

    status: str = shown(STATUS)
    verdict: str = shown("memory.verdict")
    error: str = shown("memory.error")


def set_workload(app: App, session: Session, **values: Any) -> View:
    """New workload values; a bad value raises WorkloadError and changes nothing."""
    workload = Workload.from_dict({**session.workload.to_dict(), **_clean(values)})
    view = build_view(app, replace(session, workload=workload), parts=WORKLOAD_PARTS)
    assert view.memory is not None
    est = view.memory.estimate
    need = f"{units.gib(est.device_estimate_bytes)} per GPU" if est is not None else "no analytic estimate"
    view.status = f"Workload: {workload_text(workload)}: {need}."
    return view


def edit_workload(app: App, session: Session, **values: Any) -> View | WorkloadRefused:
    """The workload controls' event: set_workload, except that a refused value is shown at its
    field, with the results that still show the last valid workload marked out of date."""
    try:
        return set_workload(app, session, **values)
    except WorkloadError as err:
        refused = _refused(session.workload, values, err)
    index = app.loaded(session).index
    fields = ", ".join(LABELS.get(name, name) for name in refused)
    why = followed(index, session.workload)
    if why is None:
        res = resolve(session.plan, index)
        est = estimate(index, res.mask, session.workload, adapters=res.adapters)
        verdict = verdict_html(est, session.workload, stale=f"fix {fields} first")
    else:
        verdict = not_followed(why, "").verdict
    return WorkloadRefused(status=f"⚠ **{'; '.join(refused.values())}**: the estimate still "
                           "shows the last valid workload.", verdict=verdict,
                           error=field_error_html(refused, session.workload))


def show_gpu_count(app: App, session: Session, on: Any) -> View:
    """The page opened (True) or closed the how-many-GPUs section: it is computed on every change
    while open, and not at all while closed (the memory charts are sent again either way)."""
    return build_view(app, replace(session, gpu_count=bool(on)), parts=WORKLOAD_PARTS)


def _refused(current: Workload, values: dict[str, Any], err: WorkloadError) -> dict[str, str]:
    """{field: message} for a refused edit; image sizes that do not parse are refused by themselves."""
    try:
        cleaned = _clean(values)
    except WorkloadError as bad:
        return {"image_sizes": str(bad)}
    return refused_fields(current, cleaned, err)


def set_context(app: App, session: Session, on: Any) -> View:
    """Whether the memory charts include the CUDA context and the allocator cache (the user's choice
    from now on, until another model is loaded)."""
    view = build_view(app, replace(session, context=bool(on)), parts=WORKLOAD_PARTS)
    view.status = ("The charts include the CUDA context and allocator cache." if on else
                   "The charts show tensors only: the CUDA context and allocator cache are left out.")
    return view


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    """Numbers from the page arrive as floats (or None when a box is cleared): whole floats become ints,
    anything else is passed through for Workload to reject with its own message. Image sizes arrive as
    text ("336x672, 672x672"; empty: the model's native size) and replace a square image_size."""
    out = {}
    for k, v in values.items():
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        out[k] = v
    if isinstance(out.get("image_sizes"), str):
        out["image_sizes"] = parse_sizes(out["image_sizes"])
        out["image_size"] = None
    return out


MAX_IMAGE_FILE_BYTES = 64 * 2**20  # an image upload is only opened to read its height and width


def image_size_of(path: str | None) -> tuple[int, int]:
    """(height, width) of an uploaded image, read from its header (the pixels are never decoded)."""
    from PIL import Image, UnidentifiedImageError

    if not path:
        raise OptionError("no image was uploaded")
    try:
        if os.path.getsize(path) > MAX_IMAGE_FILE_BYTES:
            raise OptionError(f"the image file is over {MAX_IMAGE_FILE_BYTES // 2**20} MiB")
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, UnidentifiedImageError, ValueError) as err:  # includes PIL's decompression-bomb refusal
        raise OptionError(f"the upload is not a readable image ({type(err).__name__})") from None
    return height, width


def set_image(app: App, session: Session, path: str | None) -> View:
    """A dropped image: every image of a sample takes its height x width; the tokens and memory follow."""
    h, w = image_size_of(path)
    images = max(session.workload.images, 1)
    workload = session.workload.with_(images=images, image_size=None, image_sizes=((h, w),))
    view = build_view(app, replace(session, workload=workload))
    tokens = sum(lay.image_tokens for lay in sample_layouts(app.loaded(session).index.config, workload,
                                                             app.loaded(session).index.processor))
    view.status = f"Image {h}x{w} (height x width): {tokens:,} image tokens per sample."
    return view


def set_efficiency(app: App, session: Session, **values: Any) -> View:
    """New fractions of peak for the time model (mfu, bandwidth); a bad value raises TimingError."""
    known = {"mfu", "bandwidth", "network"}
    if set(values) - known:
        raise OptionError(f"unknown efficiency field(s): {', '.join(sorted(set(values) - known))}")
    efficiency = replace(session.efficiency, **_clean(values))
    return build_view(app, replace(session, efficiency=efficiency), parts=COMPUTE_PARTS)
