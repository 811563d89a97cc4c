"""Phase schedules of the block pruners (dense / sparsification / sparse) and the shared phase bookkeeping.

Defined in book/sapp.md.

A schedule is a tuple of :class:`Phase` objects that tile ``[0, total_steps)`` in optimizer steps.
Three kinds exist (Yasuda et al. 2024, and ACDC, Peste et al. 2021):

``"dense"``
    every block is kept and trains (SA++ still trains its block logits);
``"sparsify"``
    SA++ only: the kept fraction falls along the exponential ramp :func:`sparsity_ramp`, removing
    the lowest-attention blocks step by step;
``"sparse"``
    the support is frozen and only kept blocks train. The last sparse phase is the fine-tuning.

The builders :func:`imagenet_phases` and :func:`criteo_phases` give the paper's schedules for
``method`` in ``{"sapp", "acdc", "magnitude"}`` as fractions of the run; boundaries are rounded to
whole steps from exact fractions, so they never drift.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping, Sequence

from torch import nn

PHASE_KINDS = ("dense", "sparsify", "sparse")
METHODS = ("sapp", "acdc", "magnitude")


@dataclass(frozen=True)
class Phase:
    """One phase ``[start, end)`` of a pruning schedule, in optimizer steps."""

    kind: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if self.kind not in PHASE_KINDS:
            raise ValueError(f"kind: expected one of {', '.join(PHASE_KINDS)}, got {self.kind!r}")
        for name in ("start", "end"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: expected a non-negative integer step, got {v!r}")
        if self.end <= self.start:
            raise ValueError(f"end: expected end > start, got start={self.start}, end={self.end}")

    @property
    def length(self) -> int:
        return self.end - self.start

    def progress(self, step: int) -> float:
        """Normalised time ``t`` in ``(0, 1]`` after ``step`` within this phase (1 on its last step)."""
        return (step - self.start + 1) / self.length


def check_phases(phases: Sequence[Phase]) -> tuple[Phase, ...]:
    """Validate that ``phases`` are :class:`Phase` objects tiling ``[0, end)`` without gaps or overlaps.
    """
    if isinstance(phases, Phase) or not isinstance(phases, Sequence) or len(phases) == 0:
        raise ValueError("phases: expected a non-empty sequence of Phase(kind, start, end)")
    out = tuple(phases)
    for i, p in enumerate(out):
        if not isinstance(p, Phase):
            raise ValueError(f"phases[{i}]: expected a Phase, got {type(p).__name__}")
    if out[0].start != 0:
        raise ValueError(f"phases: the first phase must start at step 0, got {out[0].start}")
    for i in range(1, len(out)):
        if out[i].start != out[i - 1].end:
            raise ValueError(
                f"phases[{i}]: starts at {out[i].start} but the previous phase ends at {out[i - 1].end}; "
                "phases must be contiguous"
            )
    return out


def phase_index(phases: Sequence[Phase], step: int) -> int:
    """Index of the phase that contains ``step`` (steps past the end stay in the last phase)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step: expected a non-negative integer, got {step!r}")
    for i, p in enumerate(phases):
        if step < p.end:
            return i
    return len(phases) - 1


def sparsity_ramp(t: float, sparsity: float, c: float = 4.0) -> float:
    """The SA++ sparsification ramp ``s(t) = s (1 - e^{-ct}) / (1 - e^{-c})`` for ``t`` in ``[0, 1]``.

    Defined in book/sapp.md. ``c = 0`` is the linear ramp (the limit ``c -> 0``).
    """
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.0 <= t <= 1.0:
        raise ValueError(f"t: expected a number in [0, 1], got {t!r}")
    if not isinstance(c, (int, float)) or isinstance(c, bool) or c < 0 or math.isnan(c):
        raise ValueError(f"c: expected a non-negative number, got {c!r}")
    if c == 0:
        return sparsity * t
    return sparsity * (1.0 - math.exp(-c * t)) / (1.0 - math.exp(-c))


def kept_blocks(num_blocks: int, sparsity: float) -> int:
    """Blocks kept at ``sparsity`` out of ``num_blocks``: ``N - floor(s N)`` (= ``ceil((1-s) N)``), at least 1.

    Defined in book/sapp.md. The ``1e-9`` guards against ``0.29 * 100 = 28.999999999999996``.
    """
    return max(1, num_blocks - math.floor(sparsity * num_blocks + 1e-9))


def phases_from_fractions(total_steps: int, parts: Sequence[tuple[str, Fraction]]) -> tuple[Phase, ...]:
    """Phases whose lengths are the given fractions of ``total_steps`` (boundaries rounded half up).
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps: expected a positive integer, got {total_steps!r}")
    total_frac = sum((Fraction(f) for _, f in parts), Fraction(0))
    if total_frac != 1:
        raise ValueError(f"parts: fractions must sum to 1, got {total_frac}")
    if total_steps < len(parts):
        raise ValueError(
            f"total_steps: {total_steps} is too short for a schedule of {len(parts)} phases; "
            f"use at least {len(parts)} steps"
        )
    bounds = [0]
    acc = Fraction(0)
    for _, f in parts:
        acc += Fraction(f)
        bounds.append(math.floor(acc * total_steps + Fraction(1, 2)))
    bounds[-1] = total_steps
    # A very short run may round two boundaries together; push them apart (each phase >= 1 step).
    for i in range(1, len(bounds)):
        bounds[i] = max(bounds[i], bounds[i - 1] + 1)
    bounds[-1] = total_steps  # the forward pass may have pushed the end past the run; pull back from it
    for i in range(len(bounds) - 2, 0, -1):
        bounds[i] = min(bounds[i], bounds[i + 1] - 1)
    return tuple(Phase(kind, bounds[i], bounds[i + 1]) for i, (kind, _) in enumerate(parts))


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    return method


def imagenet_phases(total_steps: int, method: str = "sapp") -> tuple[Phase, ...]:
    """The ImageNet (ResNet-50) schedules of the paper, scaled to ``total_steps``.

    Defined in book/sapp.md.

    - ``"acdc"``: 10% dense, 7 cycles of 5% sparse + 5% dense (the last dense extended by 5%),
      15% final sparse (ACDC's 100-epoch recipe: prune at 10, 20, ..., 70, restore at 15, ..., 75,
      final prune at 85).
    - ``"sapp"``: 10% dense, 6 cycles of sparsification / sparse / dense in equal thirds of 10%
      (the split within a cycle is not stated in the paper; thirds are our choice), then 15%
      sparsification and 15% final sparse.
    - ``"magnitude"`` (also PowerProp): 85% dense, then prune once and fine-tune for the last 15%
      (the same fine-tuning length as the others; the paper does not state it).
    """
    _check_method(method)
    F = Fraction
    if method == "acdc":
        parts = [("dense", F(10, 100))]
        for i in range(7):
            parts += [("sparse", F(5, 100)), ("dense", F(10 if i == 6 else 5, 100))]
        parts += [("sparse", F(15, 100))]
    elif method == "sapp":
        parts = [("dense", F(10, 100))]
        for _ in range(6):
            parts += [("sparsify", F(10, 300)), ("sparse", F(10, 300)), ("dense", F(10, 300))]
        parts += [("sparsify", F(15, 100)), ("sparse", F(15, 100))]
    else:
        parts = [("dense", F(85, 100)), ("sparse", F(15, 100))]
    return phases_from_fractions(total_steps, parts)


def criteo_phases(total_steps: int, method: str = "sapp") -> tuple[Phase, ...]:
    """The Criteo schedules of the paper, scaled to ``total_steps``.

    Defined in book/sapp.md.

    - ``"acdc"``: 20% dense, 10 alternating phases of 6% (sparse, dense, ..., dense), 20% sparse.
    - ``"sapp"`` (our reconstruction, by analogy with ImageNet): 20% dense, 4 cycles of
      sparsification / sparse / dense of 4% each (each 12% cycle replaces one ACDC sparse + dense
      pair), the 5th pair becomes one 12% sparsification, then 20% sparse.
    - ``"magnitude"`` (also PowerProp): 80% dense, then prune once and fine-tune for the last 20%.
    """
    _check_method(method)
    F = Fraction
    if method == "acdc":
        parts = [("dense", F(20, 100))]
        for _ in range(5):
            parts += [("sparse", F(6, 100)), ("dense", F(6, 100))]
        parts += [("sparse", F(20, 100))]
    elif method == "sapp":
        parts = [("dense", F(20, 100))]
        for _ in range(4):
            parts += [("sparsify", F(4, 100)), ("sparse", F(4, 100)), ("dense", F(4, 100))]
        parts += [("sparsify", F(12, 100)), ("sparse", F(20, 100))]
    else:
        parts = [("dense", F(80, 100)), ("sparse", F(20, 100))]
    return phases_from_fractions(total_steps, parts)


class PhasedHook:
    """Bookkeeping shared by the phased pruners: which phase a step is in, and idempotent phase entry.

    Subclasses implement ``_enter_phase(index, step)`` and, optionally, ``_during_phase(index, step)``.
    ``on_step_start`` returns ``True`` when a new phase begins at ``step > 0``, so the training loop
    resets the optimizer state (the paper calls this crucial) and writes a checkpoint. A step that was
    already processed (the loop calls ``on_step_start`` again for the step it resumes at) is skipped,
    so resuming never applies a transition twice.
    """

    phases: tuple[Phase, ...]

    def _init_phases(self, phases: Sequence[Phase]) -> None:
        self.phases = check_phases(phases)
        self._phase = -1
        self._last_step = -1
        self._finalized = False

    @property
    def phase(self) -> Phase | None:
        """The current phase (None before the first step)."""
        return self.phases[self._phase] if self._phase >= 0 else None

    def on_step_start(self, step: int, model: nn.Module | None = None) -> bool:
        if self._finalized:
            raise RuntimeError("the pruner was finalized; build a new pruner to train with masks again")
        if step <= self._last_step:
            return False
        self._last_step = step
        idx = phase_index(self.phases, step)
        boundary = idx != self._phase
        if boundary:
            self._phase = idx
            self._enter_phase(idx, step)
        self._during_phase(idx, step)
        return boundary and step > 0

    def _enter_phase(self, index: int, step: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _during_phase(self, index: int, step: int) -> None:
        return None

    def _phase_state(self) -> dict[str, Any]:
        return {"phase": self._phase, "last_step": self._last_step, "finalized": self._finalized,
                "phases": [(p.kind, p.start, p.end) for p in self.phases]}

    def _load_phase_state(self, state: Mapping[str, Any]) -> None:
        stored = [tuple(p) for p in state.get("phases", [])]
        mine = [(p.kind, p.start, p.end) for p in self.phases]
        if stored and stored != mine:
            raise ValueError(
                "state: was saved with a different phase schedule; build the pruner with the same phases to resume"
            )
        self._phase = int(state["phase"])
        self._last_step = int(state["last_step"])
        self._finalized = bool(state.get("finalized", False))


def phase_kinds_per_step(phases: Sequence[Phase]) -> list[str]:
    """The phase kind of every step (for plots of a schedule)."""
    return [p.kind for p in check_phases(phases) for _ in range(p.length)]

