#!/usr/bin/env python3
"""A tiny OpenAI-style streaming server with optional, deliberate faults, to test loadgen.py.

It proves that the load generator measures and that its --stress check catches what it claims to:
an answer sent to the wrong stream (--fault swap), a stream cut short (--fault drop), or one
stream's chunks carrying another stream's id (--fault ids). Not a model: the "answer" to a prompt
is made from the prompt (a code "AB-1234" at its end is copied, as the stress prompt asks; any
other prompt gets words drawn from its hash), one word per chunk, --token-ms apart.

  fake_server.py --port 18999 [--fault swap|drop|ids] [--every 25] [--token-ms 2]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import sys

CODE_RE = re.compile(r"[A-Z]{2}-\d{4}")
WORDS = ("alpha bravo cedar delta ember fjord gamma harbor iris jade kelp lumen maple nova "
         "opal pine quartz raven sage tide umber vale willow xenon yarrow zephyr").split()


def answer_pieces(prompt: str, max_tokens: int) -> list[str]:
    codes = CODE_RE.findall(prompt)
    if codes:
        pieces = [" " + codes[-1], "\n", "code", ":", " done"]
    else:
        h = hashlib.sha256(prompt.encode()).digest()
        pieces = [" " + WORDS[h[i % len(h)] % len(WORDS)] for i in range(max_tokens)]
    return (pieces * (max_tokens // len(pieces) + 1))[:max_tokens]


class FakeServer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.n_streams = 0
        self.live: dict[int, list[str]] = {}  # stream number -> its pieces, while it streams
        self.seq = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if not await self.route(method, target.split("?")[0], body, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    def send_json(self, writer: asyncio.StreamWriter, status: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)

    async def route(self, method: str, path: str, body: bytes, writer) -> bool:
        if method == "GET" and path in ("/health", "/v1/health/ready"):
            self.send_json(writer, 200, {"status": "ok"})
        elif method == "GET" and path == "/v1/models":
            self.send_json(writer, 200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            return await self.complete(path.endswith("chat/completions"), json.loads(body), writer)
        else:
            self.send_json(writer, 404, {"error": {"message": f"no route {method} {path}"}})
        await writer.drain()
        return True

    async def complete(self, chat: bool, req: dict, writer) -> bool:
        prompt = req["messages"][-1]["content"] if chat else req["prompt"]
        max_tokens = int(req.get("max_tokens", 16))
        pieces = answer_pieces(prompt, max_tokens)
        self.seq += 1
        cid = f"cmpl-{self.seq}"
        obj = "chat.completion" if chat else "text_completion"
        if not req.get("stream"):
            text = "".join(pieces)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": "length"} if chat else
                      {"index": 0, "text": text, "finish_reason": "length"})
            self.send_json(writer, 200, {"id": cid, "object": obj, "choices": [choice],
                                         "usage": {"prompt_tokens": len(prompt.split()),
                                                   "completion_tokens": len(pieces)}})
            await writer.drain()
            return True

        self.n_streams += 1
        me = self.n_streams
        self.live[me] = pieces
        fault = self.args.fault if me % self.args.every == 0 else None
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")

        def event(doc) -> bytes:
            data = f"data: {doc if isinstance(doc, str) else json.dumps(doc)}\n\n".encode()
            return f"{len(data):x}\r\n".encode() + data + b"\r\n"

        try:
            await asyncio.sleep(self.args.token_ms / 1000)
            if fault == "swap":  # answer with another live stream's pieces
                other = next((k for k in sorted(self.live, reverse=True) if k != me), None)
                if other is not None:
                    pieces = self.live[other]
            for i, piece in enumerate(pieces):
                if fault == "drop" and i == len(pieces) // 2:
                    writer.write(b"0\r\n\r\n")  # ends the body early: no [DONE]
                    await writer.drain()
                    return True
                this_id = f"cmpl-{self.seq + 1000}" if fault == "ids" and i == 1 else cid
                delta = ({"delta": {"content": piece}} if chat else {"text": piece})
                writer.write(event({"id": this_id, "object": obj + ("" if not chat else ".chunk"),
                                    "choices": [dict(index=0, finish_reason=None, **delta)]}))
                await writer.drain()
                await asyncio.sleep(self.args.token_ms / 1000)
            writer.write(event({"id": cid, "object": obj, "choices": [],
                                "usage": {"prompt_tokens": len(prompt.split()),
                                          "completion_tokens": len(pieces)}}))
            writer.write(event("[DONE]") + b"0\r\n\r\n")
            await writer.drain()
            return True
        finally:
            self.live.pop(me, None)


async def serve(args: argparse.Namespace) -> None:
    fake = FakeServer(args)
    server = await asyncio.start_server(fake.handle, "127.0.0.1", args.port, backlog=4096)
    print(f"fake server on 127.0.0.1:{args.port}, fault={args.fault}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=18999)
    ap.add_argument("--fault", choices=["swap", "drop", "ids"])
    ap.add_argument("--every", type=int, default=25, help="fault every N-th stream (25)")
    ap.add_argument("--token-ms", type=float, default=2.0, help="delay between chunks (2 ms)")
    args = ap.parse_args()
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
