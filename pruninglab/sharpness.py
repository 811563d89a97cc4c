"""Sharpness of the loss landscape: Hessian-vector products, top eigenvalues, trace and spectral density.

Defined in book/sharpness.md.

Everything here works on the Hessian of the **loss averaged over all batches of the data**,

.. math:: \\mathcal L(\\mathbf w) = \\frac1N \\sum_b n_b\\, \\ell_b(\\mathbf w),

where ``loss_fn`` returns the mean loss ``ℓ_b`` of batch ``b`` (``n_b`` samples, ``N = Σ n_b``), so
the Hessian never needs to be formed: one Hessian-vector product (HVP) costs about two
forward/backward passes over the data. ``params`` restricts the Hessian to a subset of the
parameters (by name), which gives per-layer (diagonal-block) sharpness.

* :class:`HessianOperator` (:func:`hvp_operator` builds one) — the HVP as a callable on flat vectors
  (double backward; with one batch, or ``cache_graphs=True``, the first-order gradient graph of each
  batch is built once and reused), with the estimators below as methods on that one graph;
* :func:`hessian_eigenvalues` — the ``k`` largest eigenvalues by Lanczos (default) or power iteration;
* :func:`hessian_trace` — Hutchinson's estimator with its standard error;
* :func:`hessian_spectrum` — stochastic Lanczos quadrature (SLQ) nodes and weights;
  :func:`spectral_density` smooths them for plotting;
* :func:`exact_hessian` / :func:`exact_hessian_eigenvalues` — the dense Hessian via ``torch.func``
  for small models (the reference the iterative methods are checked against).

The model is evaluated in ``eval()`` mode (batch norm uses its running statistics, dropout is off)
so that the operator is deterministic; the caller's mode is restored afterwards. ``.grad`` fields
are never touched.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ._checks import positive_int
from .runtime import progress_enabled

LossFn = Callable[[Any, Any], torch.Tensor]

__all__ = [
    "HessianOperator",
    "LanczosResult",
    "TraceEstimate",
    "LayerSharpness",
    "hvp_operator",
    "lanczos",
    "power_iteration",
    "hessian_eigenvalues",
    "hessian_trace",
    "hessian_spectrum",
    "spectral_density",
    "spectral_average",
    "exact_hessian",
    "exact_hessian_eigenvalues",
    "layerwise_sharpness",
    "HessianBlock",
    "hessian_parameters",
    "NORM_LAYERS",
]


# --------------------------------------------------------------------------- data and parameters


def _is_tensor_pair(obj: Any) -> bool:
    return (
        isinstance(obj, (tuple, list))
        and len(obj) == 2
        and isinstance(obj[0], torch.Tensor)
        and isinstance(obj[1], torch.Tensor)
        and obj[0].ndim >= 1
        and obj[1].ndim >= 1
        and obj[0].shape[0] == obj[1].shape[0]
    )


def _normalise_data(data: Any) -> Iterable:
    """A re-iterable source of ``(inputs, targets)`` batches (a single pair becomes one batch)."""
    if data is None:
        raise ValueError("data: expected an iterable of (inputs, targets) batches, got None")
    if _is_tensor_pair(data):
        return [tuple(data)]
    if isinstance(data, torch.Tensor) or not hasattr(data, "__iter__"):
        raise ValueError(
            f"data: expected an iterable of (inputs, targets) batches (a list or a DataLoader), "
            f"got {type(data).__name__}"
        )
    if iter(data) is data:
        raise ValueError(
            "data: is a one-shot iterator, but every Hessian-vector product passes over all batches; "
            "pass a list of batches or a DataLoader (e.g. list(data))"
        )
    return data


def _unpack_batch(batch: Any, index: int) -> tuple[Any, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(
            f"data: batch {index} is a {type(batch).__name__}; expected an (inputs, targets) pair"
        )
    return batch[0], batch[1]


def _batch_size(inputs: Any, targets: Any) -> int:
    for t in (targets, inputs):
        if isinstance(t, torch.Tensor) and t.ndim >= 1:
            return int(t.shape[0])
    raise ValueError("data: cannot tell the batch size; targets or inputs must be tensors with a batch dimension")


def _to_device(x: Any, dev: torch.device, dtype: torch.dtype | None = None) -> Any:
    if isinstance(x, torch.Tensor):
        x = x.to(dev, non_blocking=True)
        if dtype is not None and x.is_floating_point():
            x = x.to(dtype)
        return x
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(v, dev, dtype) for v in x)
    if isinstance(x, dict):
        return {k: _to_device(v, dev, dtype) for k, v in x.items()}
    return x


def _select_parameters(model: nn.Module, params: Sequence[str] | None) -> tuple[list[str], list[torch.Tensor]]:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    named = dict(model.named_parameters())
    if params is None:
        names = [n for n, p in named.items() if p.requires_grad]
        if not names:
            raise ValueError("model: has no parameters that require grad; there is no Hessian to take")
    else:
        if isinstance(params, str) or not isinstance(params, Sequence):
            raise ValueError(f"params: expected a list of parameter names, got {params!r}")
        names = list(params)
        if not names:
            raise ValueError("params: is empty; name at least one parameter (see model.named_parameters())")
        missing = [n for n in names if n not in named]
        if missing:
            raise ValueError(f"params: {missing} are not parameters of the model (see model.named_parameters())")
        if len(set(names)) != len(names):
            raise ValueError(f"params: names a parameter twice: {names}")
        frozen = [n for n in names if not named[n].requires_grad]
        if frozen:
            raise ValueError(f"params: {frozen} do not require grad; enable requires_grad to differentiate them")
    tensors = [named[n] for n in names]
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise ValueError(f"params: expected parameters of one floating dtype, got {sorted(map(str, dtypes))}")
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"params: expected parameters on one device, got {sorted(map(str, devices))}")
    bad = [n for n, t in zip(names, tensors) if not bool(torch.isfinite(t.detach()).all())]
    if bad:
        raise ValueError(f"params: {bad} contain NaN or Inf values; the Hessian is undefined there")
    return names, tensors


def _model_on(model: nn.Module, device: torch.device | str | None) -> tuple[nn.Module, torch.device]:
    """The model on ``device`` (the model itself if it is there already, else a moved copy)."""
    first = next(model.parameters(), None)
    if first is None:
        raise ValueError("model: has no parameters")
    if device is None:
        return model, first.device
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    if first.device == dev:
        return model, dev
    # Leave the caller's model where it is: work on a copy on the requested device.
    return copy.deepcopy(model).to(dev), dev


def _check_tol(value: Any, name: str = "tol") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0) or math.isinf(value):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


class _eval_mode:
    """Context manager: ``model.eval()`` inside, the previous per-module modes restored after."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self

    def __exit__(self, *exc):
        for m, mode in self.modes:
            m.training = mode


# --------------------------------------------------------------------------- Hessian-vector products


class _Estimators:
    """The estimators every Hessian operator offers (on itself): eigenvalues, trace, spectrum.

    Subclasses provide ``dim``, ``device``, ``dtype``, ``names``, ``sizes``, ``shapes`` and ``__call__``.
    """

    dim: int
    device: torch.device
    dtype: torch.dtype
    names: list[str]
    sizes: list[int]
    shapes: list[tuple[int, ...]]

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Views of a flat vector shaped like the chosen parameters."""
        return [c.view(s) for c, s in zip(v.split(self.sizes), self.shapes)]

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors into one flat vector (on the operator's device)."""
        return torch.cat([t.reshape(-1).to(self.device, self.dtype) for t in tensors])

    def random_vector(self, kind: str = "gaussian", generator: torch.Generator | None = None) -> torch.Tensor:
        """A random flat vector (``"gaussian"`` or ``"rademacher"``), drawn on the CPU generator, then moved."""
        if kind == "gaussian":
            v = torch.randn(self.dim, generator=generator, dtype=torch.float64)
        elif kind == "rademacher":
            v = torch.randint(0, 2, (self.dim,), generator=generator).to(torch.float64).mul_(2).sub_(1)
        else:
            raise ValueError(f"kind: expected 'gaussian' or 'rademacher', got {kind!r}")
        return v.to(self.device, self.dtype)

    def eigenvalues(
        self,
        k: int = 1,
        *,
        method: str = "lanczos",
        max_iter: int = 100,
        tol: float = 1e-5,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """The ``k`` largest (algebraic) eigenvalues, descending (float64, CPU); see :func:`hessian_eigenvalues`.

        Warns (``RuntimeWarning``) when the tolerance is not reached within ``max_iter`` products.
        """
        values, converged = self._top_eigenvalues(k, method, max_iter, tol, generator, progress)
        if not converged:
            warnings.warn(
                f"hessian_eigenvalues: {method} did not reach tol={tol:g} within max_iter={max_iter}; "
                "the values are lower bounds that may be inaccurate (raise max_iter)",
                RuntimeWarning,
                stacklevel=2,
            )
        return values

    def _top_eigenvalues(self, k, method, max_iter, tol, generator, progress) -> tuple[torch.Tensor, bool]:
        k = positive_int(k, "k")
        max_iter = positive_int(max_iter, "max_iter")
        tol = _check_tol(tol)
        if method not in ("lanczos", "power"):
            raise ValueError(f"method: expected 'lanczos' or 'power', got {method!r}")
        if k > self.dim:
            raise ValueError(f"k: asked for {k} eigenvalues of a {self.dim}-dimensional Hessian")
        if method == "lanczos":
            if max_iter < k:
                raise ValueError(f"max_iter: {max_iter} Lanczos steps cannot resolve k={k} eigenvalues")
            res = lanczos(self, k, num_steps=max_iter, tol=tol, generator=generator, progress=progress)
            return res.ritz_values[:k].clone(), res.converged
        values, _, _, converged = power_iteration(self, k, max_iter=max_iter, tol=tol, generator=generator,
                                                  progress=progress)
        return values.clone(), converged

    def trace(
        self,
        num_samples: int = 100,
        *,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
    ) -> "TraceEstimate":
        """Hutchinson's estimate of the trace (see :func:`hessian_trace`), with per-parameter traces.

        The same Rademacher probes give each parameter's diagonal-block trace ``tr H_ll`` (the mean of
        ``v_lᵀ (H v)_l``), stored in ``per_parameter`` as ``name -> (trace, stderr)``.
        """
        num_samples = positive_int(num_samples, "num_samples")
        from tqdm.auto import tqdm

        rows = []
        for _ in tqdm(range(num_samples), desc="Hutchinson", disable=not progress_enabled(progress), leave=False):
            v = self.random_vector("rademacher", generator)
            prod = v * self(v)
            rows.append(torch.stack([c.sum() for c in prod.split(self.sizes)]))
        parts = torch.stack(rows).to("cpu", torch.float64)  # num_samples × num_parameters, one host copy
        samples = parts.sum(1)

        def mean_se(x: torch.Tensor) -> tuple[float, float]:
            se = float(x.std(unbiased=True) / math.sqrt(num_samples)) if num_samples > 1 else float("nan")
            return float(x.mean()), se

        per = {n: mean_se(parts[:, i]) for i, n in enumerate(self.names)}
        mean, stderr = mean_se(samples)
        return TraceEstimate(mean, stderr, num_samples, samples, per)

    def spectrum(
        self,
        num_steps: int = 64,
        num_probes: int = 1,
        *,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stochastic Lanczos quadrature ``(nodes, weights)``; see :func:`hessian_spectrum`."""
        nodes, weights, _ = self._spectrum(num_steps, num_probes, generator, progress)
        return nodes, weights

    def _spectrum(self, num_steps, num_probes, generator, progress):
        num_steps = positive_int(num_steps, "num_steps")
        num_probes = positive_int(num_probes, "num_probes")
        nodes, weights, runs = [], [], []
        for _ in range(num_probes):
            v = self.random_vector("rademacher", generator)
            res = lanczos(self, 1, num_steps=num_steps, tol=None, v0=v, generator=generator,
                          restart_on_breakdown=False, progress=progress)
            nodes.append(res.ritz_values)
            weights.append(res.weights / num_probes)
            runs.append(res)
        nodes_t, weights_t = torch.cat(nodes), torch.cat(weights)
        order = torch.argsort(nodes_t)
        return nodes_t[order], weights_t[order], runs


class HessianOperator(_Estimators):
    """``v ↦ H v`` for the Hessian of the loss averaged over all batches of ``data``.

    Defined in book/your_model.md. Build it with :func:`hvp_operator`.

    Vectors are flat tensors of length :attr:`dim` (the chosen parameters concatenated in the
    order of :attr:`names`) on :attr:`device` with :attr:`dtype`. Each call passes over all
    batches and weights batch ``b`` by ``n_b / N``. With cached graphs the first call builds, for
    every batch, the graph of the gradient (``create_graph=True``), and every call is then one
    extra backward pass per batch; the cache lives until :meth:`close` (or the ``with`` block ends).
    :attr:`num_hvp` counts the products computed.

    Build it once and ask it several questions: :meth:`eigenvalues` (Lanczos or power iteration),
    :meth:`trace` (Hutchinson, with per-parameter block traces), :meth:`spectrum` (stochastic
    Lanczos quadrature), :meth:`layerwise` (per-layer sharpness) and :meth:`block` (a diagonal
    block with the same estimators) all reuse the same cached graphs. The module functions
    (:func:`hessian_eigenvalues`, ...) are thin wrappers that build one and close it.

    Example
    -------
    >>> import torch, torch.nn.functional as F
    >>> from pruninglab.sharpness import HessianOperator
    >>> torch.manual_seed(0); model = torch.nn.Linear(4, 3)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> with HessianOperator(model, F.cross_entropy, (x, y)) as op:
    ...     top = op.eigenvalues(k=2)
    ...     trace = op.trace(num_samples=20)
    ...     nodes, weights = op.spectrum(num_steps=8)
    >>> op.dim, top.shape, bool(top[0] >= top[1]), abs(float(weights.sum()) - 1) < 1e-9
    (15, torch.Size([2]), True, True)
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        params: Sequence[str] | None = None,
        device: torch.device | str | None = None,
        cache_graphs: bool | None = None,
    ):
        if not callable(loss_fn):
            raise ValueError(f"loss_fn: expected a callable loss_fn(outputs, targets) -> scalar, got {loss_fn!r}")
        self.model, self.device = _model_on(model, device)
        self.loss_fn = loss_fn
        self.data = _normalise_data(data)
        self.names, self.params = _select_parameters(self.model, params)
        self.shapes = [tuple(p.shape) for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        self.dtype = self.params[0].dtype
        if cache_graphs is None:
            # One batch: the graph is the same for every product, so build it once (the usual case
            # for small data). Several batches: caching keeps every batch's graph in memory, so it
            # is opt-in.
            cache_graphs = hasattr(self.data, "__len__") and len(self.data) == 1
        self.cache_graphs = bool(cache_graphs)
        self.num_hvp = 0
        self.num_samples: int | None = None
        self._cache: list[tuple[list[torch.Tensor], list[int], int]] | None = None

    # -- flat <-> per-parameter (split, flatten, random_vector: see _Estimators)
    def parameters_flat(self) -> torch.Tensor:
        """The current values of the chosen parameters as a flat vector."""
        return self.flatten([p.detach() for p in self.params])

    # -- the product
    def _batches(self) -> Iterator[tuple[Any, Any, int]]:
        for i, batch in enumerate(self.data):
            inputs, targets = _unpack_batch(batch, i)
            n = _batch_size(inputs, targets)
            yield _to_device(inputs, self.device), _to_device(targets, self.device), n

    def _gradient_graph(self, inputs: Any, targets: Any) -> tuple[list[torch.Tensor], list[int]]:
        """First-order gradients with their graph; only the entries that depend on the parameters."""
        loss = self.loss_fn(self.model(inputs), targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn: must return a scalar tensor (the mean loss of the batch)")
        grads = torch.autograd.grad(loss.reshape(()), self.params, create_graph=True, allow_unused=True)
        # A gradient that is constant (loss linear in that parameter) or absent has no second
        # derivative; skipping it keeps autograd from complaining and its Hessian rows are zero.
        keep = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        return [grads[i] for i in keep], keep

    def _accumulate(self, out: list[torch.Tensor], grads: list[torch.Tensor], keep: list[int],
                    vs: list[torch.Tensor | None], wrt: list[int], weight: float, retain: bool) -> None:
        pairs = [(g, vs[i]) for g, i in zip(grads, keep) if vs[i] is not None]
        if not pairs:
            return
        hv = torch.autograd.grad([g for g, _ in pairs], [self.params[i] for i in wrt],
                                 grad_outputs=[v for _, v in pairs], retain_graph=retain, allow_unused=True)
        for o, h in zip(out, hv):
            if h is not None:
                o.add_(h, alpha=weight)

    def _product(self, vs: list[torch.Tensor | None], wrt: list[int]) -> list[torch.Tensor]:
        """``(H v)`` restricted to the parameters ``wrt``, for ``v`` given per parameter (``None`` = 0)."""
        out = [torch.zeros(self.shapes[i], device=self.device, dtype=self.dtype) for i in wrt]
        total = 0
        with _eval_mode(self.model):
            if self.cache_graphs:
                if self._cache is None:
                    cache = []
                    for inputs, targets, n in self._batches():
                        grads, keep = self._gradient_graph(inputs, targets)
                        cache.append((grads, keep, n))
                    self._cache = cache
                for grads, keep, n in self._cache:
                    self._accumulate(out, grads, keep, vs, wrt, float(n), retain=True)
                    total += n
            else:
                for inputs, targets, n in self._batches():
                    grads, keep = self._gradient_graph(inputs, targets)
                    self._accumulate(out, grads, keep, vs, wrt, float(n), retain=False)
                    total += n
        if total == 0:
            raise ValueError("data: yielded no samples")
        self.num_samples = total
        self.num_hvp += 1
        return [o.div_(total) for o in out]

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if not isinstance(v, torch.Tensor) or v.shape != (self.dim,):
            raise ValueError(f"v: expected a flat tensor of shape ({self.dim},), got {getattr(v, 'shape', type(v))}")
        v = v.to(self.device, self.dtype)
        out = self._product(list(self.split(v)), list(range(len(self.params))))
        return torch.cat([o.reshape(-1) for o in out])

    def block(self, names: Sequence[str]) -> "HessianBlock":
        """The diagonal block of the Hessian over the parameters ``names`` (a subset of :attr:`names`).

        The block shares this operator's cached gradient graphs; each of its products costs one
        backward pass restricted to those parameters.
        """
        if isinstance(names, str):
            names = [names]
        missing = [n for n in names if n not in self.names]
        if not names or missing:
            raise ValueError(f"names: expected a non-empty subset of the operator's parameters, got {list(names)!r}")
        return HessianBlock(self, [self.names.index(n) for n in names])

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H @ vectors`` for a ``(dim, m)`` matrix, column by column."""
        return torch.stack([self(vectors[:, j]) for j in range(vectors.shape[1])], dim=1)

    def as_linear_operator(self):
        """A ``scipy.sparse.linalg.LinearOperator`` (float64 NumPy in and out), e.g. for ARPACK's ``eigsh``."""
        from scipy.sparse.linalg import LinearOperator

        def mv(x):
            x = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(-1))
            return self(x).to("cpu", torch.float64).numpy()

        return LinearOperator((self.dim, self.dim), matvec=mv, dtype=np.float64)

    def layerwise(
        self,
        names: Sequence[str] | None = None,
        *,
        num_trace_samples: int = 50,
        max_iter: int = 100,
        tol: float = 1e-5,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
    ) -> list["LayerSharpness"]:
        """Top eigenvalue and Hutchinson trace of each named parameter's diagonal block (default: all).

        Every block reuses this operator's cached gradient graphs; see :func:`layerwise_sharpness`.
        """
        rows = []
        for name in (self.names if names is None else names):
            blk = self.block([name])
            top, converged = blk._top_eigenvalues(1, "lanczos", max_iter, tol, generator, progress)
            if not converged:
                warnings.warn(f"layerwise_sharpness: Lanczos on {name!r} did not reach tol={tol:g} within "
                              f"max_iter={max_iter}", RuntimeWarning, stacklevel=2)
            tr = blk.trace(num_trace_samples, generator=generator, progress=progress)
            rows.append(LayerSharpness(name, blk.dim, float(top[0]), tr.trace, tr.stderr))
        return rows

    def close(self) -> None:
        """Free the cached gradient graphs."""
        self._cache = None

    def __enter__(self) -> "HessianOperator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"HessianOperator(dim={self.dim}, params={len(self.names)}, device={self.device}, "
                f"cache_graphs={self.cache_graphs}, num_hvp={self.num_hvp})")


class HessianBlock(_Estimators):
    """A diagonal block ``H_ll`` of a :class:`HessianOperator` (built by :meth:`HessianOperator.block`).

    Offers the same estimators (``eigenvalues``, ``trace``,
    ``spectrum``) on flat vectors of the block's parameters; products go through the parent's
    cached gradient graphs and are counted in the parent's :attr:`HessianOperator.num_hvp`.
    """

    def __init__(self, parent: HessianOperator, indices: list[int]):
        self.parent = parent
        self.indices = list(indices)
        self.names = [parent.names[i] for i in self.indices]
        self.shapes = [parent.shapes[i] for i in self.indices]
        self.sizes = [parent.sizes[i] for i in self.indices]
        self.dim = sum(self.sizes)
        self.device, self.dtype = parent.device, parent.dtype

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if not isinstance(v, torch.Tensor) or v.shape != (self.dim,):
            raise ValueError(f"v: expected a flat tensor of shape ({self.dim},), got {getattr(v, 'shape', type(v))}")
        vs: list[torch.Tensor | None] = [None] * len(self.parent.params)
        for i, part in zip(self.indices, self.split(v.to(self.device, self.dtype))):
            vs[i] = part
        out = self.parent._product(vs, self.indices)
        return torch.cat([o.reshape(-1) for o in out])

    def __repr__(self) -> str:
        return f"HessianBlock(names={self.names}, dim={self.dim})"


def hvp_operator(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    params: Sequence[str] | None = None,
    *,
    device: torch.device | str | None = None,
    cache_graphs: bool | None = None,
) -> HessianOperator:
    """The Hessian-vector product of the loss averaged over all batches, as a callable on flat vectors.

    Defined in book/sharpness.md.

    ``data`` is a re-iterable of ``(inputs, targets)`` batches (a list, a DataLoader) or one
    ``(inputs, targets)`` pair; ``loss_fn(model(inputs), targets)`` must return the batch's mean
    loss. ``params`` is a list of parameter names (default: all that require grad). ``device``
    defaults to the parameters' device (another device works on a copy of the model).
    ``cache_graphs`` (default: only for a single batch) builds each batch's gradient graph once.
    """
    return HessianOperator(model, loss_fn, data, params, device=device, cache_graphs=cache_graphs)


# --------------------------------------------------------------------------- Lanczos and power iteration


@dataclass
class LanczosResult:
    """Output of :func:`lanczos`.

    ``ritz_values`` are all Ritz values of the final tridiagonal matrix, descending, with their
    residual norms ``residuals`` (``‖H y − θ y‖`` for the Ritz vector ``y``, an upper bound on the
    distance of ``θ`` to an eigenvalue) and ``weights`` (squared first components of the
    tridiagonal's eigenvectors: the quadrature weights of SLQ). ``alphas``/``betas`` are the
    tridiagonal's diagonal and off-diagonal; ``num_hvp`` counts Hessian-vector products.
    """

    ritz_values: torch.Tensor
    residuals: torch.Tensor
    weights: torch.Tensor
    alphas: torch.Tensor
    betas: torch.Tensor
    num_hvp: int
    converged: bool
    eigenvectors: torch.Tensor | None = None


def _tridiagonal_eigh(alphas: list[float], betas: list[float]) -> tuple[np.ndarray, np.ndarray]:
    from scipy.linalg import eigh_tridiagonal

    d = np.asarray(alphas, dtype=np.float64)
    if not (np.isfinite(d).all() and np.isfinite(np.asarray(betas, dtype=np.float64)).all()):
        raise ValueError("data: the Hessian-vector products became NaN or Inf (NaN/Inf inputs or targets, "
                         "or a loss that is not finite at these weights)")
    if len(d) == 1:
        return d.copy(), np.ones((1, 1))
    e = np.asarray(betas[: len(d) - 1], dtype=np.float64)
    return eigh_tridiagonal(d, e)


def lanczos(
    op: Callable[[torch.Tensor], torch.Tensor] | HessianOperator,
    k: int = 1,
    *,
    num_steps: int = 100,
    tol: float | None = 1e-5,
    v0: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    restart_on_breakdown: bool = True,
    return_eigenvectors: bool = False,
    progress: bool | None = None,
    dim: int | None = None,
) -> LanczosResult:
    """Lanczos with full re-orthogonalisation on a symmetric operator (e.g. :func:`hvp_operator`).

    Defined in book/sharpness.md.

    Runs at most ``num_steps`` steps (capped at the dimension) and stops early once the ``k``
    largest Ritz values have residuals ``≤ tol · max|θ|`` (``tol=None``: never early; SLQ uses
    that). Each new Lanczos vector is orthogonalised twice against all previous ones ("twice is
    enough"), which removes the ghost eigenvalues of plain Lanczos at the cost of storing the
    basis (``steps × dim`` numbers, allocated as the steps are taken). If the Krylov space becomes invariant (``β ≈ 0``) the
    iteration restarts from a random vector orthogonal to the basis, or stops when
    ``restart_on_breakdown=False`` (the quadrature of the start vector is then exact).
    """
    k = positive_int(k, "k")
    num_steps = positive_int(num_steps, "num_steps")
    if tol is not None:
        tol = _check_tol(tol)
    n = int(dim if dim is not None else getattr(op, "dim"))
    if k > n:
        raise ValueError(f"k: asked for {k} eigenvalues of a {n}-dimensional Hessian")
    m = min(num_steps, n)
    if m < k:
        raise ValueError(f"num_steps: {num_steps} steps cannot resolve k={k} eigenvalues; use num_steps >= k")
    if v0 is None:
        if hasattr(op, "random_vector"):
            v0 = op.random_vector("gaussian", generator)
        else:
            raise ValueError("v0: a start vector is needed when op is a plain callable")
    q = v0.detach().clone()
    nrm = torch.linalg.vector_norm(q)
    if not bool(nrm > 0):
        raise ValueError("v0: the start vector is zero")
    q.div_(nrm)
    dev, dt = q.device, q.dtype
    # The basis grows by doubling, so memory follows the steps actually taken (early stops are common),
    # not num_steps × dim up front.
    basis = torch.empty((min(m, 16), q.numel()), device=dev, dtype=dt)
    alphas: list[float] = []
    betas: list[float] = []
    eps = torch.finfo(dt).eps
    anorm = 0.0
    converged = False
    theta = s = None
    from tqdm.auto import tqdm

    bar = tqdm(total=m, desc="Lanczos", disable=not progress_enabled(progress), leave=False)
    num_hvp = 0
    for j in range(m):
        if j == basis.shape[0]:
            grown = torch.empty((min(m, 2 * j), q.numel()), device=dev, dtype=dt)
            grown[:j] = basis
            basis = grown
        basis[j] = q
        w = op(q)
        num_hvp += 1
        w = w.to(dev, dt)
        # Full re-orthogonalisation: the first pass subtracts α q (and β q_{j-1}) along with every
        # lost component; the second pass cleans what rounding left.
        V = basis[: j + 1]
        coeffs = V @ w
        alpha = coeffs[j]
        w.sub_(coeffs @ V)
        w.sub_((V @ w) @ V)
        beta = torch.linalg.vector_norm(w)
        a, b = torch.stack([alpha, beta]).tolist()  # one host sync per HVP
        alphas.append(a)
        betas.append(b)
        anorm = max(anorm, abs(a) + b)
        bar.update(1)
        last = j + 1 == m
        # β at the rounding-noise level of an exhausted Krylov space; dropping a coupling this small
        # moves Ritz values by at most β (typically β²/gap).
        breakdown = b <= 100 * eps * math.sqrt(j + 1) * max(anorm, 1e-300)
        if tol is not None or last or breakdown:
            theta, s = _tridiagonal_eigh(alphas, betas)
        if tol is not None and j + 1 >= k:
            top = np.arange(len(theta) - 1, len(theta) - 1 - k, -1)
            res = np.abs(b * s[-1, top])
            scale = max(np.max(np.abs(theta)), 1e-300)
            if np.all(res <= tol * scale):
                converged = True
                break
        if last:
            break
        if breakdown:
            if not restart_on_breakdown:
                betas[-1] = 0.0
                converged = True
                break
            # Invariant subspace found: continue in its orthogonal complement (β = 0 decouples the blocks).
            betas[-1] = 0.0
            w = torch.randn(q.numel(), generator=generator, dtype=torch.float64).to(dev, dt)
            w.sub_((V @ w) @ V)
            w.sub_((V @ w) @ V)
            q = w / torch.linalg.vector_norm(w)
        else:
            q = w / beta
    bar.close()
    steps = len(alphas)
    theta, s = _tridiagonal_eigh(alphas, betas)
    order = np.argsort(theta)[::-1].copy()
    res = np.abs(betas[-1] * s[-1, order])
    result = LanczosResult(
        ritz_values=torch.from_numpy(theta[order].copy()),
        residuals=torch.from_numpy(res),
        weights=torch.from_numpy(s[0, order] ** 2),
        alphas=torch.tensor(alphas, dtype=torch.float64),
        betas=torch.tensor(betas[: steps - 1] if steps > 1 else [], dtype=torch.float64),
        num_hvp=num_hvp,
        converged=converged or steps == n,
    )
    if return_eigenvectors:
        kk = min(k, steps)
        y = torch.from_numpy(s[:, order[:kk]].copy()).to(dev, dt)
        result.eigenvectors = (basis[:steps].T @ y).T.contiguous()
    return result


def power_iteration(
    op: Callable[[torch.Tensor], torch.Tensor] | HessianOperator,
    k: int = 1,
    *,
    max_iter: int = 100,
    tol: float = 1e-5,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
    dim: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Power iteration with deflation for the ``k`` largest (algebraic) eigenvalues.

    Defined in book/sharpness.md.

    Returns ``(eigenvalues, eigenvectors, num_hvp, converged)``. Each eigenpair stops when the
    residual ``‖Hv − λv‖ ≤ tol · |λ|``. Power iteration finds the eigenvalue of largest
    *magnitude*; when that one is negative the iteration is rerun on ``H − λ I`` (all eigenvalues
    ≥ 0), whose dominant eigenvalue is the largest algebraic one. Convergence is geometric in
    ``λ₂/λ₁``, so it can be slow where Lanczos is fast.
    """
    k = positive_int(k, "k")
    max_iter = positive_int(max_iter, "max_iter")
    tol = _check_tol(tol)
    n = int(dim if dim is not None else getattr(op, "dim"))
    if k > n:
        raise ValueError(f"k: asked for {k} eigenvalues of a {n}-dimensional Hessian")
    from tqdm.auto import tqdm

    found: list[torch.Tensor] = []
    values: list[float] = []
    num_hvp = 0
    all_converged = True
    bar = tqdm(total=k * max_iter, desc="power iteration", disable=not progress_enabled(progress), leave=False)

    def start() -> torch.Tensor:
        if hasattr(op, "random_vector"):
            v = op.random_vector("gaussian", generator)
        else:
            v = torch.randn(n, generator=generator, dtype=torch.float64)
        return v

    def project(v: torch.Tensor) -> torch.Tensor:
        for u in found:
            v = v - torch.dot(u, v) * u
        return v

    def run(shift: float) -> tuple[float, torch.Tensor, bool]:
        nonlocal num_hvp
        v = project(start())
        v = v / torch.linalg.vector_norm(v)
        lam = 0.0
        for _ in range(max_iter):
            w = op(v).to(v.dtype)
            num_hvp += 1
            bar.update(1)
            if shift:
                w = w - shift * v
            w = project(w)
            lam_t = torch.dot(v, w)
            res_t = torch.linalg.vector_norm(w - lam_t * v)
            nrm_t = torch.linalg.vector_norm(w)
            lam, res, nrm = torch.stack([lam_t, res_t, nrm_t]).tolist()  # one host sync per HVP
            if res <= tol * abs(lam + shift) or nrm == 0.0:
                return lam + shift, v, True
            v = w / nrm
        return lam + shift, v, False

    for _ in range(k):
        lam, v, ok = run(0.0)
        if lam < 0:
            # The dominant eigenvalue is negative; on H − λI every eigenvalue is ≥ 0, and the dominant
            # one is the largest algebraic eigenvalue of H shifted by −λ.
            lam, v, ok = run(lam)
        all_converged &= ok
        found.append(v)
        values.append(lam)
    bar.close()
    order = np.argsort(values)[::-1].copy()
    vals = torch.tensor(values, dtype=torch.float64)[order]
    vecs = torch.stack(found)[torch.from_numpy(order)]
    return vals, vecs, num_hvp, all_converged


def hessian_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    k: int = 1,
    method: str = "lanczos",
    params: Sequence[str] | None = None,
    max_iter: int = 100,
    tol: float = 1e-5,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    generator: torch.Generator | None = None,
    cache_graphs: bool | None = None,
) -> torch.Tensor:
    """The ``k`` largest (algebraic) eigenvalues of the loss Hessian, descending (float64, on the CPU).

    Defined in book/sharpness.md.

    ``method="lanczos"`` (default): Lanczos with full re-orthogonalisation, at most ``max_iter``
    Hessian-vector products, stopping when the ``k`` top Ritz residuals are ``≤ tol · max|θ|``.
    ``method="power"``: power iteration with deflation, at most ``max_iter`` products per
    eigenvalue, stopping when ``‖Hv − λv‖ ≤ tol·|λ|``. A warning is issued if the tolerance is
    not reached. ``data``, ``params``, ``device`` and ``cache_graphs`` are as in :func:`hvp_operator`;
    ``generator`` (a CPU ``torch.Generator``) makes the random start reproducible.

    Example
    -------
    >>> import torch, torch.nn.functional as F
    >>> import pruninglab as pl
    >>> torch.manual_seed(0); model = torch.nn.Linear(5, 3)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> data = (torch.randn(40, 5), torch.randint(0, 3, (40,)))
    >>> top = pl.hessian_eigenvalues(model, F.cross_entropy, data, k=2)
    >>> exact = pl.exact_hessian_eigenvalues(model, F.cross_entropy, data, k=2)
    >>> torch.allclose(top, exact, rtol=1e-4)
    True
    """
    with hvp_operator(model, loss_fn, data, params, device=device, cache_graphs=cache_graphs) as op:
        values, converged = op._top_eigenvalues(k, method, max_iter, tol, generator, progress)
    if not converged:
        warnings.warn(
            f"hessian_eigenvalues: {method} did not reach tol={tol:g} within max_iter={max_iter}; "
            "the values are lower bounds that may be inaccurate (raise max_iter)",
            RuntimeWarning,
            stacklevel=2,
        )
    return values


# --------------------------------------------------------------------------- trace and spectral density


@dataclass
class TraceEstimate:
    """Hutchinson's trace estimate: ``trace`` (the sample mean of ``vᵀHv``) and its standard error.

    Unpacks as ``trace, stderr = hessian_trace(...)``; ``samples``
    holds every ``vᵀHv``; ``per_parameter`` maps each parameter name to its diagonal block's
    ``(trace, stderr)`` from the same probes.
    """

    trace: float
    stderr: float
    num_samples: int
    samples: torch.Tensor
    per_parameter: dict[str, tuple[float, float]] | None = None

    def __iter__(self):
        yield self.trace
        yield self.stderr


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    num_samples: int = 100,
    params: Sequence[str] | None = None,
    *,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    generator: torch.Generator | None = None,
    cache_graphs: bool | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate of ``tr H`` from ``num_samples`` Rademacher probes, with its standard error.

    Defined in book/sharpness.md.

    ``E[vᵀHv] = tr H`` for any ``v`` with independent ±1 entries; the standard error is the
    sample standard deviation over ``√num_samples`` (its variance is ``2 Σ_{i≠j} H_ij²``, so it
    is small when ``H`` is nearly diagonal). Always runs all ``num_samples`` probes.


    Example
    -------
    >>> import torch, torch.nn.functional as F
    >>> import pruninglab as pl
    >>> torch.manual_seed(0); model = torch.nn.Linear(5, 3)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> data = (torch.randn(40, 5), torch.randint(0, 3, (40,)))
    >>> trace, stderr = pl.hessian_trace(model, F.cross_entropy, data, num_samples=200)
    >>> exact = float(pl.exact_hessian(model, F.cross_entropy, data).trace())
    >>> abs(trace - exact) < 5 * stderr
    True
    """
    num_samples = positive_int(num_samples, "num_samples")
    with hvp_operator(model, loss_fn, data, params, device=device, cache_graphs=cache_graphs) as op:
        return op.trace(num_samples, generator=generator, progress=progress)


def hessian_spectrum(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    num_steps: int = 64,
    num_probes: int = 1,
    params: Sequence[str] | None = None,
    *,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    generator: torch.Generator | None = None,
    cache_graphs: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastic Lanczos quadrature: ``(nodes, weights)`` of the Hessian's spectral measure.

    Defined in book/sharpness.md.

    For each of ``num_probes`` normalised Rademacher probes ``v``, ``num_steps`` Lanczos steps
    (full re-orthogonalisation) give a tridiagonal ``T``; its eigenvalues are the nodes and the
    squared first components of its eigenvectors are the weights, so that
    ``Σ_j w_j f(θ_j) ≈ vᵀ f(H) v ≈ tr f(H) / D``. Weights are divided by ``num_probes`` and
    sum to 1 (multiply by ``D = dim`` for traces). A probe whose Krylov space becomes invariant
    stops early (its quadrature is then exact). Returns float64 CPU tensors sorted by node.
    Use :func:`spectral_average` for quantities and :func:`spectral_density` only to plot.


    Example
    -------
    >>> import torch, torch.nn.functional as F
    >>> import pruninglab as pl
    >>> torch.manual_seed(0); model = torch.nn.Linear(5, 3)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> data = (torch.randn(40, 5), torch.randint(0, 3, (40,)))
    >>> nodes, weights = pl.hessian_spectrum(model, F.cross_entropy, data, num_steps=18)
    >>> round(float(weights.sum()), 6), bool(nodes.max() <= pl.hessian_eigenvalues(
    ...     model, F.cross_entropy, data)[0] + 1e-6)
    (1.0, True)
    """
    num_steps = positive_int(num_steps, "num_steps")
    num_probes = positive_int(num_probes, "num_probes")
    with hvp_operator(model, loss_fn, data, params, device=device, cache_graphs=cache_graphs) as op:
        return op.spectrum(num_steps, num_probes, generator=generator, progress=progress)


def spectral_average(nodes: torch.Tensor, weights: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """``Σ_j w_j fn(θ_j)``: the SLQ estimate of ``tr fn(H) / D``.

    Defined in book/sharpness.md.
    """
    nodes, weights = _check_nodes_weights(nodes, weights)
    return float((weights * fn(nodes)).sum())


def _check_nodes_weights(nodes: Any, weights: Any) -> tuple[torch.Tensor, torch.Tensor]:
    nodes = torch.as_tensor(nodes, dtype=torch.float64)
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if nodes.ndim != 1 or nodes.shape != weights.shape or nodes.numel() == 0:
        raise ValueError(
            f"nodes, weights: expected two non-empty 1-D tensors of equal length, got {tuple(nodes.shape)} "
            f"and {tuple(weights.shape)}"
        )
    if not (bool(torch.isfinite(nodes).all()) and bool(torch.isfinite(weights).all())):
        raise ValueError("nodes, weights: contain NaN or Inf values")
    return nodes, weights


def spectral_density(
    nodes: torch.Tensor,
    weights: torch.Tensor,
    grid: torch.Tensor | int = 1000,
    sigma: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth density from SLQ nodes and weights (a sum of Gaussians), for plotting only.

    Defined in book/sharpness.md.

    ``grid`` is a tensor of points or a number of points spanning the nodes' range (padded by
    ``5σ``); ``sigma`` defaults to 1% of that range. The result integrates to about 1. The
    smoothing hides the sizes of isolated eigenvalues and blurs the bulk: compute quantities with
    :func:`spectral_average` on the nodes and weights instead.
    """
    nodes, weights = _check_nodes_weights(nodes, weights)
    lo, hi = float(nodes.min()), float(nodes.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    if sigma is None:
        sigma = 0.01 * span
    sigma = _check_tol(sigma, "sigma")
    if isinstance(grid, int) and not isinstance(grid, bool):
        if grid < 2:
            raise ValueError(f"grid: expected at least 2 points, got {grid}")
        grid_t = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, grid, dtype=torch.float64)
    elif isinstance(grid, torch.Tensor) and grid.ndim == 1:
        grid_t = grid.to(torch.float64)
    else:
        raise ValueError(f"grid: expected a number of points or a 1-D tensor, got {grid!r}")
    z = (grid_t[:, None] - nodes[None, :]) / sigma
    density = (weights[None, :] * torch.exp(-0.5 * z * z)).sum(1) / (sigma * math.sqrt(2 * math.pi))
    return grid_t, density


# --------------------------------------------------------------------------- exact Hessian (small models)


def exact_hessian(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    params: Sequence[str] | None = None,
    *,
    dtype: torch.dtype | None = torch.float64,
    device: torch.device | str | None = None,
    chunk_size: int | None = None,
    max_dim: int = 20_000,
) -> torch.Tensor:
    """The dense ``D × D`` Hessian of the loss averaged over all batches, over the chosen parameters.

    Defined in book/sharpness.md.

    Computed with ``torch.func`` — the forward-over-reverse Hessian of ``torch.func.hessian``,
    vmapped over the columns in chunks of ``chunk_size`` so memory stays bounded (reverse-over-reverse
    for losses whose backward has no forward-mode derivative) — on a
    functional copy of the model (``functional_call``), in ``dtype`` (float64 by default, the
    reference precision; ``None`` keeps the model's dtype). Rows and columns follow the order of
    ``params`` (default: all parameters that require grad), each flattened. Cost: about ``D``
    Hessian-vector products; ``D > max_dim`` raises ``ValueError``.
    """
    from torch.func import functional_call, grad, jvp, vjp, vmap

    data = _normalise_data(data)
    model_dev, dev = _model_on(model, device)
    names, tensors = _select_parameters(model_dev, params)
    sizes = [t.numel() for t in tensors]
    shapes = [tuple(t.shape) for t in tensors]
    dim = sum(sizes)
    if dim > max_dim:
        raise ValueError(
            f"params: the Hessian would be {dim}×{dim}, above max_dim={max_dim}; restrict params or use "
            "hessian_eigenvalues / hessian_spectrum"
        )
    dt = dtype or tensors[0].dtype
    chosen = set(names)
    const = {n: p.detach().to(dt) if p.is_floating_point() else p.detach()
             for n, p in model_dev.named_parameters() if n not in chosen}
    const.update({n: b.to(dt) if b.is_floating_point() else b for n, b in model_dev.named_buffers()})
    flat0 = torch.cat([t.detach().reshape(-1) for t in tensors]).to(dt)

    def batch_loss(flat, inputs, targets):
        chunks = [c.view(s) for c, s in zip(flat.split(sizes), shapes)]
        out = functional_call(model_dev, {**const, **dict(zip(names, chunks))}, (inputs,))
        return loss_fn(out, targets).reshape(())

    eye = torch.eye(dim, device=dev, dtype=dt)
    hessian = torch.zeros(dim, dim, device=dev, dtype=dt)
    total = 0
    with _eval_mode(model_dev):
        for i, batch in enumerate(data):
            inputs, targets = _unpack_batch(batch, i)
            n = _batch_size(inputs, targets)
            inputs, targets = _to_device(inputs, dev, dt), _to_device(targets, dev, dt)
            g = grad(batch_loss)

            def column(e):
                return jvp(lambda f: g(f, inputs, targets), (flat0,), (e,))[1]

            # Lanes of the vmap each carry a batch of activations: keep lanes × samples bounded.
            cs = chunk_size or max(1, min(dim, (1 << 17) // max(n, 1)))
            try:
                # Forward-over-reverse (what torch.func.hessian does): about 2x faster than reverse-over-reverse.
                cols = vmap(column, chunk_size=cs)(eye)
            except RuntimeError:
                # Some losses lack a forward-mode derivative of their backward (torch 2.14: F.mse_loss
                # raises "ZeroTensors are immutable"); reverse-over-reverse needs none.
                _, pullback = vjp(lambda f: g(f, inputs, targets), flat0)
                cols = vmap(lambda e: pullback(e)[0], chunk_size=cs)(eye)
            hessian.add_(cols, alpha=float(n))
            del cols
            total += n
    if total == 0:
        raise ValueError("data: yielded no samples")
    hessian.div_(total)
    return (hessian + hessian.T).mul_(0.5)


def exact_hessian_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    params: Sequence[str] | None = None,
    k: int | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """All (or the ``k`` largest) eigenvalues of :func:`exact_hessian`, descending, float64 on the CPU.

    Defined in book/limit_experiments.md. ``kwargs`` go to :func:`exact_hessian` (``dtype``, ``device``, ...).
    """
    h = exact_hessian(model, loss_fn, data, params, **kwargs)
    vals = torch.linalg.eigvalsh(h.to(torch.float64)).flip(0).cpu()
    if k is not None:
        k = positive_int(k, "k")
        if k > vals.numel():
            raise ValueError(f"k: asked for {k} eigenvalues of a {vals.numel()}-dimensional Hessian")
        vals = vals[:k]
    return vals


# --------------------------------------------------------------------------- per-layer sharpness


@dataclass
class LayerSharpness:
    """Sharpness of one parameter's diagonal Hessian block."""

    name: str
    numel: int
    top_eigenvalue: float
    trace: float
    trace_stderr: float


def layerwise_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    params: Sequence[str] | None = None,
    *,
    num_trace_samples: int = 50,
    max_iter: int = 100,
    tol: float = 1e-5,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    generator: torch.Generator | None = None,
    cache_graphs: bool | None = None,
) -> list[LayerSharpness]:
    """Top eigenvalue and Hutchinson trace of each parameter's diagonal Hessian block.

    Defined in book/sharpness.md.

    ``params`` defaults to the prunable weights (conv/linear, see
    :func:`pruninglab.masks.prunable_parameters`). Each block ``∂²L/∂w_l²`` ignores the coupling
    between layers, so the blocks' traces add up to the full trace but their top eigenvalues do not.


    Example
    -------
    >>> import torch, torch.nn.functional as F
    >>> import pruninglab as pl
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    >>> data = (torch.randn(40, 5), torch.randint(0, 3, (40,)))
    >>> rows = pl.layerwise_sharpness(model, F.cross_entropy, data, num_trace_samples=10)
    >>> [(r.name, r.numel) for r in rows], all(r.top_eigenvalue > 0 for r in rows)
    ([('0.weight', 20), ('2.weight', 12)], True)
    """
    if params is None:
        from .masks import prunable_parameters

        params = list(prunable_parameters(model))
    with hvp_operator(model, loss_fn, data, params, device=device, cache_graphs=cache_graphs) as op:
        return op.layerwise(num_trace_samples=num_trace_samples, max_iter=max_iter, tol=tol,
                            generator=generator, progress=progress)


#: Layer types whose parameters the paper's Hessian leaves out (normalisation layers).
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
)


def hessian_parameters(model: nn.Module) -> list[str]:
    """The parameters the pruning-limit Hessian is taken over: all that require grad except normalisation layers'.

    Defined in book/your_model.md. Biases are included (as in the paper's code), so this ``D``
    exceeds the number of prunable weights ``D_w``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    skip = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, NORM_LAYERS):
            prefix = f"{mod_name}." if mod_name else ""
            skip.update(prefix + n for n, _ in mod.named_parameters(recurse=False))
    return [n for n, p in model.named_parameters() if p.requires_grad and n not in skip]
