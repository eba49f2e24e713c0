"""The README's notebook cells run as written (in a folder with a small demo dataset)."""

import re
import warnings
from pathlib import Path

import data

ROOT = Path(__file__).resolve().parents[1]


def notebook_cells() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### In a notebook", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_notebook_cells_run(tmp_path, monkeypatch, capsys):
    cells = notebook_cells()
    assert len(cells) == 2
    data.make_demo(tmp_path / "demo_data", n_train=2, n_test=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAM2_CHECKPOINT_DIR", str(tmp_path / "no_weights"))
    monkeypatch.setattr("model.download", fail_download)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scope: dict = {}
        exec(cells[0], scope)  # trains, with random weights (nothing to download here)
        assert scope["summary"]["step"] == 4 and (tmp_path / "runs/notebook/model.pt").is_file()
        scope = {}
        exec(cells[1], scope)
    lines = capsys.readouterr().out.strip().splitlines()
    steps = [line.split()[0] for line in lines[-4:]]
    assert steps == ["0", "1", "2", "3"] and scope["loss"].requires_grad


def fail_download(url, dest):
    from model import CheckpointError

    raise CheckpointError(f"offline test: {url} not fetched")


def anchors(text: str) -> set[str]:
    """The #anchors GitHub gives a Markdown file's headings (lowercase, punctuation dropped,
    spaces to hyphens, a repeated heading numbered -1, -2...)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", strip_fences(text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(f"{slug}-{n}" if n else slug)
    return found


def strip_fences(text: str) -> str:
    """The text outside fenced code blocks (a `# comment` there is no heading)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def strip_code(text: str) -> str:
    """The text outside fenced blocks and inline code spans (no links there)."""
    return re.sub(r"`[^`\n]*`", "", strip_fences(text))


def test_readme_and_docs_links_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 1, "docs/*.md missing"
    broken, linked = [], set()
    for page in pages:
        for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", strip_code(page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            linked.add(dest)
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no {path})")
            elif anchor and anchor not in anchors(dest.read_text()):
                broken.append(f"{page.name}: {target} (no heading #{anchor} in {dest.name})")
    assert not broken, "broken links:\n" + "\n".join(broken)
    unlinked = [p.name for p in pages[1:] if p.resolve() not in linked]
    assert not unlinked, f"docs pages no page links to: {unlinked}"
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= 300, f"README.md has {lines} lines: move detail to docs/ (at most 300)"
