"""Checkpoints of the training loop: atomic writes, RNG state, and the config check on resume.

; used by :func:`pruninglab.train.train`.

A checkpoint is one ``torch.save`` file loadable with ``weights_only=True``: tensors, plain Python values,
and the run's config as a JSON string. It is written to a temporary file in the same folder, flushed
to disk (``fsync``), renamed over the old one, and the folder entry is flushed too: a crash at any
moment leaves either the old checkpoint or the new one, and no temporary file survives a failed write.
(A temporary file left by a process killed mid-write with SIGKILL is removed by
:func:`remove_orphan_temporaries` when the next run starts in that folder.)
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "RunExistsError",
    "rng_state",
    "set_rng_state",
    "config_dict",
    "config_differences",
    "check_same_config",
    "save_checkpoint",
    "load_checkpoint",
    "remove_orphan_temporaries",
]

CHECKPOINT_NAME = "checkpoint.pt"

# Config keys whose string values name files or folders: they are compared resolved (absolute, no
# symlinks), so ``data/train.txt`` and ``/home/me/data/train.txt`` are the same run.
_PATH_KEYS = ("data", "path", "dir", "file", "root", "folder")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used to resume (missing, truncated, corrupt, or from another config)."""


class RunExistsError(FileExistsError):
    """A fresh start was asked for in a folder that already holds a run (nothing was changed)."""


# --------------------------------------------------------------------------- RNG state (weights_only-safe)


def rng_state() -> dict:
    """All RNG states (torch CPU and CUDA, NumPy, Python) as tensors and plain values.

    Loadable with ``torch.load(..., weights_only=True)``; restore with :func:`set_rng_state`.
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    """Restore the RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- config comparison


def _is_path_key(key: str) -> bool:
    key = key.lower()
    return any(key == k or key.endswith("_" + k) or key.startswith(k + "_") for k in _PATH_KEYS)


def _normalise(value: Any, key: str = "") -> Any:
    if isinstance(value, os.PathLike):
        return str(Path(value).resolve())
    if isinstance(value, str) and _is_path_key(key) and value:
        p = Path(value).expanduser()
        # A dataset name such as "faces" is not a path: only resolve what exists or is absolute.
        return str(p.resolve()) if (p.is_absolute() or p.exists()) else value
    if isinstance(value, Mapping):
        return {str(k): _normalise(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v, key) for v in value]
    return value


def config_dict(config: Any) -> dict:
    """``config`` (a dataclass, a dict or None) as a JSON-ready dict with file paths resolved.

    Round-tripped through JSON, so it compares equal to what a checkpoint stored.
    """
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise ValueError(f"config: expected a dataclass or a dict, got {type(config).__name__}")
    return json.loads(json.dumps(_normalise(config), default=str))


def _flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def config_differences(stored: Mapping, new: Mapping) -> list[str]:
    """The fields in which two configs differ, each as ``"name (stored X, now Y)"``; nested keys dotted.

    Paths are compared resolved (see :func:`config_dict`).
    """
    old, cur = _flatten(_normalise(dict(stored))), _flatten(_normalise(dict(new)))
    missing = "<missing>"
    diffs = []
    for k in sorted(set(old) | set(cur)):
        a, b = old.get(k, missing), cur.get(k, missing)
        if a != b:
            diffs.append(f"{k} (stored {a!r}, now {b!r})")
    return diffs


def check_same_config(ckpt: Mapping, config: Mapping, path: Path) -> None:
    """Raise :class:`CheckpointError` naming the differing fields if ``ckpt`` was made with another config."""
    stored = ckpt.get("config_json")
    stored = json.loads(stored) if stored else {}
    diff = config_differences(stored, config)
    if diff:
        raise CheckpointError(
            f"resume: the checkpoint at {path} was made with a different config (differs in: {'; '.join(diff)}); "
            "refusing to resume. Use the same config, or another out_dir for a new run."
        )


# --------------------------------------------------------------------------- save / load


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` with ``torch.save`` atomically and durably (temporary file, fsync, rename).

    On any error the temporary file is removed and the previous checkpoint stays as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(dict(state), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def remove_orphan_temporaries(folder: str | os.PathLike, name: str = CHECKPOINT_NAME) -> list[Path]:
    """Delete temporary files of ``name`` left in ``folder`` by a process killed mid-write; return them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    orphans = sorted(folder.glob(f".{name}.*.tmp"))
    for p in orphans:
        p.unlink(missing_ok=True)
    return orphans


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`pruninglab.train.train` (``weights_only=True``).

    ``FileNotFoundError`` if there is no file; :class:`CheckpointError` if it is truncated, corrupt or not
    a training checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint: {path} is truncated or corrupt ({err.__class__.__name__}); refusing to resume from it. "
            "Delete it to start over."
        ) from err
    if not isinstance(ckpt, dict) or "step" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"checkpoint: {path} is not a pruninglab training checkpoint; refusing to resume")
    return ckpt
