"""Public mode: paths confined to roots (no '..', no symlink escape), limits on weights and steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from freezelab.policy import LOCAL, PolicyError, from_env, public_policy
from freezelab.sources import TINY_CONFIG, resolve


@pytest.fixture()
def roots(tmp_path: Path):
    inside = tmp_path / "models"
    (inside / "ckpt").mkdir(parents=True)
    (inside / "ckpt" / "config.json").write_text(TINY_CONFIG.read_text())
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "config.json").write_text(TINY_CONFIG.read_text())
    return inside, outside


def test_env_detection():
    assert from_env({}) is LOCAL
    assert from_env({"SPACE_ID": "org/space"}).public
    assert not from_env({"SPACE_ID": "org/space", "FREEZELAB_PUBLIC": "0"}).public
    assert from_env({"FREEZELAB_PUBLIC": "1"}).public
    assert from_env({"FREEZELAB_PUBLIC": "1", "FREEZELAB_MODEL_ROOTS": "/tmp"}).roots == (Path("/tmp").resolve(),)


def test_public_without_roots_refuses_paths(roots):
    inside, _ = roots
    with pytest.raises(PolicyError, match="local paths are disabled"):
        resolve(str(inside / "ckpt"), policy=public_policy())
    assert resolve("tiny", policy=public_policy()).kind == "tiny"
    assert resolve("llava-1.5-7b", policy=public_policy()).kind == "known"


def test_public_roots_allow_inside_only(roots):
    inside, outside = roots
    policy = public_policy((inside,))
    assert resolve(str(inside / "ckpt"), policy=policy).kind == "checkpoint"
    with pytest.raises(PolicyError, match="outside the directories"):
        resolve(str(outside / "config.json"), policy=policy)
    with pytest.raises(PolicyError, match="'..' is not allowed"):
        resolve(str(inside / ".." / "secret" / "config.json"), policy=policy)


def test_symlink_escape_is_refused(roots):
    inside, outside = roots
    (inside / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PolicyError, match="outside the directories"):
        resolve(str(inside / "link" / "config.json"), policy=public_policy((inside,)))
    # local mode follows the link: the user's own box is open
    assert resolve(str(inside / "link" / "config.json"), policy=LOCAL).kind == "config"


def test_limits():
    p = public_policy()
    with pytest.raises(PolicyError, match="exceed this server's limit"):
        p.check_weights(3 * 2**30, "m")
    p.check_weights(2**30, "m")
    with pytest.raises(PolicyError, match="only on cpu"):
        p.check_step(1000, 2, "cuda", "m")
    with pytest.raises(PolicyError, match="at most 5 steps"):
        p.check_step(1000, 6, "cpu", "m")
    with pytest.raises(PolicyError, match="too large for a sanity step"):
        p.check_step(7_000_000_000, 2, "cpu", "llava-1.5-7b")
    p.check_step(264_992, 2, "cpu", "tiny")
    LOCAL.check_step(10**12, 10**6, "cuda", "anything")
    with pytest.raises(PolicyError, match="takes too long"):
        p.check_simulate(73_000_000_000, "72b")


def test_odd_specs():
    from freezelab.errors import SourceError
    with pytest.raises(SourceError, match="not a valid"):
        resolve("tiny\x00")
    with pytest.raises(SourceError):
        resolve("x" * 5000)
    with pytest.raises(SourceError, match="by text"):
        resolve(None)  # type: ignore[arg-type]


def test_public_mode_answers_a_name_the_same_whether_it_exists_or_not(roots, tmp_path, monkeypatch):
    """Whether a relative name exists on the server must not change the answer (an existence oracle)."""
    from freezelab.errors import FreezelabError
    inside, _ = roots
    monkeypatch.chdir(tmp_path)  # holds models/ckpt and secret/config.json
    policy = public_policy((inside,))

    def answer(spec: str) -> tuple[type, str]:
        with pytest.raises(FreezelabError) as info:
            resolve(spec, policy=policy)
        return type(info.value), str(info.value).replace(spec, "SPEC")

    for existing, missing in (("secret/config.json", "nosuch/config.json"), ("secret", "nosuch"),
                              ("models/ckpt", "models/nosuch"), ("secret/config", "nosuch/config")):
        assert (tmp_path / existing.split("/")[0]).exists() and not (tmp_path / missing).exists()
        assert answer(existing) == answer(missing), (existing, missing)
    # local mode keeps reading relative paths (the user's own box)
    assert resolve("models/ckpt", policy=LOCAL).kind == "checkpoint"
