"""Check that an install from a requirements file is the light CPU one it pins (.ci/run runs it on
requirements.txt, the README's run command's install, and on requirements-dev.txt, the test command's).

pip resolves the file without installing anything (`pip install --dry-run --ignore-installed --report`,
this interpreter's pip, this machine's package indexes); the check fails when torch does not resolve
to the version requirements.txt pins or when any CUDA package (nvidia-*, cuda-*, triton) comes with it.
It prints what resolved. With --installed it checks the running environment instead, and prints its size.

    python3 scripts/check_install.py requirements.txt requirements-dev.txt
    .venv/bin/python scripts/check_install.py --installed
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
CUDA_PACKAGE = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")
TORCH_PIN = re.compile(r"^torch\s*==\s*([0-9][0-9A-Za-z.]*)\s*(?:#.*)?$")


def pinned_torch(path: Path) -> str:
    """The version after `torch==` in the file (one line, no local label: pip picks the build)."""
    pins = [m.group(1) for line in path.read_text().splitlines() if (m := TORCH_PIN.match(line.strip()))]
    if len(pins) != 1:
        raise SystemExit(f"{path.name}: expected one `torch==VERSION` line, found {len(pins)}")
    return pins[0]


def resolved(path: Path) -> list[dict]:
    """The packages `pip install -r path` would install into an empty environment."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        run = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                              "--report", str(report), "-r", str(path)], cwd=ROOT, capture_output=True, text=True)
        if run.returncode:  # pip's own words only when it failed (unreachable extra indexes warn on every run)
            raise SystemExit(f"{path.name}: pip could not resolve it:\n{run.stdout}{run.stderr}")
        return json.loads(report.read_text())["install"]


def check(path: Path, pin: str) -> list[str]:
    items = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i for i in resolved(path)}
    torch = items.get("torch")
    version = torch["metadata"]["version"] if torch else "none"
    source = unquote(torch["download_info"]["url"].rsplit("/", 1)[-1]) if torch else "-"
    cuda = sorted(n for n in items if CUDA_PACKAGE.match(n))
    print(f"{path.name}: {len(items)} packages; torch {version} ({source}); "
          f"CUDA packages: {', '.join(cuda) if cuda else 'none'}")
    problems = []
    if version.split("+")[0] != pin:
        problems.append(f"{path.name}: torch resolves to {version}, requirements.txt pins {pin}")
    if cuda:
        problems.append(f"{path.name}: the install pulls CUDA packages ({', '.join(cuda)})")
    return problems


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def check_installed(pin: str) -> list[str]:
    """The running environment: its torch, its CUDA packages, the size of its site-packages."""
    from importlib import metadata

    names = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in metadata.distributions()}
    version = metadata.version("torch") if "torch" in names else "none"
    cuda = sorted(n for n in names if CUDA_PACKAGE.match(n))
    site = Path(sysconfig.get_paths()["purelib"])
    torch_bytes = _size(site / "torch") if (site / "torch").is_dir() else 0
    print(f"{sys.prefix}: torch {version}; site-packages {_size(site) / 2**30:.2f} GiB, of which torch "
          f"{torch_bytes / 2**30:.2f} GiB; CUDA packages: {', '.join(cuda) if cuda else 'none'}")
    problems = [f"installed torch is {version}, requirements.txt pins {pin}"] if version.split("+")[0] != pin else []
    return problems + ([f"CUDA packages are installed ({', '.join(cuda)})"] if cuda else [])


def main(argv: list[str]) -> int:
    pin = pinned_torch(ROOT / "requirements.txt")
    if argv == ["--installed"]:
        problems = check_installed(pin)
    else:
        problems = [p for name in (argv or ["requirements.txt"]) for p in check(ROOT / name, pin)]
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
