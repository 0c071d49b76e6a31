"""The package's shape: no import cycles (function-level imports included), layers importing downward
only, and a wheel that carries its configs and works from any directory without the source tree."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ecmctl"
# cli -> pipeline -> launch -> engine -> losses / evaluation -> ecm -> dataset -> core
LAYERS = {"core": 0, "dataset": 1, "ecm": 2, "losses": 3, "evaluation": 3, "engine": 4, "launch": 5,
          "pipeline": 6, "cli": 7}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every ecmctl module `path` imports, at any depth of the file (function-level imports included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for a in node.names:  # `from pkg import submodule` imports the submodule
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_sees_function_level_imports():
    g = graph()
    assert "ecmctl.pipeline.evaluate" in g["ecmctl.cli.app"]  # imported inside a command function
    assert "ecmctl.engine.compat" in g["ecmctl.engine.runner"]


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_import_downward_only():
    bad = []
    for name, deps in graph().items():
        layer = name.split(".")[1] if name.count(".") else None
        if layer not in LAYERS:
            continue
        for dep in deps:
            dep_layer = dep.split(".")[1] if dep.count(".") else None
            if dep_layer in LAYERS and dep_layer != layer and LAYERS[dep_layer] >= LAYERS[layer]:
                bad.append(f"{name} -> {dep}")
    assert bad == []


def test_launchers_import_no_stage():
    g = graph()
    launch = {n: d for n, d in g.items() if n.startswith("ecmctl.launch")}
    assert launch and not any(dep.startswith(("ecmctl.pipeline", "ecmctl.cli")) for d in launch.values() for dep in d)


def test_every_subpackage_says_what_lives_there():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, init


@pytest.mark.slow
def test_wheel_ships_its_configs_and_runs_from_any_directory(tmp_path):
    """A non-editable install: the wheel unpacked onto PYTHONPATH, run from an empty directory."""
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:  # a copy of the tree: building writes build/ and *.egg-info next to the sources
        if (ROOT / f).is_file() and not (ROOT / f).is_symlink():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(src)], check=True, capture_output=True)
    (wheel,) = wheels.glob("ecmctl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n for n in names if n.startswith("ecmctl/conf/") and n.endswith(".yaml")}
    in_tree = {str(p.relative_to(ROOT)) for p in (PACKAGE / "conf").rglob("*.yaml")}
    assert shipped == in_tree and "ecmctl/conf/config.yaml" in shipped
    assert "ecmctl/dataset/lvis_v1_categories.tsv" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ECMCTL_CONF"}
    env["PYTHONPATH"] = str(site)
    probe = subprocess.run([sys.executable, "-c", "import ecmctl.core.config as c; print(c.conf_dir())"], cwd=empty,
                           env=env, capture_output=True, text=True, check=True)
    assert Path(probe.stdout.strip()).is_relative_to(site)
    res = subprocess.run([sys.executable, "-m", "ecmctl", "train", "--cfg", "detector=atss_tiny"], cwd=empty,
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "name: atss_tiny" in res.stdout and "mmdet_config: atss/atss_r50_fpn_1x_coco.py" in res.stdout
    assert list(empty.iterdir()) == []  # --cfg writes nothing
