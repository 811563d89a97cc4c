"""``python -m pruninglab prepare-criteo train.txt DIR``: convert the Criteo TSV once into memory-mapped arrays.

Defined in book/sapp_imagenet.md. See :mod:`pruninglab.data.criteo_prepared` for the format.
"""
from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    """``python -m pruninglab prepare-criteo FILE DIR [--num-buckets N] [--chunk-rows R] [--workers W] [--skip-bad-lines]``.

    Defined in book/sapp_imagenet.md.
    """
    from ..data.criteo_prepared import prepare_criteo

    parser = argparse.ArgumentParser(
        prog="python -m pruninglab prepare-criteo",
        description="Parse a Criteo TSV once into memory-mapped .npy arrays (integers, hashed categorical ids, "
        "labels) that `sapp-criteo --data DIR` reads without text parsing. Resumable: rerun after a kill.",
    )
    parser.add_argument("file", help="the Criteo TSV, e.g. train.txt")
    parser.add_argument("dir", help="output folder")
    parser.add_argument("--num-buckets", type=int, default=1_000_000,
                        help="hash buckets per categorical column (default 1000000, the full-scale setting; "
                        "must match the training run's --num-buckets)")
    parser.add_argument("--chunk-rows", type=int, default=1 << 18, help="lines per chunk (default 262144)")
    parser.add_argument("--workers", type=int, default=0, help="parallel parsing processes (default 0: none)")
    parser.add_argument("--skip-bad-lines", action="store_true",
                        help="drop malformed lines (counted in meta.json) instead of stopping at the first")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = prepare_criteo(args.file, args.dir, num_buckets=args.num_buckets, chunk_rows=args.chunk_rows,
                         workers=args.workers, on_error="skip" if args.skip_bad_lines else "raise",
                         log=None if args.quiet else (lambda m: print(m, flush=True)))
    import json

    meta = json.loads((out / "meta.json").read_text())
    print(f"prepared {meta['rows']:,} rows of {args.file} into {out} in {time.perf_counter() - t0:.1f} s "
          f"(num_buckets {meta['num_buckets']}, {meta['skipped']} line(s) skipped)")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
