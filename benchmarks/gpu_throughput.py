"""Training throughput with the data-wait fraction: ResNet-50 on the uint8 ImageNet pipeline, and the Criteo
MLP on prepared arrays (dense vs sparse embedding gradients), in bf16, eager or ``torch.compile``.

Run by ``benchmarks/gpu_check.sh`` (one process, or ``torchrun --nproc_per_node=2`` for NCCL DDP). The
data-wait fraction is the share of wall time the step spends blocked on the next batch (time inside
``next(loader)``); the GPU is synchronised only at the ends of the timed window, never per step.

    python benchmarks/gpu_throughput.py imagenet --data DIR [--batch 256] [--steps 60] [--workers 8] [--compile]
    python benchmarks/gpu_throughput.py criteo --data PREPARED_DIR [--batch 32768] [--steps 60] [--sparse]
    python benchmarks/gpu_throughput.py ... --device cpu    # dry run of the same code on a CPU

Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch import nn


def dist_setup(dev_type: str):
    if "RANK" not in os.environ:
        return 0, 1
    import torch.distributed as dist

    dist.init_process_group("nccl" if dev_type == "cuda" else "gloo")
    rank = dist.get_rank()
    if dev_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return rank, dist.get_world_size()


def timed_loop(step, batches, warmup: int, steps: int, dev: torch.device) -> dict:
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wait, t0 = 0.0, time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - t
        step(batch)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "data_wait_fraction": wait / wall}


def cycle(make_iter):
    epoch = 0
    while True:
        for b in make_iter(epoch):
            yield b
        epoch += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("task", choices=("imagenet", "criteo"))
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--sparse", action="store_true", help="criteo: sparse embedding gradients + DenseSparseAdam")
    ap.add_argument("--synthetic", action="store_true", help="imagenet: one batch on the device, no loader")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    rank, world = dist_setup(dev.type)
    if dev.type == "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    from pruninglab.train import dist_info  # noqa: F401  (rank split read from the environment)

    if args.task == "imagenet":
        import torchvision

        from pruninglab.data.imagenet import Uint8ImageFolder, attach_input_normalization, imagenet_loader

        b = args.batch or 256
        ds = Uint8ImageFolder(os.path.join(args.data, "train"), train=True, image_size=224)
        net = torchvision.models.resnet50(weights=None, num_classes=len(ds.classes)).to(dev)
        net = net.to(memory_format=torch.channels_last)
        attach_input_normalization(net, channels_last=True)
        model = torch.compile(net) if args.compile else net
        if world > 1:
            model = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        if args.synthetic:
            x = (torch.randint(0, 256, (b, 3, 224, 224), dtype=torch.uint8, device=dev),
                 torch.zeros(b, dtype=torch.bool, device=dev))
            y = torch.zeros(b, dtype=torch.long, device=dev)
            batches = iter(lambda: (x, y), None)
        else:
            loader = imagenet_loader(ds, b, num_workers=args.workers, pin_memory=dev.type == "cuda",
                                     rank=rank, world_size=world)

            def epoch_iter(e):
                loader.sampler.set_epoch(e)
                return iter(loader)

            batches = cycle(epoch_iter)

        def step(batch):
            (images, flips), labels = batch
            images, flips = images.to(dev, non_blocking=True), flips.to(dev, non_blocking=True)
            labels = labels.to(dev, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with amp:
                loss = nn.functional.cross_entropy(model((images, flips)).float(), labels)
            loss.backward()
            opt.step()

        unit = "images"
    else:
        from pruninglab.data.criteo_prepared import CriteoArrays
        from pruninglab.models import CriteoMLP
        from pruninglab.optim import DenseSparseAdam

        b = args.batch or 32768
        reader = CriteoArrays(args.data, b, pin_memory=dev.type == "cuda", rank=rank, world_size=world)
        net = CriteoMLP(num_buckets=reader.num_buckets, sparse_embedding=args.sparse).to(dev)
        model = torch.compile(net) if args.compile else net
        if world > 1:
            model = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        opt = DenseSparseAdam(net, lr=1e-3) if args.sparse else torch.optim.Adam(net.parameters(), lr=1e-3)
        batches = cycle(lambda e: reader.batches(e, 0))

        def step(batch):
            (ints, cats), labels = batch
            ints, cats = ints.to(dev, non_blocking=True), cats.to(dev, non_blocking=True)
            labels = labels.to(dev, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with amp:
                loss = nn.functional.binary_cross_entropy_with_logits(model((ints, cats)).float(), labels)
            loss.backward()
            opt.step()

        unit = "rows"
    res = timed_loop(step, batches, args.warmup, args.steps, dev)
    per_s = args.steps * b * world / res["wall_s"]
    out = {"task": args.task, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "world_size": world, "batch_per_process": b, "steps": args.steps, "compile": args.compile,
           "sparse_embedding": args.sparse if args.task == "criteo" else None, "synthetic": args.synthetic,
           f"{unit}_per_s": round(per_s, 1), "data_wait_fraction": round(res["data_wait_fraction"], 4),
           "peak_memory_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == "cuda" else None,
           "workers": args.workers, "torch": torch.__version__}
    if rank == 0:
        print(f"{args.task}: {per_s:,.0f} {unit}/s over {world} process(es), data wait {res['data_wait_fraction']:.1%}")
        print(json.dumps(out))
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
