#!/usr/bin/env python3
"""What background weight scrubbing costs a decode: `fennec bench` tg runs with the scrubber off
and on, alternating run by run (the order flips every pair, so slow drifts in the machine's load
hit both), and the median of the on/off ratios per model and thread count.

"On" scrubs at the server's default rate (`fennec serve --scrub-mb auto`: the whole model every
50 s, at least 16 MiB per reading) times --factor, in one slice per --slice seconds so that a run
of a few seconds sees several slices. Standard library only.

  bench/ras/scrub_cost.py --fennec build/fennec -m models/random-llama-1b-q4_0.gguf -t 1,2 --pairs 6
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys


def bench(fennec, model, threads, n_gen, reps, extra):
    cmd = [fennec, "bench", "-m", model, "-p", "0", "-n", str(n_gen), "-t", str(threads), "-r", str(reps),
           "--no-bandwidth", "-o", "json", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return json.loads(p.stdout)[0]["avg_ts"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fennec", default="build/fennec")
    ap.add_argument("-m", "--model", required=True, help="GGUF file(s), comma-separated")
    ap.add_argument("-t", "--threads", default="1,2")
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--factor", type=float, default=1.0, help="times the server's default scrub rate")
    ap.add_argument("--slice", type=float, default=1.0, help="seconds between scrub slices")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every pair's ratio")
    a = ap.parse_args()
    print("| model | threads | scrub MiB/s | off t/s (median) | on t/s (median) | on/off (median of pairs) | pairs |")
    print("|---|---|---|---|---|---|---|")
    for model in a.model.split(","):
        mib = os.path.getsize(model) / 2**20
        rate = max(mib / 50.0, 16.0 / 10.0) * a.factor  # serve's auto rate, per second
        slice_mb = max(1, math.ceil(rate * a.slice))
        on = ["--scrub-mb", str(slice_mb), "--scrub-interval", str(a.slice)]
        for t in (int(x) for x in a.threads.split(",")):
            offs, ons, ratios = [], [], []
            for pair in range(a.pairs):
                order = ["off", "on"] if pair % 2 == 0 else ["on", "off"]
                got = {s: bench(a.fennec, model, t, a.n_gen, a.reps, on if s == "on" else []) for s in order}
                offs.append(got["off"])
                ons.append(got["on"])
                ratios.append(got["on"] / got["off"])
                if a.verbose:
                    print(f"  {os.path.basename(model)} t={t} pair {pair}: off {got['off']:.2f} on {got['on']:.2f} "
                          f"ratio {ratios[-1]:.4f}", file=sys.stderr, flush=True)
            print(f"| {os.path.basename(model)} | {t} | {slice_mb / a.slice:.1f} | {statistics.median(offs):.2f} | "
                  f"{statistics.median(ons):.2f} | {statistics.median(ratios):.4f} | {a.pairs} |", flush=True)


if __name__ == "__main__":
    main()
