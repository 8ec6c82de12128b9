#!/usr/bin/env python3
"""Load generator for OpenAI-compatible streaming servers (fennec, llama.cpp's llama-server, ...).

Two modes:

  bench   streaming POST /v1/chat/completions at fixed concurrency levels; per server and level
          it reports TTFT p50/p99, inter-token latency p50/p99, output tokens/s (aggregate), and,
          when two servers are given, the ratios first/second.
  stress  (--stress N) N concurrent streaming connections, all opened before any request is sent,
          each asking for something whose answer is known from a non-streamed reference request
          made beforehand; every streamed answer is checked against its own request.

Standard library only: HTTP/1.1 (keep-alive, chunked transfer encoding) and Server-Sent Events
are parsed here, on asyncio streams, so the client adds no dependency and little overhead.

Examples:
  loadgen.py --server llama-server=http://127.0.0.1:8081 --concurrency 1,4,16
  loadgen.py --server fennec=http://127.0.0.1:8080 --server llama-server=http://127.0.0.1:8081
  loadgen.py --server http://127.0.0.1:8080 --stress 1000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import random
import re
import resource
import sys
import time
import urllib.parse
from typing import Callable, Optional

# --------------------------------------------------------------------------------------------
# HTTP/1.1 client


class ProtocolError(Exception):
    """The server broke HTTP or SSE framing."""


@dataclasses.dataclass
class Endpoint:
    host: str
    port: int
    base_path: str  # "" or "/prefix" (no trailing slash)

    @staticmethod
    def parse(url: str) -> "Endpoint":
        parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme != "http":
            raise ValueError(f"{url}: only http:// URLs are supported")
        return Endpoint(parts.hostname or "127.0.0.1", parts.port or 80, parts.path.rstrip("/"))

    def __str__(self) -> str:
        return f"http://{self.host}:{self.port}{self.base_path}"


# on_data(bytes, arrival_time) receives a 200 response's body piece by piece as it arrives.
OnData = Callable[[bytes, float], None]


class Connection:
    """One HTTP/1.1 connection, kept alive across requests and reopened when the server closes it."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    @property
    def is_open(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    async def connect(self) -> None:
        self.close()
        self.reader, self.writer = await asyncio.open_connection(
            self.endpoint.host, self.endpoint.port, limit=1 << 20)

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - closing a broken socket may fail; nothing to do
                pass
        self.reader = self.writer = None

    async def _send_and_read_status(self, raw: bytes) -> bytes:
        assert self.writer is not None and self.reader is not None
        self.writer.write(raw)
        await self.writer.drain()
        line = await self.reader.readline()
        if not line:
            raise ConnectionResetError("connection closed before the response")
        return line

    async def request(self, method: str, path: str, body: Optional[bytes] = None,
                      on_data: Optional[OnData] = None) -> tuple[int, dict[str, str], bytes]:
        """Sends one request and reads the whole response.

        A 200 response's body goes to on_data as it arrives when on_data is given; any other
        body is returned. Returns (status, headers with lower-case names, body)."""
        head = [f"{method} {self.endpoint.base_path}{path} HTTP/1.1",
                f"Host: {self.endpoint.host}:{self.endpoint.port}",
                "User-Agent: fennec-bench-loadgen",
                "Accept: */*"]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")

        reused = self.is_open
        if not reused:
            await self.connect()
        try:
            status_line = await self._send_and_read_status(raw)
        except (ConnectionError, OSError):
            if not reused:
                raise
            # The server closed the idle keep-alive connection as we reused it: retry once.
            await self.connect()
            status_line = await self._send_and_read_status(raw)

        reader = self.reader
        assert reader is not None
        fields = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
            raise ProtocolError(f"bad status line {status_line[:80]!r}")
        version, status = fields[0], int(fields[1])
        headers: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionResetError("connection closed inside the response headers")
            if line in (b"\r\n", b"\n"):
                break
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise ProtocolError(f"bad header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()

        keep_alive = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        collected: list[bytes] = []
        streaming = on_data is not None and status == 200

        def emit(data: bytes) -> None:
            if streaming:
                on_data(data, time.perf_counter())  # type: ignore[misc]
            else:
                collected.append(data)

        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await reader.readline()
                if not size_line:
                    raise ConnectionResetError("connection closed inside a chunked body")
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {size_line[:80]!r}") from None
                if size == 0:
                    while True:  # trailers, then the blank line
                        trailer = await reader.readline()
                        if not trailer:
                            raise ConnectionResetError("connection closed inside chunked trailers")
                        if trailer in (b"\r\n", b"\n"):
                            break
                    break
                data = await reader.readexactly(size)
                if await reader.readexactly(2) != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                emit(data)
        elif "content-length" in headers:
            remaining = int(headers["content-length"])
            while remaining > 0:
                data = await reader.read(min(remaining, 1 << 16))
                if not data:
                    raise ConnectionResetError("connection closed inside the body")
                remaining -= len(data)
                emit(data)
        elif status in (204, 304) or 100 <= status < 200 or method == "HEAD":
            pass
        else:  # body delimited by the end of the connection
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                emit(data)
            keep_alive = False

        if not keep_alive:
            self.close()
        return status, headers, b"".join(collected)


async def get_json(endpoint: Endpoint, path: str, timeout: float = 10.0) -> tuple[int, object]:
    conn = Connection(endpoint)
    try:
        status, _, body = await asyncio.wait_for(conn.request("GET", path), timeout)
    finally:
        conn.close()
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, body.decode("utf-8", "replace")


async def resolve_model(endpoint: Endpoint, requested: str) -> str:
    """The model name to send: requested, or with "auto" the first id that /v1/models lists."""
    if requested != "auto":
        return requested
    try:
        status, doc = await get_json(endpoint, "/v1/models")
        if status == 200 and isinstance(doc, dict) and doc.get("data"):
            return str(doc["data"][0]["id"])
    except (OSError, ConnectionError, asyncio.TimeoutError, ProtocolError, KeyError, TypeError):
        pass
    return "default"


# --------------------------------------------------------------------------------------------
# Server-Sent Events


class SseParser:
    """Splits a byte stream into events; feed() returns the complete ones as (event, data)."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        # Normalising line ends on the whole buffer also joins a CR and LF split across reads.
        self.buf = (self.buf + data).replace(b"\r\n", b"\n")
        events = []
        while True:
            end = self.buf.find(b"\n\n")
            if end < 0:
                return events
            block, self.buf = self.buf[:end], self.buf[end + 2:]
            event, lines = "message", []
            for line in block.split(b"\n"):
                if line.startswith(b":"):
                    continue  # comment / keep-alive ping
                name, _, value = line.partition(b":")
                if value.startswith(b" "):
                    value = value[1:]
                if name == b"data":
                    lines.append(value)
                elif name == b"event":
                    event = value.decode("utf-8", "replace")
            if lines:
                events.append((event, b"\n".join(lines).decode("utf-8", "replace")))

    def leftover(self) -> bytes:
        return self.buf.strip()


# --------------------------------------------------------------------------------------------
# One streamed request


@dataclasses.dataclass
class Result:
    t_start: float = 0.0
    t_first: Optional[float] = None  # first non-empty content delta
    t_last: Optional[float] = None  # last non-empty content delta
    t_end: float = 0.0
    status: int = 0
    error: str = ""
    text: str = ""
    content_chunks: int = 0
    completion_tokens: Optional[int] = None  # from usage
    prompt_tokens: Optional[int] = None
    finish_reason: Optional[str] = None
    stream_ids: set = dataclasses.field(default_factory=set)
    got_done: bool = False
    gaps: list = dataclasses.field(default_factory=list)  # between content chunks, seconds

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else self.content_chunks

    @property
    def ttft(self) -> Optional[float]:
        return None if self.t_first is None else self.t_first - self.t_start

    @property
    def itl(self) -> Optional[float]:
        """Mean time per output token after the first; a chunk may carry several tokens."""
        if self.t_first is None or self.t_last is None or self.tokens < 2:
            return None
        return (self.t_last - self.t_first) / (self.tokens - 1)

    @property
    def e2e(self) -> float:
        return self.t_end - self.t_start

    def summary(self) -> dict:
        return {"ok": self.ok, "error": self.error, "status": self.status,
                "ttft_s": self.ttft, "itl_s": self.itl, "e2e_s": self.e2e,
                "tokens": self.tokens, "usage_tokens": self.completion_tokens,
                "prompt_tokens": self.prompt_tokens, "chunks": self.content_chunks,
                "finish_reason": self.finish_reason}


def short(value: object, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


async def stream_request(conn: Connection, path: str, payload: dict, chat: bool, timeout: float,
                         on_first_byte: Optional[Callable[[], None]] = None) -> Result:
    """POSTs a streaming completion and times it. Never raises: failures land in Result.error."""
    res = Result()
    parser = SseParser()
    pieces: list[str] = []
    body = json.dumps(payload).encode("utf-8")

    def handle(event: str, data: str, t: float) -> None:
        if res.error:
            return
        if res.got_done:
            res.error = "event after [DONE]"
            return
        if data.strip() == "[DONE]":
            res.got_done = True
            return
        try:
            obj = json.loads(data)
        except ValueError:
            res.error = f"SSE data is not JSON: {short(data)}"
            return
        if not isinstance(obj, dict):
            res.error = f"SSE data is not a JSON object: {short(data)}"
            return
        if event == "error" or "error" in obj:
            res.error = f"error event: {short(obj.get('error', obj))}"
            return
        if obj.get("id") is not None:
            res.stream_ids.add(str(obj["id"]))
        usage = obj.get("usage")
        if isinstance(usage, dict):
            res.completion_tokens = usage.get("completion_tokens")
            res.prompt_tokens = usage.get("prompt_tokens")
        for choice in obj.get("choices") or []:
            if choice.get("index", 0) != 0:
                res.error = f"unexpected choice index {choice.get('index')}"
                return
            if chat:
                delta = choice.get("delta") or {}
                piece = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
            else:
                piece = choice.get("text") or ""
            if piece:
                if res.t_first is None:
                    res.t_first = t
                else:
                    res.gaps.append(t - res.t_last)
                res.t_last = t
                res.content_chunks += 1
                pieces.append(piece)
            if choice.get("finish_reason"):
                res.finish_reason = choice["finish_reason"]

    first = True

    def on_data(data: bytes, t: float) -> None:
        nonlocal first
        if first:
            first = False
            if on_first_byte is not None:
                on_first_byte()
        for event, payload_text in parser.feed(data):
            handle(event, payload_text, t)

    res.t_start = time.perf_counter()
    try:
        status, headers, err_body = await asyncio.wait_for(
            conn.request("POST", path, body, on_data), timeout)
        res.status = status
        if status != 200:
            res.error = f"HTTP {status}: {short(err_body.decode('utf-8', 'replace'))}"
        elif "text/event-stream" not in headers.get("content-type", ""):
            res.error = f"not an event stream (Content-Type: {headers.get('content-type')})"
    except asyncio.TimeoutError:
        res.error = f"timeout after {timeout:g} s"
        conn.close()
    except (ConnectionError, OSError, asyncio.IncompleteReadError, ProtocolError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        conn.close()
    res.t_end = time.perf_counter()
    res.text = "".join(pieces)
    if not res.error:
        if parser.leftover():
            res.error = f"unterminated SSE event at end of stream: {short(parser.leftover().decode('utf-8', 'replace'))}"
        elif not res.got_done:
            res.error = "stream ended without data: [DONE]"
        elif res.t_first is None:
            res.error = "no content in the answer"
        elif len(res.stream_ids) > 1:
            res.error = f"chunks of one stream carry {len(res.stream_ids)} different ids"
    return res


def make_payload(model: str, chat: bool, prompt, max_tokens: int, stream: bool,
                 ignore_eos: bool) -> dict:
    payload: dict = {"model": model, "max_tokens": max_tokens, "temperature": 0}
    if chat:
        payload["messages"] = prompt
    else:
        payload["prompt"] = prompt
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    if ignore_eos:
        payload["ignore_eos"] = True  # llama-server / vLLM extension: always generate max_tokens
    return payload


# --------------------------------------------------------------------------------------------
# Prompts for the benchmark: varied, a third share a long system prompt, a fifth share a document.

SHARED_SYSTEM = (
    "You are Juniper, the help-desk assistant of a small regional library network. You answer "
    "questions from members about opening hours, loans, renewals, fines, the catalogue, study "
    "rooms, printing, accessibility services and events for children and adults. Be friendly "
    "and concise: two to four sentences unless the member asks for detail. When you are unsure, "
    "say so and suggest asking at the front desk. Never invent a policy. Loans last three weeks "
    "and can be renewed twice unless someone else has reserved the item. Study rooms are booked "
    "online up to seven days ahead. Printing costs ten cents a page in black and white and fifty "
    "cents in colour. The central branch opens at nine and closes at eight on weekdays, and "
    "opens from ten to four on Saturdays. Members under sixteen need a guardian to sign up.")

LIBRARY_QUESTIONS = [
    "Can I renew a book that is already overdue?",
    "How do I book a study room for next Tuesday afternoon?",
    "What does it cost to print twelve colour pages?",
    "Is the central branch open on Saturday evening?",
    "My daughter is twelve. Can she get her own card?",
    "I lost a book I borrowed. What should I do?",
    "Do you have audiobooks, and can I borrow them on my phone?",
    "Can I return a book at a different branch from where I borrowed it?",
    "How many times can I renew a loan?",
    "Is there step-free access to the upper floor?",
    "What kind of events do you run for toddlers?",
    "Can I suggest a book for the library to buy?",
]

GENERAL_QUESTIONS = [
    "Explain in simple words why the sky looks blue.",
    "Write a short poem about a lighthouse in winter.",
    "What are three good habits for writing readable code?",
    "Give me a recipe for a quick vegetable soup.",
    "How does a bicycle stay upright while moving?",
    "Summarise the causes of the seasons on Earth.",
    "List five animals that live in the desert and one fact about each.",
    "What is the difference between weather and climate?",
    "Suggest a plan for learning to play the guitar in three months.",
    "Why do we need sleep?",
    "Describe how a bill becomes law in a parliament, briefly.",
    "What is a prime number? Give examples.",
    "Tell me a short story about a robot who learns to paint.",
    "How can I save energy at home during the winter?",
    "Explain what a hash table is to a beginner.",
    "What should I pack for a two-day hike in the mountains?",
]

SHARED_DOCUMENT = (
    "Field notes, week 14. The river rose about forty centimetres after three days of rain, "
    "covering the lower path near the old mill. The heron colony on the east bank now has "
    "eleven occupied nests, two more than last spring; one pair is building in the willow that "
    "fell across the backwater in February. We counted twenty-three species on the morning "
    "walk, including a kingfisher at the weir and a pair of grey wagtails under the footbridge. "
    "Otter spraint was found again on the flat stone below the second riffle, which suggests "
    "the animal seen in March is still using this stretch. The volunteers cleared about two "
    "hundred metres of Himalayan balsam seedlings along the north fence and repaired the stile "
    "by the meadow gate. The water was cloudy and brown, with a temperature of nine degrees, "
    "and the dissolved oxygen reading was normal. The school group from the village visited on "
    "Thursday; the children built a small bug hotel from pallets, pine cones and hollow stems "
    "and placed it at the edge of the orchard. Next week we plan to survey the bat boxes, "
    "mow the path to the hide and replace the broken sign at the car park.")

DOCUMENT_TASKS = [
    "Summarise these notes in three sentences.",
    "List every animal mentioned in the notes.",
    "What work did the volunteers do this week?",
    "Write a short, friendly newsletter paragraph based on these notes.",
    "What is planned for next week?",
    "What evidence is there that the otter is still around?",
]


def bench_prompt(i: int) -> list[dict]:
    """The i-th benchmark conversation. Each is distinct (the request number is in it) but many
    share a long prefix, as real traffic does, so prefix caching can help."""
    kind = i % 5
    tag = f"(request {i}) "
    if kind in (0, 1):
        q = LIBRARY_QUESTIONS[(i * 7 + kind) % len(LIBRARY_QUESTIONS)]
        return [{"role": "system", "content": SHARED_SYSTEM},
                {"role": "user", "content": tag + q}]
    if kind in (2, 3):
        q = GENERAL_QUESTIONS[(i * 5 + kind) % len(GENERAL_QUESTIONS)]
        return [{"role": "user", "content": tag + q}]
    task = DOCUMENT_TASKS[(i // 5) % len(DOCUMENT_TASKS)]
    return [{"role": "user", "content": SHARED_DOCUMENT + "\n\n" + tag + task}]


def bench_completion_prompt(i: int) -> str:
    """Raw-text variant for --endpoint completions."""
    msgs = bench_prompt(i)
    return "\n\n".join(m["content"] for m in msgs) + "\n\nAnswer:"


# --------------------------------------------------------------------------------------------
# Statistics and tables


def percentile(values: list[float], p: float) -> Optional[float]:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * p / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclasses.dataclass
class LevelStats:
    server: str
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    output_tokens: int
    ttft: list
    itl: list
    gaps: list
    e2e: list
    client_cpu: float  # fraction of one core the load generator used
    usage_missing: int
    error_kinds: dict
    raw: list

    @property
    def tok_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def p(self, name: str, q: float) -> Optional[float]:
        return percentile(getattr(self, name), q)

    def summary(self) -> dict:
        d = {"server": self.server, "concurrency": self.concurrency, "requests": self.requests,
             "errors": self.errors, "wall_s": self.wall_s, "output_tokens": self.output_tokens,
             "output_tok_s": self.tok_s, "client_cpu": self.client_cpu,
             "usage_missing": self.usage_missing, "error_kinds": self.error_kinds}
        for name in ("ttft", "itl", "gaps", "e2e"):
            for q in (50, 90, 99):
                d[f"{name}_p{q}_s"] = self.p(name, q)
        return d


def ms(x: Optional[float]) -> str:
    return "-" if x is None else f"{x * 1e3:.1f}"


TABLE_HEAD = (f"{'server':<14} {'conc':>4} {'reqs':>5} {'err':>4} {'tok/req':>7} "
              f"{'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'gap p99':>8} "
              f"{'E2E p50':>8} {'out tok/s':>9} {'req/s':>6} {'cli%':>5}")


def table_row(s: LevelStats) -> str:
    ok = s.requests - s.errors
    per_req = s.output_tokens / ok if ok else 0
    return (f"{s.server:<14} {s.concurrency:>4} {s.requests:>5} {s.errors:>4} {per_req:>7.1f} "
            f"{ms(s.p('ttft', 50)):>9} {ms(s.p('ttft', 99)):>9} {ms(s.p('itl', 50)):>8} "
            f"{ms(s.p('itl', 99)):>8} {ms(s.p('gaps', 99)):>8} {ms(s.p('e2e', 50)):>8} "
            f"{s.tok_s:>9.1f} {ok / s.wall_s if s.wall_s else 0:>6.2f} {s.client_cpu * 100:>5.0f}")


def print_table(stats: list[LevelStats]) -> None:
    print("\nlatencies in ms; ITL = (t_last - t_first) / (tokens - 1) per request; gap = time "
          "between SSE content chunks;\nout tok/s = all output tokens (usage.completion_tokens) / "
          "wall time of the level; cli% = load generator CPU")
    print(TABLE_HEAD)
    for s in stats:
        print(table_row(s))
    for s in stats:
        for kind, n in s.error_kinds.items():
            print(f"  {s.server} c={s.concurrency}: {n} x {kind}")
        if s.usage_missing:
            print(f"  {s.server} c={s.concurrency}: {s.usage_missing} answers without usage; "
                  "tokens counted as content chunks")


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def print_ratios(stats: list[LevelStats], a: str, b: str) -> dict:
    """Ratios a/b per concurrency, and the issue's two targets when their levels were run."""
    by = {(s.server, s.concurrency): s for s in stats}
    levels = sorted({s.concurrency for s in stats})
    print(f"\nratios {a} / {b} (tok/s: higher is better for {a}; TTFT: lower is better for {a})")
    print(f"{'conc':>4} {'tok/s ' + a:>16} {'tok/s ' + b:>18} {'ratio':>6}   "
          f"{'TTFT50 ' + a:>16} {'TTFT50 ' + b:>18} {'ratio':>6}")
    out = {}
    for c in levels:
        sa, sb = by.get((a, c)), by.get((b, c))
        if not sa or not sb:
            continue
        rt = ratio(sa.tok_s, sb.tok_s)
        rl = ratio(sa.p("ttft", 50), sb.p("ttft", 50))
        out[c] = {"tok_s_ratio": rt, "ttft_p50_ratio": rl}
        print(f"{c:>4} {sa.tok_s:>16.1f} {sb.tok_s:>18.1f} {rt if rt is not None else float('nan'):>6.2f}   "
              f"{ms(sa.p('ttft', 50)):>16} {ms(sb.p('ttft', 50)):>18} "
              f"{rl if rl is not None else float('nan'):>6.2f}")
    if 32 in out and out[32]["tok_s_ratio"] is not None:
        r = out[32]["tok_s_ratio"]
        print(f"target: output tok/s at 32 streams >= 2.00x {b}: {r:.2f}x "
              f"({'met' if r >= 2.0 else 'NOT met'})")
    if 1 in out and out[1]["ttft_p50_ratio"] is not None:
        r = out[1]["ttft_p50_ratio"]
        print(f"target: TTFT p50 at 1 stream no worse than {b}: {r:.2f}x "
              f"({'met' if r <= 1.0 else 'NOT met'})")
    return out


# --------------------------------------------------------------------------------------------
# Bench mode


@dataclasses.dataclass
class Server:
    name: str
    endpoint: Endpoint
    model: str = "auto"


@dataclasses.dataclass
class BenchOptions:
    concurrency: list
    requests: list = dataclasses.field(default_factory=list)  # per level, or one for all; [] or 0: max(8, 4 x level)
    duration: float = 0.0  # per level, seconds; overrides requests
    max_tokens: int = 64
    chat: bool = True
    ignore_eos: bool = False
    timeout: float = 600.0
    warmup: int = 2


def level_requests(opts: BenchOptions, c: int) -> int:
    n = 0
    if len(opts.requests) == 1:
        n = opts.requests[0]
    elif opts.requests:
        n = opts.requests[opts.concurrency.index(c)]
    return n if n > 0 else max(8, 4 * c)


async def run_level(server: Server, c: int, opts: BenchOptions, offset: int) -> LevelStats:
    """c workers, each with one keep-alive connection, send requests back to back."""
    path = "/v1/chat/completions" if opts.chat else "/v1/completions"
    n_max = level_requests(opts, c)
    counter = iter(range(1 << 62))
    results: list[Result] = []
    t0 = time.perf_counter()
    deadline = t0 + opts.duration if opts.duration > 0 else None
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)

    async def worker() -> None:
        conn = Connection(server.endpoint)
        try:
            while True:
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                i = next(counter)
                if deadline is None and i >= n_max:
                    return
                k = offset + i
                prompt = bench_prompt(k) if opts.chat else bench_completion_prompt(k)
                payload = make_payload(server.model, opts.chat, prompt, opts.max_tokens, True,
                                       opts.ignore_eos)
                results.append(await stream_request(conn, path, payload, opts.chat, opts.timeout))
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(c)))
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    ok = [r for r in results if r.ok]
    kinds = collections.Counter(r.error for r in results if not r.ok)
    return LevelStats(
        server=server.name, concurrency=c, requests=len(results), errors=len(results) - len(ok),
        wall_s=wall, output_tokens=sum(r.tokens for r in ok),
        ttft=[r.ttft for r in ok if r.ttft is not None],
        itl=[r.itl for r in ok if r.itl is not None],
        gaps=[g for r in ok for g in r.gaps], e2e=[r.e2e for r in ok],
        client_cpu=cpu / wall if wall > 0 else 0.0,
        usage_missing=sum(1 for r in ok if r.completion_tokens is None),
        error_kinds=dict(kinds.most_common(5)), raw=[r.summary() for r in results])


async def warm_up(server: Server, opts: BenchOptions) -> None:
    if opts.warmup <= 0:
        return
    path = "/v1/chat/completions" if opts.chat else "/v1/completions"
    conn = Connection(server.endpoint)
    try:
        for i in range(opts.warmup):
            prompt = bench_prompt(10_000_000 + i) if opts.chat else bench_completion_prompt(10_000_000 + i)
            payload = make_payload(server.model, opts.chat, prompt, min(opts.max_tokens, 16), True,
                                   opts.ignore_eos)
            r = await stream_request(conn, path, payload, opts.chat, opts.timeout)
            if not r.ok:
                print(f"[{server.name}] warm-up request failed: {r.error}", file=sys.stderr)
    finally:
        conn.close()


async def run_bench(servers: list[Server], opts: BenchOptions,
                    log: Callable[[str], None] = print) -> tuple[list[LevelStats], dict]:
    """Runs every level on every server, interleaving servers per level; returns (stats, ratios)."""
    for s in servers:
        s.model = await resolve_model(s.endpoint, s.model)
        log(f"[{s.name}] {s.endpoint}  model={s.model!r}")
        await warm_up(s, opts)
    stats: list[LevelStats] = []
    for li, c in enumerate(opts.concurrency):
        for s in servers:
            # The same prompt sequence for every server at this level, a fresh one per level.
            st = await run_level(s, c, opts, offset=li * 100_000)
            stats.append(st)
            log(f"[{s.name}] c={c:<3} {st.requests} requests, {st.errors} errors, "
                f"{st.tok_s:.1f} out tok/s, TTFT p50 {ms(st.p('ttft', 50))} ms, "
                f"ITL p50 {ms(st.p('itl', 50))} ms, {st.wall_s:.1f} s")
    print_table(stats)
    ratios = print_ratios(stats, servers[0].name, servers[1].name) if len(servers) >= 2 else {}
    return stats, ratios


# --------------------------------------------------------------------------------------------
# Stress mode: N concurrent streams, each answer checked against its own request.
#
# Each request asks the model to copy a code unique to it (greedy decoding, a few-shot prompt, a
# few tokens). Beforehand, each prompt is sent once without streaming; that answer is the
# reference. A response delivered to the wrong connection, or built from another request's
# state, shows up as: the text of another request's reference, another request's code in the
# text, a prompt_tokens count that is not this prompt's, a stream id shared with another stream,
# or chunks of one stream carrying different ids. Greedy decoding under a different batch may
# legitimately change a near-tie token, so an answer that differs from its reference but still
# holds its own code (and no other) is counted as "diverged", not as mixed up.

STRESS_FEWSHOT = ("Each code is copied exactly.\n"
                  "code: AX-1093 -> AX-1093\n"
                  "code: PL-5521 -> PL-5521\n"
                  "code: MR-2047 -> MR-2047\n")
STRESS_EXAMPLE_CODES = {"AX-1093", "PL-5521", "MR-2047"}
CODE_RE = re.compile(r"[A-Z]{2}-\d{4}")


def stress_codes(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    seen = set(STRESS_EXAMPLE_CODES)
    codes = []
    while len(codes) < n:
        code = (rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") + rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ")
                + "-" + f"{rng.randrange(10000):04d}")
        if code not in seen:
            seen.add(code)
            codes.append(code)
    return codes


def stress_prompt(code: str, chat: bool):
    if chat:
        return [{"role": "system", "content": "You copy codes. Reply with the code only."},
                {"role": "user", "content": STRESS_FEWSHOT + f"code: {code} ->"}]
    return STRESS_FEWSHOT + f"code: {code} ->"


@dataclasses.dataclass
class Reference:
    text: str
    prompt_tokens: Optional[int]


async def fetch_references(server: Server, codes: list[str], chat: bool, max_tokens: int,
                           concurrency: int, timeout: float) -> list[Reference]:
    path = "/v1/chat/completions" if chat else "/v1/completions"
    refs: list[Optional[Reference]] = [None] * len(codes)
    next_i = iter(range(len(codes)))

    async def worker() -> None:
        conn = Connection(server.endpoint)
        try:
            for i in next_i:
                payload = make_payload(server.model, chat, stress_prompt(codes[i], chat),
                                       max_tokens, False, False)
                status, _, body = await asyncio.wait_for(
                    conn.request("POST", path, json.dumps(payload).encode()), timeout)
                if status != 200:
                    raise RuntimeError(f"reference request {i}: HTTP {status}: "
                                       f"{short(body.decode('utf-8', 'replace'))}")
                doc = json.loads(body)
                choice = doc["choices"][0]
                text = (choice["message"].get("content") or "") if chat else choice["text"]
                refs[i] = Reference(text, (doc.get("usage") or {}).get("prompt_tokens"))
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return refs  # type: ignore[return-value]


async def run_stress(server: Server, n: int, chat: bool, max_tokens: int, ref_concurrency: int,
                     timeout: float, seed: int = 1) -> dict:
    server.model = await resolve_model(server.endpoint, server.model)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    codes = stress_codes(n, seed)
    print(f"[{server.name}] stress: {n} streams, {path}, max_tokens={max_tokens}, "
          f"model={server.model!r}")

    t = time.perf_counter()
    refs = await fetch_references(server, codes, chat, max_tokens, ref_concurrency, timeout)
    distinct = len({r.text for r in refs})
    with_code = sum(1 for r, c in zip(refs, codes) if c in r.text)
    print(f"[{server.name}] {n} references (non-streamed, {ref_concurrency} at a time) in "
          f"{time.perf_counter() - t:.1f} s: {distinct} distinct texts, {with_code} hold their "
          f"own code")
    if with_code < n:
        print(f"[{server.name}] note: {n - with_code} references lack their code; those requests "
              "are checked by reference text only", file=sys.stderr)

    # Open every connection first, so that all N are open at once, then send all requests.
    conns = [Connection(server.endpoint) for _ in range(n)]
    t = time.perf_counter()
    opened = await asyncio.gather(*(asyncio.wait_for(c.connect(), timeout) for c in conns),
                                  return_exceptions=True)
    connect_errors = collections.Counter(f"{type(e).__name__}: {e}" for e in opened
                                         if isinstance(e, BaseException))
    print(f"[{server.name}] opened {n - sum(connect_errors.values())}/{n} connections in "
          f"{time.perf_counter() - t:.2f} s")

    streaming = 0
    peak_streaming = 0
    go = asyncio.Event()

    def first_byte() -> None:
        nonlocal streaming, peak_streaming
        streaming += 1
        peak_streaming = max(peak_streaming, streaming)

    async def one(i: int) -> Result:
        nonlocal streaming
        started = False

        def on_first_byte() -> None:
            nonlocal started
            started = True
            first_byte()

        await go.wait()
        payload = make_payload(server.model, chat, stress_prompt(codes[i], chat), max_tokens,
                               True, False)
        r = await stream_request(conns[i], path, payload, chat, timeout, on_first_byte)
        if started:
            streaming -= 1
        conns[i].close()
        return r

    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    go.set()
    results = await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0

    # Verify every answer against its own request.
    owner_of_text = collections.defaultdict(list)
    for i, r in enumerate(refs):
        owner_of_text[r.text].append(i)
    code_owner = {c: i for i, c in enumerate(codes)}
    stream_id_owner: dict[str, int] = {}
    verdicts = collections.Counter()
    examples: dict[str, list[str]] = collections.defaultdict(list)

    def verdict(kind: str, i: int, detail: str) -> None:
        verdicts[kind] += 1
        if len(examples[kind]) < 5:
            examples[kind].append(f"request {i} (code {codes[i]}): {detail}")

    for i, r in enumerate(results):
        if not r.ok:
            verdict("error", i, r.error)
            continue
        shared = [stream_id_owner[s] for s in r.stream_ids if s in stream_id_owner]
        for s in r.stream_ids:
            stream_id_owner.setdefault(s, i)
        others = [code_owner[c] for c in CODE_RE.findall(r.text)
                  if c in code_owner and code_owner[c] != i]
        if shared:
            verdict("mixed", i, f"stream id {sorted(r.stream_ids)} also used by request {shared[0]}")
        elif (r.prompt_tokens is not None and refs[i].prompt_tokens is not None
              and r.prompt_tokens != refs[i].prompt_tokens):
            verdict("mixed", i, f"usage.prompt_tokens {r.prompt_tokens}, this prompt has "
                                f"{refs[i].prompt_tokens}")
        elif r.text == refs[i].text:
            verdicts["ok"] += 1
        elif r.text in owner_of_text and i not in owner_of_text[r.text]:
            verdict("mixed", i, f"got {r.text!r}, the answer to request "
                                f"{owner_of_text[r.text][0]}; expected {refs[i].text!r}")
        elif others:
            verdict("mixed", i, f"got {r.text!r}, which holds request {others[0]}'s code")
        elif codes[i] in r.text:
            verdict("diverged", i, f"got {r.text!r}, reference {refs[i].text!r}")
        else:
            verdict("wrong", i, f"got {r.text!r}, expected {refs[i].text!r}")

    ok = [r for r in results if r.ok]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    e2e = [r.e2e for r in ok]
    tokens = sum(r.tokens for r in ok)
    failed = verdicts["error"] + verdicts["mixed"] + verdicts["wrong"] + sum(connect_errors.values())
    print(f"[{server.name}] stress: {n} streams in {wall:.1f} s, peak {peak_streaming} streaming "
          f"at once; {tokens} output tokens ({tokens / wall if wall else 0:.0f} tok/s)")
    print(f"  TTFT p50 {ms(percentile(ttft, 50))} ms, p99 {ms(percentile(ttft, 99))} ms, "
          f"max {ms(max(ttft) if ttft else None)} ms; E2E p50 {ms(percentile(e2e, 50))} ms, "
          f"max {ms(max(e2e) if e2e else None)} ms")
    print(f"  ok {verdicts['ok']}, diverged {verdicts['diverged']}, mixed-up {verdicts['mixed']}, "
          f"wrong {verdicts['wrong']}, errors {verdicts['error']}, "
          f"connect errors {sum(connect_errors.values())}")
    for kind, n_kind in connect_errors.most_common(3):
        print(f"    connect: {n_kind} x {kind}")
    for kind in ("error", "mixed", "wrong", "diverged"):
        for line in examples[kind]:
            print(f"    {kind}: {line}")
    print(f"  {'PASS' if failed == 0 else 'FAIL'}: {n - failed}/{n} streams complete, no error, "
          "no lost or mixed-up answer")
    return {"server": server.name, "streams": n, "wall_s": wall, "peak_streaming": peak_streaming,
            "verdicts": dict(verdicts), "connect_errors": dict(connect_errors),
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
            "e2e_p50_s": percentile(e2e, 50), "output_tokens": tokens, "pass": failed == 0,
            "distinct_references": distinct, "examples": {k: v for k, v in examples.items()}}


# --------------------------------------------------------------------------------------------
# Command line


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def parse_server(spec: str) -> Server:
    name, sep, url = spec.partition("=")
    if not sep or "://" in name or ":" in name:
        url = spec
        e = Endpoint.parse(url)
        return Server(f"{e.host}:{e.port}", e)
    return Server(name, Endpoint.parse(url))


def parse_levels(text: str) -> list[int]:
    levels = [int(x) for x in text.replace(" ", "").split(",") if x]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels are positive integers, e.g. 1,4,16")
    return levels


def parse_counts(text: str) -> list[int]:
    counts = [int(x) for x in text.replace(" ", "").split(",") if x]
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError("request counts are non-negative integers, e.g. 16 or 8,16,64")
    return counts


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--concurrency", type=parse_levels, default=[1, 4, 16, 32, 64],
                    help="comma-separated concurrency levels (default 1,4,16,32,64)")
    ap.add_argument("--requests", type=parse_counts, default=[],
                    help="requests per server and level, one number or one per level "
                         "(default max(8, 4 x concurrency))")
    ap.add_argument("--duration", type=float, default=0.0,
                    help="seconds per server and level instead of a request count")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request (64)")
    ap.add_argument("--endpoint", choices=["chat", "completions"], default="chat",
                    help="bench: /v1/chat/completions (default) or /v1/completions")
    ap.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                    help="send ignore_eos: true so that every answer is max_tokens long and both "
                         "servers do the same work (default on)")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured requests per server first")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per request (600)")
    ap.add_argument("--stress", type=int, default=0, metavar="N",
                    help="stress mode: N concurrent streaming connections, every answer checked")
    ap.add_argument("--stress-max-tokens", type=int, default=8, help="stress: max_tokens (8)")
    ap.add_argument("--stress-endpoint", choices=["chat", "completions"], default="completions",
                    help="stress: endpoint (default completions)")
    ap.add_argument("--ref-concurrency", type=int, default=4,
                    help="stress: concurrency of the non-streamed reference requests (4; 1 is "
                         "slower and trusts the server's batching least)")
    ap.add_argument("--json", metavar="FILE", help="write every number (and per-request data) here")


def bench_options(args: argparse.Namespace) -> BenchOptions:
    if len(args.requests) > 1 and len(args.requests) != len(args.concurrency):
        raise SystemExit(f"--requests has {len(args.requests)} counts for "
                         f"{len(args.concurrency)} concurrency levels")
    return BenchOptions(concurrency=args.concurrency, requests=args.requests,
                        duration=args.duration, max_tokens=args.max_tokens,
                        chat=args.endpoint == "chat", ignore_eos=args.ignore_eos,
                        timeout=args.timeout, warmup=args.warmup)


async def run_all(servers: list[Server], args: argparse.Namespace, bench: bool = True,
                  stress: bool = False) -> int:
    """Bench and/or stress every server; writes --json; returns an exit status (0: no error)."""
    report: dict = {"args": {k: str(v) if not isinstance(v, (int, float, str, list, type(None)))
                             else v for k, v in vars(args).items()},
                    "servers": [{"name": s.name, "url": str(s.endpoint)} for s in servers]}
    status = 0
    for s in servers:
        s.model = await resolve_model(s.endpoint, s.model)
    if bench:
        stats, ratios = await run_bench(servers, bench_options(args))
        report["levels"] = [dict(s.summary(), requests_raw=s.raw) for s in stats]
        report["ratios"] = {str(k): v for k, v in ratios.items()}
        if any(s.errors for s in stats):
            status = 1
    if stress:
        report["stress"] = []
        for s in servers:
            print()
            r = await run_stress(s, args.stress, args.stress_endpoint == "chat",
                                 args.stress_max_tokens, args.ref_concurrency, args.timeout)
            report["stress"].append(r)
            if not r["pass"]:
                status = 1
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    return status


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", action="append", required=True, metavar="[NAME=]URL",
                    help="server to load, e.g. fennec=http://127.0.0.1:8080 (repeat for a "
                         "comparison; ratios are first / second)")
    ap.add_argument("--model", default="auto",
                    help="model field of the requests (default: first id of GET /v1/models)")
    add_common_args(ap)
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # keep stdout and stderr in order
    raise_fd_limit()
    servers = [parse_server(s) for s in args.server]
    for s in servers:
        s.model = args.model
    try:
        return asyncio.run(run_all(servers, args, bench=args.stress <= 0, stress=args.stress > 0))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
