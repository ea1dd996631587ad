"""The dependency rules hold: model/ never imports UI or storage code; the CLI's --help needs no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_model_imports_no_ui():
    loaded = _modules_after("from chatglm_tui.model import load_model")
    assert "torch" in loaded
    assert not {m for m in loaded if m.split(".")[0] in {"textual", "typer", "rich"}}


def test_cli_help_is_light():
    loaded = _modules_after("import chatglm_tui.cli")
    assert "torch" not in loaded and "transformers" not in loaded


def test_cli_version_and_no_command():
    version = subprocess.run([sys.executable, "-m", "chatglm_tui", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("chatglm-tui ")
    # Without a terminal the chat cannot open: one line pointing at `chatglm ask`, exit 2 (usage).
    bare = subprocess.run([sys.executable, "-m", "chatglm_tui"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert bare.returncode == 2 and "Traceback" not in bare.stderr and bare.stderr.count("\n") == 1
    assert "needs a terminal" in bare.stderr and "chatglm ask" in bare.stderr
    mixed = subprocess.run([sys.executable, "-m", "chatglm_tui", "--demo", "sessions", "list"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert mixed.returncode == 2 and "Traceback" not in mixed.stderr


# ---------------------------------------------------------------- the import graph, read from the source

PACKAGE = Path(__file__).resolve().parents[1] / "chatglm_tui"
# Layers, highest first: a module imports from its own layer or the ones below it, never above.
LAYERS = ("cli", "server", "tui", "session", "engine", "config", "store", "model")
LEAVES = {"errors", "paths", "terminal"}  # below every layer: anyone may use them


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every chatglm_tui module `path` imports anywhere (top level, in functions, under TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from chatglm_tui.cli import options` imports the submodule
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(files)) - {name} for name, path in files.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def test_every_import_points_down_the_layers():
    rank = {layer: len(LAYERS) - index for index, layer in enumerate(LAYERS)}
    rank.update({leaf: 0 for leaf in LEAVES} | {"(root)": 0, "__main__": len(LAYERS) + 1})
    upward = [f"{module} -> {target}" for module, targets in _graph().items() for target in targets
              if rank[_layer(target)] > rank[_layer(module)]]
    assert not upward, "imports that point up the layers:\n" + "\n".join(sorted(upward))


def test_the_root_holds_only_the_package_face_errors_and_paths():
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert modules == {"__init__", "__main__", "errors", "paths"}
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert packages == set(LAYERS) | {"terminal"}


def test_the_chat_app_sees_the_engine_only_through_its_protocol():
    # The demo harness (screenshots, snapshot tests) builds an app as the CLI does, with the scripted engine.
    seen = {target for module, targets in _graph().items()
            if _layer(module) == "tui" and module != "chatglm_tui.tui.demo" for target in targets
            if _layer(target) == "engine"}
    assert seen == {"chatglm_tui.engine.protocol"}


def test_the_server_and_the_chat_app_know_nothing_of_each_other():
    crossing = [f"{module} -> {target}" for module, targets in _graph().items() for target in targets
                if {_layer(module), _layer(target)} == {"server", "tui"}]
    assert not crossing


def test_only_the_backends_use_the_kernels():
    users = {module for module, targets in _graph().items()
             if any(target.startswith("chatglm_tui.model.kernels") for target in targets)}
    assert all(module.startswith(("chatglm_tui.model.backends", "chatglm_tui.model.kernels")) for module in users), \
        users


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)
