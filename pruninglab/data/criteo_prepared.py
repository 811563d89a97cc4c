"""Criteo prepared once: the TSV converted to memory-mapped ``.npy`` arrays, and a reader over them.

``python -m pruninglab prepare-criteo train.txt DIR`` parses the text once (with the text reader's
line-numbered errors) and writes into ``DIR``:

* ``integers.npy`` int32 ``[n, 13]``: the raw integer features, a missing value stored as 0;
* ``categoricals.npy`` int32 ``[n, 26]``: hashed bucket ids ``1 + v mod (num_buckets - 1)``, 0 = missing;
* ``labels.npy`` uint8 ``[n]`` (train files only);
* ``meta.json``: source file (path, size, mtime), ``num_buckets``, rows, skipped lines, format version.

The conversion is atomic and resumable: arrays are written under ``*.partial`` names in chunks,
and after each chunk a ``progress.json`` records the rows and source bytes done; a rerun after a kill
continues from there, and only the final step renames the arrays and writes ``meta.json``. A
folder without ``meta.json`` is never read as prepared data.

:class:`CriteoArrays` reads the arrays with the batch format, row ranges, rank split and resume
(``batches(epoch, skip)``) of :class:`pruninglab.data.criteo.CriteoBatches`, with no text parsing:
a batch is a slice of three memory maps plus ``log`` of 13 columns.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .criteo import (
    NUM_CATEGORICAL,
    NUM_INTEGER,
    TRAIN_FIELDS,
    CriteoFormatError,
    _parse_raw,
    check_criteo_file,
    index_lines,
    preprocess_integers,
)

FORMAT_VERSION = 1
ARRAYS = ("integers", "categoricals", "labels")
_INT32 = np.iinfo(np.int32)


def _source_identity(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _shrink_npy_rows(path: Path, rows: int) -> None:
    """Rewrite the header of a C-order ``.npy`` file to ``rows`` leading rows and cut the data after them."""
    arr = np.load(path, mmap_mode="r")
    shape = (int(rows),) + tuple(arr.shape[1:])
    offset, itemsize, descr = arr.offset, arr.dtype.itemsize, np.lib.format.dtype_to_descr(arr.dtype)
    del arr
    header = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (descr, shape)
    room = offset - 10  # magic (6) + version (2) + header length (2)
    if len(header) + 1 > room:
        raise RuntimeError(f"{path}: header does not fit")  # cannot happen: fewer rows, fewer digits
    header = header.ljust(room - 1) + "\n"
    with open(path, "r+b") as fh:
        fh.seek(10)
        fh.write(header.encode("latin1"))
        fh.truncate(offset + int(np.prod(shape)) * itemsize)


def _parse_chunk(args):
    path, start_byte, first_line, n_lines, has_label, num_buckets, on_error = args
    with open(path, "rb") as fh:
        fh.seek(start_byte)
        lines = [fh.readline() for _ in range(n_lines)]
        end_byte = fh.tell()
    got = sum(1 for line in lines if line)
    if got < n_lines:
        raise CriteoFormatError(f"{path}, line {first_line + got}: the file ends early (it had more lines when "
                                "it was indexed); it was truncated or changed while being prepared")
    ints, cats, labels, skipped, first_skipped = _parse_raw(
        lines, has_label=has_label, num_buckets=num_buckets, path=path, first_lineno=first_line, on_error=on_error)
    too_big = (ints > _INT32.max) | (ints < _INT32.min)
    if too_big.any():
        r, c = np.argwhere(too_big)[0]
        raise CriteoFormatError(f"{path}: integer feature I{c + 1} = {ints[r, c]} (near line {first_line + r}) "
                                "does not fit the int32 arrays of a prepared folder")
    return ints.astype(np.int32), cats.astype(np.int32), labels, skipped, first_skipped, end_byte


def prepare_criteo(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_buckets: int = 1_000_000,
    chunk_rows: int = 1 << 18,
    workers: int = 0,
    on_error: str = "raise",
    log=None,
) -> Path:
    """Convert a Criteo TSV into memory-mapped arrays in ``out_dir`` (resumable, atomic); return ``out_dir``.

    ``num_buckets`` is fixed at preparation (the ids are hashed); a reader asking for another value is
    refused. ``workers`` processes parse chunks in parallel (0 = in this process). ``on_error="skip"``
    drops malformed lines (counted in ``meta.json``; row ``i`` of the arrays is then not line ``i + 1``
    of the file). If ``out_dir`` already holds a finished preparation of the same file and settings it is
    left as it is; one of another file or settings is refused, not overwritten.
    """
    from .._checks import nonnegative_int, one_of, positive_int

    positive_int(chunk_rows, "chunk_rows")
    nonnegative_int(workers, "workers")
    one_of(on_error, "on_error", ("raise", "skip"))
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, (int, np.integer)) or not 2 <= num_buckets <= 2**31:
        raise ValueError(f"num_buckets: expected an integer in [2, 2**31], got {num_buckets!r}")
    src = Path(src)
    index = index_lines(src)
    check_criteo_file(index)
    has_label = index.first_fields == TRAIN_FIELDS
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir: {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    settings = {"format_version": FORMAT_VERSION, "source": _source_identity(src), "num_buckets": int(num_buckets),
                "has_label": has_label, "on_error": on_error}
    meta_path, progress_path = out / "meta.json", out / "progress.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in settings} == settings:
            _say(log, f"{out}: already prepared from {src} ({meta['rows']} rows)")
            return out
        raise ValueError(f"out_dir: {out} already holds a preparation of {meta.get('source', {}).get('path')} "
                         f"with num_buckets={meta.get('num_buckets')}; choose another folder")
    n_lines = index.num_lines
    shapes = {"integers": ((n_lines, NUM_INTEGER), np.int32), "categoricals": ((n_lines, NUM_CATEGORICAL), np.int32),
              "labels": ((n_lines,), np.uint8)}
    names = [a for a in ARRAYS if has_label or a != "labels"]
    partial = {a: out / f"{a}.npy.partial" for a in names}
    state = {"rows": 0, "lines": 0, "byte": 0, "skipped": 0, "first_skipped_line": None}
    if progress_path.exists():
        prev = json.loads(progress_path.read_text())
        if prev.get("settings") == settings and all(p.exists() for p in partial.values()):
            state = prev["state"]
            _say(log, f"{out}: resuming at line {state['lines'] + 1} of {n_lines}")
    if state["lines"] == 0:
        for a in names:
            np.lib.format.open_memmap(partial[a], mode="w+", dtype=shapes[a][1], shape=shapes[a][0]).flush()
    arrays = {a: np.load(partial[a], mmap_mode="r+") for a in names}

    t0 = time.perf_counter()
    if workers:
        starts = _chunk_starts(src, index, state["lines"], state["byte"], int(chunk_rows))
        work = [(str(src), b, ln + 1, n, has_label, int(num_buckets), on_error) for ln, b, n in starts]
        import multiprocessing as mp

        # fork where there is one: the workers only parse text (no torch, no CUDA), and fork does not
        # need an importable __main__ as spawn does.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(int(workers))
        results = pool.imap(_parse_chunk, work)
    else:
        pool = None
        results = None
    try:
        while state["lines"] < n_lines:
            n = min(int(chunk_rows), n_lines - state["lines"])
            if pool is not None:
                ints, cats, labels, skipped, first_skipped, end_byte = next(results)
            else:
                ints, cats, labels, skipped, first_skipped, end_byte = _parse_chunk(
                    (str(src), state["byte"], state["lines"] + 1, n, has_label, int(num_buckets), on_error))
            r0, k = state["rows"], len(ints)
            arrays["integers"][r0:r0 + k] = ints
            arrays["categoricals"][r0:r0 + k] = cats
            if has_label:
                arrays["labels"][r0:r0 + k] = labels
            for a in arrays.values():
                a.flush()
            state = {"rows": r0 + k, "lines": state["lines"] + n, "byte": end_byte,
                     "skipped": state["skipped"] + skipped,
                     "first_skipped_line": state["first_skipped_line"] or first_skipped}
            _atomic_json(progress_path, {"settings": settings, "state": state})
            rate = (state["lines"]) / max(time.perf_counter() - t0, 1e-9)
            _say(log, f"{state['lines']}/{n_lines} lines ({rate:,.0f}/s this run)")
    finally:
        if pool is not None:
            pool.terminate()
    if state["rows"] == 0:
        raise CriteoFormatError(f"{src}: all {n_lines} lines are malformed (skipped); nothing to prepare")
    del arrays
    for a in names:
        if state["rows"] < n_lines:
            _shrink_npy_rows(partial[a], state["rows"])
        os.replace(partial[a], out / f"{a}.npy")
    meta = {**settings, "rows": state["rows"], "lines": n_lines, "skipped": state["skipped"],
            "first_skipped_line": state["first_skipped_line"], "arrays": {a: f"{a}.npy" for a in names}}
    _atomic_json(meta_path, meta)
    progress_path.unlink(missing_ok=True)
    if state["skipped"]:
        _say(log, f"skipped {state['skipped']} malformed line(s) (first: line {state['first_skipped_line']})")
    return out


def _chunk_starts(src: Path, index, first_line: int, first_byte: int, chunk_rows: int) -> list[tuple[int, int, int]]:
    """``(first line (0-based), byte offset, lines)`` of every chunk from ``first_line``, in one pass."""
    out = []
    line, byte = first_line, first_byte
    with open(src, "rb") as fh:
        fh.seek(byte)
        while line < index.num_lines:
            n = min(chunk_rows, index.num_lines - line)
            out.append((line, byte, n))
            for _ in range(n):
                fh.readline()
            byte = fh.tell()
            line += n
    return out


def _say(log, msg: str) -> None:
    if log is not None:
        log(msg)


class CriteoArrays:
    """Batches ``((integers, categoricals), labels)`` from a prepared folder, as :class:`CriteoBatches` gives them.

    Same arguments and semantics as :class:`pruninglab.data.criteo.CriteoBatches` (rows
    ``start_row .. end_row-1``; ``mode="train"``: global batches of ``batch_size x world`` consecutive
    rows, rank ``r`` takes its slice, the incomplete last one dropped; ``mode="eval"``: batches dealt
    round-robin to ranks, every row once), minus the text options. ``num_buckets`` must be the one the
    folder was prepared with. ``pin_memory`` returns pinned tensors (for asynchronous copies to a GPU).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        batch_size: int,
        *,
        start_row: int = 0,
        end_row: int | None = None,
        num_buckets: int | None = None,
        mode: str = "train",
        rank: int | None = None,
        world_size: int | None = None,
        pin_memory: bool = False,
    ):
        from .._checks import one_of, positive_int
        from ..distributed import dist_info

        positive_int(batch_size, "batch_size")
        one_of(mode, "mode", ("train", "eval"))
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            what = "an unfinished preparation (rerun prepare-criteo to finish it)" if (folder / "progress.json").exists() \
                else "no prepared Criteo arrays"
            raise FileNotFoundError(f"folder: {folder} holds {what}; make them with "
                                    f"`python -m pruninglab prepare-criteo train.txt {folder}`")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"folder: {folder} was prepared in format {self.meta.get('format_version')}, this "
                             f"version reads {FORMAT_VERSION}; prepare it again")
        if num_buckets is not None and int(num_buckets) != self.meta["num_buckets"]:
            raise ValueError(f"num_buckets: {num_buckets} differs from the {self.meta['num_buckets']} that {folder} "
                             "was prepared with (ids are hashed at preparation); prepare again or change num_buckets")
        self.folder, self.path = folder, str(folder)
        self.num_buckets = int(self.meta["num_buckets"])
        self.has_label = bool(self.meta["has_label"])
        if mode == "train" and not self.has_label:
            raise CriteoFormatError(f"{folder}: was prepared from an unlabelled test file; training needs train.txt")
        self.integers = np.load(folder / "integers.npy", mmap_mode="r")
        self.categoricals = np.load(folder / "categoricals.npy", mmap_mode="r")
        self.labels = np.load(folder / "labels.npy", mmap_mode="r") if self.has_label else None
        n_total = len(self.integers)
        if len(self.categoricals) != n_total or (self.labels is not None and len(self.labels) != n_total):
            raise ValueError(f"folder: the arrays in {folder} have different lengths; prepare it again")
        end = n_total if end_row is None else min(int(end_row), n_total)
        if not 0 <= int(start_row) < end:
            raise ValueError(f"start_row/end_row: the range [{start_row}, {end_row}) holds no rows of {folder} "
                             f"({n_total} rows)")
        r0, _, w0 = dist_info()
        self.rank = r0 if rank is None else int(rank)
        self.world_size = w0 if world_size is None else int(world_size)
        self.batch_size, self.start_row, self.end_row, self.mode = int(batch_size), int(start_row), end, mode
        self.pin_memory = bool(pin_memory)
        self.skipped = 0  # nothing is skipped at read time; see meta["skipped"] for preparation
        b, w, n_rows = self.batch_size, self.world_size, end - self.start_row
        if mode == "train":
            n_global = n_rows // (b * w)
            if n_global == 0:
                raise ValueError(f"batch_size: {b} rows x {w} process(es) is more than the {n_rows} rows in "
                                 f"{folder} [{self.start_row}, {end})")
            self._chunks = [(self.start_row + g * b * w + self.rank * b, b) for g in range(n_global)]
        else:
            starts = range(self.start_row, end, b)
            self._chunks = [(s, min(b, end - s)) for i, s in enumerate(starts) if i % w == self.rank]

    @property
    def num_rows(self) -> int:
        """Rows this rank reads per epoch."""
        return sum(n for _, n in self._chunks)

    def __len__(self) -> int:
        return len(self._chunks)

    def _batch(self, first: int, n: int):
        ints = preprocess_integers(self.integers[first:first + n])
        cats = torch.from_numpy(self.categoricals[first:first + n].astype(np.int64))
        labels = torch.from_numpy(self.labels[first:first + n].astype(np.float32)) if self.has_label else None
        if self.pin_memory:
            ints, cats = ints.pin_memory(), cats.pin_memory()
            labels = labels.pin_memory() if labels is not None else None
        return (ints, cats), labels

    def batches(self, epoch: int = 0, skip: int = 0) -> Iterator:
        """The batches of one epoch after the first ``skip`` (file order; ``epoch`` changes nothing)."""
        for first, n in self._chunks[skip:]:
            yield self._batch(first, n)

    def __iter__(self) -> Iterator:
        return self.batches(0, 0)


def open_criteo(path: str | os.PathLike, batch_size: int, **kwargs):
    """A prepared folder (with ``meta.json``) -> :class:`CriteoArrays`; a TSV file -> :class:`CriteoBatches`.

    Text-only options (``on_error``, ``num_workers``, ``has_label``) are
    ignored for prepared folders; ``pin_memory`` is ignored for text.
    """
    from .criteo import CriteoBatches

    p = Path(path)
    if p.is_dir() and (p / "meta.json").is_file() or (p.is_dir() and (p / "progress.json").exists()):
        for k in ("on_error", "num_workers", "has_label"):
            kwargs.pop(k, None)
        return CriteoArrays(p, batch_size, **kwargs)
    kwargs.pop("pin_memory", None)
    return CriteoBatches(p, batch_size, **kwargs)


__all__ = ["prepare_criteo", "CriteoArrays", "open_criteo", "FORMAT_VERSION"]
