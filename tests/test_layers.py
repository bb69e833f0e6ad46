"""The package's architecture, as a test: layers import only downward, private names stay home.

The imports of every module are read from its source (``ast``), function-level imports
included, so an import hidden inside a function counts like any other.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import types
from pathlib import Path

import pytest

import jaxphot

ROOT = Path(jaxphot.__file__).parent

# Layer of each top-level part, lowest first. A module may import from its own folder and from
# lower layers only. Top-level helpers that depend on nothing in the package sit at 0.
LAYERS = {
    "constants": 0, "progress": 0, "io": 0, "stats": 0, "datasets": 0, "morphology": 0, "matching": 0,
    "validate": 0,
    "core": 1,
    "psf": 2,
    "image": 3,
    "aperture": 4,
    "epsf": 5,
    "theory": 6,
    "sim": 6,
    "multi": 6,
    "scale": 7,
    "cli": 8,
    "plotting": 7,  # below cli: `jaxphot ast --plot` draws with plot_ast
}
# Old module paths kept as two-line shims (re-exports); they sit above everything.
SHIMS = {"fit", "scene", "solve", "flags", "kernels", "detector", "simulate", "background",
         "detection", "grouping", "psf_grid", "demo", "distributed", "sharding"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str):
    """``(target module, imported names or None, line)`` for every import in module ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("jaxphot"):
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, node)
            if not target.startswith("jaxphot"):
                continue
            names = [a.name for a in node.names]
            # "from pkg import submodule" is an import of the submodule itself
            subs = [n for n in names if f"{target}.{n}" in MODULES]
            for n in subs:
                yield f"{target}.{n}", None, node.lineno
            rest = [n for n in names if n not in subs]
            if rest:
                yield target, rest, node.lineno


EDGES = {m: list(_imports(m)) for m in MODULES}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycles():
    graph = {m: sorted({t for t, _, _ in EDGES[m] if t in MODULES and t != m}) for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_layers_import_only_downward():
    bad = []
    for m, edges in EDGES.items():
        src = _part(m)
        if src in SHIMS or src == "":  # the shims and jaxphot/__init__ re-export from anywhere
            continue
        for target, _, line in edges:
            dst = _part(target)
            if dst == src or target == "jaxphot":
                if target == "jaxphot":
                    bad.append(f"{m}:{line} imports the top-level package")
                continue
            if dst in SHIMS:
                bad.append(f"{m}:{line} imports the old path {target}")
            elif LAYERS.get(dst, 99) >= LAYERS[src]:
                bad.append(f"{m}:{line} ({src}, layer {LAYERS[src]}) imports {target} "
                           f"(layer {LAYERS.get(dst)})")
    assert not bad, "\n".join(bad)


def _private_ok(importer: str, target: str) -> bool:
    """A private *module* (``epsf/_spline.py``) may be imported by its own package."""
    parent = target.rsplit(".", 1)[0]
    return target.rsplit(".", 1)[-1].startswith("_") and importer.startswith(parent + ".")


def test_private_names_stay_in_their_module():
    bad = []
    for m, edges in EDGES.items():
        aliases = {}
        for target, names, line in edges:
            last = target.rsplit(".", 1)[-1]
            if last.startswith("_") and last != "__init__" and not _private_ok(m, target):
                bad.append(f"{m}:{line} imports private module {target}")
            for n in names or ():
                if n.startswith("_") and n != "__version__":
                    bad.append(f"{m}:{line} imports {n} from {target}")
        # attribute use of another module's private name: module._name
        tree = ast.parse(MODULES[m].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _resolve(m, node).startswith("jaxphot"):
                for a in node.names:
                    if f"{_resolve(m, node)}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = a.name
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("jaxphot"):
                        aliases[a.asname or a.name.split(".")[0]] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                bad.append(f"{m}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


def _public_names(package: str) -> set[str]:
    mod = importlib.import_module(package)
    return set(getattr(mod, "__all__", ()))


def test_no_public_name_is_shadowed_by_a_submodule():
    bad = []
    for m in MODULES:
        if not _is_package(m):
            continue
        subs = {s.rsplit(".", 1)[-1] for s in MODULES if s.rsplit(".", 1)[0] == m and s != m}
        clash = _public_names(m) & subs
        if clash:
            bad.append(f"{m}: public names {sorted(clash)} are also submodules")
    assert not bad, "\n".join(bad)


def test_public_names_survive_importing_every_submodule():
    """The bug this layout removes: ``jaxphot.photometry`` turning into a module once
    something imported a submodule of that name."""
    for info in pkgutil.walk_packages(jaxphot.__path__, "jaxphot."):
        importlib.import_module(info.name)
    for name in jaxphot.__all__:
        obj = getattr(jaxphot, name)
        assert not isinstance(obj, types.ModuleType), f"jaxphot.{name} is a module"
        assert getattr(obj, "__name__", name) == name, f"jaxphot.{name} is {obj!r}"
    assert callable(jaxphot.photometry) and callable(jaxphot.crossmatch)


OLD_PATHS = {
    "fit": "fit_cutouts", "scene": "linearize", "solve": "levenberg_marquardt", "flags": "FitFlag",
    "kernels": "kernel_weights", "detector": "DetectorPRF", "simulate": "simulate_cutouts",
    "background": "estimate_background", "detection": "find_stars", "grouping": "group_stars",
    "psf_grid": "GriddedPSF", "demo": "simulate_cluster", "distributed": "batch",
    "sharding": "fit_sharded",
}


@pytest.mark.parametrize("old", sorted(SHIMS))
def test_old_module_paths_still_import(old):
    mod = importlib.import_module(f"jaxphot.{old}")
    assert callable(getattr(mod, OLD_PATHS[old]))


def test_importing_jaxphot_changes_no_global_setting(tmp_path):
    """A fresh interpreter: importing every module leaves JAX's config and os.environ alone;
    the compilation cache is switched on by the first call that compiles."""
    import os
    import subprocess
    import sys

    code = (
        "import os, jax; env = dict(os.environ); before = jax.config.jax_compilation_cache_dir\n"
        "import importlib, pkgutil, jaxphot\n"
        "[importlib.import_module(i.name) for i in pkgutil.walk_packages(jaxphot.__path__, 'jaxphot.')]\n"
        "assert jax.config.jax_compilation_cache_dir == before, 'compilation cache changed'\n"
        "assert dict(os.environ) == env, 'environment changed'\n"
        # ... and the first call that compiles switches the persistent cache on
        "import numpy as np\n"
        "jaxphot.find_stars(np.random.default_rng(0).normal(0, 1, (32, 32)), 2.5)\n"
        "assert jax.config.jax_compilation_cache_dir == os.environ['JAXPHOT_CACHE_DIR']\n"
    )
    env = {**os.environ, "JAXPHOT_CACHE_DIR": str(tmp_path / "xla")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=env)
    assert r.returncode == 0, r.stderr[-2000:]
