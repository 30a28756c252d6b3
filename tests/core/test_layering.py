"""The house rule, checked on the source: imports run one way, from the leaves to the command
line, with no cycle, and the framework front ends share nothing with PyTorch but the
framework-free modules. Read from the files (no import runs), so it holds in every environment."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "diagonalwise"

#: Each module's layer; a module may import only from its own layer or lower ones.
LAYERS = [
    {"blocking", "algorithm_choice", "shapes", "algorithm_names", "framework_bench",
     "source_commit", "reference", "layout", "call", "atomic_files", "timing", "errors"},
    {"kernels"},
    {"algorithms"},
    {"functional"},
    {"modules"},
    {"darknet", "caffe"},  # model files read into PyTorch modules and written back
    {"conversion"},
    {"tuning"},
    {"bench"},
    {"cli", "framework_cli", "entry", "__main__"},
]
FRAMEWORK_FREE = {"blocking", "algorithm_choice", "shapes", "algorithm_names", "atomic_files",
                  "framework_bench", "source_commit"}
FRONT_ENDS = {"jax", "flax", "keras", "mxnet"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The package's own modules that ``path`` imports (relative or absolute), as dotted names."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("diagonalwise"):
                target = node.module.removeprefix("diagonalwise").lstrip(".")
            else:
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}".strip(".")
                is_module = (PACKAGE / Path(*candidate.split("."))).with_suffix(".py").exists() \
                    or (PACKAGE / Path(*candidate.split(".")) / "__init__.py").exists()
                found.add(candidate if is_module else target)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("diagonalwise.") for a in node.names
                      if a.name.startswith("diagonalwise.")}
    return {f for f in found if f}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")
            if module_name(p)}  # the package __init__ resolves names lazily


def layer(name: str) -> int:
    top = name.split(".")[0]
    return next(i for i, members in enumerate(LAYERS) if top in members)


def test_every_module_has_a_layer_or_is_a_front_end():
    for name in graph():
        top = name.split(".")[0]
        assert top in FRONT_ENDS or any(top in members for members in LAYERS), name


def test_imports_run_from_the_leaves_to_the_cli():
    for name, targets in graph().items():
        if name.split(".")[0] in FRONT_ENDS:
            continue
        for target in targets:
            if target.split(".")[0] in FRONT_ENDS:  # the command line runs their benches
                assert layer(name) == len(LAYERS) - 1, f"{name} imports the front end {target}"
                continue
            assert layer(target) <= layer(name), f"{name} imports {target}, a higher layer"


def test_the_framework_command_imports_no_pytorch():
    """``bench --framework jax`` must run where PyTorch is not installed."""
    for name in ("framework_cli", "entry"):
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        names = {alias.name for node in top_level if isinstance(node, ast.Import)
                 for alias in node.names}
        names |= {node.module or "" for node in top_level if isinstance(node, ast.ImportFrom)}
        assert not {n for n in names if n.split(".")[0] == "torch" or n in ("cli", ".cli")}, name


def test_front_ends_use_only_framework_free_modules():
    for name, targets in graph().items():
        if name.split(".")[0] in FRONT_ENDS:
            for target in targets:
                assert target.split(".")[0] in FRAMEWORK_FREE | FRONT_ENDS, \
                    f"{name} imports {target}, which needs PyTorch"


def test_no_import_cycle():
    edges = graph()
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in edges.get(name, ()):
            assert state.get(target) != "open", " -> ".join(path + [name, target])
            if target not in state:
                visit(target, path + [name])
        state[name] = "done"

    for name in edges:
        if name not in state:
            visit(name, [])


def test_framework_free_modules_import_no_framework():
    frameworks = {"torch", "jax", "flax", "tensorflow", "keras", "mxnet", "triton"}
    for name in FRAMEWORK_FREE:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        assert not imported & frameworks, f"{name} imports {imported & frameworks}"
