"""``python -m pruninglab bench``: run every benchmark in ``benchmarks/`` and write one table.

Defined in book/benchmarks.md.

Each benchmark is a script that prints, as its last line, one JSON object with its figures (ratios
against the peer implementation measured in the same run). This runner executes them one after the
other in fresh processes, records the machine, the load before and after each, and writes
``benchmarks/results.json`` (read by the book's benchmarks page) and ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..runtime import PROJECT_ROOT, atomic_write_text, device_name, provenance


def loadavg() -> float | None:
    """The 1-minute load average (None where /proc is not available)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def run_benchmark(script: Path, timeout_s: float = 900.0) -> dict:
    """Run one benchmark script in a fresh process; return its last-line JSON plus timing and load.
    """
    if not script.exists():
        raise FileNotFoundError(f"script: no benchmark at {script}")
    load0, t0 = loadavg(), time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "PRUNINGLAB_PROGRESS": "0"})
    except subprocess.TimeoutExpired:
        return {"benchmark": script.stem, "ok": False, "error": f"timed out after {timeout_s:.0f} s"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    record: dict = {"benchmark": script.stem, "wall_s": round(wall, 1), "load_before": load0, "load_after": loadavg()}
    if proc.returncode != 0 or not lines:
        record.update(ok=False, error=(proc.stderr.strip().splitlines() or ["no output"])[-1][:500])
        return record
    try:
        record["figures"] = json.loads(lines[-1])
        record["ok"] = True
    except json.JSONDecodeError:
        record.update(ok=False, error=f"last line is not JSON: {lines[-1][:200]}")
    return record


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "; ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def markdown_table(results: dict) -> str:
    """The benchmark results as a Markdown table (one row per benchmark and figure)."""
    lines = [f"Measured on {results['machine']['device']}, torch {results['machine']['torch']}, "
             f"{results['machine']['date']}.", "", "| benchmark | figure | value |", "|---|---|---|"]
    for rec in results["benchmarks"]:
        if not rec.get("ok"):
            lines.append(f"| {rec['benchmark']} | error | {rec.get('error', '')} |")
            continue
        for k, v in rec["figures"].items():
            if isinstance(v, (dict, list)) and len(json.dumps(v)) > 200:
                continue  # long per-case detail stays in results.json
            lines.append(f"| {rec['benchmark']} | {k} | {_fmt(v)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pruninglab bench", description=__doc__.split("\n\n")[0])
    root = PROJECT_ROOT or Path.cwd()
    parser.add_argument("--dir", default=str(root / "benchmarks"), help="folder of benchmark scripts")
    parser.add_argument("--only", nargs="*", default=None, help="run only these benchmarks (names without .py)")
    parser.add_argument("--out", default=None, help="where to write results.json (default: the benchmarks folder)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per benchmark")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"--dir: {folder} is not a folder of benchmark scripts")
    scripts = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))
    if args.only:
        unknown = set(args.only) - {p.stem for p in scripts}
        if unknown:
            raise ValueError(f"--only: no benchmark named {sorted(unknown)}; have {[p.stem for p in scripts]}")
        scripts = [p for p in scripts if p.stem in args.only]
    records = []
    for script in scripts:
        print(f"[bench] {script.stem} ...", flush=True)
        rec = run_benchmark(script, args.timeout)
        print(f"[bench] {script.stem}: {'ok' if rec.get('ok') else 'FAILED: ' + rec.get('error', '')} "
              f"({rec.get('wall_s', '?')} s, load {rec.get('load_before')} -> {rec.get('load_after')})", flush=True)
        records.append(rec)
    prov = provenance("cpu")
    results = {"machine": {"device": device_name("cpu"), "torch": prov["torch"], "date": prov["date"],
                           "git_revision": prov["git_revision"], "cpu_count": os.cpu_count()},
               "benchmarks": records}
    out = Path(args.out) if args.out else folder
    if args.only and (out / "results.json").exists():
        # Merge: keep the other benchmarks' last results.
        old = json.loads((out / "results.json").read_text())
        keep = [r for r in old.get("benchmarks", []) if r["benchmark"] not in {r2["benchmark"] for r2 in records}]
        results["benchmarks"] = sorted(keep + records, key=lambda r: r["benchmark"])
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "RESULTS.md", markdown_table(results))
    print(markdown_table(results))
    return 0 if all(r.get("ok") for r in records) else 1
