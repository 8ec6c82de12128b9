"""`fennec quantize` checked against independent references: the Python gguf package quantizes
(--naive, ggml's reference rounding) to the same bytes, dequantizes fennec's output to the same
floats as fennec itself does, and reads the files fennec writes (metadata, tensors, alignment,
NVFP4 '.scale' tensors). Errors leave no output file behind."""
import pathlib
import subprocess

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from conftest import SMOL

QUANTIZE_TYPES = {  # fennec --type -> ggml type the gguf package quantizes too
    "f16": T.F16,
    "bf16": T.BF16,
    "q8_0": T.Q8_0,
    "q4_0": T.Q4_0,
    "q4_1": T.Q4_1,
    "q5_0": T.Q5_0,
    "q5_1": T.Q5_1,
    "mxfp4": T.MXFP4,
}


def run(cmd):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600)


def make_model(path, nan=False, seed=0):
    """A small llama-like F32 model: realistic weight statistics (normal with outliers), one
    tensor of every role the policy distinguishes."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_string("test.note", "fennec quantize fixture")
    w.add_array("test.ints", [1, -2, 3])
    w.add_array("test.strs", ["a", "bb", ""])
    w.add_float64("test.f64", 0.125)
    tensors = {}

    def add(name, shape, scale=0.02):
        x = rng.normal(0, scale, size=shape).astype(np.float32)
        x.ravel()[::53] *= 10
        tensors[name] = x
        w.add_tensor(name, x)

    add("token_embd.weight", (32, 256))
    add("blk.0.attn_norm.weight", (256,), 1.0)
    add("blk.0.attn_q.weight", (256, 256))
    add("blk.0.attn_k.weight", (64, 256), 0.001)  # small weights: NVFP4 needs a tensor scale
    add("blk.0.ffn_up.weight", (512, 256))
    add("blk.0.ffn_down.weight", (256, 512))
    if nan:
        tensors["blk.0.attn_q.weight"][7, 9] = np.nan
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def tensors_of(path):
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def raw(t):
    return np.asarray(t.data).view(np.uint8).ravel()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("quant")
    path = d / "tiny-f32.gguf"
    return path, make_model(path)


@pytest.mark.parametrize("name", list(QUANTIZE_TYPES))
def test_naive_bytes_match_gguf_package(fennec, model, tmp_path, name):
    src, weights = model
    out = tmp_path / f"tiny-{name}.gguf"
    r = run([fennec, "quantize", src, out, "--type", name, "--naive",
             "--tensor-type", "token_embd=" + name, "-t", "2"])
    assert r.returncode == 0, r.stderr
    got = tensors_of(out)
    checked = 0
    for tname, x in weights.items():
        t = got[tname]
        if x.ndim == 1:
            assert t.tensor_type == T.F32
            continue
        assert t.tensor_type == QUANTIZE_TYPES[name], tname
        want = gguf.quants.quantize(x, QUANTIZE_TYPES[name]).view(np.uint8).ravel()
        assert np.array_equal(raw(t), want), f"{tname}: {np.count_nonzero(raw(t) != want)} bytes differ"
        checked += 1
    assert checked == 5


@pytest.mark.parametrize("name", ["nvfp4", "mxfp4", "q4_k", "q6_k", "q4_0", "q8_0"])
def test_dequantized_output_matches_gguf_package(fennec, model, tmp_path, name):
    """gguf.quants.dequantize of fennec's file equals fennec's own dequantization
    (`fennec quantize OUT DEQ --type f32`) bit for bit, .scale included."""
    src, weights = model
    out, deq = tmp_path / "q.gguf", tmp_path / "deq.gguf"
    r = run([fennec, "quantize", src, out, "--type", name, "-t", "2"])
    assert r.returncode == 0, r.stderr
    r = run([fennec, "quantize", out, deq, "--type", "f32"])
    assert r.returncode == 0, r.stderr
    q, d = tensors_of(out), tensors_of(deq)
    assert not any(n.endswith(".scale") for n in d), "dequantizing folds the scales in"
    for tname, x in weights.items():
        t = q[tname]
        ref = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(x.shape)
        base = tname[: -len(".weight")]
        if base + ".scale" in q:
            s = np.asarray(q[base + ".scale"].data, dtype=np.float32)
            assert s.shape == (1,)
            ref = (ref.astype(np.float32) * s[0]).astype(np.float32)
        mine = np.asarray(d[tname].data).reshape(x.shape)
        assert np.array_equal(ref.view(np.uint32), mine.view(np.uint32)), tname
        rel = np.sqrt(((x - mine) ** 2).sum() / (x**2).sum())
        assert rel < 0.2, (tname, rel)


def test_nvfp4_scales_policy_and_quality(fennec, model, tmp_path):
    src, weights = model
    out, naive = tmp_path / "nv.gguf", tmp_path / "nv-naive.gguf"
    # Unweighted error is what this test compares, so the data-free column weights (kurtosis,
    # the default) are turned off: they trade plain squared error for output error.
    r = run([fennec, "quantize", src, out, "--type", "nvfp4", "--auto-importance", "none"])
    assert r.returncode == 0, r.stderr
    assert "rel-rmse" in r.stderr and "scale" in r.stderr
    assert run([fennec, "quantize", src, naive, "--type", "nvfp4", "--naive"]).returncode == 0
    q, n = tensors_of(out), tensors_of(naive)
    assert q["token_embd.weight"].tensor_type == T.Q8_0
    assert q["blk.0.attn_norm.weight"].tensor_type == T.F32
    for tname in ["blk.0.attn_q", "blk.0.attn_k", "blk.0.ffn_up", "blk.0.ffn_down"]:
        assert q[tname + ".weight"].tensor_type == T.NVFP4
        s = q[tname + ".scale"]
        assert s.tensor_type == T.F32 and list(s.shape) == [1]
        x = weights[tname + ".weight"]
        assert np.float32(s.data[0]) == np.float32(np.abs(x).max() / np.float32(6 * 448))
        assert tname + ".scale" not in n
        # block scales never 0x7f (ggml's zero) and the largest uses the top of UE4M3
        d = raw(q[tname + ".weight"]).reshape(-1, 36)[:, :4]
        assert (d != 0x7F).all() and d.max() >= 0x7C

    def err(f, tname):
        t = f[tname + ".weight"]
        y = gguf.quants.dequantize(np.asarray(t.data), T.NVFP4).reshape(weights[tname + ".weight"].shape)
        if tname + ".scale" in f:
            y = y * np.float32(f[tname + ".scale"].data[0])
        return ((weights[tname + ".weight"] - y) ** 2).sum()

    for tname in ["blk.0.attn_q", "blk.0.ffn_up"]:
        assert err(q, tname) < 0.92 * err(n, tname)  # ~0.87 on Gaussian weights
    # Small weights: ggml's scales go subnormal, the tensor scale fixes that.
    assert err(q, "blk.0.attn_k") < 0.3 * err(n, "blk.0.attn_k")


def test_imatrix_from_gguf_package(fennec, model, tmp_path):
    src, weights = model
    im = tmp_path / "im.gguf"
    w = gguf.GGUFWriter(str(im), arch=None)
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["x.txt"])
    w.add_uint32("imatrix.chunk_count", 1)
    w.add_uint32("imatrix.chunk_size", 512)
    rng = np.random.default_rng(1)
    w.add_tensor("blk.0.attn_q.weight.in_sum2", (rng.exponential(size=(1, 256)) * 100).astype(np.float32))
    w.add_tensor("blk.0.attn_q.weight.counts", np.array([[100.0]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "o.gguf"
    r = run([fennec, "quantize", src, out, "--type", "nvfp4", "--imatrix", im])
    assert r.returncode == 0, r.stderr
    line = [l for l in r.stderr.splitlines() if "blk.0.attn_q.weight" in l][0]
    assert "imatrix-weighted" in line
    meta = gguf.GGUFReader(str(out)).fields
    assert bytes(meta["quantize.imatrix.file"].parts[-1]).decode() == str(im)

    # Wrong column count: clear error, no output.
    bad = tmp_path / "bad.gguf"
    w = gguf.GGUFWriter(str(bad), arch=None)
    w.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones((1, 100), dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight.counts", np.array([[1.0]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out2 = tmp_path / "o2.gguf"
    r = run([fennec, "quantize", src, out2, "--type", "nvfp4", "--imatrix", bad])
    assert r.returncode != 0
    assert "has 100 columns, tensor has 256" in r.stderr
    assert not out2.exists() and not pathlib.Path(str(out2) + ".tmp").exists()
    r = run([fennec, "quantize", src, out2, "--type", "nvfp4", "--imatrix", tmp_path / "none.gguf"])
    assert r.returncode != 0 and "not found" in r.stderr


def test_errors_leave_no_output(fennec, tmp_path):
    src = tmp_path / "nan.gguf"
    make_model(src, nan=True)
    out = tmp_path / "out.gguf"
    r = run([fennec, "quantize", src, out, "--type", "q4_0"])
    assert r.returncode != 0
    assert "tensor 'blk.0.attn_q.weight' has NaN at row 7, column 9" in r.stderr
    assert not out.exists() and not pathlib.Path(str(out) + ".tmp").exists()
    r = run([fennec, "quantize", src, out, "--type", "q3_k_xl"])
    assert r.returncode != 0 and "unknown --type" in r.stderr
    r = run([fennec, "quantize", tmp_path / "missing.gguf", out, "--type", "q8_0"])
    assert r.returncode != 0 and "missing.gguf" in r.stderr
    assert not out.exists()


def test_row_length_fallback_is_reported(fennec, tmp_path):
    src = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    w.add_tensor("blk.0.ffn_down.weight", np.ones((8, 96), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "odd-q.gguf"
    r = run([fennec, "quantize", src, out, "--type", "q4_k"])
    assert r.returncode == 0, r.stderr
    assert "not a multiple of Q4_K's block 256: Q5_0" in r.stderr
    assert tensors_of(out)["blk.0.ffn_down.weight"].tensor_type == T.Q5_0


def test_real_model_roundtrip_in_gguf_package(fennec, tmp_path):
    """Every metadata value of a real model survives (read back by the gguf package)."""
    out = tmp_path / "smol-q8.gguf"
    r = run([fennec, "quantize", SMOL, out, "--type", "q8_0", "-q"])
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "dequantized" in r.stderr  # Q4_1 input
    a, b = gguf.GGUFReader(str(SMOL)), gguf.GGUFReader(str(out))
    for k, f in a.fields.items():
        if k.startswith("GGUF.") or k in ("general.file_type",):
            continue
        g = b.fields[k]
        assert g.types == f.types, k
        assert [bytes(p).hex() for p in (f.parts[i] for i in f.data)] == \
               [bytes(p).hex() for p in (g.parts[i] for i in g.data)], k
    assert int(b.fields["general.file_type"].parts[-1][0]) == 7
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    assert all(list(t.shape) == list(u.shape) for t, u in zip(a.tensors, b.tensors))
