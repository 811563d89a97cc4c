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

try:
    import fcntl
except ImportError:  # not POSIX: no lock (run pytest with -n 0 there)
    fcntl = None

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
                items = list(super().collect())
            finally:
                plugin.nbformat.read = original
            _EXECUTED[str(self.fspath)] = (self.nb, items)
            yield from items

    return JupytextNbFile.from_parent(parent, path=file_path)


# Chapters executed by nbval in this session: path -> (notebook, its cell items).
_EXECUTED: dict = {}
_FAILED: set = set()


def pytest_runtest_logreport(report):
    if report.failed:
        _FAILED.add(report.nodeid.split("::")[0])


def pytest_sessionfinish(session, exitstatus):
    """Hand every chapter that passed completely to Jupyter Book's execution cache.

    ``jupyter-book build`` (``execute_notebooks: cache``) then reuses these executions instead of running
    each chapter a second time; a chapter whose code changed, or that failed here, is executed by the
    build as usual. Set ``PRUNINGLAB_SHARE_EXECUTION=0`` to switch this off.
    """
    if os.environ.get("PRUNINGLAB_SHARE_EXECUTION", "1") == "0" or not _EXECUTED:
        return
    try:
        from jupyter_cache import get_cache
    except ImportError:
        return
    root = Path(str(session.config.rootpath))
    (root / "_build").mkdir(exist_ok=True)
    # Under pytest-xdist every worker hands over its own chapters; the lock keeps two workers from
    # creating or writing the cache's database at the same moment.
    with open(root / "_build" / ".jupyter_cache.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        _cache_executed(get_cache(str(root / "_build" / ".jupyter_cache")), root)


def _cache_executed(cache, root: Path) -> None:
    from jupyter_cache.base import CacheBundleIn

    for path, (nb, items) in _EXECUTED.items():
        rel = os.path.relpath(path, root)
        if rel in _FAILED or not items:
            continue
        cells_run = [it for it in items if getattr(it, "test_outputs", None) is not None]
        if len(cells_run) != len(items):
            continue  # some cells were skipped or not run: do not pretend the chapter was executed
        for count, it in enumerate(items, start=1):
            it.cell.outputs = [o for o in it.test_outputs if o.get("output_type") != "execute_input"]
            it.cell.execution_count = count
            for out in it.cell.outputs:
                if "execution_count" in out:
                    out["execution_count"] = count
        try:
            cache.cache_notebook_bundle(CacheBundleIn(nb, uri=str(path)), check_validity=False, overwrite=True)
        except Exception as err:  # the cache is an optimisation; never fail the test run for it
            print(f"conftest: could not cache the execution of {rel}: {err}")


def pytest_configure(config):
    # Chapters run at small scale under test unless the caller asked otherwise.
    os.environ.setdefault("PRUNINGLAB_SCALE", "small")
    os.environ.setdefault("PRUNINGLAB_PROGRESS", "0")
    # Under pytest-xdist each worker (and each chapter kernel it starts) gets one intra-op thread, so
    # that two workers do not oversubscribe a 2-core machine.
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import sys

        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
