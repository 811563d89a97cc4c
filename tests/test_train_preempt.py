"""Pre-emption: SIGTERM/SIGINT finish the step, write a checkpoint, raise Preempted; resume then equals an
uninterrupted run, on one process and under torchrun (2 CPU processes, gloo).

This file is also the worker script the subprocess tests launch: ``python test_train_preempt.py OUT MODE``.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from pruninglab.masks import MaskHook, apply_masks
from pruninglab.pruners.magnitude import global_magnitude_masks
from pruninglab.runlog import TIMING_COLUMNS
from pruninglab.runtime import seed_everything
from pruninglab.train import PREEMPTED_EXIT_CODE, Preempted, load_checkpoint, make_loader, train

STEPS = 60


def problem():
    seed_everything(0)
    x = torch.randn(512, 8)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 10, 0.7)
    masks = global_magnitude_masks(model, 0.5)
    apply_masks(model, masks)
    loader = make_loader(torch.utils.data.TensorDataset(x, y), 16, seed=0)
    return model, opt, sched, loader, masks


class Pace:
    """Sleeps after each step (so a signal lands mid-run) and tells the test its pid once running."""

    def __init__(self, out: Path, sleep: float):
        self.out, self.sleep, self.told = out, sleep, False

    def on_step_end(self, step, model):
        if self.sleep:
            time.sleep(self.sleep)
        if step >= 3 and not self.told:
            rank = os.environ.get("RANK", "0")
            (self.out / f"running-rank{rank}").write_text(str(os.getpid()))
            self.told = True


def worker(out: str, mode: str, sleep: float) -> int:
    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, opt, sched, loader, masks = problem()
    rank = int(os.environ.get("RANK", "0"))
    try:
        res = train(model, nn.functional.cross_entropy, loader, opt, steps=STEPS, scheduler=sched,
                    hooks=[MaskHook(masks), Pace(out, sleep)], evaluate=lambda m: {"w0": float(m[0].weight.sum())},
                    eval_every=10, log_every=5, out_dir=out, checkpoint_every=25, resume=mode == "resume",
                    config={"lr": 0.1}, progress=False, stop_check_every=2)
    except Preempted as stop:
        (out / f"preempted-rank{rank}.json").write_text(
            json.dumps({"step": stop.step, "signal": stop.signal_name, "checkpoint": str(stop.checkpoint)}))
        return PREEMPTED_EXIT_CODE
    if rank == 0:
        torch.save(model.state_dict(), out / "final.pt")
        (out / "result.json").write_text(json.dumps({"step": res.step, "metrics": res.metrics}))
    return 0


def _rows(path):
    with open(path) as fh:
        return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(fh)]


def _assert_same_run(ref: Path, other: Path):
    a, b = torch.load(ref / "final.pt"), torch.load(other / "final.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((ref / "result.json").read_text()) == json.loads((other / "result.json").read_text())
    assert _rows(ref / "metrics.csv") == _rows(other / "metrics.csv")


def _launch(cmd, out, mode, sleep=0.0):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([*cmd, __file__, str(out), mode, str(sleep)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc, timeout=120.0) -> str:
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker ended before it was signalled:\n{proc.stdout.read()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("worker never started")
        time.sleep(0.05)
    time.sleep(0.05)
    return path.read_text()


def _finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _sigterm_then_resume(cmd, tmp_path, target_rank):
    ref = _launch(cmd, tmp_path / "ref", "fresh")
    cut = _launch(cmd, tmp_path / "cut", "fresh", sleep=0.1)
    pid = int(_wait_for(tmp_path / "cut" / f"running-rank{target_rank}", cut))
    os.kill(pid, signal.SIGTERM)
    rc, log = _finish(cut)
    assert rc != 0, log[-3000:]
    stops = [json.loads(p.read_text()) for p in sorted((tmp_path / "cut").glob("preempted-rank*.json"))]
    assert stops and len({s["step"] for s in stops}) == 1, (stops, log[-3000:])  # all ranks stopped together
    step = stops[0]["step"]
    assert 0 < step < STEPS and all(s["signal"] == "SIGTERM" for s in stops)
    assert int(load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"]) == step
    assert not list((tmp_path / "cut").glob(".*.tmp"))
    rc, log = _finish(ref)
    assert rc == 0, log[-3000:]
    rc, log = _finish(_launch(cmd, tmp_path / "cut", "resume"))
    assert rc == 0, log[-3000:]
    _assert_same_run(tmp_path / "ref", tmp_path / "cut")
    return stops


def test_sigterm_in_a_subprocess_then_resume_equals_uninterrupted(tmp_path):
    stops = _sigterm_then_resume([sys.executable], tmp_path, target_rank=0)
    assert len(stops) == 1


@pytest.mark.slow
def test_sigterm_to_one_torchrun_process_stops_both_at_one_step(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    stops = _sigterm_then_resume(cmd, tmp_path, target_rank=1)  # rank 0 is not signalled itself
    assert len(stops) == 2


def test_signal_inside_the_process_raises_preempted_and_restores_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    class Kill:
        def on_step_end(self, step, model):
            if step == 6:
                os.kill(os.getpid(), signal.SIGINT)

    model, opt, sched, loader, masks = problem()
    with pytest.raises(Preempted) as info:
        train(model, nn.functional.cross_entropy, loader, opt, steps=20, scheduler=sched,
              hooks=[MaskHook(masks), Kill()], out_dir=tmp_path, log_every=5)
    assert info.value.step == 7 and info.value.signal_name == "SIGINT"
    assert Path(info.value.checkpoint) == tmp_path / "checkpoint.pt"
    assert int(load_checkpoint(tmp_path / "checkpoint.pt")["step"]) == 7
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    # resume reaches the same weights as an uninterrupted run
    model, opt, sched, loader, masks = problem()
    res = train(model, nn.functional.cross_entropy, loader, opt, steps=20, scheduler=sched,
                hooks=[MaskHook(masks)], out_dir=tmp_path, log_every=5, resume=True)
    assert res.resumed_from == 7 and res.step == 20
    ref, opt, sched, loader, masks = problem()
    train(ref, nn.functional.cross_entropy, loader, opt, steps=20, scheduler=sched, hooks=[MaskHook(masks)])
    for (n, a), (_, b) in zip(ref.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), n


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1], sys.argv[2], float(sys.argv[3])))
