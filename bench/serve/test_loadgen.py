"""Tests of the load generator against fake_server.py: it measures, and its --stress check
catches a swapped answer, a cut stream and mixed stream ids.

  .venv/bin/python -m pytest -q bench/serve
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_server(request):
    procs = []

    def start(*extra: str) -> str:
        port = free_port()
        p = subprocess.Popen([sys.executable, str(HERE / "fake_server.py"), "--port", str(port),
                              *extra], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert "fake server on" in p.stdout.readline()
        return f"http://127.0.0.1:{port}"

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def loadgen(*args: str, tmp_path: Path) -> tuple[int, str, dict]:
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, str(HERE / "loadgen.py"), *args, "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr, json.loads(out.read_text()) if out.exists() else {}


def test_bench_two_servers_and_ratios(fake_server, tmp_path):
    a, b = fake_server(), fake_server("--token-ms", "6")
    rc, out, doc = loadgen("--server", f"a={a}", "--server", f"b={b}", "--concurrency", "1,4",
                           "--requests", "8", "--max-tokens", "12", tmp_path=tmp_path)
    assert rc == 0, out
    assert "ratios a / b" in out
    levels = doc["levels"]
    assert [(l["server"], l["concurrency"]) for l in levels] == [("a", 1), ("b", 1), ("a", 4), ("b", 4)]
    for l in levels:
        assert l["errors"] == 0 and l["requests"] == 8 and l["output_tokens"] == 8 * 12
        assert 0 < l["ttft_p50_s"] < l["e2e_p50_s"]
    # b waits 6 ms between chunks, a 2 ms: a must come out faster per token.
    assert doc["ratios"]["4"]["tok_s_ratio"] > 1.5
    assert levels[0]["itl_p50_s"] < levels[1]["itl_p50_s"]


def test_stress_passes_on_a_correct_server(fake_server, tmp_path):
    url = fake_server()
    rc, out, doc = loadgen("--server", url, "--stress", "300", "--ref-concurrency", "8",
                           tmp_path=tmp_path)
    assert rc == 0, out
    s = doc["stress"][0]
    assert s["pass"] and s["verdicts"] == {"ok": 300}
    assert s["peak_streaming"] > 100  # the fake server streams them all at once


@pytest.mark.parametrize("fault,verdict", [("swap", "mixed"), ("drop", "error"), ("ids", "error")])
def test_stress_catches_faults(fake_server, tmp_path, fault, verdict):
    url = fake_server("--fault", fault, "--every", "20")
    rc, out, doc = loadgen("--server", url, "--stress", "200", "--ref-concurrency", "8",
                           tmp_path=tmp_path)
    assert rc == 1, out
    s = doc["stress"][0]
    assert not s["pass"]
    assert s["verdicts"].get(verdict, 0) == 10, s["verdicts"]
    assert "FAIL" in out
