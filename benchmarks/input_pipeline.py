"""Input pipelines per worker: the uint8 ImageNet pipeline vs torchvision's reference recipe, and Criteo
prepared arrays vs the text reader.

ImageNet: one folder of generated JPEGs at 500x375, quality 90 (ImageNet's average size), cut from the
photographs that ship with scikit-image (so they compress like photographs). Per worker = one process,
no DataLoader, one thread:

* ours: ``Uint8ImageFolder`` (``torchvision.io`` decode with libjpeg-turbo, random-resized crop and
  antialiased resize on uint8); flip, float conversion and normalisation happen later on the device;
* reference: ``ImageFolder`` + ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip`` + ``ToTensor`` +
  ``Normalize`` (PIL decode, float work on the CPU).

Criteo: rows/s of one process reading a generated file with ``CriteoBatches`` (text) and the same rows
prepared once with ``prepare_criteo`` (``CriteoArrays``, memory maps, page cache warm).
Interleaved A B A B, medians of ``--reps``. Last line: one JSON object.

    python benchmarks/input_pipeline.py [--images 48] [--reps 5] [--criteo-rows 60000]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch


def photo_folder(root: str, n: int) -> None:
    """``n`` distinct 500x375 JPEGs (quality 90) cut and scaled from scikit-image's photographs."""
    from PIL import Image
    from skimage import data as skdata

    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket(), skdata.hubble_deep_field()]
    rng = np.random.default_rng(0)
    d = os.path.join(root, "train", "n00000000")
    os.makedirs(d, exist_ok=True)
    for i in range(n):
        img = Image.fromarray(photos[i % len(photos)])
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x, y, x + cw, y + ch)).resize((500, 375), Image.BICUBIC)
        if i % 2:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img.save(os.path.join(d, f"img_{i:04d}.JPEG"), quality=90)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--criteo-rows", type=int, default=60000)
    ap.add_argument("--criteo-batch", type=int, default=8192)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    from pruninglab.data.criteo import CriteoBatches, write_synthetic_criteo
    from pruninglab.data.criteo_prepared import CriteoArrays, prepare_criteo
    from pruninglab.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, Uint8ImageFolder

    load0 = open("/proc/loadavg").read().split()[:3]
    with tempfile.TemporaryDirectory() as tmp:
        photo_folder(tmp, args.images)
        sizes = [os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(tmp) for f in fs]
        ours = Uint8ImageFolder(os.path.join(tmp, "train"), train=True, image_size=224)
        ref = ImageFolder(os.path.join(tmp, "train"), transform=T.Compose([
            T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
        n = len(ours)
        runs = {"ours": lambda e: [ours[(e, i)] for i in range(n)], "reference": lambda e: [ref[i] for i in range(n)]}
        for f in runs.values():
            f(0)  # warm-up: page cache, lazy imports
        times = {k: [] for k in runs}
        for r in range(args.reps):
            for k, f in runs.items():
                times[k].append(timed(lambda: f(r + 1)))
        ips = {k: n / statistics.median(v) for k, v in times.items()}
        x, flip, _ = ours[0]
        assert x.dtype == torch.uint8 and x.shape == (3, 224, 224)

        src = write_synthetic_criteo(os.path.join(tmp, "train.txt"), args.criteo_rows, seed=0)
        t_prep = timed(lambda: prepare_criteo(src, os.path.join(tmp, "prep"), num_buckets=1_000_000))
        b = args.criteo_batch
        text = CriteoBatches(src, b, num_buckets=1_000_000)
        arrays = CriteoArrays(os.path.join(tmp, "prep"), b, num_buckets=1_000_000)
        first_t, first_a = next(iter(text)), next(iter(arrays))
        assert torch.equal(first_t[0][1], first_a[0][1]) and torch.equal(first_t[1], first_a[1])
        rows = len(text) * b
        creads = {"text": lambda: list(text), "arrays": lambda: list(arrays)}
        ctimes = {k: [] for k in creads}
        for _ in range(args.reps):
            for k, f in creads.items():
                ctimes[k].append(timed(f))
        rps = {k: rows / statistics.median(v) for k, v in ctimes.items()}
    load1 = open("/proc/loadavg").read().split()[:3]
    print(f"ImageNet: {n} JPEGs 500x375 q90 (median {statistics.median(sizes) / 1024:.0f} KB), one worker, one thread")
    print(f"  ours (torchvision.io decode, uint8 crop):        {ips['ours']:8.1f} images/s")
    print(f"  reference (PIL, RandomResizedCrop, ToTensor, Normalize): {ips['reference']:8.1f} images/s")
    print(f"  speedup per worker {ips['ours'] / ips['reference']:.2f}x")
    print(f"Criteo: {rows:,} rows, batch {b}: text {rps['text']:,.0f} rows/s, prepared arrays {rps['arrays']:,.0f} "
          f"rows/s, speedup {rps['arrays'] / rps['text']:.1f}x (preparation took {t_prep:.1f} s once)")
    print(f"loadavg start {load0} end {load1} (2-core machine; other sessions share it)")
    print(json.dumps({
        "imagenet_images_per_s_ours": round(ips["ours"], 1), "imagenet_images_per_s_reference": round(ips["reference"], 1),
        "imagenet_speedup_per_worker": round(ips["ours"] / ips["reference"], 2),
        "criteo_rows_per_s_text": round(rps["text"]), "criteo_rows_per_s_arrays": round(rps["arrays"]),
        "criteo_read_speedup": round(rps["arrays"] / rps["text"], 1),
        "criteo_prepare_s": round(t_prep, 1), "loadavg_start": load0, "loadavg_end": load1,
    }))


if __name__ == "__main__":
    main()
