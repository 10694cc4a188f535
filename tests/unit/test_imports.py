"""The shape of pyxlb's imports, read from the source (nothing is imported here).

- No circle: no module of pyxlb/ reaches itself through its imports, counting imports made
  inside functions too (a lazy import only moves a circle to run time).
- No private names across modules: `from x import _name` only where `_name` is a module
  (the compiled bindings built from ext/*.pyx: `pyxlb._bpf`, `pyxlb._layouts`, ...).
- Layers: each package imports only from its own layer and the ones below it
  (docs/development.md draws the graph).
"""

from __future__ import annotations

import ast
import pathlib
from typing import Dict, List, Set, Tuple


ROOT = pathlib.Path(__file__).resolve().parents[2]
PKG = ROOT / "pyxlb"


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> Dict[str, pathlib.Path]:
    mods = {module_name(p): p for p in PKG.rglob("*.py")}
    # the compiled bindings: ext/<name>.pyx builds pyxlb._<name>
    for pyx in (ROOT / "ext").glob("*.pyx"):
        mods.setdefault(f"pyxlb._{pyx.stem}", pyx)
    return mods


MODULES = all_modules()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package(importer):
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str) -> List[Tuple[str, str, int]]:
    """(imported module, name taken from it or "", line) for every import of `name`."""
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(name, node)
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in MODULES:
                    out.append((sub, "", node.lineno))
                else:
                    out.append((target, a.name, node.lineno))
    return [(m, n, line) for m, n, line in out if m == "pyxlb" or m.startswith("pyxlb.")]


def graph() -> Dict[str, Set[str]]:
    edges: Dict[str, Set[str]] = {}
    for name, path in MODULES.items():
        if path.suffix != ".py":
            continue
        targets = set()
        for mod, _, _ in imports_of(name):
            while mod not in MODULES and "." in mod:
                mod = mod.rsplit(".", 1)[0]
            # importing pkg.sub runs pkg first: a module inside pkg needs no edge for that
            if mod != name and not name.startswith(mod + "."):
                targets.add(mod)
        edges[name] = targets
    return edges


def find_cycle(edges: Dict[str, Set[str]]) -> List[str]:
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(n: str) -> List[str]:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return []

    for n in sorted(edges):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


# Lowest first. A module may import from its own layer and the layers below; a package is
# one unit (pyxlb.datapath.* all sit where pyxlb.datapath does).
LAYERS = [
    ("base", ["pyxlb.errors", "pyxlb.numbers", "pyxlb._bpf", "pyxlb._layouts", "pyxlb._maglev",
              "pyxlb.addr", "pyxlb.bpf", "pyxlb.bpffs", "pyxlb.netns", "pyxlb.netlink",
              "pyxlb.maglev", "pyxlb.chain"]),
    ("model", ["pyxlb.state", "pyxlb.plan", "pyxlb.metrics"]),
    ("datapath", ["pyxlb.datapath"]),
    ("node", ["pyxlb.node", "pyxlb.announce"]),
    ("files", ["pyxlb.config"]),
    ("services", ["pyxlb.k8s", "pyxlb.lab", "pyxlb.health"]),
    ("commands", ["pyxlb.cli", "pyxlb.__main__", "pyxlb"]),
]


def layer_of(module: str) -> int:
    best = None
    for i, (_, members) in enumerate(LAYERS):
        for m in members:
            if (module == m or module.startswith(m + ".")) and (
                    best is None or len(m) > len(best[1])):
                best = (i, m)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def test_every_module_is_in_a_layer():
    for name in MODULES:
        layer_of(name)


def test_no_module_imports_from_a_layer_above_its_own():
    up = []
    for name, targets in graph().items():
        for t in sorted(targets):
            if layer_of(t) > layer_of(name):
                up.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {t} "
                          f"({LAYERS[layer_of(t)][0]})")
    assert not up, "imports going up a layer:\n" + "\n".join(up)


def test_no_private_name_is_imported_from_another_module():
    bad = []
    for name, path in MODULES.items():
        if path.suffix != ".py":
            continue
        for mod, imported, line in imports_of(name):
            if imported.startswith("_") and not imported.startswith("__"):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {imported} from {mod}")
    assert not bad, "private names imported:\n" + "\n".join(bad)
