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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    A crash mid-write leaves the previous file intact, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return str(obj)  # JSON has no NaN/Inf; keep them readable
    return obj


def save_result(
    experiment: str,
    metrics: Mapping[str, Any],
    config: Any,
    *,
    scale_name: str | None = None,
    dev: torch.device | str | None = None,
    wall_time_s: float | None = None,
    out_dir: str | os.PathLike | None = None,
) -> Path:
    """Store the metrics of a run with its config and provenance; return the JSON path.

    Defined in book/intro.md.

    The file is ``<results_dir>/result.json`` (see :func:`results_dir`; ``out_dir`` overrides
    the folder). It is written atomically, so an interrupted save never corrupts an earlier result.
    """
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics: expected a mapping of metric name to value, got {type(metrics).__name__}")
    sc = scale(scale_name)
    folder = Path(out_dir) if out_dir is not None else results_dir(experiment, sc)
    record = {
        "experiment": experiment,
        "scale": sc,
        "metrics": _jsonable(metrics),
        "config": _jsonable(config),
        "provenance": provenance(dev, wall_time_s),
    }
    return atomic_write_text(folder / "result.json", json.dumps(record, indent=2, sort_keys=False) + "\n")


def load_result(
    experiment: str, scale_name: str | None = None, *, out_dir: str | os.PathLike | None = None
) -> dict | None:
    """The stored record of ``experiment`` at a scale (``metrics``, ``config``, ``provenance``), or None.

    Defined in book/intro.md.
    """
    folder = Path(out_dir) if out_dir is not None else results_dir(experiment, scale_name)
    path = folder / "result.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"results file {path} is not valid JSON ({err}); delete it or rerun the experiment") from err


class Stopwatch:
    """``with Stopwatch() as t: ...``; then ``t.seconds``."""

    def __enter__(self) -> "Stopwatch":
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
