"""Criteo embedding gradients under DDP: dense all-reduce of the whole table vs the sparse rows only.

Two processes on this CPU with the gloo backend train the Criteo MLP (``CriteoMLP``) for a few steps:

* dense: ``nn.Embedding`` (dense gradient), DDP all-reduces every parameter, Adam;
* sparse: ``CriteoMLP(sparse_embedding=True)``: DDP skips the table, ``DenseSparseAdam`` all-gathers the
  touched rows (indices + values) and steps them with lazy Adam.

Reported: median seconds per training step (forward, backward, communication, update), and bytes each
process sends for the table's gradient per step (dense: the table in float32; sparse: int64 indices and
float32 values of the touched rows, padded to the largest rank). Also checked: the sparse all-reduce
gives the same averaged gradient rows as the dense all-reduce (to 1e-6).

    python benchmarks/criteo_embedding_ddp.py [--buckets 100000] [--batch 2048] [--steps 6]

Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank: int, world: int, args, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from torch.nn.parallel import DistributedDataParallel as DDP

    from pruninglab.models import CriteoMLP
    from pruninglab.optim import DenseSparseAdam, allreduce_sparse_mean

    g = torch.Generator().manual_seed(100 + rank)
    batches = [(torch.randn(args.batch, 13, generator=g),
                torch.randint(0, args.buckets, (args.batch, 26), generator=g),
                torch.randint(0, 2, (args.batch,), generator=g).float()) for _ in range(args.steps)]
    results = {}
    for kind in ("dense", "sparse"):
        torch.manual_seed(0)
        net = CriteoMLP(num_buckets=args.buckets, sparse_embedding=kind == "sparse")
        model = DDP(net)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3) if kind == "dense" else DenseSparseAdam(net, lr=1e-3)
        times, nnz = [], []
        for ints, cats, y in batches:
            dist.barrier()
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model((ints, cats)), y)
            loss.backward()
            if kind == "sparse":
                nnz.append(net.embedding.weight.grad.coalesce().indices().shape[1])
            opt.step()
            times.append(time.perf_counter() - t)
        table_bytes = net.embedding.weight.numel() * 4
        if kind == "dense":
            sent = table_bytes
        else:
            nnz_t = torch.tensor(nnz)
            all_nnz = [torch.zeros_like(nnz_t) for _ in range(world)]
            dist.all_gather(all_nnz, nnz_t)
            width = torch.stack(all_nnz).max(0).values.double()
            sent = float((width * (8 + 4 * net.embed_dim)).median())
        results[kind] = {"s_per_step": statistics.median(times[1:]), "table_grad_bytes_sent": sent,
                         "table_bytes": table_bytes}
    # Same averaged gradient: sparse all-gather vs dense all-reduce of one batch's table gradient.
    torch.manual_seed(0)
    net = CriteoMLP(num_buckets=args.buckets, sparse_embedding=True)
    ints, cats, y = batches[0]
    torch.nn.functional.binary_cross_entropy_with_logits(net((ints, cats)), y).backward()
    sparse_mean = allreduce_sparse_mean(net.embedding.weight.grad).to_dense()
    dense = net.embedding.weight.grad.to_dense()
    dist.all_reduce(dense)
    results["max_abs_grad_difference"] = float((sparse_mean - dense / world).abs().max())
    if rank == 0:
        with open(out_file, "w") as fh:
            json.dump(results, fh)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--buckets", type=int, default=100_000, help="rows per categorical column (26 columns)")
    p.add_argument("--batch", type=int, default=2048, help="rows per process and step")
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        init, out = os.path.join(tmp, "init"), os.path.join(tmp, "out.json")
        mp.spawn(worker, args=(2, args, init, out), nprocs=2, join=True)
        res = json.load(open(out))
    d, s = res["dense"], res["sparse"]
    print(f"table: 26 x {args.buckets:,} rows x 10 = {d['table_bytes'] / 2**20:.1f} MiB; batch {args.batch} per "
          f"process, 2 processes, gloo on CPU; load {open('/proc/loadavg').read().split()[:3]}")
    for k in ("dense", "sparse"):
        print(f"{k:6s}: {res[k]['s_per_step'] * 1e3:8.1f} ms/step, table gradient sent per process and step "
              f"{res[k]['table_grad_bytes_sent'] / 2**20:8.2f} MiB")
    print(f"sparse vs dense averaged gradient: max |diff| = {res['max_abs_grad_difference']:.2e}")
    assert res["max_abs_grad_difference"] < 1e-6
    print(json.dumps({"table_mib": round(d["table_bytes"] / 2**20, 1),
                      "dense_ms_per_step": round(d["s_per_step"] * 1e3, 1),
                      "sparse_ms_per_step": round(s["s_per_step"] * 1e3, 1),
                      "dense_grad_mib_sent": round(d["table_grad_bytes_sent"] / 2**20, 2),
                      "sparse_grad_mib_sent": round(s["table_grad_bytes_sent"] / 2**20, 2),
                      "bytes_ratio": round(d["table_grad_bytes_sent"] / s["table_grad_bytes_sent"], 1),
                      "speedup": round(d["s_per_step"] / s["s_per_step"], 2),
                      "max_abs_grad_difference": res["max_abs_grad_difference"]}))


if __name__ == "__main__":
    main()
