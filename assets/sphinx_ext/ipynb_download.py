"""Sphinx extension: offer each executed MyST notebook as ``.ipynb`` in the page's download menu.

sphinx-book-theme lists a page's ``.ipynb`` in its download menu when the page context has
``ipynb_source``, but it only sets that (and copies the executed notebook next to the page sources)
while drawing launch buttons for Binder/JupyterHub, which this offline book does not have. This
extension does the copy and sets ``ipynb_source`` itself, just before the theme builds the menu.
"""
from __future__ import annotations

from pathlib import Path
from shutil import copy2


def add_ipynb_download(app, pagename, templatename, context, doctree) -> None:
    if doctree is None or not str(app.env.doc2path(pagename)).endswith(".md"):
        return
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.is_file():
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    copy2(executed, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app):
    # The theme's download menu is built at priority 501; run just before it.
    app.connect("html-page-context", add_ipynb_download, priority=500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
