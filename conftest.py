"""Collect each book chapter (a MyST-markdown notebook) as an nbval notebook.

nbval only collects ``.ipynb`` files; chapters are ``book/*.md`` with a jupytext header. This hook
reads such a file with jupytext and hands the notebook to nbval, so ``pytest`` reports one item per
code cell (``book/x.md::Cell 3``). A chapter's correctness comes from its own ``assert`` cells.
It relies on nbval 0.11's ``IPyNbFile`` reading the file with ``nbformat.read`` in ``collect()``;
nbval is pinned to <0.12 for that reason.
"""
from __future__ import annotations

import os
from pathlib import Path

collect_ignore_glob = ["*.ipynb", "_build/*", "_cache/*"]


def _is_jupytext_md(path: Path) -> bool:
    if path.suffix != ".md":
        return False
    try:
        head = path.read_text(encoding="utf-8")[:2000]
    except OSError:
        return False
    return head.startswith("---") and "jupytext:" in head.split("---", 2)[1]


def pytest_collect_file(file_path: Path, parent):
    opts = parent.config.option
    if not (getattr(opts, "nbval", False) or getattr(opts, "nbval_lax", False)):
        return None
    if not _is_jupytext_md(file_path):
        return None
    import jupytext
    from nbval.plugin import IPyNbFile

    class JupytextNbFile(IPyNbFile):
        """nbval's notebook collector, fed from the jupytext .md instead of an .ipynb."""

        def collect(self):
            import nbval.plugin as plugin

            original = plugin.nbformat.read
            plugin.nbformat.read = lambda *args, **kwargs: jupytext.read(str(self.fspath))
            try:
                yield from super().collect()
            finally:
                plugin.nbformat.read = original

    return JupytextNbFile.from_parent(parent, path=file_path)


def pytest_configure(config):
    # Chapters run at small scale under test unless the caller asked otherwise.
    os.environ.setdefault("PRUNINGLAB_SCALE", "small")
    os.environ.setdefault("PRUNINGLAB_PROGRESS", "0")
