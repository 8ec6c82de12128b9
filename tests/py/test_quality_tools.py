"""`fennec kld` and `fennec imatrix` as a user runs them. KLD of a model against itself is exactly
zero; Q4_0 against Q8_0 lies in the range llama-perplexity --kl-divergence gives on the same files
(0.2754 mean KLD, 67.8 % same top token over the whole text at -c 512). The imatrix file is read
back with the `gguf` package and checked against an invariant that does not depend on fennec:
the input of attn_q is RMS-normalized and then scaled by attn_norm, so per token
sum_j (x_j / attn_norm_j)^2 = n_embd (up to eps)."""
import json
import os
import pathlib
import subprocess

import gguf
import numpy as np
import pytest

from conftest import GEMMA, MODELS, ROOT, SMOL

TEXT = ROOT / "tests/fixtures/reference/text.txt"
Q8 = MODELS / "SmolLM2-135M-Instruct.Q8_0.gguf"
Q4 = MODELS / "SmolLM2-135M-Instruct.Q4_0.gguf"
LLAMA_BIN = pathlib.Path(os.environ.get("LLAMA_CPP_BIN", "/tmp/llama.cpp/build/bin"))


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)


def need(*paths):
    for p in paths:
        if not p.exists():
            pytest.skip(f"{p} not found (scripts/fetch_models.sh)")


def kld_json(fennec, base, model, *extra):
    r = run([fennec, "kld", "--base", base, "-m", model, "-f", TEXT, "-t", "2", "--json", *extra])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_kld_of_a_model_against_itself_is_zero(fennec):
    j = kld_json(fennec, SMOL, SMOL, "-c", "128", "--chunks", "3")
    for key in ["n_ctx", "n_chunks", "n_scored", "ppl_base", "ppl_model", "kld_mean", "kld_median",
                "kld_p99", "kld_p99_9", "kld_max", "same_top_p", "ppl_ratio", "dp_rms"]:
        assert key in j, key
    assert j["n_ctx"] == 128 and j["n_chunks"] == 3 and j["n_scored"] == 3 * (128 - 1 - 64)
    assert j["kld_mean"] == 0 and j["kld_max"] == 0 and j["kld_p99_9"] == 0
    assert j["same_top_p"] == 1.0
    assert j["ppl_base"] == j["ppl_model"] and j["ppl_ratio"] == 1.0
    assert 2 < j["ppl_base"] < 100


def test_kld_q4_0_against_q8_0_is_plausible(fennec):
    need(Q8, Q4)
    j = kld_json(fennec, Q8, Q4, "-c", "256", "--chunks", "4")
    print(json.dumps(j, indent=1))
    assert j["n_scored"] == 4 * 127
    # llama-perplexity on these files (whole text, -c 512): mean KLD 0.275, same top 67.8 %.
    assert 0.1 < j["kld_mean"] < 0.6, j["kld_mean"]
    assert 0 < j["kld_min"] <= j["kld_median"] <= j["kld_p99"] <= j["kld_p99_9"] <= j["kld_max"]
    assert j["kld_median"] < j["kld_mean"]  # a long right tail
    assert 0.5 < j["same_top_p"] < 0.9, j["same_top_p"]
    assert j["ppl_model"] > j["ppl_base"]  # Q4_0 loses to Q8_0
    assert 0 < j["kld_mean_stderr"] < 0.05


def test_kld_text_output_reads_like_llama_perplexity(fennec):
    r = run([fennec, "kld", "--base", SMOL, "-m", SMOL, "-f", TEXT, "-c", "64", "--chunks", "2"])
    assert r.returncode == 0, r.stderr
    for line in ["Mean PPL(Q)", "Mean PPL(base)", "Mean    KLD:", "99.9%   KLD:", "Median  KLD:",
                 "Same top p:"]:
        assert line in r.stdout, line


def test_kld_refuses_different_vocabularies(fennec):
    need(GEMMA)
    r = run([fennec, "kld", "--base", SMOL, "-m", GEMMA, "-f", TEXT, "-c", "64", "--chunks", "1"])
    assert r.returncode != 0
    assert "different vocabularies" in r.stderr, r.stderr


def test_kld_short_text_is_a_clear_error(fennec, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Just a few words.")
    r = run([fennec, "kld", "--base", SMOL, "-m", SMOL, "-f", short, "-c", "128"])
    assert r.returncode != 0 and "fewer than one chunk" in r.stderr, r.stderr


def imatrix(fennec, tmp_path, model, *extra):
    out = tmp_path / "imatrix.gguf"
    r = run([fennec, "imatrix", "-m", model, "-f", TEXT, "-o", out, "-t", "2", *extra])
    assert r.returncode == 0, r.stderr
    return out, r


def tensors(path):
    reader = gguf.GGUFReader(str(path))
    return reader, {t.name: np.array(t.data, dtype=np.float64).reshape(-1) for t in reader.tensors}


def field_value(reader, key):
    f = reader.fields[key]
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        return [bytes(f.parts[i]).decode() for i in f.data]
    v = f.parts[-1]
    return bytes(v).decode() if f.types[0] == gguf.GGUFValueType.STRING else int(v[0])


def test_imatrix_file_is_llama_cpp_format_and_sums_are_right(fennec, tmp_path):
    out, r = imatrix(fennec, tmp_path, SMOL, "-c", "128", "--chunks", "3")
    assert "Final estimate: PPL" in r.stdout
    reader, t = tensors(out)
    assert field_value(reader, "general.type") == "imatrix"
    assert field_value(reader, "imatrix.chunk_count") == 3
    assert field_value(reader, "imatrix.chunk_size") == 128
    assert field_value(reader, "imatrix.datasets") == [str(TEXT)]

    model = gguf.GGUFReader(str(SMOL))
    weights = {w.name: w for w in model.tensors}
    n_layer = sum(1 for n in weights if n.endswith(".attn_q.weight"))
    names = sorted(n[: -len(".in_sum2")] for n in t if n.endswith(".in_sum2"))
    assert len(names) == 7 * n_layer and len(t) == 2 * len(names)
    for n in names:
        assert n in weights, n
        assert t[n + ".counts"].tolist() == [3 * 128.0], n
        assert len(t[n + ".in_sum2"]) == weights[n].shape[0], n  # one value per input column
        assert np.all(np.isfinite(t[n + ".in_sum2"])) and np.all(t[n + ".in_sum2"] >= 0), n
    # q, k and v read the same input; so do gate and up.
    assert np.array_equal(t["blk.5.attn_q.weight.in_sum2"], t["blk.5.attn_k.weight.in_sum2"])
    assert np.array_equal(t["blk.5.ffn_gate.weight.in_sum2"], t["blk.5.ffn_up.weight.in_sum2"])
    # RMS-normalized input scaled by the norm weight: sum_j (x_j / w_j)^2 = n_embd per token.
    n_embd = weights["blk.0.attn_q.weight"].shape[0]
    for layer in [0, 7, n_layer - 1]:
        for mat, norm in [("attn_q", "attn_norm"), ("ffn_gate", "ffn_norm")]:
            w = np.array(weights[f"blk.{layer}.{norm}.weight"].data, dtype=np.float64)
            s = t[f"blk.{layer}.{mat}.weight.in_sum2"]
            per_token = np.sum(s / (w * w)) / (3 * 128)
            assert abs(per_token / n_embd - 1) < 1e-3, (layer, mat, per_token, n_embd)


def test_imatrix_process_output_on_untied_model_and_errors(fennec, tmp_path):
    # SmolLM2 ties its output to token_embd: --process-output adds nothing, as in llama-imatrix.
    out, _ = imatrix(fennec, tmp_path, SMOL, "-c", "64", "--chunks", "1", "--process-output")
    _, t = tensors(out)
    assert not any(n.startswith(("output.", "token_embd.")) for n in t)
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    r = run([fennec, "imatrix", "-m", SMOL, "-f", short, "-o", tmp_path / "x.gguf"])
    assert r.returncode != 0 and "fewer than one chunk" in r.stderr, r.stderr
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.skipif(not (LLAMA_BIN / "llama-quantize").exists(), reason="llama.cpp not built")
def test_llama_quantize_accepts_the_imatrix(fennec, tmp_path):
    out, _ = imatrix(fennec, tmp_path, SMOL, "-c", "128", "--chunks", "2")
    q = tmp_path / "q.gguf"
    r = run([LLAMA_BIN / "llama-quantize", "--allow-requantize", "--imatrix", out, SMOL, q, "IQ4_XS", "2"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "loaded 210 importance matrix entries" in log, log[-3000:]
    assert q.exists()
