"""Running a chapter twice with the same seed gives identical numbers on the CPU."""
import os
import re
from pathlib import Path

import jupytext
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
#: Chapters that train or sample at random: every printed number must repeat exactly.
CHAPTERS = ["intro", "sapp_theory"]


def text_outputs(chapter: str) -> list[str]:
    nb = jupytext.read(ROOT / "book" / f"{chapter}.md")
    env = {"PRUNINGLAB_DEVICE": "cpu", "PRUNINGLAB_SCALE": "small", "PRUNINGLAB_PROGRESS": "0"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "book")}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    texts = []
    for cell in nb.cells:
        # One string per cell: how the kernel splits a cell's stdout into messages varies with timing.
        stdout = "".join(o["text"] for o in cell.get("outputs", [])
                         if o.get("output_type") == "stream" and o.get("name") == "stdout")
        if stdout:
            texts.append(stdout)
        for out in cell.get("outputs", []):
            if "data" in out and "text/plain" in out["data"]:
                # Figure objects print their memory address; keep everything else.
                texts.append(re.sub(r" at 0x[0-9a-f]+", "", out["data"]["text/plain"]))
    return texts


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_is_deterministic(chapter):
    if not (ROOT / "book" / f"{chapter}.md").exists():
        pytest.skip(f"book/{chapter}.md does not exist")
    first, second = text_outputs(chapter), text_outputs(chapter)
    assert first, "the chapter printed nothing to compare"
    assert first == second
