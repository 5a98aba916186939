"""The config schema, the code and config/README.md say the same thing: every key described
and documented, one default per key, the model presets taken from the code."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from genbrain.model.dit import POS_EMBEDS, PRESETS
from genbrain.training.config import TrainConfig
from tests.workflow.helpers import ROOT

SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
README = (ROOT / "config" / "README.md").read_text()


def _resolve(node: dict) -> dict:
    while "$ref" in node:
        target = SCHEMA["$defs"][node["$ref"].split("/")[-1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def schema_keys(node: dict = SCHEMA, path: str = "") -> dict[str, dict]:
    """Dotted key path (``<*>`` for a name the user chooses) -> its schema, for every
    property of the config schema."""
    out = {}
    node = _resolve(node)
    for name, sub in (node.get("properties") or {}).items():
        key = f"{path}.{name}" if path else name
        out[key] = _resolve(sub)
        out.update(schema_keys(sub, key))
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out.update(schema_keys(extra, f"{path}.<*>"))
    return out


def readme_rows() -> dict[str, tuple[str, str | None]]:
    """Dotted key path -> (the README table row that documents it, its default cell or None),
    from the tables under each ``## `section``` heading."""
    rows, prefix = {}, None
    for line in README.splitlines():
        if line.startswith("#"):
            title = re.search(r"`([^`]+)`", line)
            prefix = title.group(1) if title else ("" if "Top level" in line else None)
            prefix = prefix and re.sub(r"<[^>]+>", "<*>", prefix)
            continue
        if prefix is None or not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        keys = [re.sub(r"<[^>]+>", "<*>", k) for k in re.findall(r"`([^`]+)`", cells[0])]
        parent = keys[0].rsplit(".", 1)[0] if "." in keys[0] else ""
        default = cells[2] if len(cells) > 2 else None
        parts = default.split(", ") if default and len(keys) > 1 else [default] * len(keys)
        if len(parts) != len(keys):
            parts = [None] * len(keys)
        for k, d in zip(keys, parts):
            if parent and "." not in k:
                k = f"{parent}.{k}"
            rows[f"{prefix}.{k}" if prefix else k] = (line, d)
    return rows


KEYS = schema_keys()
ROWS = readme_rows()


def test_the_walk_finds_the_schema_and_the_readme():
    assert len(KEYS) > 90 and "pretrain.train.steps" in KEYS
    assert "cohorts.<*>.simulate.sites.<*>.n" in KEYS and "cohorts.<*>.simulate.sites.<*>.n" in ROWS


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_schema_key_has_a_description_and_a_readme_row(key):
    assert KEYS[key].get("description", "").strip(), f"{key}: no description in the schema"
    parent, _, name = key.rpartition(".")
    documented = (key in ROWS or any(k.startswith(f"{key}.") for k in ROWS)
                  or (parent in ROWS and re.search(rf"`{name}`|\b{name}:", ROWS[parent][0])))
    assert documented, f"{key}: not documented in config/README.md"


def _value(cell: str):
    text = re.sub(r"\s*\(.*\)$", "", cell.replace("`", "").strip())
    value = yaml.safe_load(text)
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)


@pytest.mark.parametrize("key", sorted(k for k, v in KEYS.items()
                                       if "default" in v and not isinstance(v["default"], dict)))
def test_readme_states_the_schema_default(key):
    if key not in ROWS or ROWS[key][1] is None:
        pytest.skip(f"{key} is documented inside its parent's row")
    assert _same(_value(ROWS[key][1]), KEYS[key]["default"]), (key, ROWS[key][1])


def test_training_defaults_are_the_codes():
    # pretrain.train is genbrain.training.config.TrainConfig: one default per key, in both. A
    # key the schema leaves unset is None in the code (the preset's patch size, the GPU's whole
    # share, every modality), but for `seed`: the workflow passes the top-level seed.
    train = SCHEMA["$defs"]["train"]["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert set(train) <= set(fields)
    for key, spec in train.items():
        if key == "seed":
            assert "default" not in spec
        elif "default" not in spec:
            assert fields[key] is None, key
        else:
            assert _same(spec["default"], fields[key]), (key, spec["default"], fields[key])


def test_preset_and_positional_embedding_enums_are_the_codes():
    train = SCHEMA["$defs"]["train"]["properties"]
    assert train["preset"]["enum"] == list(PRESETS)
    assert train["pos_embed"]["enum"] == list(POS_EMBEDS)
    for preset in PRESETS:
        assert f"`{preset}`" in ROWS["pretrain.train.preset"][0], preset
