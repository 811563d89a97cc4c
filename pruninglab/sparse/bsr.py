"""Block-sparse (BSR) inference for block-pruned ``nn.Linear`` layers, and how to time it.

Defined in book/block_sparse_speed.md.

A mask alone changes neither the speed nor the size of a model: the zeros are still stored and
multiplied. Speed comes only from a storage format whose kernels skip the zero blocks. This module
converts the Linear layers of a block-pruned model into :class:`BlockSparseLinear` modules that hold
their weight as PyTorch's block compressed sparse row format (``torch.sparse_bsr_tensor``), with the
same outputs as the dense masked model, and measures dense against BSR matmul time.

The converted modules are for inference only. They store the BSR tensor's three parts
(``crow_indices``, ``col_indices``, ``values``) as ordinary buffers and rebuild the BSR view on
each call (a few microseconds), because ``copy.deepcopy`` cannot copy a BSR tensor itself.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..masks import check_masks

BlockSize = int | tuple[int, int]

#: dtypes PyTorch's CUDA Triton BSR kernels accept (besides int8, which Linear layers do not use).
TRITON_BSR_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# torch prints a "BSR support is in beta" UserWarning on the first BSR tensor; it says nothing the
# chapter does not say, and would repeat in every notebook.
warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta", category=UserWarning)


def _block_pair(block_size, name: str = "block_size") -> tuple[int, int]:
    if isinstance(block_size, bool):
        raise ValueError(f"{name}: expected a positive int or a pair of positive ints, got {block_size!r}")
    if isinstance(block_size, int):
        pair = (block_size, block_size)
    elif isinstance(block_size, (tuple, list)) and len(block_size) == 2:
        pair = tuple(block_size)
    else:
        raise ValueError(f"{name}: expected a positive int or a pair (rows, cols) of positive ints, got {block_size!r}")
    if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in pair):
        raise ValueError(f"{name}: block sides must be positive ints, got {block_size!r}")
    return pair  # type: ignore[return-value]


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def triton_bsr_eligible(block_size: BlockSize, dtype: torch.dtype = torch.float32) -> bool:
    """Whether PyTorch's CUDA (Triton) BSR kernels take this block size and dtype.

    Defined in book/block_sparse_speed.md.

    They need each block side to be a power of two and at least 16, and a float16, bfloat16 or
    float32 weight. The CPU kernels accept any block size that tiles the (padded) weight.
    """
    r, c = _block_pair(block_size)
    return r >= 16 and c >= 16 and _is_power_of_two(r) and _is_power_of_two(c) and dtype in TRITON_BSR_DTYPES


def _padded(n: int, b: int) -> int:
    return -(-n // b) * b


def block_structure(mask: torch.Tensor, block_size: BlockSize, name: str = "mask") -> torch.Tensor:
    """The grid of kept blocks of a block-structured 2-D mask (``True`` = block kept).

    The weight is tiled from the top-left corner into ``rows x cols`` blocks; when a side does not
    divide the weight, the last row/column of blocks is partial (the padding rule of
    ``pruninglab.pruners.blocks``: pad to whole blocks, crop back). Every (partial) block must be
    all kept or all pruned, else ``ValueError`` names the first mixed block.
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(
            f"{name}: expected a 2-D bool tensor (a Linear weight mask), got "
            f"{getattr(mask, 'dtype', type(mask).__name__)} of shape {tuple(getattr(mask, 'shape', ()))}"
        )
    br, bc = _block_pair(block_size)
    n, m = mask.shape
    nb, mb = -(-n // br), -(-m // bc)
    # Count kept entries per block; a partial edge block is compared with its own (smaller) size,
    # so the zero padding never makes a block look mixed.
    padded = torch.zeros(nb * br, mb * bc, dtype=torch.int8, device=mask.device)
    padded[:n, :m] = mask.to(torch.int8)
    counts = padded.view(nb, br, mb, bc).sum(dim=(1, 3), dtype=torch.int32)
    rows_in = torch.full((nb,), br, dtype=torch.int32, device=mask.device)
    cols_in = torch.full((mb,), bc, dtype=torch.int32, device=mask.device)
    rows_in[-1] = n - (nb - 1) * br
    cols_in[-1] = m - (mb - 1) * bc
    sizes = rows_in[:, None] * cols_in[None, :]
    mixed = (counts != 0) & (counts != sizes)
    if bool(mixed.any()):
        i, j = (int(v) for v in mixed.nonzero()[0])
        raise ValueError(
            f"{name}: is not block-structured for block size {br}x{bc}: block ({i}, {j}) "
            f"(rows {i * br}:{min((i + 1) * br, n)}, cols {j * bc}:{min((j + 1) * bc, m)}) is partly kept "
            f"({int(counts[i, j])} of {int(sizes[i, j])} entries); pass the block size the mask was made with"
        )
    return counts > 0


def infer_block_size(mask: torch.Tensor, name: str = "mask") -> int | None:
    """The largest square block side > 1 that divides both sides of ``mask`` and fits its structure.

    Returns None when no such side exists (an unstructured mask, or a shape with no common
    divisor). Partial (padded) blocks are not considered here: pass ``block_size`` for those.
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    g = math.gcd(*mask.shape)
    for b in sorted((d for d in range(2, g + 1) if g % d == 0), reverse=True):
        try:
            block_structure(mask, b, name)
        except ValueError:
            continue
        return b
    return None


def random_block_mask(
    out_features: int,
    in_features: int,
    block_size: BlockSize,
    sparsity: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A random block mask for timing: ``k = ceil((1 - sparsity) N)`` of the ``N`` blocks kept.

    Defined in book/block_sparse_speed.md.

    The kept blocks are a uniformly random subset (not a pruner's choice): speed depends on how
    many blocks are kept and on the block size, not on which.
    """
    if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
        raise ValueError(f"sparsity: expected a fraction in [0, 1), got {sparsity!r}")
    for nm, v in (("out_features", out_features), ("in_features", in_features)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{nm}: expected a positive int, got {v!r}")
    br, bc = _block_pair(block_size)
    nb, mb = -(-out_features // br), -(-in_features // bc)
    n_blocks = nb * mb
    keep = math.ceil((1.0 - sparsity) * n_blocks - 1e-9)
    order = torch.randperm(n_blocks, generator=generator)
    grid = torch.zeros(n_blocks, dtype=torch.bool)
    grid[order[:keep]] = True
    grid = grid.view(nb, mb)
    full = grid.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:out_features, :in_features]
    return full.to(device) if device is not None else full


class BlockSparseLinear(nn.Module):
    """An inference-only ``nn.Linear`` whose weight is stored block-sparse (BSR).

    Defined in book/block_sparse_speed.md.

    ``forward`` computes ``W_bsr @ x^T`` (sparse times dense, the layout PyTorch's BSR kernels are
    built for; ``F.linear(x, W_bsr)`` goes through a transposed path that measured about ten times
    slower on CPU) and adds the bias. Weights whose sides the block size does not divide are
    padded with zero blocks; the input is zero-padded to match and the output cropped. A
    rectangular ``rows x cols`` block is stored as square ``g x g`` blocks, ``g = gcd(rows, cols)``
    (the CPU kernels need square blocks); ``block_size`` is the stored one.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        block_mask: torch.Tensor,
        block_size: BlockSize,
        bias: torch.Tensor | None = None,
    ):
        super().__init__()
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            raise ValueError(f"weight: expected a 2-D floating-point tensor, got {getattr(weight, 'shape', type(weight))}")
        br, bc = _block_pair(block_size)
        out_f, in_f = weight.shape
        nb, mb = -(-out_f // br), -(-in_f // bc)
        if not isinstance(block_mask, torch.Tensor) or block_mask.dtype != torch.bool or tuple(block_mask.shape) != (nb, mb):
            raise ValueError(
                f"block_mask: expected a bool grid of shape ({nb}, {mb}) (blocks of {br}x{bc} over {out_f}x{in_f}), "
                f"got {getattr(block_mask, 'dtype', type(block_mask).__name__)} {tuple(getattr(block_mask, 'shape', ()))}"
            )
        if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (out_f,)):
            raise ValueError(f"bias: expected a tensor of shape ({out_f},), got {getattr(bias, 'shape', type(bias))}")
        self.in_features, self.out_features = in_f, out_f
        self.padded_shape = (nb * br, mb * bc)
        block_mask = block_mask.to(weight.device)
        # MKL (CPU) multiplies only square BSR blocks: store a rectangular br x bc block as square
        # g x g blocks, g = gcd(br, bc). The mask's structure is kept exactly, just finer.
        g = math.gcd(br, bc)
        if (br, bc) != (g, g):
            block_mask = block_mask.repeat_interleave(br // g, 0).repeat_interleave(bc // g, 1)
            br = bc = g
            nb, mb = self.padded_shape[0] // g, self.padded_shape[1] // g
        self.block_size = (br, bc)
        w = weight.detach()
        if self.padded_shape != (out_f, in_f):
            w = torch.nn.functional.pad(w, (0, self.padded_shape[1] - in_f, 0, self.padded_shape[0] - out_f))
        # Build the BSR parts from the mask, not from the values: a kept block that happens to be
        # all zero stays a block, so the structure is exactly the pruner's.
        blocks = w.reshape(nb, br, mb, bc).transpose(1, 2)  # (nb, mb, br, bc)
        counts = block_mask.sum(dim=1)
        crow = torch.zeros(nb + 1, dtype=torch.int64, device=w.device)
        crow[1:] = torch.cumsum(counts, 0)
        rows, cols = block_mask.nonzero(as_tuple=True)  # row-major order, as BSR needs
        self.register_buffer("crow_indices", crow)
        self.register_buffer("col_indices", cols.to(torch.int64))
        self.register_buffer("values", blocks[rows, cols].contiguous().clone())
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, mask: torch.Tensor, block_size: BlockSize, name: str = "mask"
    ) -> "BlockSparseLinear":
        """Convert one Linear layer given its weight mask (``True`` = kept)."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(f"{name}: shape {tuple(mask.shape)} does not match the weight's {tuple(weight.shape)}")
        grid = block_structure(mask.to(weight.device), block_size, name)
        masked = weight * mask.to(device=weight.device, dtype=weight.dtype)
        bias = linear.bias.detach() if linear.bias is not None else None
        return cls(masked, grid, block_size, bias)

    @property
    def weight(self) -> torch.Tensor:
        """The (padded) weight as a ``torch.sparse_bsr_tensor`` view of the stored parts."""
        return torch.sparse_bsr_tensor(
            self.crow_indices, self.col_indices, self.values, size=self.padded_shape, check_invariants=False
        )

    @property
    def n_blocks(self) -> int:
        return (self.padded_shape[0] // self.block_size[0]) * (self.padded_shape[1] // self.block_size[1])

    @property
    def kept_blocks(self) -> int:
        return int(self.col_indices.numel())

    @property
    def block_sparsity(self) -> float:
        return 1.0 - self.kept_blocks / self.n_blocks

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense ``out_features x in_features`` tensor (for checks)."""
        return self.weight.to_dense()[: self.out_features, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x: last dimension {x.shape[-1]} does not match in_features={self.in_features}")
        if x.is_cuda and not triton_bsr_eligible(self.block_size, self.values.dtype):
            raise ValueError(
                f"BlockSparseLinear: block size {self.block_size} / dtype {self.values.dtype} is not supported by "
                "PyTorch's CUDA BSR kernels (need sides >= 16, powers of two, fp16/bf16/fp32); convert with "
                "to_block_sparse(..., cuda_fallback='dense') or use a larger block size"
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        pad_in = self.padded_shape[1] - self.in_features
        if pad_in:
            x2 = torch.nn.functional.pad(x2, (0, pad_in))
        y = self.weight @ x2.transpose(0, 1)  # (out_padded, batch)
        y = y[: self.out_features].transpose(0, 1)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        br, bc = self.block_size
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, block_size=({br}, {bc}), "
            f"kept_blocks={self.kept_blocks}/{self.n_blocks}, bias={self.bias is not None}"
        )


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def to_block_sparse(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    block_size: BlockSize | Mapping[str, BlockSize] | None = None,
    *,
    min_sparsity: float = 0.0,
    cuda_fallback: str = "error",
    inplace: bool = False,
) -> nn.Module:
    """A copy of ``model`` with the masks applied and its block-pruned Linear layers stored as BSR.

    Defined in book/block_sparse_speed.md.

    - ``masks``: the shared format, ``"layer.weight" -> bool tensor`` (``True`` = kept). Every mask
      is applied (so the result equals the dense masked model); each ``nn.Linear`` (exactly that
      class: subclasses such as attention projections are read directly by their parents) whose
      weight mask has pruned blocks becomes a :class:`BlockSparseLinear`.
    - ``block_size``: an int, a pair ``(rows, cols)``, a dict ``"layer.weight" -> size``, or None to
      infer from each mask the largest square block that divides the weight and fits the mask.
      A mask that is not block-structured for its block size raises ``ValueError``.
    - ``min_sparsity``: layers whose block sparsity is below it stay dense (below the break-even
      sparsity, BSR is slower than dense; see the chapter).
    - ``cuda_fallback``: on CUDA only Triton-eligible blocks (sides >= 16, powers of two) are
      converted; ``"error"`` raises ``ValueError`` for others, ``"dense"`` keeps them dense with a
      warning.
    - ``inplace``: convert ``model`` itself instead of a deep copy.

    The converted model is for inference (no gradients through the BSR weights).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(masks, Mapping):
        raise ValueError(f"masks: expected a dict of parameter name -> bool tensor, got {type(masks).__name__}")
    modules = dict(model.named_modules())
    for key in masks:
        mod = modules.get(key.rpartition(".")[0])
        if mod is not None and parametrize.is_parametrized(mod):
            raise ValueError(
                f"masks: names {key!r}, whose layer is still parametrised (e.g. by a pruner's attention "
                "scaling); remove the parametrisation first (torch.nn.utils.parametrize."
                "remove_parametrizations(..., leave_parametrized=True), or the pruner's finalize())"
            )
    check_masks(model, masks)
    if not (isinstance(min_sparsity, (int, float)) and 0.0 <= min_sparsity <= 1.0):
        raise ValueError(f"min_sparsity: expected a fraction in [0, 1], got {min_sparsity!r}")
    if cuda_fallback not in ("error", "dense"):
        raise ValueError(f"cuda_fallback: expected 'error' or 'dense', got {cuda_fallback!r}")
    if isinstance(block_size, Mapping):
        unknown = sorted(set(block_size) - set(masks))
        if unknown:
            raise ValueError(f"block_size: names {unknown[0]!r}, which has no mask")
    elif block_size is not None:
        _block_pair(block_size)
    out = model if inplace else copy.deepcopy(model)

    # Apply every mask first: layers that stay dense (and non-Linear layers) then match too.
    with torch.no_grad():
        for pname, param in out.named_parameters():
            key = pname.replace("_orig", "")
            if key in masks:
                param.mul_(masks[key].to(device=param.device, dtype=param.dtype))

    linear_names = [n for n, mod in out.named_modules() if type(mod) is nn.Linear and f"{n}.weight" in masks]
    for mod_name in linear_names:
        key = f"{mod_name}.weight"
        linear = out.get_submodule(mod_name)
        mask = masks[key].to(linear.weight.device)
        if isinstance(block_size, Mapping):
            size = block_size.get(key)
        else:
            size = block_size
        if size is None:
            size = infer_block_size(mask, name=f"masks[{key!r}]")
            if size is None:
                if bool(mask.all()):
                    continue  # nothing pruned: nothing to gain
                raise ValueError(
                    f"masks[{key!r}]: is not block-structured for any square block that divides its shape "
                    f"{tuple(mask.shape)}; pass block_size (partial edge blocks are allowed then)"
                )
        grid = block_structure(mask, size, name=f"masks[{key!r}]")
        sparsity = 1.0 - grid.float().mean().item()
        if sparsity <= 0.0 or sparsity < min_sparsity:
            continue
        if linear.weight.is_cuda and not triton_bsr_eligible(size, linear.weight.dtype):
            msg = (
                f"masks[{key!r}]: block size {_block_pair(size)} with dtype {linear.weight.dtype} is not supported "
                "by PyTorch's CUDA BSR (Triton) kernels (need sides >= 16, powers of two, fp16/bf16/fp32)"
            )
            if cuda_fallback == "error":
                raise ValueError(msg + "; pass cuda_fallback='dense' to keep such layers dense")
            warnings.warn(msg + "; the layer stays dense", stacklevel=2)
            continue
        _set_submodule(out, mod_name, BlockSparseLinear.from_linear(linear, mask, size, name=f"masks[{key!r}]"))
    return out


def storage_bytes(model: nn.Module) -> int:
    """Bytes held by a model's parameters and buffers (BSR values and indices included).

    Defined in book/block_sparse_speed.md.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


# --------------------------------------------------------------------------- timing


@dataclass
class BsrTiming:
    """Interleaved dense-vs-BSR timings of one Linear layer (seconds per forward call).
    """

    out_features: int
    in_features: int
    batch: int
    block_size: tuple[int, int]
    sparsity: float
    device: str
    dtype: str
    threads: int
    dense_s: list[float] = field(default_factory=list)
    bsr_s: list[float] = field(default_factory=list)

    @property
    def dense_median(self) -> float:
        return float(torch.tensor(self.dense_s).median())

    @property
    def bsr_median(self) -> float:
        return float(torch.tensor(self.bsr_s).median())

    @property
    def speedup(self) -> float:
        """Dense time / BSR time (> 1: BSR is faster)."""
        return self.dense_median / self.bsr_median

    def as_dict(self) -> dict:
        return {
            "out_features": self.out_features, "in_features": self.in_features, "batch": self.batch,
            "block": list(self.block_size), "sparsity": self.sparsity, "device": self.device,
            "dtype": self.dtype, "threads": self.threads,
            "dense_ms": self.dense_median * 1e3, "bsr_ms": self.bsr_median * 1e3, "speedup": self.speedup,
            "dense_ms_all": [t * 1e3 for t in self.dense_s], "bsr_ms_all": [t * 1e3 for t in self.bsr_s],
        }


def time_interleaved(
    fns: Mapping[str, callable],
    x: torch.Tensor,
    *,
    reps: int = 5,
    min_block_s: float = 0.02,
    threads: int | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each ``fn(x)``, measured alternately (A, B, A, B, ...) ``reps`` times.

    Defined in book/block_sparse_speed.md.

    One warm-up call each (lazy initialisation, kernel choice), then ``torch.utils.benchmark.Timer``
    (which synchronises CUDA) over enough calls to last about ``min_block_s`` per measurement.
    ``threads`` defaults to ``torch.get_num_threads()``: ``Timer`` itself would use one thread.
    Runs under ``torch.no_grad()`` (``inference_mode`` breaks ``F.linear`` with a BSR weight made outside it).
    """
    from torch.utils.benchmark import Timer

    if not isinstance(reps, int) or reps < 1:
        raise ValueError(f"reps: expected a positive int, got {reps!r}")
    if not fns:
        raise ValueError("fns: expected at least one function to time")
    if threads is None:
        threads = torch.get_num_threads()
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected a positive int, got {threads!r}")
    out: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        timers, number = {}, {}
        for key, fn in fns.items():
            fn(x)  # warm-up
            timers[key] = Timer(stmt="fn(x)", globals={"fn": fn, "x": x}, num_threads=threads)
            one = timers[key].timeit(1).mean
            number[key] = max(1, int(min_block_s / max(one, 1e-7)))
        for _ in range(reps):
            for key in fns:
                out[key].append(timers[key].timeit(number[key]).mean)
    return out


def time_dense_vs_bsr(
    out_features: int,
    in_features: int,
    batch: int,
    block_size: BlockSize,
    sparsity: float,
    *,
    reps: int = 5,
    min_block_s: float = 0.02,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    threads: int | None = None,
) -> BsrTiming:
    """Time ``nn.Linear`` (masked dense weight) against its :class:`BlockSparseLinear` on one input.

    Defined in book/block_sparse_speed.md.

    Random block mask at ``sparsity`` (see :func:`random_block_mask`), input ``batch x in_features``,
    timed by :func:`time_interleaved` (dense and BSR alternately, ``reps`` times). Report medians;
    the ratio is what holds under load.
    """
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    mask = random_block_mask(out_features, in_features, block_size, sparsity, generator=gen)
    dense = nn.Linear(in_features, out_features)
    with torch.no_grad():
        dense.weight.copy_(torch.randn(out_features, in_features, generator=gen) / math.sqrt(in_features))
        dense.weight.mul_(mask)
    dense = dense.to(device=dev, dtype=dtype).eval()
    bsr = to_block_sparse(nn.Sequential(dense), {"0.weight": mask.to(dev)}, block_size)[0]
    x = torch.randn(batch, in_features, generator=gen).to(device=dev, dtype=dtype)
    times = time_interleaved({"dense": dense, "bsr": bsr}, x, reps=reps, min_block_s=min_block_s, threads=threads)
    return BsrTiming(
        out_features, in_features, batch, _block_pair(block_size), 1.0 - bsr.kept_blocks / bsr.n_blocks,
        str(dev), str(dtype).replace("torch.", ""), threads or torch.get_num_threads(),
        dense_s=times["dense"], bsr_s=times["bsr"],
    )


def break_even_sparsity(sparsities: Sequence[float], speedups: Sequence[float]) -> float | None:
    """The sparsity at which BSR becomes faster than dense (speedup crosses 1 from below).

    Defined in book/block_sparse_speed.md.

    Linear interpolation of ``log(speedup)`` between the two measured sparsities around the last
    upward crossing. Returns the smallest sparsity if BSR is already faster there, None if it is
    never faster in the measured range.
    """
    if len(sparsities) != len(speedups) or len(sparsities) == 0:
        raise ValueError("sparsities, speedups: expected two non-empty sequences of equal length")
    pairs = sorted(zip(sparsities, speedups))
    if any(v <= 0 for _, v in pairs):
        raise ValueError("speedups: expected positive ratios")
    if pairs[-1][1] < 1.0:
        return None
    # walk down from the sparsest setting to the last point where BSR is slower
    for i in range(len(pairs) - 1, 0, -1):
        (s0, v0), (s1, v1) = pairs[i - 1], pairs[i]
        if v0 < 1.0 <= v1:
            l0, l1 = math.log(v0), math.log(v1)
            return s0 + (s1 - s0) * (0.0 - l0) / (l1 - l0)
    return pairs[0][0]
