"""One import direction: each module imports only modules of its own layer or a lower one
(lazy imports inside functions included), and no two modules import each other in a cycle."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "anycost"

# lowest first; the first dotted component under anycost decides a module's layer
LAYERS = [
    {"", "core"},  # "" is the package root (its lazy attribute table imports nothing at import time)
    {"cost", "curves", "routing", "losses", "records", "checkpoint"},
    {"data", "policies"},
    {"models", "deploy"},
    {"zoo"},
    {"eval", "train", "bench", "distributed", "segmentation", "predict", "traincost"},
    {"plot", "report"},
    {"demo", "reproduce", "serve"},
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modname(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every anycost module the file imports, anywhere in it, relative imports resolved."""
    me = _modname(path)
    pkg = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}  # imports for annotations only never run
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "anycost"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "anycost":
                continue
            # `from anycost.models import cnmm` may name a submodule
            out |= {f"{mod}.{a.name}" if (SRC.parent / f"{mod}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                    or (SRC.parent / f"{mod}.{a.name}".replace(".", "/")).is_dir() else mod for a in node.names}
    return out - {me}


def _layer(mod: str) -> int:
    top = mod.split(".")[1] if "." in mod else ""
    assert top in RANK, f"module anycost.{top} has no layer: add it to LAYERS in {__file__}"
    return RANK[top]


FILES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path):
    me = _modname(path)
    for mod in _imports(path):
        if mod == "anycost" and me.split(".")[1:2] != ["cli"]:
            continue  # the version string
        assert _layer(mod) <= _layer(me), f"{me} (layer {_layer(me)}) imports {mod} (layer {_layer(mod)})"


def test_no_import_cycles():
    graph = {_modname(p): {m for m in _imports(p) if m != "anycost"} for p in FILES}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in graph.get(m, ()):
            n = n if n in graph else n.rsplit(".", 1)[0]  # an attribute import: its module
            if state.get(n) == 1 and not m.startswith(n + "."):  # a package's __init__ re-exporting is fine
                raise AssertionError("import cycle: " + " -> ".join(stack + [n]))
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
