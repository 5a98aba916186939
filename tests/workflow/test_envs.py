"""Every rule names a pinned conda env, and every pin equals the Python lock `make` installs."""

import re

import yaml

from tests.workflow.helpers import ROOT


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
            assert re.fullmatch(r"[0-9][0-9a-z.]*", version), f"{env.name}: {dep} is not pinned"
            if name == "python":
                assert version == "3.11"
                continue
            assert lock[name.lower()] == version, f"{env.name}: {dep} vs lock {lock.get(name)}"


def test_every_rule_names_an_existing_env():
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for env in re.findall(r'conda:\n\s+"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().exists(), f"{smk.name}: {env}"
