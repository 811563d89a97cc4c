"""The chapters are collected by nbval through conftest.py: one item per code cell, and a failing
``assert`` in a chapter fails ``pytest``."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A chapter

```{code-cell} ipython3
x = 1 + 1
```

```{code-cell} ipython3
assert x == %s
```
"""


@pytest.fixture
def chapter_dir():
    # Inside the project so the root conftest.py applies; outside tests/ and book/ so a normal run never sees it.
    d = ROOT / "_chapter_check"
    d.mkdir(exist_ok=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("expected, outcome", [("2", "2 passed"), ("3", "1 failed, 1 passed")])
def test_chapter_asserts_decide_the_outcome(chapter_dir, expected, outcome):
    path = chapter_dir / f"chapter_{expected}.md"
    path.write_text(HEADER % expected)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:randomly", str(path.relative_to(ROOT))],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert outcome in proc.stdout, proc.stdout[-2000:]
    assert (proc.returncode == 0) == (expected == "2")
    if expected == "3":
        assert "Cell 1" in proc.stdout  # failures name the chapter cell


def test_every_chapter_in_the_toc_exists_and_is_a_notebook():
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    for f in files:
        path = ROOT / f"{f}.md"
        assert path.exists(), f
        assert "jupytext:" in path.read_text().split("---")[1], f
    tracked = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode == 0:
        assert tracked.stdout.strip() == "", "notebooks must not be committed"
