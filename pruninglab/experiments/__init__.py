"""The experiments behind ``python -m pruninglab <experiment>``: one module per experiment.

Each module has a frozen config dataclass with ``small()``/``full()`` presets, ``run(config)`` and
``main(argv=None)``. The modules are imported on first use.
"""
import importlib

__all__ = ["bench", "inr", "limit", "phase", "sapp_criteo", "sapp_imagenet"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
