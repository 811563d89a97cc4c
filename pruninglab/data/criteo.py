"""The Criteo Kaggle display-advertising TSV: a streaming reader and a writer of synthetic files.

Defined in book/sapp_criteo.md.

Format (``train.txt``; ``test.txt`` lacks the label): one row per line, tab-separated, no header,
``\\n`` line endings; 40 fields = label (0/1), ``I1``-``I13`` integers (may be negative, e.g. -1),
``C1``-``C26`` categorical values written as 8 lower-case hexadecimal characters. A missing value
is an *empty* field, so rows contain consecutive and trailing tabs: we split on ``\\t`` only.

Preprocessing (the usual one, as in TorchRec; the paper does not spell its own out):

* integers: missing -> 0, then ``log(x + 3)``; values below -2 (where the log would be undefined)
  are clamped to -2, i.e. mapped to ``log 1 = 0``;
* categoricals: ``v = int(hex, 16)``, hashed into a per-column table of ``num_buckets`` rows as
  ``1 + v mod (num_buckets - 1)``; index 0 of every table is reserved for a missing value.

The reader never holds the file in memory: one pass over the bytes records the offset of every
``INDEX_EVERY``-th line, after which any batch can be read by seeking to it. That makes resuming
mid-epoch O(1), lets DataLoader workers read disjoint batches, and lets ``torchrun`` ranks read
disjoint parts of each global batch.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

NUM_INTEGER = 13
NUM_CATEGORICAL = 26
NUM_FEATURES = NUM_INTEGER + NUM_CATEGORICAL  # 39
TRAIN_FIELDS = 1 + NUM_FEATURES  # 40: label first
TEST_FIELDS = NUM_FEATURES  # 39: test.txt has no label
#: Byte offsets of every INDEX_EVERY-th line are kept (45.8M lines -> 11k offsets).
INDEX_EVERY = 4096

_INT_RE = r"(?:-?[0-9]+)?"
_HEX_RE = r"[0-9a-fA-F]{0,8}"
_FEATURES_RE = "\t".join([_INT_RE] * NUM_INTEGER + [_HEX_RE] * NUM_CATEGORICAL)
_LINE_RE = {
    True: re.compile(r"[01]\t" + _FEATURES_RE),
    False: re.compile(_FEATURES_RE),
}


class CriteoFormatError(ValueError):
    """A line of a Criteo file does not have the expected format (names the file and the line)."""


# --------------------------------------------------------------------------- parsing


def _diagnose(line: str, has_label: bool, path: str, lineno: int, unterminated: bool = False) -> CriteoFormatError:
    """A precise error for a line that failed the fast whole-line check (slow path, errors only)."""
    err = _diagnose_fields(line, has_label, path, lineno)
    if unterminated:
        return CriteoFormatError(f"{err}; it is the last line and has no line ending: the file looks truncated")
    return err


def _diagnose_fields(line: str, has_label: bool, path: str, lineno: int) -> CriteoFormatError:
    fields = line.split("\t")
    expected = TRAIN_FIELDS if has_label else TEST_FIELDS
    where = f"{path}, line {lineno}"
    if len(fields) != expected:
        kind = "train rows (label + 13 integers + 26 categoricals)" if has_label else "test rows (13 integers + 26 categoricals)"
        return CriteoFormatError(
            f"{where}: has {len(fields)} tab-separated fields, expected {expected} for {kind}; "
            "missing values must be empty fields, not dropped"
        )
    off = 0
    if has_label:
        if fields[0] not in ("0", "1"):
            return CriteoFormatError(f"{where}: label (field 1) is {fields[0]!r}, expected 0 or 1")
        off = 1
    for j in range(NUM_INTEGER):
        s = fields[off + j]
        if s and not re.fullmatch(r"-?[0-9]+", s):
            return CriteoFormatError(
                f"{where}: integer feature I{j + 1} (field {off + j + 1}) is {s!r}, expected an integer or empty"
            )
    for j in range(NUM_CATEGORICAL):
        s = fields[off + NUM_INTEGER + j]
        if s and not re.fullmatch(r"[0-9a-fA-F]{1,8}", s):
            return CriteoFormatError(
                f"{where}: categorical feature C{j + 1} (field {off + NUM_INTEGER + j + 1}) is {s!r}, "
                "expected up to 8 hexadecimal characters or empty"
            )
    return CriteoFormatError(f"{where}: malformed line {line[:80]!r}")


def _parse_raw(
    lines: Sequence[bytes | str],
    *,
    has_label: bool,
    num_buckets: int,
    path: str,
    first_lineno: int,
    on_error: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int | None]:
    """Validated raw values: ``(integers int64 [n, 13] (missing -> 0), hashed ids int64 [n, 26], labels, skipped,
    line number of the first skipped line)``."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error: expected 'raise' or 'skip', got {on_error!r}")
    if isinstance(num_buckets, bool) or int(num_buckets) != num_buckets or num_buckets < 2:
        raise ValueError(f"num_buckets: expected an integer >= 2 (index 0 is reserved for missing), got {num_buckets!r}")
    matcher = _LINE_RE[bool(has_label)].fullmatch
    off = 1 if has_label else 0
    rows: list[list[str]] = []
    skipped = 0
    first_skipped = None
    for i, raw in enumerate(lines):
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        # Only the line ending is removed: trailing tabs are empty (missing) fields.
        terminated = line.endswith("\n")
        if terminated:
            line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
        if matcher(line) is None:
            if on_error == "skip":
                skipped += 1
                if first_skipped is None:
                    first_skipped = first_lineno + i
                continue
            raise _diagnose(line, has_label, path, first_lineno + i,
                            unterminated=not terminated and i == len(lines) - 1 and isinstance(raw, bytes))
        rows.append(line.split("\t"))
    n = len(rows)
    ints = np.zeros((n, NUM_INTEGER), dtype=np.int64)
    cats = np.full((n, NUM_CATEGORICAL), -1, dtype=np.int64)
    labels = np.zeros(n, dtype=np.float32)
    # Column-wise conversion: the fields were validated above, so int() cannot fail here.
    for j in range(NUM_INTEGER):
        ints[:, j] = [int(r[off + j]) if r[off + j] else 0 for r in rows]
    for j in range(NUM_CATEGORICAL):
        k = off + NUM_INTEGER + j
        cats[:, j] = [int(r[k], 16) if r[k] else -1 for r in rows]
    if has_label:
        labels[:] = [r[0] == "1" for r in rows]
    cats = np.where(cats < 0, 0, 1 + cats % (int(num_buckets) - 1))
    return ints, cats, (labels if has_label else None), skipped, first_skipped


def preprocess_integers(raw: np.ndarray) -> torch.Tensor:
    """Raw integer features -> float32 ``log(max(x, -2) + 3)`` (missing was stored as 0 -> ``log 3``).
    """
    return torch.from_numpy(np.log(np.maximum(np.asarray(raw, dtype=np.float64), -2.0) + 3.0).astype(np.float32))


def parse_lines(
    lines: Sequence[bytes | str],
    *,
    has_label: bool = True,
    num_buckets: int = 1000,
    path: str = "<lines>",
    first_lineno: int = 1,
    on_error: str = "raise",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
    """Parse and preprocess Criteo lines into ``(integers, categoricals, labels, n_skipped)``.

    Defined in book/sapp_criteo.md.

    ``integers`` is float32 ``[n, 13]`` (``log(max(x, -2) + 3)``, missing -> ``log 3``),
    ``categoricals`` int64 ``[n, 26]`` (hashed bucket indices, 0 = missing), ``labels`` float32
    ``[n]`` (None when ``has_label`` is False). A malformed line raises :class:`CriteoFormatError`
    naming ``path`` and its line number (``first_lineno`` is the number of ``lines[0]``), or with
    ``on_error="skip"`` is dropped and counted in ``n_skipped``.
    """
    ints, cats, labels, skipped, _ = _parse_raw(lines, has_label=has_label, num_buckets=num_buckets, path=path,
                                                first_lineno=first_lineno, on_error=on_error)
    return (preprocess_integers(ints), torch.from_numpy(cats),
            (torch.from_numpy(labels) if labels is not None else None), skipped)


def file_hint(path: str | os.PathLike) -> str:
    """A hint about what a file that is not a Criteo TSV is instead ('' when nothing stands out).

    Recognises an empty file, gzip/bzip2/xz/zip archives and
    comma-separated text.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return ""
    if not head:
        return "the file is empty"
    for magic, kind, tool in ((b"\x1f\x8b", "gzip", "gunzip"), (b"BZh", "bzip2", "bunzip2"),
                              (b"\xfd7zXZ", "xz", "unxz"), (b"PK\x03\x04", "zip", "unzip")):
        if head.startswith(magic):
            return f"the file is {kind}-compressed; decompress it first (e.g. `{tool} {Path(path).name}`)"
    first = head.split(b"\n", 1)[0]
    if b"\t" not in first and b"," in first:
        return "the first line has commas and no tabs: Criteo files are tab-separated"
    if b"\t" not in first and b" " in first:
        return "the first line has spaces and no tabs: Criteo files are tab-separated"
    return ""


# --------------------------------------------------------------------------- line index


@dataclass(frozen=True)
class LineIndex:
    """Number of lines of a file and the byte offset of every ``every``-th line."""

    path: str
    num_lines: int
    every: int
    offsets: tuple[int, ...]
    first_fields: int  # tab-separated fields on the first line (40 train, 39 test)


_INDEX_CACHE: dict[tuple, LineIndex] = {}


def index_lines(path: str | os.PathLike, every: int = INDEX_EVERY) -> LineIndex:
    """Scan a file once in binary blocks; count lines and record where every ``every``-th line starts.

    A last line without a final newline counts as a line.
    Results are cached per (path, size, mtime).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: no Criteo TSV file at {p} (make one with `python -m pruninglab make-criteo FILE --rows N`)")
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, every)
    if key in _INDEX_CACHE:
        return _INDEX_CACHE[key]
    offsets = [0]
    n_newlines = 0
    pos = 0
    last_byte = None
    first_line = b""
    with p.open("rb") as fh:
        first_line = fh.readline()
        fh.seek(0)
        while True:
            buf = fh.read(1 << 24)
            if not buf:
                break
            nl = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == 10)
            if nl.size:
                # After the k-th newline of the file (1-based count c) starts line c.
                counts = n_newlines + 1 + np.arange(nl.size)
                sel = counts % every == 0
                offsets.extend((pos + nl[sel] + 1).tolist())
                n_newlines += int(nl.size)
            pos += len(buf)
            last_byte = buf[-1]
    num_lines = n_newlines + (1 if last_byte is not None and last_byte != 10 else 0)
    offsets = [o for i, o in enumerate(offsets) if i * every < num_lines]
    idx = LineIndex(str(p), num_lines, every, tuple(offsets), first_line.rstrip(b"\r\n").count(b"\t") + 1)
    _INDEX_CACHE[key] = idx
    return idx


def _read_lines(fh, index: LineIndex, first: int, count: int) -> list[bytes]:
    """Lines ``first .. first+count-1`` (0-based) of an open binary file, via the index."""
    block = first // index.every
    fh.seek(index.offsets[block])
    for _ in range(first - block * index.every):
        fh.readline()
    out = []
    for _ in range(count):
        line = fh.readline()
        if not line:
            break
        out.append(line)
    return out


# --------------------------------------------------------------------------- batches


class _Chunks(torch.utils.data.IterableDataset):
    """Reads a list of (first_line, n_lines) chunks; DataLoader worker w takes chunks w, w+k, ..."""

    def __init__(self, index: LineIndex, chunks: list[tuple[int, int]], has_label: bool, num_buckets: int,
                 on_error: str):
        super().__init__()
        self.index, self.chunks = index, chunks
        self.has_label, self.num_buckets, self.on_error = has_label, num_buckets, on_error

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        with open(self.index.path, "rb") as fh:
            # Round-robin assignment matches the order in which DataLoader collects from workers.
            for first, n in self.chunks[wid::nw]:
                lines = _read_lines(fh, self.index, first, n)
                if len(lines) < n:
                    raise CriteoFormatError(
                        f"{self.index.path}, line {first + len(lines) + 1}: the file ends early (it had "
                        f"{self.index.num_lines} lines when it was indexed); it was truncated or changed while "
                        "being read"
                    )
                ints, cats, labels, skipped = parse_lines(
                    lines, has_label=self.has_label, num_buckets=self.num_buckets, path=self.index.path,
                    first_lineno=first + 1, on_error=self.on_error,
                )
                if len(ints) == 0:
                    raise CriteoFormatError(
                        f"{self.index.path}, lines {first + 1}-{first + n}: all {n} lines of this batch are malformed "
                        "(on_error='skip' drops them, but an empty batch cannot be trained on); "
                        f"is this a Criteo {'train' if self.has_label else 'test'} file?"
                    )
                yield (ints, cats), labels, skipped


def check_criteo_file(index: LineIndex) -> None:
    """Refuse an empty, compressed or wrongly delimited file with a message that says which it is.
    """
    if index.num_lines == 0:
        raise CriteoFormatError(f"{index.path}: the file is empty; expected Criteo TSV rows "
                                f"({TRAIN_FIELDS} tab-separated fields per line)")
    if index.first_fields not in (TRAIN_FIELDS, TEST_FIELDS):
        hint = file_hint(index.path)
        raise CriteoFormatError(
            f"{index.path}, line 1: has {index.first_fields} tab-separated fields; a Criteo file has "
            f"{TRAIN_FIELDS} (train, with label) or {TEST_FIELDS} (test, no label)" + (f"; {hint}" if hint else "")
        )


class CriteoBatches:
    """Batches ``((integers, categoricals), labels)`` streamed from a Criteo TSV, for :func:`pruninglab.train.train`.

    Defined in book/sapp_criteo.md.

    Reads rows ``start_row .. end_row-1`` (0-based line numbers; ``end_row=None`` = to the end).
    ``mode="train"``: each *global* batch is ``batch_size x world`` consecutive rows, and rank r takes
    its r-th slice of ``batch_size`` rows, so the union over ranks is exactly the batch a single
    process with ``batch_size x world`` sees; an incomplete last global batch is dropped.
    ``mode="eval"``: batches of ``batch_size`` rows (the last may be short) dealt round-robin to
    ranks, every row read exactly once over all ranks. Rows are read in file order (Criteo is
    chronological). ``num_workers`` DataLoader processes parse batches in parallel without changing
    their order. ``on_error="skip"`` drops malformed lines (so a batch can be short) and counts them
    in ``skipped``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        batch_size: int,
        *,
        start_row: int = 0,
        end_row: int | None = None,
        num_buckets: int = 1000,
        has_label: bool | None = None,
        mode: str = "train",
        on_error: str = "raise",
        num_workers: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        from ..distributed import dist_info

        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if mode not in ("train", "eval"):
            raise ValueError(f"mode: expected 'train' or 'eval', got {mode!r}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error: expected 'raise' or 'skip', got {on_error!r}")
        if isinstance(num_workers, bool) or int(num_workers) != num_workers or num_workers < 0:
            raise ValueError(f"num_workers: expected a non-negative integer, got {num_workers!r}")
        self.index = index_lines(path)
        self.path = self.index.path
        check_criteo_file(self.index)
        if has_label is None:
            has_label = self.index.first_fields == TRAIN_FIELDS
        if mode == "train" and not has_label:
            raise CriteoFormatError(
                f"{self.path}: lines have {TEST_FIELDS} fields, no label: this is the unlabelled test.txt of the "
                f"Criteo release; training needs train.txt ({TRAIN_FIELDS} fields, label first). "
                "Read test files with mode='eval'."
            )
        end = self.index.num_lines if end_row is None else min(int(end_row), self.index.num_lines)
        if not 0 <= int(start_row) < end:
            raise ValueError(
                f"start_row/end_row: the range [{start_row}, {end_row}) holds no rows of {self.path} "
                f"({self.index.num_lines} lines)"
            )
        r0, _, w0 = dist_info()
        self.rank = r0 if rank is None else int(rank)
        self.world_size = w0 if world_size is None else int(world_size)
        self.batch_size, self.start_row, self.end_row = int(batch_size), int(start_row), end
        self.num_buckets, self.has_label, self.mode = int(num_buckets), bool(has_label), mode
        self.on_error, self.num_workers = on_error, int(num_workers)
        self.skipped = 0  # malformed lines dropped so far (on_error="skip"), over all epochs
        n_rows = end - self.start_row
        b, w = self.batch_size, self.world_size
        if mode == "train":
            n_global = n_rows // (b * w)
            if n_global == 0:
                raise ValueError(
                    f"batch_size: {b} rows x {w} process(es) is more than the {n_rows} rows in {self.path} "
                    f"[{self.start_row}, {end})"
                )
            self._chunks = [(self.start_row + g * b * w + self.rank * b, b) for g in range(n_global)]
        else:
            starts = range(self.start_row, end, b)
            self._chunks = [(s, min(b, end - s)) for i, s in enumerate(starts) if i % w == self.rank]

    @property
    def num_rows(self) -> int:
        """Rows this rank reads per epoch (before skipping malformed lines)."""
        return sum(n for _, n in self._chunks)

    def __len__(self) -> int:
        return len(self._chunks)

    def batches(self, epoch: int = 0, skip: int = 0) -> Iterator:
        """The batches of one epoch, starting after the first ``skip`` (read no bytes of those).

        The order does not depend on ``epoch``: the file is read in its chronological order.
        """
        ds = _Chunks(self.index, self._chunks[skip:], self.has_label, self.num_buckets, self.on_error)
        if self.num_workers > 0:
            it = iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.num_workers))
        else:
            it = iter(ds)
        skipped_now = 0
        for features, labels, skipped in it:
            skipped_now += int(skipped)
            yield features, labels
        self.skipped += skipped_now
        if skipped_now:
            import warnings

            warnings.warn(f"criteo: skipped {skipped_now} malformed line(s) of {self.path} in epoch {epoch} "
                          "(on_error='skip'); their batches were that many rows short", stacklevel=2)

    def __iter__(self) -> Iterator:
        return self.batches(0, 0)


# --------------------------------------------------------------------------- synthetic files


def write_synthetic_criteo(
    path: str | os.PathLike, rows: int, *, seed: int = 0, with_label: bool = True, chunk_rows: int = 20000
) -> Path:
    """Write ``rows`` synthetic rows in exactly the Criteo Kaggle TSV format; return the path.

    Defined in book/sapp_criteo.md.

    Seeded and streamed in chunks (constant memory). Labels are Bernoulli with a base rate near
    0.25 and depend on a few features through a logistic model, so a model can learn something;
    integers are mostly small counts, sometimes large, ``-1``/``-2`` in column I2, 10-40% empty per
    column; categoricals come from a small per-column vocabulary of 32-bit values (so they repeat),
    written as 8 lower-case hex characters, some empty (C26 often, giving trailing tabs).
    ``with_label=False`` writes the 39-field ``test.txt`` variant. ``\\n`` line endings, no header.
    """
    if isinstance(rows, bool) or int(rows) != rows or rows < 1:
        raise ValueError(f"rows: expected a positive integer, got {rows!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    path = Path(path)
    if path.exists() and path.is_dir():
        raise ValueError(f"path: {path} is a directory; expected a file name such as train.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Per-column structure, drawn once from the seed.
    int_missing = rng.uniform(0.10, 0.40, NUM_INTEGER)
    int_logmean = rng.uniform(0.0, 3.0, NUM_INTEGER)
    cat_vocab_size = np.exp(rng.uniform(np.log(3), np.log(1000), NUM_CATEGORICAL)).astype(int)
    cat_vocab = [rng.choice(2**32, size=int(v), replace=False) for v in cat_vocab_size]
    cat_missing = np.where(rng.random(NUM_CATEGORICAL) < 0.3, rng.uniform(0.1, 0.4, NUM_CATEGORICAL),
                           rng.uniform(0.0, 0.05, NUM_CATEGORICAL))
    cat_missing[-1] = 0.35  # C26 is often empty in the real file: lines then end in a tab
    int_effect = np.zeros(NUM_INTEGER)
    int_effect[[0, 4, 9]] = [0.5, -0.4, 0.3]
    cat_effect = {j: rng.normal(0.0, 0.8, int(cat_vocab_size[j])) for j in (2, 7, 15)}
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="\n", encoding="ascii") as fh:
        done = 0
        while done < rows:
            n = min(int(chunk_rows), int(rows) - done)
            counts = np.floor(rng.lognormal(int_logmean, 1.0, (n, NUM_INTEGER))).astype(np.int64)
            large = rng.random((n, NUM_INTEGER)) < 0.02
            counts[large] *= rng.integers(100, 5000, int(large.sum()))
            negative = rng.random(n) < 0.08
            counts[negative, 1] = rng.choice([-1, -2], int(negative.sum()), p=[0.8, 0.2])
            int_empty = rng.random((n, NUM_INTEGER)) < int_missing
            # Zipf-like category choice: low indices are much more frequent.
            cat_idx = np.floor(cat_vocab_size * rng.random((n, NUM_CATEGORICAL)) ** 3).astype(np.int64)
            cat_empty = rng.random((n, NUM_CATEGORICAL)) < cat_missing
            logit = -1.25 + (np.log(np.maximum(np.where(int_empty, 0, counts), -2) + 3) - 1.5) @ int_effect
            for j, eff in cat_effect.items():
                logit += np.where(cat_empty[:, j], 0.0, eff[cat_idx[:, j]])
            labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
            lines = []
            for i in range(n):
                fields = [str(labels[i])] if with_label else []
                fields += ["" if int_empty[i, j] else str(counts[i, j]) for j in range(NUM_INTEGER)]
                fields += ["" if cat_empty[i, j] else f"{cat_vocab[j][cat_idx[i, j]]:08x}" for j in range(NUM_CATEGORICAL)]
                lines.append("\t".join(fields))
            fh.write("\n".join(lines) + "\n")
            done += n
    os.replace(tmp, path)
    return path


def make_criteo_main(argv: list[str] | None = None) -> int:
    """``python -m pruninglab make-criteo FILE --rows N [--seed S] [--test-format]``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pruninglab make-criteo",
        description="Write synthetic rows in exactly the Criteo Kaggle TSV format (train.txt: 40 fields; "
        "--test-format: test.txt, 39 fields).",
    )
    parser.add_argument("file", help="output file, e.g. data/criteo/train.txt")
    parser.add_argument("--rows", type=int, required=True, help="number of rows to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--test-format", action="store_true", help="write the 39-field test.txt variant (no label)")
    args = parser.parse_args(argv)
    path = write_synthetic_criteo(args.file, args.rows, seed=args.seed, with_label=not args.test_format)
    print(f"wrote {args.rows} synthetic Criteo rows ({'39' if args.test_format else '40'} fields) to {path} "
          f"({path.stat().st_size:,} bytes)")
    return 0


__all__ = [
    "NUM_INTEGER", "NUM_CATEGORICAL", "NUM_FEATURES", "TRAIN_FIELDS", "TEST_FIELDS",
    "CriteoFormatError", "parse_lines", "preprocess_integers", "file_hint", "check_criteo_file", "index_lines",
    "LineIndex", "CriteoBatches",
    "write_synthetic_criteo", "make_criteo_main",
]

