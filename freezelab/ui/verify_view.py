"""The two slow checks of a plan, as plain functions: the simulated memory estimate
(fake tensors) next to the analytic one, and the real sanity step (streamed).

Everything that can refuse a run is checked first, by `check_simulation` / `check_step`: the
dashboard runs them before a run waits for the one device slot (Gradio's validator, and a check
the page shows at once), so a refused request never queues behind a running one. After a run,
whatever it left in the process is handed back (freezelab.reclaim)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from freezelab import charts, units
from freezelab.anatomy import count
from freezelab.budget import simulation_cost, step_cost
from freezelab.chart_spec import Chart
from freezelab.compute.flops import Flops, flops_followed, step_flops
from freezelab.errors import FreezelabError
from freezelab.memory.analytic import estimate as analytic_estimate
from freezelab.memory.analytic import followed
from freezelab.memory.result import CATEGORIES, MemoryEstimate
from freezelab.model_cache import Loaded
from freezelab.plans import Resolution, resolve
from freezelab.reclaim import reclaim
from freezelab.session import Session
from freezelab.step import Event, StepReport, iter_step
from freezelab.step.gate import check_args, gate
from freezelab.ui.context_view import result_html
from freezelab.ui.handlers import App
from freezelab.ui.registry import shown
from freezelab.ui.style import badge

Progress = Callable[[float, str], None]


class VerifyError(FreezelabError):
    """A simulation or sanity step could not run, or was cancelled."""


class Cancels:
    """One cancel flag per browser session, so a Cancel button stops only its own run."""

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, key: str) -> threading.Event:
        with self._lock:
            flag = self._flags[key] = threading.Event()
            return flag

    def cancel(self, key: str) -> bool:
        with self._lock:
            flag = self._flags.get(key)
        if flag is None:
            return False
        flag.set()
        return True

    def finish(self, key: str, flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get(key) is flag:
                del self._flags[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._flags)


# -- simulated estimate ----------------------------------------------------------------

@dataclass
class SimulationView:
    analytic: MemoryEstimate | None   # None: the analytic estimate does not follow this model
    simulated: MemoryEstimate
    table: str = shown("simulate.table")      # markdown: category by category
    figure: Chart = shown("simulate.plot")
    label: str = shown("simulate.for", default="")  # HTML: the model, plan and workload it ran for


def simulated_table(s: MemoryEstimate, why: str) -> str:
    """The simulated estimate alone, for a model the analytic estimate does not follow."""
    rows = ["| | simulated |", "|---|---:|"]
    rows += [f"| {charts.CATEGORY_LABELS[c]} | {units.nbytes(s.breakdown[c])} |" for c in CATEGORIES
             if s.breakdown.get(c)]
    rows += [f"| **tensor peak** | {units.nbytes(s.peak_bytes)} |",
             f"| **device (nvidia-smi)** | {units.nbytes(s.device_estimate_bytes)} |",
             f"| peak happens in | {s.phase} |"]
    return "\n".join(rows) + f"\n\nNo analytic column: {why}.\n\n" + "\n".join(f"- {n}" for n in s.notes)


def comparison_table(a: MemoryEstimate, s: MemoryEstimate) -> str:
    rows = ["| | analytic | simulated | difference |", "|---|---:|---:|---:|"]

    def line(label: str, x: int, y: int) -> str:
        sign = "+" if y >= x else "−"
        diff = f"{sign}{units.nbytes(abs(y - x))}" + (f" ({100 * (y - x) / x:+.1f}%)" if x else "")
        return f"| {label} | {units.nbytes(x)} | {units.nbytes(y)} | {diff} |"

    for c in CATEGORIES:
        x, y = a.breakdown.get(c, 0), s.breakdown.get(c, 0)
        if x or y:
            rows.append(line(charts.CATEGORY_LABELS[c], x, y))
    rows.append(line("**tensor peak**", a.peak_bytes, s.peak_bytes))
    rows.append(line("**device (nvidia-smi)**", a.device_estimate_bytes, s.device_estimate_bytes))
    rows.append(f"| peak happens in | {a.phase} | {s.phase} | |")
    return "\n".join(rows)


def check_simulation(app: App, session: Session) -> tuple[Loaded, Resolution]:
    """Everything that refuses a simulation, before it runs: the plan, the model's size and the
    estimated CPU time (freezelab.budget) against this deployment's limits."""
    loaded = app.loaded(session)
    index = loaded.index
    res = resolve(session.plan, index)
    app.policy.check_simulate(index.total_params + res.adapters.params, index.name)  # adapters as PEFT counts
    if app.policy.max_simulate_seconds is not None:  # local mode runs what it is asked, at no cost here
        app.policy.check_simulate_cost(simulation_cost(index, session.workload), index.name)
    return loaded, res


def flops_rows(analytic: Flops, counted: dict[str, int]) -> str:
    """The analytic FLOPs beside FlopCounterMode's count of the simulated step 2."""
    rows = ["| FLOPs of one step | analytic | FlopCounterMode | difference |", "|---|---:|---:|---:|"]
    for label, x, y in (("forward", analytic.forward, counted["forward"]),
                        ("backward (with recompute)", analytic.backward, counted["backward"])):
        diff = f"{100 * (y - x) / x:+.2f}%" if x else ("0" if x == y else "–")
        rows.append(f"| {label} | {units.flops(x)} | {units.flops(y)} | {diff} |")
    return "\n".join(rows)


def simulate(app: App, session: Session, progress: Progress | None = None,
             cancel: Callable[[], bool] | None = None) -> SimulationView:
    """Run the real training step on fake tensors; seconds for a 7B model, so behind a button."""
    from freezelab.memory.simulate import simulate_step
    from freezelab.models import hf_config

    loaded, res = check_simulation(app, session)
    index = loaded.index
    why = followed(index, session.workload)
    analytic = (analytic_estimate(index, res.mask, session.workload, adapters=res.adapters) if why is None
                else None)
    try:
        simulated = simulate_step(hf_config(loaded.source), res.trainable_names(index), session.workload,
                                  progress=progress, cancel=cancel, adapters=res.adapters, index=index,
                                  processor=index.processor)
    finally:
        reclaim()
    label = result_html("Simulated", session, count(*res.adapted(index)).trainable)
    table = comparison_table(analytic, simulated) if analytic is not None else simulated_table(simulated, str(why))
    counted = simulated.details.get("flops")
    no_flops = flops_followed(index, session.workload)
    if counted and no_flops is None:
        flops = step_flops(index, res.mask, session.workload, adapters=res.adapters)
        table += "\n\n" + flops_rows(flops, counted)
    elif counted:
        table += (f"\n\nFlopCounterMode on the simulated step: forward {units.flops(counted['forward'])}, backward "
                  f"{units.flops(counted['backward'])}. No analytic FLOPs: {no_flops}.")
    shown_estimates = [simulated] if analytic is None else [analytic, simulated]
    return SimulationView(analytic, simulated, table, charts.estimate_comparison(shown_estimates), label)


# -- sanity step -------------------------------------------------------------------------

@dataclass
class StepView:
    """One update of the sanity step; the fields still None (no report yet) leave their components as they are."""

    status: str = shown("step.status")                        # markdown: progress or the verdict
    loss_fig: Chart = shown("step.loss")
    grad_fig: Chart | None = shown("step.grads")
    checks: list[list[str]] | None = shown("step.checks", default=None)  # rows: check, result, message, names
    memory: str | None = shown("step.memory", default=None)   # markdown: measured vs estimated
    label: str | None = shown("step.for", default=None)       # HTML: the model, plan and workload it ran for
    report: StepReport | None = None
    message: str = ""                                         # plain text for the progress bar


CHECK_HEADERS = ["check", "result", "what it found", "offending parameters"]


def check_rows(report: StepReport) -> list[list[str]]:
    rows = []
    for c in report.checks.values():
        result = "passed" if c.passed else ("FAILED" if c.level == "failure" else "warning")
        more = c.count - len(c.offending)
        names = ", ".join(c.offending) + (f" (+{more} more)" if more > 0 else "")
        rows.append([c.name, result, c.message, names])
    return rows


def time_text(report: StepReport) -> str:
    """The steady-state step time beside the time model's estimate for this card (or why there is none)."""
    t, measured = report.time_estimate, report.measured_seconds
    shown = "–" if measured is None else f"{measured:.2f} s"
    if not t or t.get("seconds") is None:
        return f"Step time: measured {shown}" + (f"; {t['note']}." if t else ".")
    return (f"Step time: measured {shown}, estimated **{t['seconds']:.2f} s** ({t['note']}: "
            f"{'; '.join(t['assumptions'])}).")


def memory_text(report: StepReport) -> str:
    """The measured peaks beside the estimate, then the step time beside its estimate."""
    return _memory_rows(report) + "\n\n" + time_text(report)


def _memory_rows(report: StepReport) -> str:
    est = report.estimate
    steady = [s for s in report.steps if s.steady and s.peak_allocated_bytes is not None]
    if not steady:
        said = f"the analytic estimate is {units.nbytes(est['peak_bytes'])} of tensors" if est else ""
        where = "measured peaks need a CUDA device" if report.device == "cpu" else "no steady-state step finished"
        return f"{where}; {said}." if said else f"{where}."
    lines = ["| step | measured peak | estimate | error |", "|---:|---:|---:|---:|"]
    for s in steady:
        err = f"{100 * s.relative_error:+.1f}%" if s.relative_error is not None else ""
        lines.append(f"| {s.step} | {units.nbytes(s.peak_allocated_bytes)} | "
                     f"{units.nbytes(s.estimate_bytes) if s.estimate_bytes else ''} | {err} |")
    return "\n".join(lines)


def grad_figure(report: StepReport) -> Chart | None:
    """Gradient norms per layer (towers side by side), or per component when no layer trains."""
    norms = report.grad_norms
    if not norms:
        return None
    title = f"Gradient L2 norm (step {norms.get('step')})"
    layers = {tower: {k: v for k, v in enumerate(values) if v is not None}
              for tower, values in norms.get("layers", {}).items()}
    values = [v for by_layer in layers.values() for v in by_layer.values()]
    if values:
        return charts.layer_bars(layers, title=title, y_label="norm", log=all(v > 0 for v in values))
    by_component = {c: v for c, v in norms.get("component", {}).items() if v is not None}
    positive = bool(by_component) and all(v > 0 for v in by_component.values())
    return charts.grouped_bars(by_component, title=title, y_label="norm", log=positive)


def _verdict(report: StepReport) -> str:
    took = f"{report.seconds:.1f} s on {report.device_name}"
    if report.status != "ok":
        return f"{badge(report.status.replace('_', ' '), 'bad')} {report.error} ({took})"
    failed = [c.name for c in report.checks.values() if not c.passed and c.level == "failure"]
    head = f"{badge('passed', 'ok')} the plan trains exactly what it says" if report.passed else \
        f"{badge('failed', 'bad')} {', '.join(failed)}"
    extra = "".join(f"\n- {w}" for w in report.warnings)
    return (f"{head} ({units.params(report.trainable_params)} trainable parameters in "
            f"{report.trainable_tensors} tensors, {len(report.steps)} steps, {report.weights} weights, {took}){extra}")


def step_view(event: Event, losses: list[float], label: str | None = None) -> StepView:
    loss_fig = charts.line_chart(losses, title="Loss per step", y_label="loss")
    report = event.report
    if report is None:
        return StepView(f"{badge('running', 'run')} {event.message}", loss_fig, None, label=label,
                        message=event.message)
    return StepView(_verdict(report), loss_fig, grad_figure(report), check_rows(report), memory_text(report), label,
                    report, event.message)


def check_step(app: App, session: Session, device: object, steps: object,
               lr: object) -> tuple[Loaded, Resolution, int, float]:
    """Everything that refuses a sanity step, before it runs: its options, the device, the model's
    size, the weights, the memory estimate against what the device has free and the estimated CPU
    time (freezelab.budget) against this deployment's limits. Returns the checked steps and lr."""
    steps, lr = _whole(steps, "steps"), _number(lr, "learning rate")
    if not isinstance(device, str):
        raise VerifyError(f"device must be cpu or cuda, got {device!r}")
    loaded = app.loaded(session)
    index = loaded.index
    res = resolve(session.plan, index)
    app.policy.check_step(index.total_params + res.adapters.params, steps, device, index.name)  # adapters too
    if session.weights and loaded.source.kind == "checkpoint":  # checked at load too; files may have grown
        app.policy.check_weights(loaded.source.weight_bytes, loaded.source.name)
    check_args(loaded.source, session.workload, steps, lr, device, session.weights)
    if app.policy.max_step_seconds is not None:
        app.policy.check_step_cost(step_cost(index, res.mask, session.workload, steps), index.name)
    gate(index, res.mask, session.workload, device, res.adapters)
    return loaded, res, steps, lr


def run_step(app: App, session: Session, device: str, steps: int, lr: float,
             cancel: threading.Event | None = None) -> Iterator[tuple[float, StepView]]:
    """Stream (fraction done, view) while the sanity step runs; the last view holds the report."""
    loaded, res, steps, lr = check_step(app, session, device, steps, lr)
    label = result_html("Sanity step", session, count(*res.adapted(loaded.index)).trainable)
    losses: list[float] = []
    try:
        for event in iter_step(loaded.source, session.plan, session.workload, steps=steps, lr=lr, device=device,
                               weights=session.weights, cancel=cancel):
            if event.record is not None and event.record.loss is not None:
                losses.append(event.record.loss)
            yield event.fraction, step_view(event, losses, label)
    finally:
        reclaim()


def _whole(value: object, name: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise VerifyError(f"{name} must be a whole number, got {value!r}")
    return value


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise VerifyError(f"{name} must be a number, got {value!r}")
    return float(value)
