"""Stages never import stages; stages import layers (genbrain/__init__.py, "Architecture"):
an import of one stage's code from another stage's, or from a layer, fails here unless it is
one of the known exceptions still to be moved (none since issue 27)."""

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: stage -> its modules and packages (genbrain/__init__.py's table)
STAGES = {
    "simulate": ("genbrain.simulate",),
    "preprocess": ("genbrain.preprocess", "genbrain.qc"),
    "pretrain": ("genbrain.pretrain",),
    "finetune": ("genbrain.finetune",),
    "synthesize": ("genbrain.synthesize",),
    "evaluate": ("genbrain.evaluate", "genbrain.audit", "genbrain.export"),
    "bwas": ("genbrain.bwas",),
    "diagnosis": ("genbrain.diagnosis",),
    "report": ("genbrain.fidelity", "genbrain.provenance"),
    "imaging": ("genbrain.imaging",),
    "clinical": ("genbrain.clinical",),
}
GLUE = ("genbrain.workflow",)  # the parse-time planner above the stages
#: (importing module, imported stage) still to be moved into a layer: none left (issue 27);
#: what two stages share moves into a layer rather than onto this list
KNOWN: set[tuple[str, str]] = set()


def stage_of(module: str) -> str | None:
    for stage, owners in STAGES.items():
        if any(module == o or module.startswith(o + ".") for o in owners):
            return stage
    return None


def crossings(source: str, module: str) -> set[tuple[str, str]]:
    """(module, imported stage) for every import in ``source`` (module level or inside a
    function) of a stage other than ``module``'s own; none for the glue. A relative import is
    reported as (module, "a relative import"): the package uses none, and the check reads
    absolute names only."""
    if module in GLUE:
        return set()
    own = stage_of(module)
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.add((module, "a relative import"))
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {(module, s) for s in map(stage_of, names) if s is not None and s != own}
    return found


def test_the_checker_sees_stage_imports_in_functions_and_ignores_layers_and_glue():
    source = textwrap.dedent("""\
        import numpy as np
        from genbrain.splits import split_sites
        from genbrain.stats.correlation import pearson
        from genbrain.bwas import plan
        def f():
            import genbrain.simulate.cohort
            from genbrain import pretrain
            from genbrain.diagnosis.volumes import COLUMNS
        """)
    assert crossings(source, "genbrain.diagnosis.classify") == {
        ("genbrain.diagnosis.classify", "bwas"), ("genbrain.diagnosis.classify", "simulate"),
        ("genbrain.diagnosis.classify", "pretrain")}
    assert crossings(source, "genbrain.splits") == {
        ("genbrain.splits", s) for s in ("bwas", "simulate", "pretrain", "diagnosis")}
    assert crossings(source, "genbrain.workflow") == set()
    assert crossings("from . import cohort", "genbrain.simulate") == {
        ("genbrain.simulate", "a relative import")}


def test_stages_import_layers_not_other_stages():
    paths = sorted((ROOT / "genbrain").rglob("*.py"))
    assert len(paths) > 30
    found = set()
    for path in paths:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found |= crossings(path.read_text(), module)
    new = sorted(found - KNOWN)
    assert not new, ("a stage (or a layer) imports another stage; move what they share into a "
                     "layer (genbrain/__init__.py, 'Architecture'):\n"
                     + "\n".join(f"{m} -> {s}" for m, s in new))
