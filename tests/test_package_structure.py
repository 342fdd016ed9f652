"""The shape of the house: one subpackage per stage, imports that flow one way, no private name crossing.

Every ``import`` statement of the package is read, those inside functions
included (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path

import pytest

import cytopipe

PKG = Path(cytopipe.__file__).resolve().parent
REPO = PKG.parent

# The order imports may go: a stage imports only from the stages before it.
# outputs and review come before batch because the batch driver writes the
# tables and applies the decisions reviewers recorded on an earlier run.
# audit comes after batch: it re-derives the cache keys the batch tasks used.
LAYERS = ["fcs", "strategy", "gating", "outputs", "review", "batch", "station", "audit", "endpoint"]
# The generator stands apart: it writes FCS files with its own code, so a
# reader bug cannot hide in a generator that shares it.
INDEPENDENT = ["sim"]
TOP_LEVEL = {"__init__.py", "__main__.py", "_lazy.py", "_version.py", "cli.py", "exceptions.py"}
# the package's own plumbing, private to cytopipe but shared by its stages
SHARED_PRIVATE = {"_version", "_lazy"}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        yield ("cytopipe." + ".".join(rel.with_suffix("").parts)).removesuffix(".__init__"), path


def _imports(module: str, path: Path):
    """``(imported module, [names])`` for every import statement, resolved to absolute names."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS + INDEPENDENT) else None


def test_top_level_keeps_only_the_cli_exceptions_version_and_lazy_loader():
    files = {p.name for p in PKG.iterdir() if p.suffix == ".py"}
    dirs = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert files == TOP_LEVEL
    assert dirs == set(LAYERS + INDEPENDENT)


def test_imports_flow_one_way_between_stages():
    wrong = []
    for module, path in _modules():
        here = _stage(module)
        if here is None:
            continue
        for target, _ in _imports(module, path):
            there = _stage(target) if target.startswith("cytopipe.") else None
            if there is None or there == here:
                continue
            if here in INDEPENDENT or there in INDEPENDENT:
                wrong.append(f"{module} imports {target} (sim/ stands apart)")
            elif LAYERS.index(there) > LAYERS.index(here):
                wrong.append(f"{module} imports {target}, a later stage")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_crosses_a_subpackage():
    wrong = []
    for module, path in _modules():
        here = _stage(module)
        for target, names in _imports(module, path):
            if not target.startswith("cytopipe"):
                continue
            there = _stage(target)
            if there == here:
                continue
            private_module = any(p.startswith("_") and p not in SHARED_PRIVATE for p in target.split(".")[1:])
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private or private_module:
                wrong.append(f"{module} imports {private or ''} from {target}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("stage", LAYERS + INDEPENDENT)
def test_each_stage_exports_its_public_names(stage):
    """Every name a stage's modules declare public is importable from the stage itself."""
    package = importlib.import_module(f"cytopipe.{stage}")
    missing = []
    for path in sorted((PKG / stage).glob("[!_]*.py")):
        module = importlib.import_module(f"cytopipe.{stage}.{path.stem}")
        for name in getattr(module, "__all__", []):
            if name not in package.__all__ or getattr(package, name) is not getattr(module, name):
                missing.append(f"{module.__name__}.{name}")
    assert not missing


def test_the_version_has_one_source():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cytopipe._version.__version__"}
    from cytopipe._version import __version__

    assert cytopipe.__version__ is __version__
    hits = [str(p) for p in PKG.rglob("*.py") if p.name != "_version.py"
            and f'"{__version__}"' in p.read_text(encoding="utf-8")]
    assert not hits, f"the version is spelled out again in {hits}"


def test_the_architecture_page_maps_every_module():
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = {}
    stage = "top"
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")] if line.startswith("|") else []
        if len(cells) == 3:
            if cells[0].startswith("**"):
                stage = cells[0].strip("*").rstrip("/")
            elif cells[0] == "top":
                stage = "top"
            for name in cells[1].replace("`", "").split(","):
                rows.setdefault(stage, set()).add(name.strip())
    missing = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if path.name in ("__init__.py", "__main__.py"):
            continue
        stage = rel.parts[0] if len(rel.parts) > 1 else "top"
        mapped = rows.get(stage, set())
        if path.name not in mapped and "/".join(rel.parts[1:]) not in mapped:  # a subpackage's file by its path
            missing.append(str(rel))
    assert not missing, f"docs/architecture.md does not map {sorted(missing)}"


def test_the_readme_reads_for_the_people_who_run_it():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    first = text.split("\n## ", 1)[0]
    assert "make demo\nmake test\n" in first
    heads = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert heads[:6] == ["Install", "Running your own files", "Reviewing", "The endpoint", "Troubleshooting", "More"]
    for link in ("architecture", "strategies", "cluster", "performance", "endpoint", "outputs"):
        assert (REPO / "docs" / f"{link}.md").is_file() and f"docs/{link}.md" in text


def test_the_command_line_starts_without_the_heavy_stages():
    """``cytopipe --help`` and ``import cytopipe`` load neither FlowKit, Dask nor matplotlib; a public name
    loads its stage on first use (and the stage its heavy dependencies only when used: ``read_fcs``
    loads FlowKit when it reads)."""
    import subprocess
    import sys

    code = ("import sys, cytopipe.cli, cytopipe; heavy = ('flowkit', 'distributed', 'matplotlib', 'sklearn'); "
            "print(sorted(m for m in heavy if m in sys.modules)); cytopipe.read_fcs; "
            "print('cytopipe.fcs.read' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True"


def _positional(func, *, bound: bool) -> list[str]:
    import inspect

    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in inspect.signature(func).parameters.values() if p.kind in kinds]
    return names[1:] if bound and names[:1] in (["self"], ["cls"]) else names


def _exported_callables():
    """``(qualified name, function, bound)`` for every public function and method a stage exports.

    Methods: the public ones a class defines, and a hand-written ``__init__`` (a dataclass's generated
    one takes its fields, the record's own shape).
    """
    import dataclasses
    import inspect

    seen = set()
    for package in ["cytopipe"] + [f"cytopipe.{s}" for s in LAYERS + INDEPENDENT]:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if inspect.isfunction(obj):
                yield f"{package}.{name}", obj, False
            elif inspect.isclass(obj):
                for attr, value in vars(obj).items():
                    if attr.startswith("_") and not (attr == "__init__" and not dataclasses.is_dataclass(obj)):
                        continue
                    func = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
                    if inspect.isfunction(func):
                        yield f"{package}.{name}.{attr}", func, not isinstance(value, staticmethod)


def test_public_functions_take_at_most_three_positional_arguments():
    """Options are keyword-only after at most three positional arguments (scanpy's rule, and sklearn's
    ``__init__(self, *, ...)``): a call reads ``f(data, what, where, option=...)``, never by position."""
    over = {name: args for name, func, bound in _exported_callables()
            if len(args := _positional(func, bound=bound)) > 3}
    wrong = [f"{name}({', '.join(args)})" for name, args in over.items()]
    assert not wrong, "make the parameters after the third keyword-only (*,):\n" + "\n".join(wrong)
