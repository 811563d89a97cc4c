"""The training loop's CSV log, ``metrics.csv``: one row per logged step.

Columns, in order of first appearance:

``step``
    optimizer steps completed;
``train_loss``
    mean training loss over the steps since the previous row (over all torchrun processes);
``lr``
    the learning rate of the first parameter group at the row's last step;
``samples_per_s``
    training samples per second since the previous row, over all processes (the batch's first
    dimension times the number of processes, divided by the wall time of training: evaluation and
    checkpoint writing are excluded);
``data_wait_frac``
    the share of that time the loop spent waiting for the next batch (near 0: the input pipeline
    keeps up; near 1: the device waits for data);
``peak_mem_gib``
    on CUDA the peak memory allocated by tensors on the device since this call of ``train`` started
    (``torch.cuda.max_memory_allocated``, reset at the start); on a CPU the peak resident memory of the whole process
    (``resource.getrusage(...).ru_maxrss``), which includes Python and the libraries; blank where
    neither is available;
then the metrics returned by ``evaluate``, then ``wall_s`` (seconds since the start of this call).

``samples_per_s``, ``data_wait_frac``, ``peak_mem_gib`` and ``wall_s`` are measurements of the machine
(:data:`TIMING_COLUMNS`): a resumed run repeats every other column exactly, not these.
"""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["LOG_NAME", "TIMING_COLUMNS", "RunLog", "count_rows", "peak_memory_gib"]

LOG_NAME = "metrics.csv"

#: Columns that measure the machine, not the run: they differ between a run and its resumed twin.
TIMING_COLUMNS = ("samples_per_s", "data_wait_frac", "peak_mem_gib", "wall_s")


def count_rows(path: str | os.PathLike) -> int:
    """Data rows of a CSV log (0 if the file is missing or empty)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with path.open(newline="") as fh:
        return sum(1 for _ in csv.DictReader(fh))


def peak_memory_gib(dev: torch.device) -> float | None:
    """Peak memory in GiB: CUDA tensors on ``dev`` since the last reset, or the process's peak RSS on a CPU."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


class RunLog:
    """Appends rows to ``metrics.csv``; ``path=None`` logs nothing (other ranks, runs without a folder).

    ``resume_step=None`` starts a new log (the caller has checked that the folder holds no run);
    otherwise rows written after ``resume_step`` (by the interrupted run, past its checkpoint) are
    dropped, so the resumed run does not repeat them. A row with a metric not seen before extends the
    header (the file is rewritten through a temporary file and a rename).
    """

    def __init__(self, path: Path | None, resume_step: int | None = None):
        self.path = path
        self.fields: list[str] | None = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.exists() and path.stat().st_size > 0:
            rows = self._read()
            fields = list(rows[0].keys()) if rows else None
            kept = [r for r in rows if int(r["step"]) <= resume_step]
            if len(kept) != len(rows):
                self._rewrite(fields or [], kept)
            self.fields = fields

    def _read(self) -> list[dict]:
        with self.path.open(newline="") as fh:
            return list(csv.DictReader(fh))

    def _rewrite(self, fields: list[str], rows: list[dict]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def write(self, row: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        row = {k: _cell(v) for k, v in row.items()}
        if self.fields is None:
            self.fields = list(row.keys())
            new = not self.path.exists() or self.path.stat().st_size == 0
            with self.path.open("a", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerow(row)
            return
        missing = [k for k in row if k not in self.fields]
        if missing:  # a new metric appeared: rewrite the header with the extra columns
            self.fields += missing
            self._rewrite(self.fields, self._read())
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore").writerow(row)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
