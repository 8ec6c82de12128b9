#!/usr/bin/env python3
"""fennec's server against llama.cpp's llama-server, in one run, on the same GGUF.

Starts `fennec serve` and `llama-server` (path from $LLAMA_SERVER or --llama-server) with the
same model file, the same thread count and as many slots, waits until both answer their health
check, then runs loadgen.py's benchmark at each concurrency level, interleaving the two servers
level by level, and prints both tables and the ratios fennec / llama-server (output tok/s and
TTFT p50). With --stress N it also opens N concurrent streams on each server and checks every
answer. Both servers are stopped on exit, also on Ctrl-C or SIGTERM.

Without $LLAMA_SERVER it runs fennec alone and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class Fatal(Exception):
    """An error that ends the run with a message and exit status 2."""


class ManagedServer:
    """A server process in its own process group, with its output in a log file."""

    def __init__(self, name: str, cmd: list[str], port: int, log_path: Path,
                 health_paths: list[str]):
        self.name, self.cmd, self.port, self.log_path = name, cmd, port, log_path
        self.health_paths = health_paths
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if port_in_use(self.port):
            raise Fatal(f"{self.name}: port {self.port} is already in use (another server "
                        "left running?); pick another with --fennec-port / --llama-port")
        print(f"[{self.name}] {shlex.join(self.cmd)}")
        print(f"[{self.name}] log: {self.log_path}")
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise Fatal(f"{self.name}: cannot start {self.cmd[0]}: {exc}") from None
        finally:
            log.close()

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def wait_ready(self, timeout: float) -> None:
        """Polls the health endpoints until one answers 200."""
        endpoint = loadgen.Endpoint("127.0.0.1", self.port, "")
        t0 = time.monotonic()
        last = "no answer yet"
        while time.monotonic() - t0 < timeout:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise Fatal(f"{self.name} exited with status {self.proc.returncode} before it was "
                            f"ready; last lines of {self.log_path}:\n{self.log_tail()}")
            for path in self.health_paths:
                try:
                    status, _ = asyncio.run(loadgen.get_json(endpoint, path, timeout=2.0))
                except (OSError, ConnectionError, asyncio.TimeoutError, loadgen.ProtocolError) as exc:
                    last = f"{type(exc).__name__}"
                    continue
                last = f"GET {path} -> {status}"
                if status == 200:
                    print(f"[{self.name}] ready after {time.monotonic() - t0:.1f} s ({last})")
                    return
            time.sleep(0.25)
        raise Fatal(f"{self.name} not ready after {timeout:.0f} s ({last}); last lines of "
                    f"{self.log_path}:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def fennec_has_serve(binary: Path) -> bool:
    try:
        out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return re.search(r"^\s+serve\b", out.stdout + out.stderr, re.M) is not None


def version_of(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = [l.strip() for l in (out.stdout + out.stderr).splitlines() if "version" in l.lower()]
    return lines[0] if lines else "?"


def describe_machine(threads: int) -> None:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ncpu = os.cpu_count() or 1
    load = os.getloadavg()[0]
    print(f"machine: {platform.node()}, {cpu}, {ncpu} CPUs, load average {load:.2f}")
    if load > 0.5 * ncpu:
        print(f"warning: the machine is busy (load {load:.2f} on {ncpu} CPUs): timings will be "
              "noisy; the two servers are interleaved per level so both see similar noise")
    if threads >= ncpu:
        print(f"note: --threads {threads} uses every CPU; the load generator shares them "
              "(its CPU use is the cli% column)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", type=Path,
                    default=REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf",
                    help="GGUF file for both servers (default models/SmolLM2-135M-Instruct.Q4_1.gguf)")
    ap.add_argument("-t", "--threads", type=int, default=2, help="threads for both servers (2)")
    ap.add_argument("--slots", type=int, default=0,
                    help="fennec --max-seqs and llama-server -np (default: the highest "
                         "concurrency level)")
    ap.add_argument("--ctx-per-slot", type=int, default=1024,
                    help="context per sequence: fennec --ctx N, llama-server -c slots x N (it "
                         "splits -c among its slots) (1024)")
    ap.add_argument("--fennec", type=Path, default=REPO / "build/fennec",
                    help="fennec binary (default build/fennec)")
    ap.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER") or None,
                    help="llama-server binary (default $LLAMA_SERVER; without it fennec runs alone)")
    ap.add_argument("--only", choices=["fennec", "llama-server"],
                    help="start and load just this server")
    ap.add_argument("--fennec-port", type=int, default=18480)
    ap.add_argument("--llama-port", type=int, default=18481)
    ap.add_argument("--fennec-args", default="",
                    help='extra arguments for fennec serve, one string: --fennec-args "--ctx 4096"')
    ap.add_argument("--llama-args", default="",
                    help='extra arguments for llama-server, one string: --llama-args "-fa on"')
    ap.add_argument("--no-bench", action="store_true", help="skip the benchmark (with --stress)")
    ap.add_argument("--log-dir", type=Path, help="server logs here (default: a new temp folder)")
    ap.add_argument("--ready-timeout", type=float, default=300.0,
                    help="seconds to wait for each server's health check (300)")
    loadgen.add_common_args(ap)
    args = ap.parse_args()

    sys.stdout.reconfigure(line_buffering=True)  # keep stdout and stderr in order
    loadgen.raise_fd_limit()  # the servers inherit it: --stress 1000 needs > 1024 descriptors
    levels = args.concurrency
    slots = args.slots or max(levels)
    model = args.model.resolve()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="fennec-bench-serve-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    servers: list[ManagedServer] = []

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    try:
        if not model.is_file():
            raise Fatal(f"model {model} not found (bash scripts/fetch_models.sh fetches the default)")

        want_fennec = args.only in (None, "fennec")
        want_llama = args.only in (None, "llama-server")
        if want_llama and not args.llama_server:
            if args.only == "llama-server":
                raise Fatal("--only llama-server needs $LLAMA_SERVER or --llama-server")
            print("LLAMA_SERVER is not set: running fennec only, no comparison "
                  "(see bench/serve/README.md to build llama-server)")
            want_llama = False

        describe_machine(args.threads)
        print(f"model: {model}  threads: {args.threads}  slots: {slots}  "
              f"ctx per slot: {args.ctx_per_slot}")
        if not args.no_bench:
            print(f"bench: levels {','.join(map(str, levels))}  max_tokens {args.max_tokens}  "
                  f"ignore_eos {args.ignore_eos}  endpoint {args.endpoint}")
        if args.stress > 0:
            print(f"stress: {args.stress} streams  max_tokens {args.stress_max_tokens}  "
                  f"endpoint {args.stress_endpoint}")
        elif args.no_bench:
            raise Fatal("--no-bench without --stress N: nothing to do")

        if want_fennec:
            fennec = args.fennec.absolute()
            if not os.access(fennec, os.X_OK):
                raise Fatal(f"fennec binary {fennec} not found: build it (cmake --build build) or "
                            "pass --fennec PATH")
            if not fennec_has_serve(fennec):
                raise Fatal(f"{fennec} has no 'serve' command yet (see '{fennec} --help'); "
                            "build a fennec with the server, or run --only llama-server")
            servers.append(ManagedServer(
                "fennec",
                [str(fennec), "serve", "-m", str(model), "--port", str(args.fennec_port),
                 "--threads", str(args.threads), "--max-seqs", str(slots),
                 "--ctx", str(args.ctx_per_slot)]
                + shlex.split(args.fennec_args),
                args.fennec_port, log_dir / "fennec.log", ["/v1/health/ready", "/health"]))
        if want_llama:
            llama = Path(args.llama_server).expanduser()
            if not os.access(llama, os.X_OK):
                raise Fatal(f"llama-server binary {llama} not found or not executable")
            print(f"llama-server: {version_of([str(llama), '--version'])}")
            servers.append(ManagedServer(
                "llama-server",
                [str(llama), "-m", str(model), "--host", "127.0.0.1",
                 "--port", str(args.llama_port), "-t", str(args.threads),
                 "-tb", str(args.threads), "-np", str(slots),
                 "-c", str(slots * args.ctx_per_slot), "--no-webui"]
                + shlex.split(args.llama_args),
                args.llama_port, log_dir / "llama-server.log", ["/health"]))

        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready(args.ready_timeout)

        targets = [loadgen.Server(s.name, loadgen.Endpoint("127.0.0.1", s.port, ""))
                   for s in servers]
        status = asyncio.run(loadgen.run_all(targets, args, bench=not args.no_bench,
                                             stress=args.stress > 0))
        for s in servers:
            if s.proc is not None and s.proc.poll() is not None:
                print(f"[{s.name}] exited with status {s.proc.returncode} during the run; log:\n"
                      f"{s.log_tail()}")
                status = 1
        return status
    except Fatal as exc:
        print(f"compare.py: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for s in reversed(servers):
            s.stop()


if __name__ == "__main__":
    sys.exit(main())
