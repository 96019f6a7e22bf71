"""The install stays light and pinned, for every reader of the README.

requirements.txt is what the README's run command and a Hugging Face Space install: torch at the
pinned version from the PyTorch CPU index (on Linux, PyPI's torch wheel is the CUDA build), in one
self-contained file (a Space installs it alone). The test command installs requirements-dev.txt,
which includes it, so tests and app run on the same torch. A GPU user's CUDA build of that version
meets the pin. .ci/run also lets pip resolve both files (scripts/check_install.py)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"


def lines(name: str) -> list[str]:
    """A requirements file's lines without comments and blanks."""
    out = [re.sub(r"(^|\s)#.*$", "", ln).strip() for ln in (ROOT / name).read_text().splitlines()]
    return [ln for ln in out if ln]


def requirements(name: str) -> dict[str, Requirement]:
    return {(r := Requirement(ln)).name.lower(): r for ln in lines(name) if not ln.startswith("-")}


def torch_pin() -> str:
    (spec,) = requirements("requirements.txt")["torch"].specifier
    return spec.version


def test_run_requirements_pin_a_cpu_torch():
    torch = requirements("requirements.txt")["torch"]
    assert CPU_INDEX in lines("requirements.txt")
    assert torch.marker is None and len(torch.specifier) == 1
    (spec,) = torch.specifier
    assert spec.operator == "==" and "+" not in spec.version  # pip picks the build: +cpu from the CPU index
    assert spec.contains(f"{spec.version}+cpu") and spec.contains(f"{spec.version}+cu130")  # a GPU build is kept
    assert not spec.contains("2.14.1")


def test_space_installs_one_self_contained_file():
    """A Space installs requirements.txt alone, with the gradio of README's front matter."""
    assert not [ln for ln in lines("requirements.txt") if ln.startswith(("-r", "-c", "--requirement", "--constraint",
                                                                         "-e", "."))]
    sdk = re.search(r"^sdk_version: (\S+)$", README, flags=re.M).group(1)
    assert requirements("requirements.txt")["gradio"].specifier.contains(sdk)


def test_test_path_pins_the_same_torch():
    dev = lines("requirements-dev.txt")
    assert "-r requirements.txt" in dev
    assert "torch" not in requirements("requirements-dev.txt") and not [ln for ln in dev if "index-url" in ln]
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    run = next(b for b in blocks if "python app.py" in b)
    test = next(b for b in blocks if "python -m pytest" in b)
    assert re.findall(r"pip install ([^&]+?)\s*(?:&&|$)", run) == ["-r requirements.txt"]
    assert re.findall(r"pip install ([^&]+?)\s*(?:&&|$)", test) == ["-r requirements-dev.txt"]


def test_readme_gpu_line_pins_the_same_torch():
    gpu = re.findall(r"pip install torch==(\S+?)[`\s]", README)
    assert gpu and set(gpu) == {torch_pin()}


def test_installed_torch_is_the_pinned_one():
    """The tests run on the torch the README installs (a CUDA build of the same version counts)."""
    assert SpecifierSet(f"=={torch_pin()}").contains(metadata.version("torch"))
