"""Architecture boundaries (STYLE.md): what each layer may import."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "qwenvl"


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_model_imports_torch_and_config_only():
    for f in (PKG / "model").glob("*.py"):
        for mod in imports(f):
            top = mod.split(".")[0]
            assert top in ("torch", "math", "dataclasses", "__future__", "typing", "collections") or \
                mod == "qwenvl.config" or mod.startswith("qwenvl.model"), f"{f.name} imports {mod}"


def test_engine_knows_no_http_templates_or_images():
    for f in (PKG / "engine").glob("*.py"):
        for mod in imports(f):
            assert not mod.startswith(("fastapi", "uvicorn", "jinja2", "PIL", "qwenvl.processing", "qwenvl.server")), \
                f"{f.name} imports {mod}"


def test_no_transformers_at_run_time():
    for f in PKG.rglob("*.py"):
        assert not any(m.split(".")[0] == "transformers" for m in imports(f)), f"{f} imports transformers"


def _family_string_tests(tree: ast.AST) -> list[str]:
    """`x.model_type == ...` / `... != x.model_type` / `model_type in (...)` comparisons, and comparisons
    against a literal family or model_type spelling."""
    spellings = {"qwen", "qwen_vl", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        names = {s.attr if isinstance(s, ast.Attribute) else s.id if isinstance(s, ast.Name) else None for s in sides}
        literals = {s.value for s in sides if isinstance(s, ast.Constant) and isinstance(s.value, str)}
        if "model_type" in names or literals & spellings:
            found.append(f"line {node.lineno}")
    return found


def test_no_model_type_tests_outside_families():
    """Shared code asks the family (qwenvl.families); it never tests a model_type or family string."""
    for f in PKG.rglob("*.py"):
        if "families" in f.relative_to(PKG).parts:
            continue
        bad = _family_string_tests(ast.parse(f.read_text()))
        assert not bad, f"{f.relative_to(PKG)} compares model_type / family strings at {bad}: ask qwenvl.families"


def test_family_string_detector_catches_the_forms_it_forbids():
    for src in ('cfg.model_type == "qwen"', 'x if model_type != "qwen2_vl" else y', 'fam == "qwen3_vl"',
                '"qwen2_5_vl" == kind', 'cfg.model_type in ("a", "b")'):
        assert _family_string_tests(ast.parse(src)), src
    assert not _family_string_tests(ast.parse('family == QWEN2_5_VL and name == "other"'))


def _module_graph() -> dict[str, set[str]]:
    """qwenvl module -> the qwenvl modules (files) it imports, lazy imports included.
    `from pkg import sub` is an edge to pkg.sub when that is a module, else to pkg."""
    files = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG.parent).with_suffix("")
        files[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = f
    graph: dict[str, set[str]] = {}
    for name, f in files.items():
        edges = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom) and node.module in files:
                for a in node.names:
                    edges.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module)
        graph[name] = edges - {name}
    return graph


def test_no_import_cycles():
    """No two qwenvl modules import each other, directly or through others."""
    graph = _module_graph()
    state: dict[str, int] = {}  # 1 on the DFS stack, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, f"import cycles: {cycles[:5]}"
