"""No private name crosses a module boundary in genbrain/ (issue 27): what two modules need is
public where it lives, never imported (``from genbrain.x import _y``) or reached
(``x._y`` on an imported genbrain module) as ``_y`` from another module."""

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "genbrain"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> set[str]:
    """Dotted names of every module and package (namespace ones included) under genbrain/."""
    top = ROOT / PACKAGE
    return ({_module_of(p) for p in top.rglob("*.py")}
            | {_module_of(d / "__init__.py") for d in [top, *top.rglob("*")] if d.is_dir()
               and d.name != "__pycache__"})


def private_crossings(source: str, module: str, modules: set[str], is_package: bool = False
                      ) -> list[tuple[int, str]]:
    """(line, dotted name) of every private name of another genbrain module that ``source``
    (the text of ``module``) imports or reaches as an attribute of an imported module."""
    tree = ast.parse(source)
    found: list[tuple[int, str]] = []
    bound: dict[str, str] = {}  # local name -> the genbrain module it refers to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source_module = node.module or ""
            if node.level:  # relative: from the importing module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source_module = ".".join(base + ([node.module] if node.module else []))
            if source_module.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                dotted = f"{source_module}.{alias.name}"
                if _private(alias.name) and source_module != module:
                    found.append((node.lineno, dotted))
                elif dotted in modules:
                    bound[alias.asname or alias.name] = dotted
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    bound[alias.asname or PACKAGE] = alias.name if alias.asname else PACKAGE
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        chain, value = [], node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in bound:
            owner = ".".join([bound[value.id], *reversed(chain)])
            if owner in modules and owner != module:
                found.append((node.lineno, f"{owner}.{node.attr}"))
    return sorted(found)


def test_the_checker_finds_private_imports_and_attributes_and_nothing_else():
    source = textwrap.dedent("""\
        import numpy as np
        import genbrain.simulate.cohort
        from genbrain.figures import _pyplot, save_figure
        from . import space as sp
        from genbrain.simulate import cohort
        from genbrain.layout import _own
        def f(obj):
            a = sp._template_paths(), cohort._mask_box(0), sp.template_paths()
            b = genbrain.simulate.cohort._mask_box(1), np._core, obj._cache, save_figure
            return __name__, _pyplot()
        """)
    modules = {"genbrain", "genbrain.figures", "genbrain.layout", "genbrain.simulate",
               "genbrain.simulate.cohort", "genbrain.space"}
    assert private_crossings(source, "genbrain.layout", modules) == [
        (3, "genbrain.figures._pyplot"),
        (8, "genbrain.simulate.cohort._mask_box"),
        (8, "genbrain.space._template_paths"),
        (9, "genbrain.simulate.cohort._mask_box"),
    ]
    # a relative import from a package's __init__ resolves inside that package
    assert private_crossings("from .cohort import _mask_box", "genbrain.simulate", modules,
                             is_package=True) == [(1, "genbrain.simulate.cohort._mask_box")]


def test_no_genbrain_module_uses_a_private_name_of_another():
    modules = package_modules()
    paths = sorted((ROOT / PACKAGE).rglob("*.py"))
    assert len(paths) > 30 and "genbrain.training.loop" in modules  # the walk saw the package
    offenders = [f"{path.relative_to(ROOT)}:{line} {name}" for path in paths
                 for line, name in private_crossings(path.read_text(), _module_of(path), modules,
                                                     path.name == "__init__.py")]
    assert not offenders, ("private names used across modules (make the helper public where "
                           "it lives, or move it to a shared layer):\n" + "\n".join(offenders))
