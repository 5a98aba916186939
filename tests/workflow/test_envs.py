"""Every rule names a pinned conda env, and every pin equals the Python lock `make` installs."""

import re

import yaml

from tests.workflow.helpers import ROOT

CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge names that differ from the PyPI ones


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_every_env_pins_exact_versions_that_match_the_lock():
    lock = _lock()
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        assert spec["channels"] == ["conda-forge", "nodefaults"], env.name
        for dep in spec["dependencies"]:
            if isinstance(dep, dict):
                for pip_dep in dep["pip"]:
                    name, version = pip_dep.split("==")
                    assert lock[name.lower()] == version, f"{env.name}: {pip_dep}"
                continue
            if dep == "pip":
                continue
            name, _, version = dep.partition("=")
            version, _, _build = version.partition("=")  # pytorch=2.13.0=cuda*: a build string
            assert re.fullmatch(r"[0-9][0-9a-z.]*", version), f"{env.name}: {dep} is not pinned"
            if name == "python":
                assert version == "3.11"
                continue
            pip_name = CONDA_TO_PIP.get(name, name).lower()
            assert lock[pip_name] == version, f"{env.name}: {dep} vs lock {lock.get(pip_name)}"


def test_the_model_env_pins_a_cuda_build_of_pytorch():
    spec = yaml.safe_load((ROOT / "envs" / "model.yaml").read_text())
    torch_pins = [d for d in spec["dependencies"] if isinstance(d, str) and
                  d.startswith("pytorch=")]
    assert torch_pins == [f"pytorch={_lock()['torch']}=cuda*"]


def test_model_rules_use_the_model_env():
    for name in ("pretrain.smk", "synthesize.smk", "evaluate.smk"):
        text = (ROOT / "rules" / name).read_text()
        assert re.findall(r'conda:\n\s+"([^"]+)"', text), name
        assert set(re.findall(r'conda:\n\s+"([^"]+)"', text)) == {"../envs/model.yaml"}, name


def test_every_rule_names_an_existing_env():
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for env in re.findall(r'conda:\n\s+"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().exists(), f"{smk.name}: {env}"
