"""Device choice, seeding, the scale switch and the results store.

Defined in book/intro.md.

Everything that runs an experiment goes through this module, so a notebook cell and
``python -m pruninglab <experiment>`` pick the same device, the same scale and write
results to the same place with the same provenance.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

SCALES = ("small", "full")

#: The project root when pruninglab runs from a source checkout (editable install), else None.
_PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT: Path | None = (
    _PACKAGE_DIR.parent if (_PACKAGE_DIR.parent / "pyproject.toml").exists() else None
)


def device(prefer: str | None = None) -> torch.device:
    """The device to run on: ``cuda`` if available, else ``cpu``.

    Defined in book/intro.md.

    ``prefer`` (or the environment variable ``PRUNINGLAB_DEVICE``) overrides the choice,
    e.g. ``"cpu"`` or ``"cuda:1"``; ``"auto"`` means the default order.

    Apple's ``mps`` is never picked automatically: it has no float64, which the curvature and
    convex-geometry code needs, so an automatic choice would fail there with an obscure error.
    Ask for it explicitly (``prefer="mps"`` or ``PRUNINGLAB_DEVICE=mps``) for float32 training.
    """
    choice = prefer or os.environ.get("PRUNINGLAB_DEVICE", "auto")
    if choice in ("", "auto"):
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(choice)
    except RuntimeError as err:
        raise ValueError(
            f"device: {choice!r} is not a torch device; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {choice!r} was asked for but CUDA is not available on this machine")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                  and torch.backends.mps.is_available()):
        raise ValueError(f"device: {choice!r} was asked for but MPS is not available on this machine")
    return dev


@contextlib.contextmanager
def tf32(enabled: bool):
    """Within the block, CUDA float32 matrix products and convolutions use TF32 (``enabled``) or not.

    TF32 keeps 10 mantissa bits: about 1e-3 relative error per product, several times faster on
    Ampere and later GPUs. The training loop turns it on; curvature and pruning-limit code, whose
    Hessian products and eigenvalues need full float32, runs under :func:`tf32_disabled`. The
    previous settings are restored on exit. No effect on CPUs.
    """
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
              torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[0], before[1]
        torch.set_float32_matmul_precision(before[2])


def tf32_disabled():
    """``with tf32_disabled(): ...`` runs float32 CUDA products at full precision (see :func:`tf32`)."""
    return tf32(False)


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a torch Generator seeded the same.

    Defined in book/intro.md.

    ``deterministic=True`` also asks torch for deterministic kernels (slower on GPU).
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2**64:
        # torch seeds are 64-bit: 2**64 and above would fail deep inside torch.manual_seed
        raise ValueError(f"seed: expected an integer in [0, 2**64 - 1], got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def scale(value: str | None = None) -> str:
    """The run scale: ``"small"`` (default; minutes on a 2-core CPU) or ``"full"`` (the paper's setting, on a GPU).

    Defined in book/intro.md.

    Read from ``value`` if given, else from the environment variable ``PRUNINGLAB_SCALE``.
    """
    raw = value if value is not None else os.environ.get("PRUNINGLAB_SCALE", "small")
    norm = str(raw).strip().lower()
    if norm not in SCALES:
        source = "scale" if value is not None else "PRUNINGLAB_SCALE"
        raise ValueError(f"{source}: {raw!r} is not a scale; expected one of {', '.join(SCALES)}")
    return norm


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether to show tqdm bars: on in interactive use, off in tests and book builds.

    ``PRUNINGLAB_PROGRESS=0/1`` forces it; pytest and Jupyter Book builds set nothing, so
    we switch bars off when running under pytest or a non-interactive kernel run.
    """
    if progress is not None:
        return bool(progress)
    env = os.environ.get("PRUNINGLAB_PROGRESS")
    if env is not None:
        return env.strip().lower() not in ("0", "false", "no", "off", "")
    if "PYTEST_CURRENT_TEST" in os.environ or os.environ.get("CI"):
        return False
    return True


# --------------------------------------------------------------------------- atomic writes


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _normal_permissions(fd: int) -> None:
    # mkstemp creates files 0600; a result or checkpoint gets the permissions of any file the user writes.
    os.fchmod(fd, 0o666 & ~_umask())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    A crash mid-write leaves the previous file intact, never a half-written one. The file gets the
    user's normal permissions (``0666`` less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    _normal_permissions(fd)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temporary file and a rename (checkpoints, masks)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    _normal_permissions(fd)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# --------------------------------------------------------------------------- results store


def results_dir(experiment: str, scale_name: str | None = None) -> Path:
    """Where results of ``experiment`` at a scale live.

    Full-scale runs go to ``results/<experiment>/`` in the project (committed when produced on
    a GPU; override with ``PRUNINGLAB_RESULTS``). Small runs go to a git-ignored cache,
    ``_cache/results/<experiment>/`` in a checkout (override with ``PRUNINGLAB_CACHE``).
    """
    _check_experiment_name(experiment)
    sc = scale(scale_name)
    if sc == "full":
        base = os.environ.get("PRUNINGLAB_RESULTS")
        root = Path(base) if base else (PROJECT_ROOT or Path.cwd()) / "results"
    else:
        base = os.environ.get("PRUNINGLAB_CACHE")
        if base:
            root = Path(base) / "results"
        elif PROJECT_ROOT is not None:
            root = PROJECT_ROOT / "_cache" / "results"
        else:
            root = Path.home() / ".cache" / "pruninglab" / "results"
    return root / experiment


def _check_experiment_name(experiment: str) -> None:
    if not isinstance(experiment, str) or not experiment or any(c in experiment for c in "/\\") or experiment.startswith("."):
        raise ValueError(f"experiment: expected a plain name such as 'limit-fc5', got {experiment!r}")


def git_revision() -> str | None:
    """The git commit of the checkout pruninglab runs from (with ``-dirty`` if modified), else None."""
    if PROJECT_ROOT is None:
        return None
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(dev: torch.device | str | None = None) -> str:
    """A human-readable name of the device (GPU model, or the CPU's)."""
    dev = torch.device(dev) if dev is not None else device()
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return "Apple MPS"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def provenance(dev: torch.device | str | None = None, wall_time_s: float | None = None) -> dict:
    """Where and how a result was produced: versions, device, git revision, date, wall time."""
    from . import __version__

    return {
        "pruninglab": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": device_name(dev),
        "git_revision": git_revision(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": wall_time_s,
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return _jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
        import dataclasses

        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/Infinity: every non-finite number is written as null
    return obj


def to_json(obj: Any) -> str:
    """``obj`` as indented, strictly valid JSON: tensors and arrays become lists, paths strings, and
    every non-finite number (NaN, +-Infinity) becomes ``null``. Anything else unserialisable is a TypeError."""
    return json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two JSON-like records (``[]`` when equal)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}{key}"
            if key not in old or key not in new:
                out.append(name)
            else:
                out += changed_keys(old[key], new[key], name + ".")
        return out
    return [] if old == new else [prefix.rstrip(".") or "(value)"]


def _is_bookkeeping(key: str) -> bool:
    """Metrics that describe how a run went, not what it found: timings and where it resumed from."""
    last = key.split(".")[-1]
    return last.endswith("_s") or last.endswith("_per_s") or "time" in last or last == "resumed_from"


# --------------------------------------------------------------------------- run identity


RESULT_NAME = "result.json"
CONFIG_NAME = "config.json"


def runs_root(out: str | os.PathLike | None = None) -> Path:
    """The folder that holds run folders: ``out`` if given, else ``$PRUNINGLAB_RUNS``, else ``./runs``.

    Always returned absolute, so that a run is named the same from any
    working directory.
    """
    base = out if out is not None else (os.environ.get("PRUNINGLAB_RUNS") or "runs")
    return Path(base).expanduser().resolve()


def config_hash(record: Mapping[str, Any]) -> str:
    """Eight hex digits of the SHA-256 of ``record`` as canonical JSON (sorted keys, null for non-finite)."""
    import hashlib

    text = json.dumps(_jsonable(record), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def run_id(experiment: str, record: Mapping[str, Any], seed: int, attempt: int = 1) -> str:
    """The name of one run: ``<experiment>-<hash8 of the full resolved config>-s<seed>`` (``-aN`` for attempt N > 1).

    Defined in book/block_sparse_speed.md. ``record`` is everything the run depends on (its config fields, seed,
    scale and resolved data path); two runs with the same name are the same computation.
    """
    _check_experiment_name(experiment)
    if not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt: expected an integer >= 1, got {attempt!r}")
    name = f"{experiment}-{config_hash(record)}-s{seed}"
    return name if attempt == 1 else f"{name}-a{attempt}"


def check_writable(folder: str | os.PathLike, what: str) -> Path:
    """Create ``folder`` if needed and check that a file can be written there; PermissionError/OSError naming ``what``.

    Called before any training, so that an unwritable output folder is found in a second, not after days.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        refused = type(err)(f"{what}: cannot write to {folder} ({reason}); expected a writable folder")
        refused.errno = err.errno
        raise refused from err
    return folder


# --------------------------------------------------------------------------- results store


def save_result(
    experiment: str,
    metrics: Mapping[str, Any],
    config: Any,
    *,
    scale_name: str | None = None,
    dev: torch.device | str | None = None,
    device: torch.device | str | None = None,
    wall_time_s: float | None = None,
    out_dir: str | os.PathLike | None = None,
    run_id: str | None = None,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Store the metrics of a run with its config and provenance; return the JSON path.

    The file is ``<results_dir>/<run_id>/result.json`` for a run with an identity (see :func:`run_id`),
    else ``<results_dir>/result.json`` (``out_dir`` overrides the folder). It is written atomically,
    as strict JSON (non-finite numbers as ``null``), with the user's normal file permissions.

    A stored result is never replaced silently: when the file exists, a result of another config is
    refused (ValueError naming the differing fields), and so is a different result of the same config;
    the same result again (equal up to timings and the resume step) is rewritten. ``overwrite=True`` replaces it anyway.
    """
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics: expected a mapping of metric name to value, got {type(metrics).__name__}")
    sc = scale(scale_name)
    folder = Path(out_dir) if out_dir is not None else results_dir(experiment, sc)
    if run_id is not None and out_dir is None:
        _check_experiment_name(run_id)
        folder = folder / run_id
    record = {"experiment": experiment, "scale": sc}
    if run_id is not None:
        record["run_id"] = run_id
    record.update(extra or {})
    record.update({"metrics": metrics, "config": config, "provenance": provenance(device if device is not None else dev, wall_time_s)})
    text = to_json(record)
    path = folder / RESULT_NAME
    if path.exists() and not overwrite:
        _refuse_replacement(path, json.loads(text))
    return atomic_write_text(path, text)


def _refuse_replacement(path: Path, new: dict) -> None:
    old = _read_record(path)
    differ = changed_keys(old.get("config"), new.get("config"))
    if differ:
        raise ValueError(
            f"result: {path} holds the result of another config (differs in: {', '.join(differ[:6])}); "
            "expected a free place: give the run its own identity, or replace it explicitly "
            "(overwrite=True, --overwrite-result)")
    differ = [k for k in changed_keys(old.get("metrics"), new.get("metrics")) if not _is_bookkeeping(k)]
    if differ:
        raise ValueError(
            f"result: {path} already holds a different result of this config (metrics differ in: "
            f"{', '.join(differ[:6])}); expected the same result again: replace it explicitly "
            "(overwrite=True, --overwrite-result) or start a new attempt (--new-attempt)")


def _read_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"results file {path}: not valid JSON ({err}); delete it or rerun the experiment") from err


def load_result(
    experiment: str, scale_name: str | None = None, *, out_dir: str | os.PathLike | None = None,
    run_id: str | None = None,
) -> dict | None:
    """The stored record of ``experiment`` at a scale (``metrics``, ``config``, ``provenance``), or None.

    Defined in book/convex_geometry.md. ``run_id`` picks one run of the experiment (see :func:`save_result`).
    """
    folder = Path(out_dir) if out_dir is not None else results_dir(experiment, scale_name)
    if run_id is not None and out_dir is None:
        _check_experiment_name(run_id)
        folder = folder / run_id
    path = folder / RESULT_NAME
    if not path.exists():
        return None
    return _read_record(path)


def recorded_runs(experiment: str, scale_name: str | None = None) -> list[dict]:
    """Every stored record of runs of ``experiment`` with an identity (``<results_dir>/<run_id>/result.json``),
    sorted by run id."""
    folder = results_dir(experiment, scale_name)
    if not folder.is_dir():
        return []
    return [_read_record(p) for p in sorted(folder.glob(f"*/{RESULT_NAME}"))]


class Stopwatch:
    """``with Stopwatch() as t: ...``; then ``t.seconds``."""

    def __enter__(self) -> "Stopwatch":
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
