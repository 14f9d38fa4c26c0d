"""The package's architecture, enforced: layers that depend one way, no import cycles, a light
``import tinydigits``, and one error family that the command line turns into one-line errors."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import tinydigits
from tinydigits import TinyDigitsError
from tinydigits.cli import main

PACKAGE_DIR = Path(tinydigits.__file__).parent
HEAVY = ("flask", "waitress", "onnx", "onnxruntime", "onnxscript", "optuna", "matplotlib", "playwright",
         "netron", "openvino")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imported_modules(name: str) -> set[str]:
    """Every tinydigits module that ``name`` imports, at the top or inside a function."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the submodule pkg.sub; `from pkg import name`, pkg.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target.split(".")[0] == "tinydigits"}
    return {target for target in found if target in MODULES} - {name}


GRAPH = {name: imported_modules(name) for name in MODULES}


def layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in ("deploy", "lab"):
        return parts[1]
    return "cli" if name in ("tinydigits.cli", "tinydigits.__main__") else "library"


def test_the_graph_sees_imports_inside_functions_and_relative_ones():
    # Sanity checks of the parser the other tests rely on.
    assert "tinydigits.lab.reproduce" in GRAPH["tinydigits.cli"]  # imported inside a command
    assert "tinydigits.io" in GRAPH["tinydigits.weights"]  # `from .io import ...`
    assert "tinydigits.data" in GRAPH["tinydigits.lab.publish"]  # `from .. import data`
    assert "tinydigits.deploy.fold" in GRAPH["tinydigits.lab.bench.measure"]  # three dots


@pytest.mark.parametrize("name", sorted(MODULES))
def test_layers_depend_one_way(name):
    """The library imports neither deploy nor lab; deploy never imports lab; nothing but the
    CLI's own entry point imports the CLI."""
    allowed = {"library": {"library"}, "deploy": {"library", "deploy"},
               "lab": {"library", "deploy", "lab"}, "cli": {"library", "deploy", "lab", "cli"}}[layer(name)]
    wrong = sorted(target for target in GRAPH[name] if layer(target) not in allowed)
    assert not wrong, f"{name} ({layer(name)}) imports {wrong}"


def test_there_are_no_import_cycles():
    cycles = []
    state: dict[str, str] = {}  # "active" while on the DFS stack, then "done"
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = "active"
        stack.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == "active":
                cycles.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize("module", ["tinydigits", "tinydigits.cli"])
def test_importing_loads_no_optional_dependency(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "", f"import {module} loaded {loaded.strip()}"


def all_modules() -> list[str]:
    # __main__ runs the CLI when imported.
    return [info.name for info in pkgutil.walk_packages(tinydigits.__path__, "tinydigits.")
            if info.name != "tinydigits.__main__"]


def test_every_error_the_package_defines_is_a_tinydigits_error():
    errors = []
    for name in all_modules():
        for _, cls in inspect.getmembers(importlib.import_module(name), inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == name:
                errors.append(cls)
    assert len(errors) >= 8  # DataError, WeightsError, ExportError, PreprocessError, ...
    assert all(issubclass(cls, TinyDigitsError) for cls in errors), errors


def test_no_plain_value_error_is_raised_on_purpose():
    """A ValueError raised on purpose would print as a traceback; ConfigError is the one to use."""
    offenders = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            raised = node.exc if isinstance(node, ast.Raise) else None
            target = raised.func if isinstance(raised, ast.Call) else raised  # `raise X(...)` or `raise X`
            if isinstance(target, ast.Name) and target.id in ("ValueError", "Exception"):
                offenders.append(f"{name}:{node.lineno}")
    assert not offenders


def test_the_cli_prints_tinydigits_errors_as_one_line(monkeypatch):
    def refuse(*args, **kwargs):
        raise tinydigits.errors.ConfigError("results/medium.json: not valid JSON; fix or delete it")

    monkeypatch.setattr("tinydigits.lab.table.models_table", refuse)
    result = CliRunner().invoke(main, ["table"])
    assert result.exit_code == 1
    assert result.stderr == "Error: results/medium.json: not valid JSON; fix or delete it\n"


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only TinyDigitsError is turned into a one-line message: a ValueError from a bug (here
    one raised inside the table code) propagates with its traceback."""
    def bug(*args, **kwargs):
        raise ValueError("math domain error")

    monkeypatch.setattr("tinydigits.lab.table.models_table", bug)
    result = CliRunner().invoke(main, ["table"])
    assert isinstance(result.exception, ValueError) and result.exc_info is not None
    assert "Error: math domain error" not in result.output + result.stderr
    real = subprocess.run([sys.executable, "-c", "import tinydigits.lab.table as t, tinydigits.cli as c\n"
                           "t.models_table = lambda *a, **k: 1 / 0\nc.main(['table'])"],
                          capture_output=True, text=True)
    assert real.returncode == 1 and "Traceback" in real.stderr and "ZeroDivisionError" in real.stderr


def test_a_missing_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` fail
    with pytest.raises(tinydigits.errors.MissingExtraError,
                       match=r"^tuning needs optuna .*: pip install 'tinydigits\[tune\]'$"):
        tinydigits.errors.require("optuna", "tune", "tuning")
    result = CliRunner().invoke(main, ["tune", "--trials", "1"])
    assert result.exit_code == 1 and "pip install 'tinydigits[tune]'" in result.stderr


def test_provenance_names_the_version_and_this_checkout():
    from tinydigits.runtime import provenance

    found = provenance()
    assert found["package_version"] == tinydigits.__version__ != "unknown"
    head = subprocess.run(["git", "-C", str(PACKAGE_DIR), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    if head:  # a checkout: the commit, marked dirty while the package's files differ from it
        assert found["git_commit"].removesuffix("-dirty") == head
    else:
        assert found["git_commit"] == "unknown"
