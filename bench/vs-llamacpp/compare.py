#!/usr/bin/env python3
"""fennec bench against llama.cpp's llama-bench on the same GGUF files and thread counts.

For every model and thread count, the two tools run in alternation, one repetition per process
call (`fennec bench -r 1 --json`, `llama-bench -r 1 -o json`), so that both see the same machine
state over the run; then the samples of each tool are pooled and the ratios fennec / llama.cpp
are printed for every test (pp and tg; higher is better for fennec).

    LLAMA_BENCH=/path/to/llama-bench bench/vs-llamacpp/compare.py -m a.gguf,b.gguf -t 1,2 -r 5

Both tools measure the same thing: pp = one prompt of N random tokens in one batch, tg = N
single-token decode steps from an empty cache, after one unmeasured warm-up; t/s = tokens / wall
time of the test. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_json(cmd: list[str]) -> list[dict]:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    start = r.stdout.find("[")
    return json.loads(r.stdout[start:])


def test_name(row: dict) -> str:
    name = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
    depth = row.get("n_depth", 0)
    return f"{name}@d{depth}" if depth else name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True, help="GGUF file(s), comma-separated")
    ap.add_argument("-t", "--threads", default="2", help="thread counts, comma-separated (default 2)")
    ap.add_argument("-p", "--n-prompt", default="512")
    ap.add_argument("-n", "--n-gen", default="128")
    ap.add_argument("-d", "--n-depth", default="0", help="context depths, comma-separated (llama-bench's -d)")
    ap.add_argument("-r", "--repetitions", type=int, default=5, help="repetitions per tool (interleaved)")
    ap.add_argument("--fennec", default=str(REPO / "build" / "fennec"))
    ap.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH"))
    ap.add_argument("--json", metavar="FILE", help="also write every sample here")
    a = ap.parse_args()
    if not a.llama_bench:
        sys.exit("set LLAMA_BENCH (or --llama-bench) to llama.cpp's llama-bench binary")
    results: dict[tuple, dict[str, list[float]]] = {}
    meta: dict[tuple, str] = {}
    for model in a.model.split(","):
        for t in a.threads.split(","):
            common = ["-m", model, "-t", t, "-p", a.n_prompt, "-n", a.n_gen, "-d", a.n_depth, "-r", "1"]
            for rep in range(a.repetitions):
                for tool in ("fennec", "llama.cpp"):
                    if tool == "fennec":
                        cmd = [a.fennec, "bench", *common, "--json", "--no-bandwidth"]
                    else:
                        cmd = [a.llama_bench, *common, "-o", "json"]
                    for row in run_json(cmd):
                        key = (Path(model).name, int(t), test_name(row))
                        results.setdefault(key, {"fennec": [], "llama.cpp": []})[tool] += row["samples_ts"]
                        if tool == "llama.cpp":
                            meta[key] = row.get("model_type", "")
                print(f"  {Path(model).name} t={t}: repetition {rep + 1}/{a.repetitions} done", file=sys.stderr)
    print(f"| {'model':<36} | {'threads':>7} | {'test':>11} | {'fennec t/s':>16} | {'llama.cpp t/s':>16} | {'ratio':>6} |")
    print(f"| {'-' * 36} | {'-' * 7}: | {'-' * 11}: | {'-' * 16}: | {'-' * 16}: | {'-' * 6}: |")
    for key, v in results.items():
        f, l = v["fennec"], v["llama.cpp"]
        fm, lm = statistics.mean(f), statistics.mean(l)
        fs = statistics.stdev(f) if len(f) > 1 else 0.0
        ls = statistics.stdev(l) if len(l) > 1 else 0.0
        print(f"| {key[0]:<36} | {key[1]:>7} | {key[2]:>11} | {fm:>8.2f} ± {fs:>5.2f} | {lm:>8.2f} ± {ls:>5.2f} | {fm / lm:>6.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(
            [{"model": k[0], "threads": k[1], "test": k[2], "llama_model_type": meta.get(k, ""), **v}
             for k, v in results.items()], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
