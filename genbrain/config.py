"""Configuration validation: JSON schema (with defaults) plus cross-key checks.

Errors are one line naming the key path (``cohorts.scz.modalities``) and what was expected, with
a "did you mean" for typos of known keys.
"""

from __future__ import annotations

import copy
import difflib
import os
import string
from collections.abc import Mapping
from pathlib import Path

import jsonschema
import yaml

from genbrain.errors import GenbrainInputError
from genbrain.modalities import SIMULATED_MODALITIES, registry_from_config

PATTERN_FIELDS = ("participant_id", "subject", "site", "modality")


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML file, with a one-line error if it is missing or malformed."""
    path = Path(path)
    if not path.exists():
        raise GenbrainInputError(f"{path}: file not found")
    try:
        with open(path) as fh:
            return yaml.safe_load(fh) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise GenbrainInputError(f"{path}:{where} is not valid YAML ({getattr(err, 'problem', err)})"
                                 ) from err


def _with_defaults(cls):
    validate_props = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _message(err: jsonschema.ValidationError, source: str) -> str:
    where = _key(err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        bad = extra[0] if extra else "?"
        hint = difflib.get_close_matches(bad, allowed, n=1)
        did = f" (did you mean '{hint[0]}'?)" if hint else ""
        loc = f"under '{where}'" if err.absolute_path else "at the top level"
        return f"{source}: unknown key '{bad}' {loc}{did}; expected one of {allowed}"
    if err.validator == "required":
        return f"{source}: missing key {err.message.split(' is a required')[0]} under '{where}'"
    if err.validator == "propertyNames":
        return f"{source}: key '{err.instance}' under '{where}' is not allowed ({err.message})"
    if "propertyNames" in err.schema_path and err.validator == "pattern":
        # names chosen in the config become folders and wildcards: say what would do
        fix = "".join(ch for ch in str(err.instance) if ch.isascii() and ch.isalnum())
        hint = f", e.g. '{fix}'" if fix and fix[0].isalpha() else ""
        return (f"{source}: key '{err.instance}' under '{where}' is not a valid name "
                f"(expected to match {err.validator_value}: letters and digits, as it names "
                f"folders and targets{hint})")
    return f"{source}: config key '{where}': {err.message}"


def validate_config(config: Mapping, schema_path: str | os.PathLike,
                    source: str = "config") -> dict:
    """Validate ``config`` against the schema (filling defaults) and the cross-key rules.

    Returns the completed config (a copy); raises :class:`GenbrainInputError` on the first error.
    """
    config = copy.deepcopy(dict(config))
    schema = load_yaml(schema_path)
    errors = sorted(_Validator(schema).iter_errors(config),
                    key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        # prefer the most specific error (deepest path) for nested cohorts
        raise GenbrainInputError(_message(best, source))
    _cross_checks(config, source)
    return config


def _cross_checks(config: Mapping, source: str) -> None:
    registry = registry_from_config(config)
    for name, c in config["cohorts"].items():
        key = f"cohorts.{name}"
        simulated = "simulate" in c
        if not simulated:
            for k in ("participants", "images"):
                if not c.get(k):
                    raise GenbrainInputError(
                        f"{source}: missing key '{key}.{k}' (a real cohort needs a participants "
                        "table and an image pattern; fill it in, or run the embedded demo with "
                        "--configfile config/demo.yaml)")
            fields = {f for _, f, _, _ in string.Formatter().parse(c["images"]) if f}
            unknown = sorted(fields - set(PATTERN_FIELDS))
            if unknown:
                raise GenbrainInputError(f"{source}: '{key}.images' uses unknown placeholder "
                                         f"{{{unknown[0]}}}; expected some of "
                                         f"{['{' + f + '}' for f in PATTERN_FIELDS]}")
            if "{modality}" not in c["images"] and len(c["modalities"]) > 1:
                raise GenbrainInputError(f"{source}: '{key}.images' must contain {{modality}} "
                                         "when the cohort has several modalities")
        for m in c["modalities"]:
            if m not in registry:
                registry[m]  # raises the unknown-modality message
            if simulated and m not in SIMULATED_MODALITIES:
                raise GenbrainInputError(f"{source}: '{key}.modalities': '{m}' cannot be "
                                         f"simulated; expected some of {list(SIMULATED_MODALITIES)}")
        if simulated:
            sites = list(c["simulate"]["sites"])
            native = [s for s, v in c["simulate"]["sites"].items() if v.get("native")]
            if c.get("native_sites"):
                raise GenbrainInputError(f"{source}: '{key}.native_sites' is set from "
                                         f"'{key}.simulate.sites.<site>.native' for simulated "
                                         "cohorts; remove it")
            if c.get("brain_extracted"):
                raise GenbrainInputError(f"{source}: '{key}.brain_extracted' is set from "
                                         f"'{key}.simulate.sites.<site>.brain_extracted' for "
                                         "simulated cohorts; remove it")
        else:
            sites = c.get("sites") or []
            native = c.get("native_sites") or []
            if sites:
                unknown = [s for s in native if s not in sites]
                if unknown:
                    raise GenbrainInputError(f"{source}: '{key}.native_sites' lists unknown "
                                             f"site '{unknown[0]}'; expected one of {sites}")
                extracted = c.get("brain_extracted")
                unknown = [s for s in (extracted if isinstance(extracted, list) else [])
                           if s not in sites]
                if unknown:
                    raise GenbrainInputError(f"{source}: '{key}.brain_extracted' lists unknown "
                                             f"site '{unknown[0]}'; expected one of {sites}, "
                                             "true or false")
        ref = config["preprocess"]["reference_modality"]
        if (native or c.get("space") == "native") and ref not in c["modalities"]:
            raise GenbrainInputError(
                f"{source}: cohort '{name}' has native-space images but not the registration "
                f"modality '{ref}' (preprocess.reference_modality); add it to "
                f"'{key}.modalities' or change preprocess.reference_modality")
        lo, hi = c["age_range"]
        if lo >= hi:
            raise GenbrainInputError(f"{source}: '{key}.age_range' must be [min, max] with "
                                     f"min < max, got {c['age_range']}")
