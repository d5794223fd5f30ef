"""Every project module imports on its own, and the project's modules import each other without a cycle."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "models", "scripts")


def module_names() -> dict[str, Path]:
    """Dotted name -> file of every project module (the top-level scripts and the three packages)."""
    files = sorted(ROOT.glob("*.py")) + sorted(f for p in PACKAGES for f in (ROOT / p).rglob("*.py"))
    names = {}
    for f in files:
        parts = f.relative_to(ROOT).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return names


MODULES = module_names()


def imported(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (a function-level import counts too: it
    still ties the two modules together)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports) as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for other in sorted(graph[node]):
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            if other not in state and (cycle := visit(other)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_relative_and_package_imports_resolve_to_project_modules():
    graph = {name: imported(name, path) for name, path in MODULES.items()}
    assert "data.masks" in graph["models.training.flags"]  # `from data.masks import acc_type`
    assert "models.training.steps" in graph["train_teacher"]


def test_the_project_modules_import_each_other_without_a_cycle():
    graph = {name: imported(name, path) for name, path in MODULES.items()}
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)


# The concrete network families: only the networks' room (models/nets/) and the tests may name them; every
# other module reaches a network through the registry (models/nets/registry.py). The SFT network is the method's
# own object and may be used where SFT is trained or distilled from, but not by checkpoint code.
FAMILY_MODULES = {"models.nets.dccnn", "models.nets.cascaded_unet"}
# The public code's checkpoints hold DC-CNNs: converting them names that family by definition.
NAMES_A_FAMILY_BY_DEFINITION = {"models.checkpoints.public"}


def test_no_module_outside_the_networks_room_names_a_network_family():
    offenders = {name: sorted(imported(name, path) & FAMILY_MODULES) for name, path in MODULES.items()
                 if not name.startswith("models.nets") and name not in NAMES_A_FAMILY_BY_DEFINITION}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_checkpoint_code_names_no_network():
    """Its size bounds and the reconstructor of a composite network come from each Family."""
    for name, path in MODULES.items():
        if not name.startswith("models.checkpoints") or name in NAMES_A_FAMILY_BY_DEFINITION:
            continue
        assert not imported(name, path) & (FAMILY_MODULES | {"models.nets.sft"}), name
        source = path.read_text()
        assert not any(word in source for word in ("SFTNet", "DCCNN", "CascadedUNet", '"sft"', '"dccnn"')), name
