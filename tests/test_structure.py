"""The package's imports run one way: no cycles between modules, and no import from a stage up to
a stage above it. The stages are declared once, as the import-linter layers contract in
pyproject.toml ([tool.importlinter]; `make lint` runs lint-imports on it); this test reads that
contract and checks it with `ast` alone, so it also runs where import-linter is not installed.

Every import counts: at module level, inside functions, under `if TYPE_CHECKING:`, relative or
absolute. `from a.b import c` is an import of the module a.b.c when there is one, else of a.b
(as grimp, import-linter's graph, counts them).
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "lens_pipeline"
CYCLES_SHOWN = 8  # per group of modules that import each other: the shortest cycles, one line each


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    path: str  # the importer's file, relative to the repository
    line: int

    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Stages:
    """The layers contract: layers[0] is the top; each layer is (its modules, independent or not)."""

    layers: list[tuple[list[str], bool]]
    ignored: list[tuple[re.Pattern[str], re.Pattern[str]]]  # (importer, imported) patterns

    def of(self, module: str) -> int | None:
        """The layer index of a module (0 = top), None for the package's front or a module in no layer."""
        for index, (names, _) in enumerate(self.layers):
            if any(module == name or module.startswith(name + ".") for name in names):
                return index
        return None

    def member(self, module: str) -> str:
        """The layer member (e.g. lens_pipeline.store) a module belongs to."""
        index = self.of(module)
        assert index is not None
        return next(name for name in self.layers[index][0] if module == name or module.startswith(name + "."))

    def label(self, module: str) -> str:
        index = self.of(module)
        return "front" if module == PACKAGE else "no stage" if index is None else self.member(module).removeprefix(PACKAGE + ".")

    def is_ignored(self, edge: Import) -> bool:
        return any(a.fullmatch(edge.importer) and b.fullmatch(edge.imported) for a, b in self.ignored)

    def describe(self) -> str:
        def layer(names: list[str], independent: bool) -> str:
            return (" | " if independent else " : ").join(name.removeprefix(PACKAGE + ".") for name in names)

        return "front > " + " > ".join(layer(*entry) for entry in self.layers)


def _expression(text: str) -> re.Pattern[str]:
    """An import-linter module expression: `*` is one name, `**` one or more."""
    parts = [r"[^.]+(\.[^.]+)*" if part == "**" else "[^.]+" if part == "*" else re.escape(part) for part in text.split(".")]
    return re.compile(r"\.".join(parts))


def read_stages(pyproject: Path = REPO / "pyproject.toml") -> Stages:
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["importlinter"]
    assert config["root_package"] == PACKAGE
    [contract] = [c for c in config["contracts"] if c["type"] == "layers"]
    assert contract["containers"] == [PACKAGE]
    layers = []
    for raw in contract["layers"]:
        independent = ":" not in raw
        names = [name.strip().strip("()") for name in re.split(r"[|:]", raw)]
        layers.append(([f"{PACKAGE}.{name}" for name in names], independent))
    ignored = []
    for raw in contract.get("ignore_imports", []):
        importer, imported = (part.strip() for part in raw.split("->"))
        ignored.append((_expression(importer), _expression(imported)))
    return Stages(layers, ignored)


def package_modules(root: Path = REPO) -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is its __init__.py)."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: from its package, up level - 1 packages
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    return [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names]


def package_imports(root: Path = REPO) -> tuple[dict[str, Path], list[Import]]:
    """Every import of a package module by a package module (imports of a module by itself left out)."""
    modules = package_modules(root)
    edges = set()
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _imported(module, path.name == "__init__.py", node, modules):
                # `import lens_pipeline.a.b` of a name that is no module: the nearest module above it
                while name not in modules and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in modules and name != module:
                    edges.add(Import(module, name, path.relative_to(root).as_posix(), node.lineno))
    return modules, sorted(edges, key=lambda e: (e.importer, e.imported, e.line))


def import_cycles(edges: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = defaultdict(set)
    for edge in edges:
        graph[edge.importer].add(edge.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def upward_imports(stages: Stages, edges: list[Import]) -> list[Import]:
    """Imports from a stage up to a higher one, into the front, or between independent siblings."""
    wrong = []
    for edge in edges:
        if stages.is_ignored(edge):
            continue
        if edge.imported == PACKAGE:  # the front sits above every stage
            wrong.append(edge)
            continue
        low, high = stages.of(edge.importer), stages.of(edge.imported)
        if low is None or high is None:
            continue  # the front imports anything; a module in no stage fails test_every_module_has_a_stage
        if high < low:
            wrong.append(edge)
        elif high == low and stages.layers[low][1] and stages.member(edge.importer) != stages.member(edge.imported):
            wrong.append(edge)  # independent siblings (`|`) import nothing of each other
    return wrong


def _shortest_path(graph: dict[str, set[str]], start: str, goal: str) -> list[str]:
    """Breadth first, neighbours in name order: the same path every run."""
    came_from = {start: start}
    frontier = [start]
    while frontier and goal not in came_from:
        frontier = [came_from.setdefault(succ, node) and succ for node in frontier for succ in sorted(graph[node])
                    if succ not in came_from]
    path = [goal]
    while path[-1] != start:
        path.append(came_from[path[-1]])
    return path[::-1]


def cycles_message(edges: list[Import]) -> str:
    """Each group of modules that import each other, and through every import inside it the
    shortest cycle that import is part of: `a -> b (a.py:3) -> a (b.py:9)`."""
    graph: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], str] = {}
    for edge in edges:
        graph[edge.importer].add(edge.imported)
        where.setdefault((edge.importer, edge.imported), edge.where())
    lines = []
    for component in import_cycles(edges):
        members = set(component)
        inner = {node: graph[node] & members for node in component}
        cycles = set()
        for importer in component:
            for imported in inner[importer]:
                cycle = [importer] + _shortest_path(inner, imported, importer)
                turn = cycle.index(min(cycle[:-1]))  # the same cycle, whichever import found it
                cycles.add(tuple(cycle[turn:-1] + cycle[:turn + 1]))
        lines.append(f"  {len(component)} modules import each other: {', '.join(component)}")
        shortest = sorted(cycles, key=lambda c: (len(c), c))
        for cycle in shortest[:CYCLES_SHOWN]:
            steps = [f"{b} ({where[a, b]})" for a, b in zip(cycle, cycle[1:])]
            lines.append(f"    {cycle[0]} -> " + " -> ".join(steps))
        if len(shortest) > CYCLES_SHOWN:
            lines.append(f"    ... and {len(shortest) - CYCLES_SHOWN} longer cycles through these modules")
    return "\n".join(lines)


def upward_message(stages: Stages, edges: list[Import]) -> str:
    return "\n".join(f"  {e.importer} [{stages.label(e.importer)}] -> {e.imported} [{stages.label(e.imported)}]  ({e.where()})"
                     for e in upward_imports(stages, edges))


def test_every_module_has_a_stage() -> None:
    stages = read_stages()
    modules = package_modules()
    missing = sorted(m for m in modules if m != PACKAGE and stages.of(m) is None)
    assert not missing, f"modules in no stage (add them to [tool.importlinter] layers in pyproject.toml): {missing}"
    declared = [name for names, _ in stages.layers for name in names]
    assert len(declared) == len(set(declared)), f"a module in two stages: {declared}"
    absent = [name for name in declared if name not in modules]
    assert not absent, f"stages naming no module of the package: {absent}"


def test_no_import_cycles() -> None:
    _, edges = package_imports()
    message = cycles_message(edges)
    assert not message, ("import cycles between modules (move what both need into a module below both):\n" + message)


def test_no_import_runs_up_a_stage() -> None:
    stages = read_stages()
    _, edges = package_imports()
    message = upward_message(stages, edges)
    assert not message, (f"imports from a lower stage up to a higher one (stages, top first: {stages.describe()}):\n"
                         + message)


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The scan itself: nested, relative, TYPE_CHECKING and `from package import module` imports,
    a cycle, an upward import, an independent sibling's import and an ignored one are all found."""
    files = {
        "__init__.py": "def open():\n    from lens_pipeline.top import run\n",
        "top/__init__.py": "from . import run\n",
        "top/run.py": "from ..low import a\n",
        "low/__init__.py": "",
        "low/a.py": "import lens_pipeline.low.b as b\n",
        "low/b.py": "def f():\n    from lens_pipeline.low import a\n",
        "low/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lens_pipeline.top.run import x\n",
        "other/__init__.py": "from lens_pipeline.low.a import thing\n",
        "other/d.py": "from lens_pipeline import __version__\n",
        "other/e.py": "from lens_pipeline.top import run\n",
    }
    for name, text in files.items():
        (tmp_path / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / name).write_text(text)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.importlinter]\nroot_package = "lens_pipeline"\n[[tool.importlinter.contracts]]\nname = "t"\n'
        'type = "layers"\ncontainers = ["lens_pipeline"]\nlayers = ["top", "low | other"]\n'
        'ignore_imports = ["lens_pipeline.other.* -> lens_pipeline.top.**"]\n')
    stages = read_stages(tmp_path / "pyproject.toml")
    _, edges = package_imports(tmp_path)
    assert {(e.importer, e.imported) for e in edges} == {
        ("lens_pipeline", "lens_pipeline.top.run"), ("lens_pipeline.top", "lens_pipeline.top.run"),
        ("lens_pipeline.top.run", "lens_pipeline.low.a"), ("lens_pipeline.low.a", "lens_pipeline.low.b"),
        ("lens_pipeline.low.b", "lens_pipeline.low.a"), ("lens_pipeline.low.c", "lens_pipeline.top.run"),
        ("lens_pipeline.other", "lens_pipeline.low.a"), ("lens_pipeline.other.d", "lens_pipeline"),
        ("lens_pipeline.other.e", "lens_pipeline.top.run"),
    }
    assert import_cycles(edges) == [["lens_pipeline.low.a", "lens_pipeline.low.b"]]
    assert {(e.importer, e.imported) for e in upward_imports(stages, edges)} == {
        ("lens_pipeline.low.c", "lens_pipeline.top.run"),  # up a stage
        ("lens_pipeline.other", "lens_pipeline.low.a"),  # across independent siblings
        ("lens_pipeline.other.d", "lens_pipeline"),  # into the front
    }  # other.e -> top: ignored by the contract
