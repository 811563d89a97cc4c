"""``python -m pruninglab inr``: Meta-SparseINR and all its baselines on one signal type.

Defined in book/meta_sparse_inr.md.

``--data`` picks the signals: ``faces`` (scikit-image's LFW crops, 25x25 grey), ``photos`` (crops of
the bundled colour photos), ``sdf`` (analytic signed distance fields), a CelebA / Imagenette / any
image folder, or the paper's SDF file (``data_2d_sdf.npz`` or a folder holding it). ``--scale
small`` is a CPU-sized run, ``--scale full`` the paper's configuration (GPU).

The run folder (``<runs root>/inr/<run id>``, see :mod:`pruninglab.experiments.base`) holds one
sub-folder per stage: ``dense``, ``magnitude/round_RR``,
``random/round_RR``, ``narrow/wWWW`` with the shared loop's ``checkpoint.pt`` and ``metrics.csv``,
and an ``eval.json`` (test PSNRs) for every evaluated model. A checkpoint is written at the end of
every pruning round (and every ``checkpoint_every`` steps); ``--resume`` continues from them and
reaches the same PSNRs as an uninterrupted run. The PSNR per method and weight count is the run's
result (``results/inr/<run id>/result.json`` at full scale).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import _checks, runtime
from ..data.images import SignalSplit, image_folder_split, lfw_faces, photo_crops
from ..data.sdf import SDF_FILE, load_sdf_npz, sdf_split
from ..inr.meta import MetaObjective
from ..inr.metasparse import fit_signals, imp_schedule, meta_train, oneshot_schedule, prune_round
from ..inr.siren import PAPER_NARROW_WIDTHS, narrow_width, pruned_counts, siren, siren_weight_count, coordinate_grid
from ..masks import ones_masks
from ..train import load_checkpoint
from . import base
from .base import ExperimentConfig, option

__all__ = ["INRConfig", "INRRun", "RunInterrupted", "load_signals", "run", "main", "METHODS"]

#: Method keys, in the order of the paper's legend.
METHODS = ("meta-sparse", "random", "dense-narrow", "oneshot", "imp", "scratch")
METHOD_LABELS = {
    "meta-sparse": "Meta-SparseINR",
    "random": "Random Pruning",
    "dense-narrow": "Dense-Narrow",
    "oneshot": "MAML+OneShot",
    "imp": "MAML+IMP",
    "scratch": "Scratch",
}


#: Test-time fitting of the meta-learned initialisations (see :class:`INRConfig`).
EVAL_MODES = ("adam", "sgd2")


@dataclass(frozen=True)
class INRConfig(ExperimentConfig):
    """Every setting of a Meta-SparseINR run; :meth:`small` and :meth:`full` are the two presets.

    Defined in book/meta_sparse_inr.md. ``narrow_rounds`` are the round counts ``k`` at which the
    Dense-Narrow / Scratch widths are solved (``3w^2+5w``-style count closest to round ``k``'s) unless
    ``narrow_widths`` lists the widths; ``baseline_rounds`` are the round counts at which MAML+OneShot
    and MAML+IMP are evaluated (None: every round).
    """

    data: str = option("faces", "faces, photos, sdf, an image folder (CelebA, Imagenette) or the SDF file")
    resolution: int | None = option(None, "[P] pixels per side (178 in the paper; faces: 25, not resized)")
    width: int = option(64, "[P] SIREN hidden width (256)")
    depth: int = option(4, "[P] SIREN hidden layers (4)")
    omega0: float = option(30.0, "[P] SIREN frequency omega_0 (200 at 178 pixels)")
    inner_steps: int = option(2, "[P] MAML inner steps (2)")
    inner_lr: float = option(1e-2, "[P] MAML inner learning rate (1e-2)")
    first_order: bool = option(False, "first-order MAML (less memory; a deviation)")
    outer_lr: float = option(1e-4, "[P] outer Adam learning rate (1e-5)")
    meta_batch: int = option(3, "[P] signals per meta-step (3)")
    dense_steps: int = option(200, "[P] dense meta-learning steps (150,000)")
    rounds: int = option(4, "[P] pruning rounds (20)")
    round_steps: int = option(60, "[P] meta-steps per round (30,000)")
    prune_rate: float = option(0.2, "[P] share of the remaining weights pruned per round (0.2)")
    fresh_optimizer_each_round: bool = option(True, "[P] a fresh Adam at the start of every pruning round (the "
                                                    "official code); --no-fresh-optimizer-each-round carries "
                                                    "the Adam state across rounds")
    narrow_rounds: tuple[int, ...] = option((2, 4), "round counts k whose weight count sets a Dense-Narrow width")
    narrow_widths: tuple[int, ...] | None = option(None, "[P] Dense-Narrow widths (the official code's 20)")
    narrow_steps: int = option(200, "[P] meta-steps of each Dense-Narrow model (150,000)")
    baseline_rounds: tuple[int, ...] | None = option((2, 4), "rounds at which MAML+OneShot / IMP are evaluated "
                                                             "(none: every round)")
    eval_mode: str = option("adam", "[P] test-time fitting: adam (test_steps Adam steps at test_lr per signal) "
                                     "or sgd2 (the MAML inner loop: inner_steps SGD steps at inner_lr, the "
                                     "official code's second evaluation)")
    test_steps: int = option(100, "[P] test-time Adam steps (100)")
    test_lr: float = option(1e-4, "[P] test-time Adam learning rate (1e-4)")
    num_test: int = option(4, "[P] test signals (100; 250 for SDF)")
    fit_chunk: int | None = option(None, "signals fitted at once (memory only)")
    num_examples: int = option(2, "reconstructions kept for the figures")
    checkpoint_every: int | None = option(50, "checkpoint every N meta-steps (and at every stage's end)")
    seed: int = option(0, "random seed")
    methods: tuple[str, ...] = option(METHODS, "methods to run: " + ", ".join(METHODS))

    def __post_init__(self):
        ints = dict(width=1, depth=1, inner_steps=0, meta_batch=1, dense_steps=0, rounds=0, round_steps=0,
                    narrow_steps=0, test_steps=1, num_test=1, num_examples=0, seed=0)
        for name, low in ints.items():
            (_checks.positive_int if low else _checks.nonnegative_int)(getattr(self, name), name)
        _checks.positive_int(self.resolution, "resolution", allow_none=True)
        _checks.positive_int(self.fit_chunk, "fit_chunk", allow_none=True)
        _checks.positive_int(self.checkpoint_every, "checkpoint_every", allow_none=True)
        for name in ("omega0", "outer_lr", "test_lr", "inner_lr"):
            _checks.positive_float(getattr(self, name), name)
        _checks.fraction(self.prune_rate, "prune_rate")
        _checks.one_of(self.eval_mode, "eval_mode", EVAL_MODES)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: expected some of {', '.join(METHODS)}, got unknown {unknown}")
        for name in ("narrow_rounds", "baseline_rounds"):
            val = getattr(self, name)
            if val is not None and any(not 1 <= int(k) <= self.rounds for k in val):
                raise ValueError(f"{name}: expected round counts in 1..rounds={self.rounds}, got {val!r}")
        if self.narrow_widths is not None and len(self.narrow_widths) != len(self.narrow_rounds):
            raise ValueError(f"narrow_widths: expected one width per narrow_rounds entry "
                             f"({len(self.narrow_rounds)}), got {len(self.narrow_widths)}")
        if self.num_examples > self.num_test:
            raise ValueError(f"num_examples: expected at most num_test={self.num_test}, got {self.num_examples}")

    @classmethod
    def small(cls, data: str = "faces", **overrides) -> "INRConfig":
        """CPU-sized run (a minute or two on 2 cores for ``faces``); deviations from the paper are
        ``omega0 = 30`` (200 aliases at 25-32 pixels), a 10x larger outer learning rate for a ~1000x
        shorter schedule, width 64, 200 dense steps, 4 rounds of 60 steps, 4 test signals, one seed."""
        res = None if data == "faces" else 32
        return dataclasses.replace(cls(data=data, resolution=res), **overrides)

    @classmethod
    def full(cls, data: str = "celeba", **overrides) -> "INRConfig":
        """The paper's configuration: 178x178, width 256, omega0 200, outer lr 1e-5, 150k dense steps,
        20 rounds x 30k steps, the official code's 20 Dense-Narrow widths (150k steps each), 100 test
        signals (250 for SDF), 100 Adam steps at 1e-4."""
        is_sdf = data == "sdf" or str(data).endswith(".npz") or (Path(str(data)) / SDF_FILE).is_file()
        base = cls(
            data=data, resolution=178, width=256, depth=4, omega0=200.0, inner_steps=2, inner_lr=1e-2,
            first_order=False, outer_lr=1e-5, meta_batch=3, dense_steps=150_000, rounds=20,
            round_steps=30_000, prune_rate=0.2, narrow_rounds=tuple(range(1, 21)),
            narrow_widths=PAPER_NARROW_WIDTHS, narrow_steps=150_000, baseline_rounds=None,
            test_steps=100, test_lr=1e-4, num_test=250 if is_sdf else 100, fit_chunk=10,
            num_examples=2, checkpoint_every=1000, seed=0,
        )
        return dataclasses.replace(base, **overrides)


@dataclass
class INRRun:
    """The outcome of :func:`run`: ``metrics`` (per method, a list of rows) and where the run lives.

    Defined in book/meta_sparse_inr.md.
    """

    config: INRConfig
    dataset: str
    metrics: dict
    out_dir: Path
    wall_time_s: float
    signal_shape: tuple[int, int, int] = (0, 0, 0)
    extra: dict = field(default_factory=dict)

    @property
    def experiment(self) -> str:
        return f"inr-{self.dataset}"

    def rows(self, method: str) -> list[dict]:
        return self.metrics["methods"].get(method, [])

    def example(self, method: str, key: str | int) -> torch.Tensor:
        """Saved reconstructions ``(num_examples, H, W, C)`` of a method at a round / width (see rows' ``stage``)."""
        rows = [r for r in self.rows(method) if key in (r.get("stage"), r.get("round"), r.get("width"))]
        if not rows:
            raise ValueError(f"key: no {method} row with stage/round/width {key!r}")
        path = self.out_dir / rows[0]["stage"] / "example.pt"
        pred = torch.load(path, map_location="cpu", weights_only=True)
        h, w, c = self.signal_shape
        return pred.reshape(-1, h, w, c)

    def targets(self) -> torch.Tensor:
        """The first ``num_examples`` test signals ``(num_examples, H, W, C)``."""
        h, w, c = self.signal_shape
        return torch.load(self.out_dir / "examples-target.pt", map_location="cpu", weights_only=True).reshape(-1, h, w, c)


class RunInterrupted(RuntimeError):
    """Raised when ``stop_after`` meta-steps have run (simulates a killed job, for resume tests)."""


# --------------------------------------------------------------------------- data


def load_signals(config: INRConfig) -> SignalSplit:
    """The meta-train / meta-test signals named by ``config.data``.
    """
    data, res = config.data, config.resolution
    if data == "faces":
        if res not in (None, 25):
            raise ValueError(f"resolution: the LFW faces are 25x25 and are not resized; got {res}")
        return lfw_faces(80, 20)
    if data == "photos":
        return photo_crops(res or 32, seed=config.seed)
    if data == "sdf":
        return sdf_split(200, max(20, config.num_test), res or 32, seed=config.seed)
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"data: {data!r} is neither faces, photos, sdf nor an existing file or folder")
    if path.suffix == ".npz" or (path.is_dir() and (path / SDF_FILE).is_file()):
        split = load_sdf_npz(path)
        if res is not None and res != split.height:
            raise ValueError(f"resolution: the SDF file holds {split.height}x{split.width} fields, not {res}")
        return split
    return image_folder_split(path, res)


# --------------------------------------------------------------------------- the run


def _default_out(config: INRConfig, scale_name: str) -> Path:
    """The run folder by the one rule: ``<runs root>/inr/<run id>``."""
    rid = runtime.run_id("inr", base.identity_record("inr", scale_name, config, None), config.seed)
    return runtime.runs_root() / "inr" / rid


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def run(
    config: INRConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool | None = None,
    device: torch.device | str | None = None,
    scale_name: str | None = None,
) -> INRRun:
    """Meta-train, prune and evaluate every method of ``config.methods``; return an :class:`INRRun`.

    Defined in book/meta_sparse_inr.md. ``stop_after`` stops (raising :class:`RunInterrupted`)
    after that many meta-steps in total, as a killed job would; ``resume=True`` then continues.
    """
    if not isinstance(config, INRConfig):
        raise ValueError(f"config: expected an INRConfig, got {type(config).__name__}")
    fit_options = _fit_options(config)
    t0 = time.perf_counter()
    dev = runtime.device(device) if not isinstance(device, torch.device) else device
    split = load_signals(config)
    h, w, c = split.height, split.width, split.channels
    sc = runtime.scale(scale_name)
    out = Path(out_dir) if out_dir is not None else _default_out(config, sc)
    out.mkdir(parents=True, exist_ok=True)
    cfg_json = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
    cfg_path = out / "inr_config.json"  # (config.json is the command line's run identity)
    if resume and cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        new = json.loads(cfg_json)
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise ValueError(f"resume: the run in {out} used a different config (differs in: {', '.join(diff)})")
    runtime.atomic_write_text(cfg_path, cfg_json + "\n")

    coords = coordinate_grid(h, w, device=dev)
    if config.num_test > len(split.test):
        raise ValueError(f"num_test: {config.num_test} exceeds the {len(split.test)} test signals of {split.name}")
    test = split.test.stack(config.num_test).to(dev)
    runtime.atomic_torch_save(test[: config.num_examples].cpu(), out / "examples-target.pt")
    n0 = siren_weight_count(2, config.width, config.depth, c)
    counts = pruned_counts(n0, config.rounds, config.prune_rate)
    budget = {"left": stop_after}
    metrics: dict = {"dataset": split.name, "weights_dense": n0, "signal_shape": [h, w, c],
                     "methods": {m: [] for m in config.methods}}

    def new_objective(width: int, seed: int) -> tuple[MetaObjective, torch.optim.Optimizer]:
        net = siren(2, width, config.depth, c, config.omega0, seed=seed, device=dev)
        obj = MetaObjective(net, coords, ones_masks(net), inner_steps=config.inner_steps,
                            inner_lr=config.inner_lr, first_order=config.first_order)
        return obj, torch.optim.Adam(obj.parameters(), lr=config.outer_lr)

    def train_stage(stage: str, obj: MetaObjective, opt: torch.optim.Optimizer, steps: int,
                    prev: str | None, prepare=None, seed: int = 0) -> None:
        """One meta-training stage through the shared loop; checkpoint at its end."""
        stage_dir = out / stage
        ckpt = stage_dir / "checkpoint.pt"
        cont = resume and ckpt.exists()
        if not cont:
            if prev is not None:
                state = load_checkpoint(out / prev / "checkpoint.pt", map_location=dev)
                obj.load_state_dict(state["model"])
                if config.fresh_optimizer_each_round:
                    opt.state.clear()  # a fresh Adam per round, as in the official code
                else:
                    opt.load_state_dict(state["optimizer"])  # Adam state carries across rounds
            if prepare is not None:
                prepare()
        stage_cfg = {"stage": stage, "run": cfg_json}
        res = meta_train(obj, opt, split.train, steps, meta_batch=config.meta_batch, seed=seed,
                         out_dir=stage_dir, resume=cont, checkpoint_every=config.checkpoint_every,
                         config=stage_cfg, stop_after=budget["left"], progress=progress,
                         desc=stage)
        if budget["left"] is not None:
            budget["left"] -= res.step - (res.resumed_from or 0)
        if res.step < steps:
            raise RunInterrupted(f"stopped in stage {stage} after step {res.step} of {steps} (stop_after)")

    def evaluate(stage: str, method: str | list[str], row: dict, params, masks=None, *, prune_at=None,
                 batched: bool = False, model=None) -> dict:
        """Fit the test signals (fresh Adam per signal), store eval.json; reuse it when resuming."""
        names = [method] if isinstance(method, str) else list(method)
        path = out / stage / "eval.json"
        if resume and path.exists():
            stored = _read_json(path)
            for name in names:
                metrics["methods"][name].append(stored)
            return stored
        fit = fit_signals(model, params, coords, test, masks,
                          prune_at=prune_at, batched_params=batched, chunk=config.fit_chunk,
                          keep_predictions=config.num_examples > 0, **fit_options)
        psnrs = fit.psnr
        kept = sorted(set(fit.kept))
        if len(kept) != 1:
            raise RuntimeError(f"{method} at {stage}: signals ended with different weight counts {kept}")
        row = dict(row, stage=stage, weights=kept[0], psnr=float(psnrs.mean()),
                   psnr_std=float(psnrs.std()) if len(psnrs) > 1 else 0.0,
                   psnr_per_signal=[round(float(v), 4) for v in psnrs])
        if fit.predictions is not None:
            runtime.atomic_torch_save(fit.predictions[: config.num_examples].cpu(), out / stage / "example.pt")
        runtime.atomic_write_text(path, runtime.to_json(row))
        for name in names:
            metrics["methods"][name].append(row)
        return row

    wants = set(config.methods)
    meta_methods = [m for m in ("meta-sparse", "random") if m in wants]
    dense_needed = bool(meta_methods) or bool(wants & {"oneshot", "imp"})

    # Dense meta-learning (shared by Meta-SparseINR, Random Pruning, OneShot and IMP).
    if dense_needed:
        obj, opt = new_objective(config.width, config.seed)
        train_stage("dense", obj, opt, config.dense_steps, None, seed=config.seed)
        dense_params = {n: p.detach().clone() for n, p in obj.inr.named_parameters()}
        if meta_methods:
            # Round 0 of both pruned curves is the same dense model: fit it once.
            evaluate("dense", meta_methods, {"round": 0, "meta_steps": config.dense_steps},
                     dict(obj.inr.named_parameters()), obj.masks, model=obj.inr)

    # Rounds of pruning + meta-learning with the masks fixed.
    for method in meta_methods:
        pruner = "magnitude" if method == "meta-sparse" else "random"
        obj, opt = new_objective(config.width, config.seed)
        prev = "dense"
        for r in range(1, config.rounds + 1):
            stage = f"{pruner}/round_{r:02d}"
            gen = torch.Generator().manual_seed(config.seed * 100_003 + r)
            train_stage(stage, obj, opt, config.round_steps, prev,
                        prepare=lambda: prune_round(obj, pruner, config.prune_rate, gen),
                        seed=config.seed + r)
            row = evaluate(stage, method, {"round": r, "meta_steps": config.dense_steps + r * config.round_steps},
                           dict(obj.inr.named_parameters()), obj.masks, model=obj.inr)
            if row["weights"] != counts[r]:
                raise RuntimeError(f"{stage}: {row['weights']} weights, expected {counts[r]}")
            prev = stage

    # Per-signal pruning during test-time fitting, from the dense meta-init.
    base_rounds = range(1, config.rounds + 1) if config.baseline_rounds is None else config.baseline_rounds
    if wants & {"oneshot", "imp"}:
        dense_net = siren(2, config.width, config.depth, c, config.omega0, device=dev)
        for k in base_rounds:
            if "oneshot" in wants:
                evaluate(f"oneshot/round_{k:02d}", "oneshot", {"round": k, "meta_steps": config.dense_steps},
                         dense_params, prune_at=oneshot_schedule(n0, counts[k], fit_options["steps"]), model=dense_net)
            if "imp" in wants:
                evaluate(f"imp/round_{k:02d}", "imp", {"round": k, "meta_steps": config.dense_steps},
                         dense_params, prune_at=imp_schedule(n0, k, fit_options["steps"], config.prune_rate),
                         model=dense_net)

    # Dense-Narrow: narrower dense SIRENs, each meta-learned from scratch.
    widths = list(config.narrow_widths) if config.narrow_widths is not None else [
        narrow_width(counts[k], 2, config.depth, c) for k in config.narrow_rounds]
    if "dense-narrow" in wants:
        for k, wd in zip(config.narrow_rounds, widths):
            stage = f"narrow/w{wd:03d}"
            obj, opt = new_objective(wd, config.seed)
            train_stage(stage, obj, opt, config.narrow_steps, None, seed=config.seed)
            evaluate(stage, "dense-narrow", {"width": wd, "round": k, "meta_steps": config.narrow_steps},
                     dict(obj.inr.named_parameters()), obj.masks, model=obj.inr)

    # Scratch: random SIRENs (a fresh init per test signal) of the dense width and every narrow width.
    if "scratch" in wants:
        for wd in [config.width] + widths:
            nets = [siren(2, wd, config.depth, c, config.omega0, seed=config.seed * 100_003 + 7919 * i + wd)
                    for i in range(config.num_test)]
            stacked = {n: torch.stack([dict(net.named_parameters())[n].detach() for net in nets]).to(dev)
                       for n, _ in nets[0].named_parameters()}
            evaluate(f"scratch/w{wd:03d}", "scratch", {"width": wd, "meta_steps": 0}, stacked, batched=True,
                     model=nets[0].to(dev))

    for rows in metrics["methods"].values():
        rows.sort(key=lambda r: -r["weights"])
    wall = time.perf_counter() - t0
    return INRRun(config=config, dataset=split.name, metrics=metrics, out_dir=out, wall_time_s=wall,
                  signal_shape=(h, w, c))


# --------------------------------------------------------------------------- command line


def _fit_options(config: INRConfig) -> dict:
    """Keyword options of :func:`~pruninglab.inr.metasparse.fit_signals` for the config's test-time protocol.

    ``adam``: ``test_steps`` Adam steps at ``test_lr`` (the paper's figures); ``sgd2``: the MAML inner
    loop, ``inner_steps`` SGD steps at ``inner_lr`` (the official code's few-step evaluation).
    """
    if config.eval_mode == "sgd2":
        return {"eval_mode": "sgd2", "steps": config.inner_steps, "lr": config.inner_lr}
    return {"eval_mode": "adam", "steps": config.test_steps, "lr": config.test_lr}


def execute(config: INRConfig, ctx: base.RunContext) -> tuple[bool, dict]:
    """The command line's run: :func:`run` in the run folder of ``ctx``."""
    try:
        result = run(config, out_dir=ctx.out_dir, resume=ctx.resume, stop_after=ctx.stop_after,
                     progress=ctx.progress, device=ctx.device, scale_name=ctx.scale)
    except RunInterrupted:
        return False, {}
    return True, result.metrics


EXPERIMENT_SPEC = base.Experiment(
    name="inr", config_cls=INRConfig, execute=execute, data="field",
    summarize=lambda metrics: "\n" + format_table(metrics),
    description="Meta-SparseINR and its baselines on images or SDFs (Lee et al. 2021).")


def main(argv: list[str] | None = None) -> int:
    """``python -m pruninglab inr --data DIR|faces|photos|sdf --scale small|full [--resume]``.

    Defined in book/sapp_imagenet.md.
    """
    return base.main(EXPERIMENT_SPEC, argv)


def format_table(metrics: dict) -> str:
    """A plain-text table: method, weights, mean PSNR +- std, meta-steps."""
    lines = [f"{'method':<16}{'weights':>10}{'PSNR dB':>10}{'std':>7}{'meta-steps':>12}"]
    for method, rows in metrics["methods"].items():
        for r in rows:
            lines.append(f"{METHOD_LABELS.get(method, method):<16}{r['weights']:>10,}{r['psnr']:>10.2f}"
                         f"{r['psnr_std']:>7.2f}{r['meta_steps']:>12,}")
    return "\n".join(lines)
