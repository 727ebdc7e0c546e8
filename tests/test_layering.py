"""The core's modules import one another without cycles (issue 8: layering).

Every intra-package import counts: at the top of a module, inside functions and under
``TYPE_CHECKING``. ``from . import x`` is the module ``x`` when there is one, else the
package's ``__init__``; importing ``a.b.c`` also runs the package ``a.b``'s ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path


CORE = Path(__file__).resolve().parents[1] / "core" / "seqweave"
ROOT = "seqweave"

#: The layout (lowest first): a module imports only from its own layer or below. Every module has
#: a layer (a test says which are missing); docs/architecture.md describes the layers.
LAYERS: dict[str, int] = {
    **dict.fromkeys(["errors", "progress", "_version"], 1),
    **dict.fromkeys(["fast"], 2),
    **dict.fromkeys(["masks", "cache"], 3),
    **dict.fromkeys(["layers", "outputs", "protocols", "transformer"], 4),
    **dict.fromkeys(["weights"], 5),
    **dict.fromkeys(["config", "training", "training.config"], 6),
    **dict.fromkeys(["registry"], 7),
    **dict.fromkeys(["checkpoint", "checkpoint.formats", "checkpoint.jsonio", "checkpoint.report",
                     "checkpoint.hf_config", "checkpoint.load", "checkpoint.save",
                     "checkpoint.transaction", "hub", "assembly"], 8),
    **dict.fromkeys(["composition"], 9),
    **dict.fromkeys(["generation", "generation.options", "generation.processors", "generation.step",
                     "generation.search", "generation.outputs"], 10),
    **dict.fromkeys(["composer", "modelconfig"], 11),
    **dict.fromkeys(["summary", "tokenizer", "pipeline", "cli", "demo", "configdoc", "modules", "testing",
                     "testing.checks", "testing.helpers", "__main__", "",
                     "training.data", "training.loop", "training.metrics"], 12),
    **dict.fromkeys(["training.distributed"], 11),  # process group, DDP/FSDP2, DCP: needs only the composer
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in CORE.rglob("*.py"):
        parts = path.relative_to(CORE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join((ROOT, *parts))] = path
    return out


def _targets(name: str, path: Path, node: ast.AST, modules: dict[str, Path]) -> list[str]:
    """The core modules one import statement loads, its parent packages (but the root) included."""
    found: list[str] = []
    if isinstance(node, ast.Import):
        found = [a.name for a in node.names if a.name == ROOT or a.name.startswith(ROOT + ".")]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{node.module}" if node.module else package
        elif node.module and (node.module == ROOT or node.module.startswith(ROOT + ".")):
            base = node.module
        else:
            return []
        subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
        if node.module or not subs or len(subs) < len(node.names):
            found.append(base)
        found += subs
    out = []
    for target in found:
        parts = target.split(".")
        # Parents run their __init__ first, unless they hold the importing module: then they are
        # already being imported (a package's __init__ importing its own submodules is no cycle).
        out += [p for p in (".".join(parts[:i]) for i in range(2, len(parts))) if not name.startswith(p + ".")]
        out.append(target)
    return [t for t in dict.fromkeys(out) if t in modules and t != name]


def import_graph() -> dict[str, set[str]]:
    """Module -> the core modules it imports anywhere in its body."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        graph[name] = {t for node in ast.walk(tree) for t in _targets(name, path, node, modules)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "seqweave.checkpoint.load" in graph["seqweave.composer"]  # from .checkpoint import load
    assert "seqweave.checkpoint" in graph["seqweave.composer"]  # its package's __init__ runs first
    assert "seqweave.summary" in graph["seqweave.cli"]  # an import inside a function
    assert "seqweave.composer" in graph["seqweave.summary"]  # an import under TYPE_CHECKING
    assert "seqweave" in graph["seqweave.cli"]  # import seqweave as sw
    assert "seqweave._version" in graph["seqweave"]


def test_find_cycle_finds_and_prints_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_a_package_importing_its_own_submodules_is_no_cycle():
    graph = import_graph()
    assert "seqweave.generation.search" in graph["seqweave.generation"]
    assert "seqweave.generation" not in graph["seqweave.generation.search"]
    assert "seqweave.checkpoint" in graph["seqweave.hub"]  # another package's __init__ still counts


def test_no_import_cycles_in_the_core():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _layer(module: str) -> int | None:
    return LAYERS.get(module.removeprefix(ROOT).removeprefix("."))


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, targets in import_graph().items()
        for b in sorted(targets)
        if None not in (_layer(a), _layer(b)) and _layer(b) > _layer(a)
    ]
    assert not upward, "\n".join(upward)


def test_config_imports_no_registry():
    assert not {"seqweave.registry", "seqweave.composition"} & import_graph()["seqweave.config"]


def test_no_module_imports_the_version_from_the_package():
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level and not node.module:
                assert "__version__" not in [a.name for a in node.names], path


def test_every_core_module_has_a_layer():
    unplaced = [m for m in _modules() if _layer(m) is None]
    assert not unplaced, f"add these to LAYERS (the layer they belong to): {unplaced}"
