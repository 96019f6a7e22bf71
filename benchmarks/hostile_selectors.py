"""Time the worst selectors and plans a visitor can send, until each is answered (matched or refused).

    python benchmarks/hostile_selectors.py [--runs 5]

Each row is the median and the slowest of `--runs` answers, with the model's index already loaded (as
the app holds it), and the answer's first words. Before the linear glob matcher and the bounded regex
compile these took: the 25-character glob 10 s on llava-1.5-7b and 22 s on onevision-72b; `re:a{2000000}`
2.5 s and 770 MB; `re:a{4294967294}` gigabytes until the process was killed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freezelab.errors import FreezelabError  # noqa: E402
from freezelab.exports import import_plan  # noqa: E402
from freezelab.models import index_of  # noqa: E402
from freezelab.plans import resolve  # noqa: E402
from freezelab.regexes import CACHE  # noqa: E402
from freezelab.selectors import select  # noqa: E402
from freezelab.sources import resolve as resolve_source  # noqa: E402

SLOW_GLOB = "*?" * 12 + "Z"            # matches nothing: a backtracking matcher tries every split
BUSY_GLOB = "*?" * 12 + "*"            # matches segments of 12+ characters
LONG_GLOB = "*?" * 255 + "Z"           # the longest such glob a selector may be (512 characters)
WIDE_REGEX = "lm_head|" + "|".join(rf"layers\.{i}\.mlp" for i in range(30))
MODELS = ("llava-1.5-7b", "llava-onevision-qwen2-72b")


def cases(index) -> dict[str, Callable[[int], object]]:
    def plan(lines: list[str]) -> Callable[[int], object]:
        return lambda i: resolve(import_plan("\n".join(lines)), index)

    return {
        f"glob {SLOW_GLOB}": lambda i: select(index, SLOW_GLOB),
        "glob *? x255 then Z (512 characters)": lambda i: select(index, LONG_GLOB),
        f"glob {BUSY_GLOB}": lambda i: select(index, BUSY_GLOB),
        "re:a{4294967294}": lambda i: select(index, "re:a{4294967294}"),
        "re:a{2000000}": lambda i: select(index, "re:a{2000000}"),
        "re:(?:[a-z]{1000}){1000}": lambda i: select(index, "re:(?:[a-z]{1000}){1000}"),
        "plan: 10 rules of the 25-character glob": plan([f"train {SLOW_GLOB}"] * 10),
        "plan: 1000 rules of the busy glob": plan([f"train {BUSY_GLOB}"] * 1000),
        "plan: 500 distinct 280-character regexes": lambda i: resolve(import_plan("\n".join(
            f"train re:{WIDE_REGEX}|x{i}_{k}" for k in range(500))), index),
    }


def answer(fn: Callable[[int], object], i: int) -> str:
    try:
        result = fn(i)
    except FreezelabError as err:
        return f"refused: {str(err)[-70:]}"
    return f"matched {len(result)}" if isinstance(result, list) else "resolved"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(f"{'model':<26} {'input':<42} {'median ms':>9} {'max ms':>8}  answer")
    for model in MODELS:
        index = index_of(resolve_source(model))
        for name, fn in cases(index).items():
            times, said = [], ""
            for i in range(args.runs):
                started = time.perf_counter()
                said = answer(fn, i)
                times.append(1000 * (time.perf_counter() - started))
            print(f"{model:<26} {name:<42} {statistics.median(times):9.1f} {max(times):8.1f}  {said}")
    print(f"compiled-pattern cache: {len(CACHE)} entries, expansion {CACHE.held:,}")


if __name__ == "__main__":
    main()
