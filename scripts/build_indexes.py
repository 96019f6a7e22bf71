"""Write assets/indexes/: the model index of every shipped architecture for the
installed transformers release (run after changing a config, the index schema or
the transformers pin in requirements.txt).

    python scripts/build_indexes.py
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from freezelab.index import SHIPPED_DIR, build_index, cache_key  # noqa: E402
from freezelab.models import build  # noqa: E402
from freezelab.sources import known_names, resolve  # noqa: E402


def main() -> None:
    SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for name in ["tiny", *known_names()]:  # tiny too: the dashboard opens on it
        source = resolve(name)
        key = cache_key(source.config)
        index = build_index(build(source, device="meta", dtype="bf16"), name, meta=True)
        path = SHIPPED_DIR / f"{key}.json.gz"
        # mtime=0 keeps the bytes reproducible, so an unchanged index is no diff
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(json.dumps(index.to_dict(), sort_keys=True, separators=(",", ":")).encode())
        wanted.add(path.name)
        print(f"{name}: {path.name} ({path.stat().st_size // 1024} KiB)")
    for stale in SHIPPED_DIR.glob("*.json.gz"):
        if stale.name not in wanted:
            stale.unlink()
            print(f"removed stale {stale.name}")


if __name__ == "__main__":
    main()
