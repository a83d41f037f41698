"""The layout of batchd, kept honest with nothing but :mod:`ast` over ``src/batchd/**/*.py``.

**No import cycle** among batchd's modules. An edge is an import that runs when the module is
imported: ``import batchd.x`` (an edge to ``batchd.x``) and ``from batchd.x import y`` (an edge
to ``batchd.x.y`` when that is a module, else to ``batchd.x``), relative imports resolved,
anywhere in the module's top level, its ``if``/``try``/``with`` blocks and class bodies. Not
edges: imports under ``if TYPE_CHECKING:`` (they never run); imports inside a function body,
which are the sanctioned way to defer a heavy import until a command needs it (``batchd run``
imports the engine when it runs, ``batchd serve`` the API) and so may point back up the graph;
and the parent packages that Python initialises first (``import batchd.a.b`` runs
``batchd/a/__init__.py``: a package that imports its own submodules is no cycle).

**Layering**: :data:`LAYERS` names, for a package, the packages it must never import, at any
level: function bodies and ``TYPE_CHECKING`` blocks count here. A rule for a package that does
not exist matches nothing. :data:`KNOWN_VIOLATIONS` lists the imports that break a rule today,
each to be removed (the test fails on one that no longer occurs).

**The exception tree** drawn in the docstring of :mod:`batchd.errors` names every exception
class of batchd, under its base class, with its module when it is not ``batchd.errors``.

Each rule is shown to fail on a synthetic case (the ``test_*_finds_*`` tests), so that a
passing test means the rule held, not that it looked at nothing.
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "batchd"

LAYERS: dict[str, tuple[str, ...]] = {
    "batchd.engine": ("batchd.api", "batchd.cli", "batchd.service", "batchd.dashboard"),
    "batchd.providers": ("batchd.engine", "batchd.api", "batchd.cli", "batchd.service"),
    "batchd.store": (
        "batchd.engine",
        "batchd.api",
        "batchd.cli",
        "batchd.service",
        "batchd.providers",
    ),
    "batchd.storage": (
        "batchd.engine",
        "batchd.api",
        "batchd.cli",
        "batchd.service",
        "batchd.providers",
    ),
    "batchd.tabular": (
        "batchd.engine",
        "batchd.api",
        "batchd.store",
        "batchd.storage",
        "batchd.service",
    ),
    "batchd.core": (
        "batchd.engine",
        "batchd.api",
        "batchd.cli",
        "batchd.service",
        "batchd.dashboard",
        "batchd.webhooks",
    ),
    "batchd.service": ("batchd.api", "batchd.cli", "batchd.dashboard"),
    "batchd.webhooks": (
        "batchd.api",
        "batchd.cli",
        "batchd.service",
        "batchd.engine",
        "batchd.dashboard",
    ),
    "batchd.dashboard": ("batchd.api", "batchd.cli", "batchd.engine"),
}
"""Package → the packages it must never import."""

KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()
"""(importing module, imported module) pairs that break :data:`LAYERS` today."""


# -- the import graph --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Import:
    target: str
    """The batchd module imported."""
    line: int
    deferred: bool
    """Inside a function body."""
    type_only: bool
    """Under ``if TYPE_CHECKING:``."""


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(path, package.parent): path for path in sorted(package.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(
    body: Iterable[ast.stmt], deferred: bool = False, type_only: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import statement, with whether it is in a function body or a TYPE_CHECKING block."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, deferred, type_only
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _import_nodes(node.body, True, type_only)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.body, deferred, True)
            yield from _import_nodes(node.orelse, deferred, type_only)
        else:  # if, try, with, for, while, match, class: their blocks run where they stand
            for field in ("body", "orelse", "finalbody"):
                yield from _import_nodes(getattr(node, field, None) or (), deferred, type_only)
            for block in [*getattr(node, "handlers", ()), *getattr(node, "cases", ())]:
                yield from _import_nodes(block.body, deferred, type_only)


def _resolve(name: str, modules: Iterable[str]) -> str | None:
    """``name`` if it is a known module, else its longest prefix that is one."""
    known = set(modules)
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return None


def imports_of(module: str, source: str, modules: Iterable[str]) -> list[Import]:
    """The batchd modules that ``module`` (whose text is ``source``) imports."""
    known = set(modules)
    is_package = any(m.startswith(module + ".") for m in known)
    found: list[Import] = []
    tree = ast.parse(source)
    for node, deferred, type_only in _import_nodes(tree.body):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.append(submodule if submodule in known else base)
        for target in targets:
            resolved = _resolve(target, known) if target.startswith("batchd") else None
            if resolved is not None and resolved != module:
                found.append(Import(resolved, node.lineno, deferred, type_only))
    return found


def import_graph(modules: Mapping[str, Path]) -> dict[str, list[Import]]:
    return {name: imports_of(name, path.read_text(), modules) for name, path in modules.items()}


def eager_edges(graph: Mapping[str, list[Import]]) -> dict[str, set[str]]:
    """The imports that run when a module is imported (see the module docstring)."""
    return {
        name: {i.target for i in imports if not i.deferred and not i.type_only}
        for name, imports in graph.items()
    }


def find_cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in edges.get(node, ()):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return [_cycle_in(component, edges) for component in components]


def _cycle_in(component: set[str], edges: Mapping[str, Iterable[str]]) -> list[str]:
    """A shortest cycle through the component's first node, staying in the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for succ in sorted(edges.get(node, ())):
                if succ == start:
                    return [*paths[node], start]
                if succ in component and succ not in paths:
                    paths[succ] = [*paths[node], succ]
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle in {component}")


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_violations(
    graph: Mapping[str, list[Import]], layers: Mapping[str, tuple[str, ...]] = LAYERS
) -> dict[tuple[str, str], str]:
    """(importer, imported) → a description, for each import a rule forbids."""
    found: dict[tuple[str, str], str] = {}
    for name, imports in graph.items():
        for package, forbidden in layers.items():
            if not within(name, package):
                continue
            for imp in imports:
                for banned in forbidden:
                    if within(imp.target, banned):
                        found[(name, imp.target)] = (
                            f"{name} (line {imp.line}) imports {imp.target}: "
                            f"{package} must not import {banned}"
                        )
    return found


# -- the layout --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    return import_graph(source_modules())


def test_no_import_cycle(graph: dict[str, list[Import]]) -> None:
    cycles = find_cycles(eager_edges(graph))
    assert not cycles, "import cycles (move the shared part to a module both can import):\n" + (
        "\n".join(" -> ".join(cycle) for cycle in cycles)
    )


def test_layers(graph: dict[str, list[Import]]) -> None:
    found = layer_violations(graph)
    new = {pair: text for pair, text in found.items() if pair not in KNOWN_VIOLATIONS}
    assert not new, "layering broken:\n" + "\n".join(sorted(new.values()))
    fixed = KNOWN_VIOLATIONS - set(found)
    assert not fixed, f"fixed, remove from KNOWN_VIOLATIONS: {sorted(fixed)}"


def test_the_graph_sees_the_package(graph: dict[str, list[Import]]) -> None:
    assert "batchd.cli.main" in graph
    assert "batchd.config" in {i.target for i in graph["batchd.cli.serve"]}
    edges = eager_edges(graph)
    assert "batchd.cli.client" in edges["batchd.cli.main"]  # `from batchd.cli import client`
    assert not any(within(m, "batchd.engine") for m in edges["batchd.cli.run"])  # deferred


# -- each rule can fail ------------------------------------------------------------------------

SYNTHETIC = {
    "batchd": "",
    "batchd.pkg": "from batchd.pkg import a\n",
    "batchd.pkg.a": "from . import b\nfrom batchd.other import thing\n",
    "batchd.pkg.b": (
        "from typing import TYPE_CHECKING\n"
        "import batchd.pkg.a\n"
        "if TYPE_CHECKING:\n"
        "    from batchd.late import Late\n"
        "else:\n"
        "    import batchd.other\n"
        "def f():\n"
        "    from batchd.late import Late\n"
        "class C:\n"
        "    from ..other import name\n"
    ),
    "batchd.other": "",
    "batchd.late": "import batchd.pkg.b\n",
}


def synthetic_graph() -> dict[str, list[Import]]:
    return {name: imports_of(name, text, SYNTHETIC) for name, text in SYNTHETIC.items()}


def test_the_import_reader_finds_each_kind() -> None:
    graph = synthetic_graph()
    assert eager_edges(graph) == {
        "batchd": set(),
        "batchd.pkg": {"batchd.pkg.a"},
        "batchd.pkg.a": {"batchd.pkg.b", "batchd.other"},
        "batchd.pkg.b": {"batchd.pkg.a", "batchd.other"},
        "batchd.other": set(),
        "batchd.late": {"batchd.pkg.b"},
    }
    late = [i for i in graph["batchd.pkg.b"] if i.target == "batchd.late"]
    assert [(i.deferred, i.type_only) for i in late] == [(False, True), (True, False)]


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycles(eager_edges(synthetic_graph())) == [
        ["batchd.pkg.a", "batchd.pkg.b", "batchd.pkg.a"]
    ]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"a"}}) == [["a", "a"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    two = find_cycles({"a": {"b"}, "b": {"a"}, "x": {"y"}, "y": {"x"}})
    assert sorted(two) == [["a", "b", "a"], ["x", "y", "x"]]


@pytest.mark.parametrize(
    ("package", "banned"), [(p, b) for p, banned in LAYERS.items() for b in banned]
)
def test_each_layer_rule_finds_its_violation(package: str, banned: str) -> None:
    importer, imported = f"{package}.mod", f"{banned}.mod"
    graph = {
        importer: [Import(imported, 3, deferred=True, type_only=False)],
        imported: [],
        f"{banned}x.mod": [Import(f"{package}x.mod", 1, deferred=False, type_only=False)],
    }
    assert set(layer_violations(graph)) == {(importer, imported)}


# -- the exception tree ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorClass:
    name: str
    base: str
    module: str


def exception_classes(modules: Mapping[str, Path]) -> list[ErrorClass]:
    """Every class of the package that derives (by name) from a built-in exception."""
    bases: dict[str, tuple[list[str], str]] = {}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                names = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
                bases[node.name] = (names, name)

    def is_exception(cls: str, seen: frozenset[str] = frozenset()) -> bool:
        builtin = getattr(builtins, cls, None)
        if isinstance(builtin, type) and issubclass(builtin, BaseException):
            return True
        if cls in seen or cls not in bases:
            return False
        return any(is_exception(b, seen | {cls}) for b in bases[cls][0])

    return [
        ErrorClass(cls, next(b for b in names if is_exception(b)), module)
        for cls, (names, module) in sorted(bases.items())
        if is_exception(cls)
    ]


_BRANCH = re.compile(r"[├└]── ")


def tree_entries(docstring: str) -> dict[str, tuple[str | None, str]]:
    """name → (its parent in the drawn tree, the text beside it), from the indented blocks of
    ``docstring``: a root at the block's left edge, a child after ``├──`` or ``└──``, and lines
    with neither continuing the text of the entry above."""
    entries: dict[str, tuple[str | None, str]] = {}
    parents: list[tuple[int, str]] = []  # (column of the name, name)
    last: str | None = None
    for line in docstring.splitlines():
        if not line.startswith("    "):  # prose: a tree is indented
            parents, last = [], None
            continue
        body = line[4:]
        branch = _BRANCH.search(body)
        if branch is not None:
            column = branch.end()
        elif body[:1] not in (" ", "│"):
            column = 0
        else:
            if last is not None:
                parent, text = entries[last]
                entries[last] = (parent, f"{text} {body.strip(' │')}".strip())
            continue
        name, _, text = body[column:].partition(" ")
        while parents and parents[-1][0] >= column:
            parents.pop()
        entries[name] = (parents[-1][1] if parents else None, text.strip())
        parents.append((column, name))
        last = name
    return entries


def test_the_error_tree_names_every_exception_class() -> None:
    docstring = ast.get_docstring(ast.parse((PACKAGE / "errors.py").read_text())) or ""
    entries = tree_entries(docstring)
    problems = []
    for cls in exception_classes(source_modules()):
        if cls.name not in entries:
            problems.append(f"{cls.name} ({cls.module}) is not in the tree")
            continue
        parent, text = entries[cls.name]
        builtin = hasattr(builtins, cls.base)  # a root, or drawn under the built-in
        if parent != cls.base and not (builtin and parent is None):
            problems.append(f"{cls.name} is drawn under {parent}, it derives from {cls.base}")
        where = cls.module.removeprefix("batchd.")
        if cls.module != "batchd.errors" and f"({where})" not in text:
            problems.append(f"{cls.name}: the tree does not name its module ({where})")
    assert not problems, "the tree in batchd.errors' docstring:\n" + "\n".join(problems)


def test_the_tree_reader_finds_misplaced_classes() -> None:
    entries = tree_entries(
        "Tree:\n\n"
        "    BatchdError\n"
        "    ├── APIError                      HTTP\n"
        "    │   └── NotFound                  404\n"
        "    │                                 (api.x)\n"
        "    └── Other\n"
    )
    assert entries == {
        "BatchdError": (None, ""),
        "APIError": ("BatchdError", "HTTP"),
        "NotFound": ("APIError", "404 (api.x)"),
        "Other": ("BatchdError", ""),
    }
