"""Profiles: switching rewrites params.yaml, switching back restores it exactly, profiles do not leak."""

import shutil

import pytest

from llava_ov.params import apply_profile, available_profiles, load_params, profile_layers, read_yaml
from tests.project import REPO


@pytest.fixture()
def project(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    return tmp_path


def deep_merge(base: dict, overlay: dict) -> dict:
    """``base`` with ``overlay`` merged in recursively (mappings merge, anything else replaces)."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _keys(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_every_profile_switches_and_back(project):
    original = (project / "params.yaml").read_text()
    assert set(available_profiles(project)) >= {"tiny", "smoke", "4b", "8b"}
    for name in ["smoke", "4b", "8b", "1.7b", "smoke"]:
        params = apply_profile(name, project)
        assert params["profile"] == name
        assert deep_merge(params, profile_layers(name, project)[-1]) == params  # every key of its own is in force
    apply_profile("tiny", project)
    assert (project / "params.yaml").read_text() == original  # byte for byte: comments and order survive


def test_tiny_overlay_covers_every_overridden_key(project):
    tiny = set(_keys(read_yaml(project / "profiles" / "tiny.yaml")))
    for name in available_profiles(project):
        overlay = {k: v for k, v in read_yaml(project / "profiles" / f"{name}.yaml").items() if k != "extends"}
        missing = {k for k in _keys(overlay)
                   if not any(k == t or k.startswith(t + ".") for t in tiny)}
        assert not missing, f"profiles/{name}.yaml overrides {sorted(missing)} which profiles/tiny.yaml lacks"


def test_params_yaml_is_the_tiny_profile(project):
    params = load_params(project)
    tiny = read_yaml(project / "profiles" / "tiny.yaml")
    assert deep_merge(params, tiny) == params, "params.yaml on main must hold the tiny (default) profile"


def test_unknown_profile_is_a_clear_error(project):
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        apply_profile("huge", project)


def test_profiles_are_read_as_yaml_1_2_like_dvc(project):
    """DVC reads params.yaml as YAML 1.2, where `1e-5` is a float and `yes` a string. An overlay read as YAML
    1.1 (PyYAML) would write `lr: '1e-5'`, a string the trainer cannot use, and `yes` would become `true`."""
    (project / "profiles" / "exotic.yaml").write_text(
        "profile: exotic\ntrain:\n  stage2: {lr: 1e-5}\nreport:\n  expect:\n    stage2: {better: yes}\n")
    params = apply_profile("exotic", project)
    assert params["train"]["stage2"]["lr"] == 1e-5
    assert params["report"]["expect"]["stage2"]["better"] == "yes"
    assert "lr: 1e-05" in (project / "params.yaml").read_text()


def test_an_extending_profile_is_its_base_plus_its_own_keys(project):
    """``extends: 4b`` applies the 4b overlay first; the 1.7b profile changes only the LLM (size and folders)."""
    four = apply_profile("4b", project)
    small = apply_profile("1.7b", project)
    assert small["llm_base"] == {**four["llm_base"], "size": "1.7b", "source": "models/Qwen3-1.7B"}
    assert small["train"] == four["train"] and small["ingest"] == four["ingest"] and "extends" not in small
    (project / "profiles" / "loop.yaml").write_text("extends: loop\n")
    with pytest.raises(ValueError, match="cycle: loop -> loop"):
        apply_profile("loop", project)
