"""Functional MAML for implicit neural representations, with fixed pruning masks.

Defined in book/meta_sparse_inr.md.

One *task* is one signal: an image flattened to ``(N, C)`` values at the ``N`` coordinates of a
grid. With parameters ``theta``, masks ``m`` (weights only) and the effective parameters
``eff(theta) = theta * m``, the inner loop takes ``K`` SGD steps on the task's loss

    phi_0 = theta,    phi_{k+1} = phi_k - alpha * grad_phi L(eff(phi_k)),

and the meta-loss is the mean over a meta-batch of ``L(eff(phi_K))``. Everything is written with
``torch.func``: :func:`adapt` uses ``torch.func.grad`` and :func:`meta_loss` ``torch.func.vmap`` over
the meta-batch, so one call adapts every task of the batch at once and ``.backward()`` on the mean
gives the full second-order meta-gradient. ``first_order=True`` detaches the inner gradients
(first-order MAML, a cheaper approximation). :func:`looped_meta_loss` is the same math with
``torch.autograd.grad`` in a Python loop over tasks: the reference for tests and benchmarks.

Masks are bool tensors (True = kept) keyed by parameter name (see :mod:`pruninglab.masks`); a
pruned weight gets zero gradient in the inner and the outer loop because it is multiplied by zero in
every forward. Its *raw* value is kept at zero by :class:`KeepMasked` after each outer step.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..masks import MaskHook, check_masks

__all__ = [
    "masked",
    "signal_loss",
    "adapt",
    "adapted_predictions",
    "meta_loss",
    "looped_meta_loss",
    "MetaObjective",
    "KeepMasked",
]

Params = dict[str, torch.Tensor]


def masked(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None) -> Params:
    """``eff(theta)``: each masked parameter multiplied by its mask; others unchanged.

    Defined in book/meta_sparse_inr.md. Works on plain and on batched (vmapped) parameters.
    """
    if not masks:
        return dict(params)
    return {n: (p * masks[n].to(p.dtype) if n in masks else p) for n, p in params.items()}


def signal_loss(model: nn.Module, params: Mapping[str, torch.Tensor], coords: torch.Tensor,
                target: torch.Tensor, masks: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean squared error of the (masked) network over every value of one signal ``(N, C)``.
    """
    pred = functional_call(model, masked(params, masks), (coords,))
    return torch.mean((pred - target) ** 2)


def adapt(model: nn.Module, params: Mapping[str, torch.Tensor], coords: torch.Tensor, target: torch.Tensor,
          masks: Mapping[str, torch.Tensor] | None = None, *, steps: int = 2, lr: float = 1e-2,
          first_order: bool = False) -> Params:
    """The MAML inner loop: ``steps`` plain SGD steps of size ``lr`` on one signal.

    Defined in book/sapp_imagenet.md. Differentiable with respect to ``params`` (second order);
    with ``first_order=True`` the inner gradients are treated as constants.
    """
    loss_grad = grad(lambda p: signal_loss(model, p, coords, target, masks))
    phi = dict(params)
    for _ in range(steps):
        g = loss_grad(phi)
        if first_order:
            g = {n: t.detach() for n, t in g.items()}
        phi = {n: phi[n] - lr * g[n] for n in phi}
    return phi


def _check_meta_inputs(coords: torch.Tensor, signals: torch.Tensor, steps: int, lr: float) -> None:
    if not isinstance(signals, torch.Tensor) or signals.dim() != 3:
        raise ValueError(f"signals: expected a tensor (batch, N, C), got shape {tuple(getattr(signals, 'shape', ()))}")
    if not isinstance(coords, torch.Tensor) or coords.dim() != 2 or coords.shape[0] != signals.shape[1]:
        raise ValueError(
            f"coords: expected a tensor (N, dim_in) with N = {signals.shape[1]} (the signals' length), "
            f"got shape {tuple(getattr(coords, 'shape', ()))}"
        )
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"steps: expected a non-negative integer, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr < 0:
        raise ValueError(f"lr: expected a non-negative number, got {lr!r}")


def adapted_predictions(model: nn.Module, params: Mapping[str, torch.Tensor], coords: torch.Tensor,
                        signals: torch.Tensor, masks: Mapping[str, torch.Tensor] | None = None, *,
                        steps: int = 2, lr: float = 1e-2, first_order: bool = False) -> torch.Tensor:
    """Adapt to every signal of a meta-batch ``(B, N, C)`` at once (vmap) and predict: ``(B, N, C)``.
    """
    _check_meta_inputs(coords, signals, steps, lr)

    def one(target: torch.Tensor) -> torch.Tensor:
        phi = adapt(model, params, coords, target, masks, steps=steps, lr=lr, first_order=first_order)
        return functional_call(model, masked(phi, masks), (coords,))

    return vmap(one)(signals)


def meta_loss(model: nn.Module, params: Mapping[str, torch.Tensor], coords: torch.Tensor, signals: torch.Tensor,
              masks: Mapping[str, torch.Tensor] | None = None, *, steps: int = 2, lr: float = 1e-2,
              first_order: bool = False) -> torch.Tensor:
    """The MAML objective of a meta-batch: mean over signals of the post-adaptation MSE.

    Defined in book/meta_sparse_inr.md. ``meta_loss(...).backward()`` fills ``.grad`` of
    ``params`` with the (second-order unless ``first_order``) meta-gradient.
    """
    pred = adapted_predictions(model, params, coords, signals, masks, steps=steps, lr=lr, first_order=first_order)
    # All signals have the same length, so the mean over everything is the mean of per-signal MSEs.
    return torch.mean((pred - signals) ** 2)


def looped_meta_loss(model: nn.Module, params: Mapping[str, torch.Tensor], coords: torch.Tensor,
                     signals: torch.Tensor, masks: Mapping[str, torch.Tensor] | None = None, *,
                     steps: int = 2, lr: float = 1e-2, first_order: bool = False) -> torch.Tensor:
    """:func:`meta_loss` computed one signal at a time with ``torch.autograd.grad`` (the reference).

    Defined in book/meta_sparse_inr.md. This is how MAML is usually written (and how the official
    Meta-SparseINR code runs it): a Python loop over tasks, inner gradients with ``create_graph=True``.
    """
    _check_meta_inputs(coords, signals, steps, lr)
    names = list(params)
    losses = []
    for target in signals:
        phi = dict(params)
        for _ in range(steps):
            inner = signal_loss(model, phi, coords, target, masks)
            gs = torch.autograd.grad(inner, [phi[n] for n in names], create_graph=not first_order)
            phi = {n: phi[n] - lr * g for n, g in zip(names, gs)}
        losses.append(signal_loss(model, phi, coords, target, masks))
    return torch.stack(losses).mean()


def _buffer_name(param_name: str) -> str:
    return "mask__" + param_name.replace(".", "__")


class MetaObjective(nn.Module):
    """A module whose forward is "adapt to each signal of the batch, then predict it".

    This turns MAML's outer loop into an ordinary supervised step, so it runs in the shared loop
    :func:`pruninglab.train.train`: a batch is ``(signals, signals)`` (support = query = the whole
    signal), ``forward(signals)`` returns the post-adaptation predictions ``(B, N, C)`` and the loss
    is their MSE against the signals, i.e. :func:`meta_loss`. The wrapped network is ``self.inr``;
    its parameters are the only parameters here, so ``optimizer = Adam(objective.parameters())`` is
    the outer optimizer. Masks and the coordinate grid are buffers, so they are part of the state
    dict and of every checkpoint.
    """

    def __init__(self, inr: nn.Module, coords: torch.Tensor, masks: Mapping[str, torch.Tensor] | None = None, *,
                 inner_steps: int = 2, inner_lr: float = 1e-2, first_order: bool = False):
        super().__init__()
        self.inr = inr
        self.register_buffer("coords", coords.detach().clone())
        self.inner_steps = int(inner_steps)
        self.inner_lr = float(inner_lr)
        self.first_order = bool(first_order)
        self._mask_names: list[str] = []
        if masks:
            self.set_masks(masks)

    def set_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Install (or replace) the masks; names are the wrapped network's parameter names."""
        check_masks(self.inr, masks)
        for name, m in masks.items():
            buf = _buffer_name(name)
            m = m.detach().to(device=self.coords.device, dtype=torch.bool)
            if name in self._mask_names:
                getattr(self, buf).copy_(m)
            else:
                self.register_buffer(buf, m.clone())
                self._mask_names.append(name)

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The current masks (bool, True = kept), keyed by the wrapped network's parameter names."""
        return {n: getattr(self, _buffer_name(n)) for n in self._mask_names}

    def params(self) -> dict[str, torch.Tensor]:
        return dict(self.inr.named_parameters())

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        return adapted_predictions(self.inr, self.params(), self.coords, signals, self.masks,
                                   steps=self.inner_steps, lr=self.inner_lr, first_order=self.first_order)


class KeepMasked(MaskHook):
    """Training hook: after every outer step set ``p = p * m`` on the raw parameters.

    The forward already multiplies by the masks, so pruned
    entries get zero gradient; but Adam's moments from before a pruning round would still move
    their raw values. Zeroing them after each step keeps counts and exported weights exact. The
    masks live in the :class:`MetaObjective`, so this hook has no state of its own: it is the
    library's one mask hook, :class:`pruninglab.masks.MaskHook`, reading the objective's masks.
    """

    def __init__(self):
        super().__init__(lambda objective: objective.masks, module=lambda objective: objective.inr)
