"""What a deployment allows: local mode (a user's own box) keeps everything open;
public mode (a Hugging Face Space, a shared workshop server) confines paths,
weights and CPU time.

Public mode is on when the `SPACE_ID` environment variable is set (Hugging Face
Spaces sets it) or `FREEZELAB_PUBLIC=1`; `FREEZELAB_PUBLIC=0` forces it off.
`FREEZELAB_MODEL_ROOTS` (os.pathsep-separated) lists the directories local
paths may come from in public mode; without it, public mode accepts no paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from freezelab.budget import Cost
from freezelab.errors import LimitError
from freezelab.units import GiB


class PolicyError(LimitError):
    """The request is valid but this deployment does not allow it."""


GiB = 2**30
# CPU seconds one sanity step or simulation may take in public mode (estimated before it runs,
# freezelab.budget): a 7B simulation takes 2.5 s, tiny's default sanity step well under 1 s.
MAX_RUN_SECONDS = 60.0
MAX_DIRECTORY_ENTRIES = 10_000  # a checkpoint directory holds tens of files; checking each costs a resolve()


@dataclass(frozen=True)
class Policy:
    public: bool = False
    roots: tuple[Path, ...] = field(default=())
    max_weight_bytes: int | None = None      # largest checkpoint whose weights may be loaded
    max_step_params: int | None = None       # largest model the sanity step may materialize
    max_steps: int | None = None
    step_devices: tuple[str, ...] | None = None
    max_simulate_params: int | None = None   # simulation costs CPU time proportional to size
    max_step_seconds: float | None = None    # estimated CPU time of a sanity step (freezelab.budget)
    max_simulate_seconds: float | None = None  # ... of a simulation
    max_session_models: int = 8              # process-wide model cache entries
    max_cache_bytes: int = 256 * 2**20       # and their estimated memory

    def describe(self) -> str:
        """One line for the page: what this deployment allows."""
        if not self.public:
            return "Local mode: every path, checkpoint and run size is allowed."
        paths = f"local paths only under {', '.join(map(str, self.roots))}" if self.roots else "no local paths"
        weights = f"weights up to {self.max_weight_bytes / GiB:.0f} GiB" if self.max_weight_bytes else "any weights"
        steps = (f"sanity steps on {', '.join(self.step_devices or ('any device',))}, at most {self.max_steps} steps, "
                 f"{self.max_step_params or 0:,} parameters and {self.max_step_seconds or 0:.0f} s of CPU time")
        return (f"Public mode: {paths}; Hub ids are read config-only; {weights}; {steps}; simulations up to "
                f"{self.max_simulate_params or 0:,} parameters and {self.max_simulate_seconds or 0:.0f} s of CPU time; "
                "code shipped with a checkpoint never runs.")

    def check_path(self, spec: str) -> Path:
        """The resolved path for `spec`, or PolicyError if public mode forbids it."""
        path = Path(spec).expanduser()
        if not self.public:
            return path
        if not self.roots:
            raise PolicyError("local paths are disabled on this public server; use tiny, a known "
                              "architecture or a Hub id (config only)")
        if ".." in path.parts:
            raise PolicyError(f"{spec}: '..' is not allowed in paths on this public server")
        real = path.resolve()  # follows symlinks: a link pointing outside the roots is refused
        if not self._inside(real):
            raise PolicyError(f"{spec}: outside the directories this public server may read")
        return real

    def _inside(self, real: Path) -> bool:
        return any(real == root or root in real.parents for root in self.roots)

    def check_directory(self, directory: Path, spec: str) -> None:
        """Public mode: every entry of the (resolved) directory a model is read from must resolve inside the
        roots, since loaders open more than the typed path: config.json, the shard index, the shards, the
        processor and tokenizer files. A link to anything outside is refused, whether or not it is used."""
        if not self.public:
            return
        try:
            for n, entry in enumerate(directory.iterdir()):
                if n >= MAX_DIRECTORY_ENTRIES:
                    raise PolicyError(f"{spec}: the directory holds more than {MAX_DIRECTORY_ENTRIES:,} entries")
                if not self._inside(entry.resolve()):
                    raise PolicyError(f"{spec}: {entry.name!r} in it leads outside the directories this public "
                                      "server may read")
        except OSError as err:  # unreadable, or a link loop
            raise PolicyError(f"{spec}: the directory cannot be read ({err.strerror or type(err).__name__})") from None

    def check_weights(self, nbytes: int, name: str) -> None:
        if self.max_weight_bytes is not None and nbytes > self.max_weight_bytes:
            raise PolicyError(f"{name}: its weights ({nbytes / GiB:.1f} GiB) exceed this server's limit of "
                              f"{self.max_weight_bytes / GiB:.1f} GiB; inspect it architecture-only instead")

    def check_step(self, total_params: int, steps: int, device: str, name: str) -> None:
        if self.step_devices is not None and device not in self.step_devices:
            raise PolicyError(f"the sanity step runs only on {', '.join(self.step_devices)} here")
        if self.max_steps is not None and steps > self.max_steps:
            raise PolicyError(f"at most {self.max_steps} steps per run on this server")
        if self.max_step_params is not None and total_params > self.max_step_params:
            raise PolicyError(f"{name}: {total_params:,} parameters is too large for a sanity step on this "
                              f"server (limit {self.max_step_params:,}); run it locally, or use the estimate")

    def check_simulate(self, total_params: int, name: str) -> None:
        if self.max_simulate_params is not None and total_params > self.max_simulate_params:
            raise PolicyError(f"{name}: simulating {total_params:,} parameters takes too long on this server "
                              f"(limit {self.max_simulate_params:,}); the analytic estimate is shown instead")

    def check_step_cost(self, cost: Cost, name: str) -> None:
        if self.max_step_seconds is not None and cost.seconds > self.max_step_seconds:
            raise PolicyError(f"{name}: this sanity step would take {cost.text()}; this server allows "
                              f"{self.max_step_seconds:.0f} s of CPU time per run. Shorten the sequence, lower the "
                              "batch, images or steps, or run it on your own machine")

    def check_simulate_cost(self, cost: Cost, name: str) -> None:
        if self.max_simulate_seconds is not None and cost.seconds > self.max_simulate_seconds:
            raise PolicyError(f"{name}: this simulation would take {cost.text()}; this server allows "
                              f"{self.max_simulate_seconds:.0f} s of CPU time per run. Lower the batch or the images "
                              "per sample (sequence length costs a simulation nothing), or run it on your own "
                              "machine")


LOCAL = Policy()


def public_policy(roots: tuple[Path, ...] = ()) -> Policy:
    """Public limits sized for a 2-vCPU Space shared by a workshop."""
    return Policy(public=True, roots=tuple(r.resolve() for r in roots), max_weight_bytes=2 * GiB,
                  max_step_params=50_000_000, max_steps=5, step_devices=("cpu",),
                  max_simulate_params=15_000_000_000, max_step_seconds=MAX_RUN_SECONDS,
                  max_simulate_seconds=MAX_RUN_SECONDS, max_session_models=4, max_cache_bytes=64 * 2**20)


def from_env(environ: dict[str, str] | None = None) -> Policy:
    return from_options(None, (), environ)


def from_options(public: bool | None, roots: tuple[Path, ...] | list[Path] = (),
                 environ: dict[str, str] | None = None) -> Policy:
    """The policy for explicit options (`python app.py --public/--local --model-root DIR`), falling
    back to the environment: `public` None means FREEZELAB_PUBLIC, else on when SPACE_ID is set;
    roots given here come before those of FREEZELAB_MODEL_ROOTS."""
    env = os.environ if environ is None else environ
    if public is None:
        flag = env.get("FREEZELAB_PUBLIC", "").strip().lower()
        public = flag in ("1", "true", "yes", "on") or (bool(env.get("SPACE_ID"))
                                                       and flag not in ("0", "false", "no", "off"))
    if not public:
        return LOCAL
    from_env_roots = [Path(p) for p in env.get("FREEZELAB_MODEL_ROOTS", "").split(os.pathsep) if p.strip()]
    return public_policy(tuple(dict.fromkeys([*map(Path, roots), *from_env_roots])))
