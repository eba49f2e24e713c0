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
