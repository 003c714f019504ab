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
