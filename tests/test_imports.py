"""The house's import rules: the packages never import a root script but model.py, and no
module imports itself back through others (no cycles)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("plumbing", "layouts")


def local_modules() -> dict[str, Path]:
    mods = {p.stem: p for p in ROOT.glob("*.py")}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).glob("*.py"):
            mods[pkg if p.stem == "__init__" else f"{pkg}.{p.stem}"] = p
    return mods


def imports_of(path: Path, mods: dict[str, Path], package: str | None) -> set[str]:
    """The local modules `path` imports, at any depth of its code (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .x import y
                base = f"{package}.{base}" if base else package
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        found |= {n for n in names if n in mods}
    return found


def graph() -> dict[str, set[str]]:
    mods = local_modules()
    return {
        m: imports_of(p, mods, m.split(".")[0] if m.split(".")[0] in PACKAGES else None) - {m}
        for m, p in mods.items()
    }


def test_packages_import_no_root_script_but_model():
    bad = {
        m: sorted(d for d in deps if "." not in d and d not in PACKAGES and d != "model")
        for m, deps in graph().items()
        if m.split(".")[0] in PACKAGES
    }
    assert not {m: d for m, d in bad.items() if d}, bad


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d) :] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])


def test_the_checker_sees_a_cycle(tmp_path, monkeypatch):
    # the rule must be able to fail: a two-module cycle is reported
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    import a\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    try:
        test_no_import_cycles()
    except AssertionError as e:
        assert "a -> b -> a" in str(e) or "b -> a -> b" in str(e)
    else:
        raise AssertionError("a cycle went unseen")
