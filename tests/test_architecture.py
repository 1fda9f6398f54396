"""The architecture's rules, checked: method names live only in their own method file, the registry validates
declarations, and ``import resprune`` stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import resprune
from resprune.registry import register, unregister

ROOT = Path(__file__).resolve().parent.parent
# Files that must decide by the registry's declarations, never by a method's name.
PKG = ROOT / "resprune"
NAME_FREE = [
    ROOT / "app.py",
    PKG / "pipeline.py",
    PKG / "generate.py",
    PKG / "loading.py",
    *sorted((PKG / "adapters").glob("*.py")),
]


def _string_literals(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    }


@pytest.mark.parametrize("path", NAME_FREE, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_method_name_outside_its_own_file(path):
    names = set(resprune.list_methods())
    found = _string_literals(path) & names
    assert not found, f"{path.relative_to(ROOT)} compares or names methods {sorted(found)}: declare it in the registry"


def test_the_name_check_can_fail(tmp_path):
    """The check above sees a method name used as a literal (guards against a check that cannot fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text('"""doc mentions resprune"""\n\ndef f(m):\n    return m == "resprune"\n')
    assert _string_literals(bad) & set(resprune.list_methods()) == {"resprune"}


def test_registry_validates_declarations():
    def fn(tokens, keep, *, query=None, prior=None):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="unknown internal 'attention_map'"):
        register("test-bad", summary="x", requires=("attention_map",))(fn)
    with pytest.raises(ValueError, match="stage must be one of"):
        register("test-bad", summary="x", stage="in-llm")(fn)
    with pytest.raises(ValueError, match="declares 'cls_attention' but its function has no such keyword"):
        register("test-bad", summary="x", requires=("cls_attention",))(fn)
    with pytest.raises(ValueError, match="in_llm is required for stage='llm'"):
        register("test-bad", summary="x", stage="llm")(fn)
    with pytest.raises(ValueError, match="newlines must be a non-empty subset"):
        register("test-bad", summary="x", newlines=("sometimes",))(fn)
    with pytest.raises(ValueError, match="already registered"):
        register("resprune", summary="x")(fn)
    assert "test-bad" not in resprune.list_methods()
    register("test-ok", summary="x", optional={"prior": "cls_attention"})(fn)
    try:
        info = resprune.method_info("test-ok")
        assert info.internals() == ("cls_attention",) and info.hparams == () and info.stage == "pre-llm"
    finally:
        unregister("test-ok")


def test_declarations_of_the_shipped_methods():
    info = {m: resprune.method_info(m) for m in resprune.list_methods()}
    assert dict(info["resprune"].optional) == dict(info["residual"].optional) == {"seed_prior": "cls_attention"}
    assert info["fastv"].stage == "llm" and info["fastv"].in_llm is not None
    assert all(i.in_llm is None for m, i in info.items() if i.stage != "llm")
    assert info["resprune"].hparams[:1] == ("alpha",) and "seed_prior" not in info["resprune"].hparams
    assert isinstance(resprune.select(torch.randn(8, 4), 3).keep_idx, torch.Tensor)


def test_import_resprune_is_light():
    code = (
        "import sys, resprune; resprune.list_methods(); "
        "print(sorted(m for m in ('matplotlib', 'gradio', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
