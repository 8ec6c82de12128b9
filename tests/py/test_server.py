"""`fennec serve` against the official `openai` client: chat, completions, streaming, n > 1,
stop strings, seeds, structured output, logprobs, errors, API keys, disconnects, drain, and
concurrent streams that must equal their answers alone. Greedy answers are checked against
llama.cpp's (tests/fixtures/reference/greedy_smollm2-135m.json); schemas are checked with the
`jsonschema` package."""
import asyncio
import json
import os
import signal
import socket
import time

import gguf
import jsonschema
import openai
import pytest

from conftest import ROOT, SMOL
from server_util import Server

KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(fennec):
    s = Server(SMOL, "--ctx", "1024", "--kv-mem", "256M", "--max-seqs", "64", api_key=KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def test_models_and_health(server, client, model_id):
    assert model_id == "SmolLM2-135M-Instruct.Q4_1"
    assert server.request("GET", "/v1/health/live")[0] == 200
    assert server.request("GET", "/v1/health/ready")[0] == 200
    assert server.request("GET", "/health")[0] == 200
    status, body = server.request("GET", "/v1/models")
    assert status == 200 and body["object"] == "list" and body["data"][0]["max_model_len"] == 1024


def test_chat_greedy_equals_llama_cpp(client, model_id):
    ref = json.loads((ROOT / "tests/fixtures/reference/greedy_smollm2-135m.json").read_text())
    for p in ref["prompts"][:3]:
        r = client.chat.completions.create(model=model_id, messages=p["messages"], max_tokens=64, temperature=0)
        assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
        ch = r.choices[0]
        assert ch.message.role == "assistant"
        assert ch.message.content == p["generated_text"]
        assert ch.finish_reason == ("length" if p["stop"] == "length" else "stop")
        assert r.usage.completion_tokens == len(p["generated_ids"])
        assert r.usage.prompt_tokens == len(p["prompt_ids"])


def test_completion_and_list_prompts(client, model_id):
    r = client.completions.create(model=model_id, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and len(r.choices) == 1
    assert r.choices[0].text and r.usage.completion_tokens <= 8
    r2 = client.completions.create(model=model_id, prompt=["One, two,", "The capital of France is"],
                                   max_tokens=8, temperature=0)
    assert [c.index for c in r2.choices] == [0, 1]
    assert r2.choices[1].text == r.choices[0].text  # batching changes nothing


def test_stream_with_usage_equals_non_stream(client, model_id):
    msgs = [{"role": "user", "content": "Name three fruits."}]
    full = client.chat.completions.create(model=model_id, messages=msgs, max_tokens=40, temperature=0)
    chunks = list(client.chat.completions.create(model=model_id, messages=msgs, max_tokens=40, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_stream(client, model_id):
    full = client.completions.create(model=model_id, prompt="Once upon a time", max_tokens=20, temperature=0)
    parts = list(client.completions.create(model=model_id, prompt="Once upon a time", max_tokens=20,
                                           temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts) == full.choices[0].text


def test_n_choices_and_seed_determinism(client, model_id):
    msgs = [{"role": "user", "content": "Tell me a one-line story."}]
    kw = dict(model=model_id, messages=msgs, max_tokens=24, temperature=1.0, seed=1234, n=3)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1  # the choices are different samples
    assert a.usage.completion_tokens > 0


def test_stop_strings(client, model_id):
    r = client.chat.completions.create(model=model_id, temperature=0, max_tokens=64, stop=["5", "five"],
                                       messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}])
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert "5" not in text and "4" in text


def test_json_schema_output_validates(client, model_id):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer"},
            "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
            "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
            "married": {"type": "boolean"},
        },
        "required": ["name", "age", "city", "hobbies", "married"],
        "additionalProperties": False,
    }
    for prompt in ["Describe a person as JSON.", "Invent a character who lives in Tokyo."]:
        r = client.chat.completions.create(
            model=model_id, max_tokens=300, temperature=0, presence_penalty=1.0,
            messages=[{"role": "user", "content": prompt}],
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}})
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    # A 135M model loops in long arrays when greedy; a presence penalty lets it close the object
    # within max_tokens (a cut-off output would not parse, as with any engine).
    r = client.chat.completions.create(model=model_id, max_tokens=200, temperature=0, presence_penalty=1.0,
                                       messages=[{"role": "user", "content": "Give me a JSON object about cats."}],
                                       response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_logprobs(client, model_id):
    r = client.chat.completions.create(model=model_id, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3,
                                       messages=[{"role": "user", "content": "Say hello."}])
    content = r.choices[0].logprobs.content
    assert len(content) in (r.usage.completion_tokens, r.usage.completion_tokens - 1)  # an ending EOS has none
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token  # greedy takes the most likely token
        assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
    c = client.completions.create(model=model_id, prompt="Hello", max_tokens=4, temperature=0, logprobs=2)
    assert len(c.choices[0].logprobs.token_logprobs) == c.usage.completion_tokens
    assert all(len(t) == 2 for t in c.choices[0].logprobs.top_logprobs)
    # text_offset: where each token starts in the text, in characters (as vLLM and OpenAI give it).
    lp = c.choices[0].logprobs
    assert len(lp.text_offset) == len(lp.tokens) and lp.text_offset[0] == 0
    for i in range(1, len(lp.tokens)):
        assert lp.text_offset[i] == lp.text_offset[i - 1] + len(lp.tokens[i - 1]), lp
    # A stream's offsets go on from chunk to chunk and give the same values.
    s = client.completions.create(model=model_id, prompt="Hello", max_tokens=4, temperature=0, logprobs=2,
                                  stream=True)
    streamed = [o for ch in s for c2 in ch.choices if c2.logprobs for o in c2.logprobs.text_offset]
    assert streamed == lp.text_offset


def _err(status, body, param=None, code=None, want=400):
    assert status == want, body
    assert set(body["error"]) >= {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body


def test_bad_requests(server, model_id):
    chat = "/v1/chat/completions"
    msgs = [{"role": "user", "content": "hi"}]
    _err(*server.request("POST", chat, raw=b"{not json"))
    _err(*server.request("POST", chat, {"messages": msgs, "temperature": "hot"}), param="temperature")
    _err(*server.request("POST", chat, {"messages": msgs, "n": 0}), param="n")
    _err(*server.request("POST", chat, {"messages": msgs, "n": 1000}), param="n")
    _err(*server.request("POST", chat, {"messages": msgs, "max_tokens": 0}), param="max_tokens")
    _err(*server.request("POST", chat, {"messages": msgs, "max_tokens": 5000}), param="max_tokens")
    _err(*server.request("POST", chat, {"messages": "hi"}), param="messages")
    _err(*server.request("POST", chat, {"messages": msgs, "model": "gpt-4"}), param="model")
    long_prompt = "word " * 3000
    _err(*server.request("POST", chat, {"messages": [{"role": "user", "content": long_prompt}]}))
    _err(*server.request("POST", "/v1/completions", {"prompt": long_prompt}))
    _err(*server.request("POST", chat, {"messages": msgs, "response_format": {"type": "json_schema",
                         "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}), param="response_format")
    _err(*server.request("GET", chat), want=405)
    _err(*server.request("GET", "/v1/nothing-here"), want=404)
    _err(*server.request("POST", chat, raw=b"{" + b" " * (9 << 20) + b"}"), want=413)
    # Unknown fields are ignored, as OpenAI does.
    status, body = server.request("POST", chat, {"messages": msgs, "max_tokens": 2, "some_future_field": 1})
    assert status == 200, body
    # The server is still fine.
    assert server.request("GET", "/v1/health/ready")[0] == 200


def test_api_key(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    _err(*server.request("POST", "/v1/chat/completions", body, headers={"Authorization": ""}), want=401)
    _err(*server.request("POST", "/v1/chat/completions", body, headers={"Authorization": "Bearer nope"}), want=401)
    bad = openai.OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    # Probes and metrics need no key.
    assert server.request("GET", "/v1/health/live", headers={"Authorization": ""})[0] == 200


def test_tokenize_detokenize(server):
    status, body = server.request("POST", "/tokenize", {"prompt": "Hello world"})
    assert status == 200 and body["count"] == len(body["tokens"]) > 0
    status, back = server.request("POST", "/detokenize", {"tokens": body["tokens"]})
    assert status == 200 and back["prompt"] == "Hello world"


def test_disconnect_frees_pages(server, model_id):
    body = json.dumps({"model": model_id, "messages": [{"role": "user", "content": "Write a long essay."}],
                       "max_tokens": 900, "stream": True, "ignore_eos": True}).encode()
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode() +
              b"\r\n\r\n" + body)
    got = b""
    while got.count(b"data: ") < 5:
        got += s.recv(4096)
    assert server.metric("fennec:kv_cache_usage_perc") > 0
    s.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        if server.metric("fennec:num_requests_running") == 0 and server.metric("fennec:kv_cache_usage_perc") == 0:
            break
        time.sleep(0.1)
    assert server.metric("fennec:num_requests_running") == 0
    assert server.metric("fennec:kv_cache_usage_perc") == 0
    assert server.metric("fennec:request_success_total") >= 1


def test_metrics(server):
    m = server.metrics()
    names = {k.split("{")[0] for k in m}
    for n in ["fennec:num_requests_running", "fennec:num_requests_waiting", "fennec:kv_cache_usage_perc",
              "fennec:prompt_tokens_total", "fennec:generation_tokens_total", "fennec:time_to_first_token_seconds_bucket",
              "fennec:e2e_request_latency_seconds_count", "fennec:request_success_total",
              "fennec:prefix_cache_queries_total", "fennec:prefix_cache_hits_total"]:
        assert n in names, n
    assert server.metric("fennec:generation_tokens_total") > 0
    assert server.metric("fennec:prefix_cache_hits_total") > 0  # the chat template's system prompt is shared


async def _stream_chat(port, prompt, max_tokens):
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "temperature": 0, "stream": True}).encode()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nConnection: close\r\nContent-Length: " +
            str(len(body)).encode() + b"\r\n\r\n" + body)
    await w.drain()
    raw = await r.read()
    w.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head
    # De-chunk.
    data = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        n = int(size_line, 16)
        if n == 0:
            break
        data += rest[:n]
        rest = rest[n + 2:]
    text = ""
    done = False
    for ev in data.decode().split("\n\n"):
        if not ev.startswith("data: "):
            continue
        payload = ev[6:]
        if payload == "[DONE]":
            done = True
            continue
        j = json.loads(payload)
        if j["choices"]:
            text += j["choices"][0]["delta"].get("content") or ""
    assert done
    return text


def test_64_concurrent_streams_equal_their_answers_alone(server, client, model_id):
    prompts = [f"Write one sentence about the number {i}." for i in range(64)]
    alone = [client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": p}],
                                            max_tokens=20, temperature=0).choices[0].message.content
             for p in prompts]

    async def all_streams():
        return await asyncio.gather(*[_stream_chat(server.port, p, 20) for p in prompts])

    together = asyncio.run(all_streams())
    mismatched = [i for i in range(64) if together[i] != alone[i]]
    assert not mismatched, [(alone[i], together[i]) for i in mismatched[:3]]


def test_queue_full_gives_429(fennec):
    s = Server(SMOL, "--ctx", "512", "--kv-mem", "64M", "--max-seqs", "1", "--max-queue", "1", "-q")
    try:
        async def burst():
            async def one():
                body = json.dumps({"prompt": "Once upon a time", "max_tokens": 64, "ignore_eos": True}).encode()
                r, w = await asyncio.open_connection("127.0.0.1", s.port)
                w.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                await w.drain()
                raw = await r.read()
                w.close()
                return raw
            return await asyncio.gather(*[one() for _ in range(8)])
        res = asyncio.run(burst())
        codes = [int(x.split(b" ", 2)[1]) for x in res]
        assert 429 in codes and 200 in codes, codes
        assert all(b"Retry-After" in x for x in res if b" 429 " in x.split(b"\r\n")[0])
    finally:
        s.stop()


def test_sigterm_drains_in_flight_requests(fennec):
    s = Server(SMOL, "--ctx", "512", "--kv-mem", "64M", "--drain-timeout", "60")
    c = openai.OpenAI(base_url=s.base + "/v1", api_key="none", max_retries=0)
    stream = c.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", max_tokens=200, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True},
                                       messages=[{"role": "user", "content": "Tell me about the sea."}])
    it = iter(stream)
    first = next(it)
    s.proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 10
    while s.request("GET", "/v1/health/ready")[0] != 503 and time.time() < deadline:
        time.sleep(0.05)
    assert s.request("GET", "/v1/health/ready")[0] == 503
    status, body = s.request("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})
    assert status == 503, body
    rest = list(it)
    n_tokens = sum(1 for ch in [first, *rest] if ch.choices and ch.choices[0].delta.content)
    assert rest[-1].choices[0].finish_reason == "length" and n_tokens > 100
    assert s.proc.wait(timeout=60) == 0


def test_1000_concurrent_streams_each_get_their_own_answer(server, model_id):
    """1000 streaming connections at once. Each request forces its own token with logit_bias, so
    its answer is known in advance: a lost, cut or mixed-up stream shows as a wrong text."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    n = 1000
    token_ids = [1000 + 7 * i for i in range(n)]
    expected = []
    for t in token_ids:
        status, body = server.request("POST", "/detokenize", {"tokens": [t] * 3})
        assert status == 200
        expected.append(body["prompt"])

    async def one(i):
        body = json.dumps({"model": model_id, "prompt": f"Item {i}:", "max_tokens": 3, "temperature": 0,
                           "stream": True, "logit_bias": {str(token_ids[i]): 100}}).encode()
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + KEY.encode() + b"\r\nConnection: close\r\nContent-Length: " +
                str(len(body)).encode() + b"\r\n\r\n" + body)
        await w.drain()
        raw = await asyncio.wait_for(r.read(), timeout=600)
        w.close()
        head, _, rest = raw.partition(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n")[0]:
            return None, set(), False
        data = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            data += rest[:size]
            rest = rest[size + 2:]
        text, ids, done = "", set(), False
        for ev in data.decode().split("\n\n"):
            if ev == "data: [DONE]":
                done = True
            elif ev.startswith("data: "):
                j = json.loads(ev[6:])
                ids.add(j["id"])
                if j["choices"]:
                    text += j["choices"][0]["text"]
        return text, ids, done

    async def all_streams():
        return await asyncio.gather(*[one(i) for i in range(n)])

    t0 = time.time()
    results = asyncio.run(all_streams())
    wall = time.time() - t0
    bad = [i for i, (text, ids, done) in enumerate(results) if text != expected[i] or len(ids) != 1 or not done]
    assert not bad, [(i, results[i], expected[i]) for i in bad[:3]]
    assert len({next(iter(ids)) for _, ids, _ in results}) == n  # every response its own id
    print(f"1000 concurrent streams completed in {wall:.1f} s")


def test_q8_0_kv_cache_serves_batched_answers_equal_to_alone(fennec):
    """FENNEC_CACHE_TYPE_K/V=q8_0: the same --kv-mem holds 64/34 as many tokens (the ready line
    says how many; the expected count comes from the gguf package's shapes), and answers decoded
    eight at a time equal each answer decoded alone (a sequence's numbers never depend on what
    shares its step)."""
    env = dict(os.environ, FENNEC_CACHE_TYPE_K="q8_0", FENNEC_CACHE_TYPE_V="q8_0")
    s = Server(SMOL, "--ctx", "512", "--kv-mem", "64M", "-q", env=env)
    try:
        ready = next(line for line in s.log if "ready:" in line)
        assert "K q8_0, V q8_0" in ready, ready
        reader = gguf.GGUFReader(str(SMOL))
        field = lambda k: int(reader.fields[k].parts[-1][0])
        n_layers, n_kv = field("llama.block_count"), field("llama.attention.head_count_kv")
        head = field("llama.embedding_length") // field("llama.attention.head_count")
        per_block = 16 * n_layers * n_kv * 2 * (head // 32 * 34)
        assert f"KV cache {(64 << 20) // per_block * 16} tokens" in ready, ready
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="none", max_retries=0)
        prompts = [f"Name a fruit that starts with the letter {ch}." for ch in "ABCDEFGH"]
        alone = [c.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", max_tokens=16, temperature=0,
                                           messages=[{"role": "user", "content": p}]).choices[0].message.content
                 for p in prompts]

        async def all_streams():
            return await asyncio.gather(*[_stream_chat(s.port, p, 16) for p in prompts])

        assert asyncio.run(all_streams()) == alone
    finally:
        s.stop()
