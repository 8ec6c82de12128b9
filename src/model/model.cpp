#include "model/model.h"

#include <cmath>
#include <cstring>
#include <functional>

#include "core/aligned_vector.h"
#include "core/function_ref.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/quant_dot.h"
#include "kernels/cpu/vec.h"

namespace fennec::model {

using formats::GgmlType;
using kernels::WeightView;

Expected<int64_t> Loader::arch_int(const std::string& key) const {
  return g_.get_int(arch_ + "." + key);
}
int64_t Loader::arch_int_or(const std::string& key, int64_t def) const {
  return g_.get_int_or(arch_ + "." + key, def);
}
double Loader::arch_float_or(const std::string& key, double def) const {
  return g_.get_float_or(arch_ + "." + key, def);
}

Expected<WeightView> Loader::matrix(const std::string& name, int64_t cols, int64_t rows) const {
  const formats::GgufTensor* t = g_.find_tensor(name);
  if (!t) return make_error(g_.path() + ": tensor '" + name + "' is missing");
  const bool ok = (t->shape.size() == 2 && static_cast<int64_t>(t->shape[0]) == cols &&
                   static_cast<int64_t>(t->shape[1]) == rows) ||
                  (t->shape.size() == 1 && rows == 1 && static_cast<int64_t>(t->shape[0]) == cols);
  if (!ok) {
    std::string s;
    for (auto d : t->shape) s += (s.empty() ? "" : ", ") + std::to_string(d);
    return make_error(g_.path() + ": tensor '" + name + "' has shape [" + s + "], expected [" +
                      std::to_string(cols) + ", " + std::to_string(rows) + "]");
  }
  auto tr = formats::type_traits(static_cast<uint32_t>(t->type));
  WeightView w;
  w.type = t->type;
  w.data = t->data;
  w.rows = rows;
  w.cols = cols;
  w.row_bytes = static_cast<int64_t>(formats::row_bytes(*tr, static_cast<uint64_t>(cols)));
  // An optional per-tensor output scale "<base>.scale" (F32, one element), as llama.cpp reads
  // it for NVFP4 weights and applies to the product.
  const std::string suffix = ".weight";
  if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
    const std::string sname = name.substr(0, name.size() - suffix.size()) + ".scale";
    if (const formats::GgufTensor* st = g_.find_tensor(sname)) {
      if (st->type != GgmlType::F32 || st->n_elements() != 1)
        return make_error(g_.path() + ": tensor '" + sname + "' should be one F32 value");
      float v;
      std::memcpy(&v, st->data, sizeof v);
      if (!std::isfinite(v)) return make_error(g_.path() + ": tensor '" + sname + "' is not finite");
      w.out_scale = v;
    }
  }
  return w;
}

Expected<const float*> Loader::vector(const std::string& name, int64_t n) const {
  const formats::GgufTensor* t = g_.find_tensor(name);
  if (!t) return make_error(g_.path() + ": tensor '" + name + "' is missing");
  if (t->type != GgmlType::F32)
    return make_error(g_.path() + ": tensor '" + name + "' should be F32, is " +
                      formats::type_name(t->type));
  if (static_cast<int64_t>(t->n_elements()) != n)
    return make_error(g_.path() + ": tensor '" + name + "' has " +
                      std::to_string(t->n_elements()) + " elements, expected " + std::to_string(n));
  if (reinterpret_cast<uintptr_t>(t->data) % alignof(float) != 0)
    return make_error(g_.path() + ": tensor '" + name + "' is misaligned");
  return reinterpret_cast<const float*>(t->data);
}

Expected<const float*> Loader::optional_vector(const std::string& name, int64_t n) const {
  if (!has(name)) return static_cast<const float*>(nullptr);
  return vector(name, n);
}

Expected<HParams> read_common_hparams(const Loader& l, const std::string& arch) {
  HParams hp;
  hp.arch = arch;
  const std::string& path = l.gguf().path();
  auto need = [&](const std::string& key, int& out) -> Status {
    auto v = l.arch_int(key);
    if (!v) return v.error();
    if (*v <= 0 || *v > (1 << 24))
      return make_error(path + ": metadata key '" + arch + "." + key + "' = " +
                        std::to_string(*v) + " is out of range");
    out = static_cast<int>(*v);
    return {};
  };
  if (auto s = need("block_count", hp.n_layers); !s) return s.error();
  if (auto s = need("embedding_length", hp.n_embd); !s) return s.error();
  if (auto s = need("attention.head_count", hp.n_heads); !s) return s.error();
  if (auto s = need("feed_forward_length", hp.n_ff); !s) return s.error();
  hp.n_kv_heads = static_cast<int>(l.arch_int_or("attention.head_count_kv", hp.n_heads));
  if (hp.n_kv_heads <= 0 || hp.n_heads % hp.n_kv_heads != 0)
    return make_error(path + ": head_count " + std::to_string(hp.n_heads) +
                      " is not a multiple of head_count_kv " + std::to_string(hp.n_kv_heads));
  hp.head_dim_k = static_cast<int>(l.arch_int_or("attention.key_length", hp.n_embd / hp.n_heads));
  hp.head_dim_v = static_cast<int>(l.arch_int_or("attention.value_length", hp.head_dim_k));
  if (hp.head_dim_k <= 0 || hp.head_dim_v <= 0 || hp.head_dim_k > 1024 || hp.head_dim_v > 1024)
    return make_error(path + ": invalid attention head size");
  hp.ctx_train = static_cast<int>(l.arch_int_or("context_length", 4096));
  hp.norm_eps = static_cast<float>(l.arch_float_or("attention.layer_norm_rms_epsilon", 1e-5));
  hp.rope_dims = static_cast<int>(l.arch_int_or("rope.dimension_count", hp.head_dim_k));
  if (hp.rope_dims <= 0 || hp.rope_dims > hp.head_dim_k || hp.rope_dims % 2)
    return make_error(path + ": rope.dimension_count " + std::to_string(hp.rope_dims) +
                      " does not fit head size " + std::to_string(hp.head_dim_k));
  hp.rope_base = static_cast<float>(l.arch_float_or("rope.freq_base", 10000.0));
  hp.rope_base_local = hp.rope_base;
  const std::string scaling = l.gguf().get_string_or(arch + ".rope.scaling.type", "none");
  if (scaling == "linear") {
    const double f = l.arch_float_or("rope.scaling.factor", 1.0);
    if (f <= 0) return make_error(path + ": rope.scaling.factor must be positive");
    hp.rope_freq_scale = static_cast<float>(1.0 / f);
  } else if (scaling != "none" && scaling != "") {
    return make_error(path + ": rope scaling '" + scaling + "' is not supported yet");
  }
  hp.layer_is_swa.assign(static_cast<size_t>(hp.n_layers), false);
  // Vocabulary size: from the token list (always present) or the embedding tensor.
  if (const formats::GgufTensor* t = l.gguf().find_tensor("token_embd.weight");
      t && t->shape.size() == 2)
    hp.n_vocab = static_cast<int>(t->shape[1]);
  else
    return make_error(path + ": tensor 'token_embd.weight' is missing or not 2-D");
  return hp;
}

Expected<Weights> load_decoder_weights(const Loader& l, const HParams& hp) {
  Weights w;
  const int64_t E = hp.n_embd;
  const int64_t q_dim = static_cast<int64_t>(hp.n_heads) * hp.head_dim_k;
  const int64_t k_dim = static_cast<int64_t>(hp.n_kv_heads) * hp.head_dim_k;
  const int64_t v_dim = static_cast<int64_t>(hp.n_kv_heads) * hp.head_dim_v;
  const int64_t o_dim = static_cast<int64_t>(hp.n_heads) * hp.head_dim_v;
#define FENNEC_BIND(dst, expr)          \
  do {                                  \
    auto r_ = (expr);                   \
    if (!r_) return r_.error();         \
    dst = *r_;                          \
  } while (0)
  FENNEC_BIND(w.token_embd, l.matrix("token_embd.weight", E, hp.n_vocab));
  if (l.has("output.weight"))
    FENNEC_BIND(w.output, l.matrix("output.weight", E, hp.n_vocab));
  else
    w.output = w.token_embd;
  FENNEC_BIND(w.output_norm, l.vector("output_norm.weight", E));
  FENNEC_BIND(w.rope_freqs, l.optional_vector("rope_freqs.weight", hp.rope_dims / 2));
  w.layers.resize(static_cast<size_t>(hp.n_layers));
  for (int i = 0; i < hp.n_layers; ++i) {
    LayerWeights& L = w.layers[static_cast<size_t>(i)];
    const std::string p = "blk." + std::to_string(i) + ".";
    FENNEC_BIND(L.attn_norm, l.vector(p + "attn_norm.weight", E));
    FENNEC_BIND(L.wq, l.matrix(p + "attn_q.weight", E, q_dim));
    FENNEC_BIND(L.wk, l.matrix(p + "attn_k.weight", E, k_dim));
    FENNEC_BIND(L.wv, l.matrix(p + "attn_v.weight", E, v_dim));
    FENNEC_BIND(L.wo, l.matrix(p + "attn_output.weight", o_dim, E));
    FENNEC_BIND(L.bq, l.optional_vector(p + "attn_q.bias", q_dim));
    FENNEC_BIND(L.bk, l.optional_vector(p + "attn_k.bias", k_dim));
    FENNEC_BIND(L.bv, l.optional_vector(p + "attn_v.bias", v_dim));
    FENNEC_BIND(L.bo, l.optional_vector(p + "attn_output.bias", E));
    if (hp.qk_norm) {
      FENNEC_BIND(L.q_norm, l.vector(p + "attn_q_norm.weight", hp.head_dim_k));
      FENNEC_BIND(L.k_norm, l.vector(p + "attn_k_norm.weight", hp.head_dim_k));
    }
    if (hp.post_norms) {
      FENNEC_BIND(L.post_attn_norm, l.vector(p + "post_attention_norm.weight", E));
      FENNEC_BIND(L.post_ffn_norm, l.vector(p + "post_ffw_norm.weight", E));
    }
    FENNEC_BIND(L.ffn_norm, l.vector(p + "ffn_norm.weight", E));
    FENNEC_BIND(L.w_gate, l.matrix(p + "ffn_gate.weight", E, hp.n_ff));
    FENNEC_BIND(L.w_up, l.matrix(p + "ffn_up.weight", E, hp.n_ff));
    FENNEC_BIND(L.w_down, l.matrix(p + "ffn_down.weight", hp.n_ff, E));
  }
#undef FENNEC_BIND
  return w;
}

int64_t Model::pack_weights(ThreadPool& pool) {
  // In the order a decode step reads them, into one buffer (PackedWeights::pack_all).
  std::vector<WeightView*> views;
  std::vector<std::string> names;
  auto add = [&](WeightView& v, std::string name) {
    views.push_back(&v);
    names.push_back(std::move(name));
  };
  for (size_t i = 0; i < w_.layers.size(); ++i) {
    LayerWeights& l = w_.layers[i];
    const std::string p = "blk." + std::to_string(i) + ".";
    add(l.wq, p + "attn_q.weight");
    add(l.wk, p + "attn_k.weight");
    add(l.wv, p + "attn_v.weight");
    add(l.wo, p + "attn_output.weight");
    add(l.w_gate, p + "ffn_gate.weight");
    add(l.w_up, p + "ffn_up.weight");
    add(l.w_down, p + "ffn_down.weight");
  }
  add(w_.output, w_.output.data == w_.token_embd.data ? "token_embd.weight" : "output.weight");
  packed_.pack_all(views, pool, gguf_->file()->mapped());
  for (size_t i = 0; i < views.size(); ++i) {
    const WeightView& v = *views[i];
    if (v.packed)
      packed_regions_.push_back({names[i] + " (packed)", v.packed,
                                 static_cast<size_t>(kernels::packed_bytes(v.type, v.rows, v.cols))});
  }
  return packed_.bytes();
}

void Model::for_each_matrix(const std::function<void(const std::string&, const WeightView&)>& fn) const {
  for (size_t i = 0; i < w_.layers.size(); ++i) {
    const LayerWeights& l = w_.layers[i];
    const std::string p = "blk." + std::to_string(i) + ".";
    fn(p + "attn_q.weight", l.wq);
    fn(p + "attn_k.weight", l.wk);
    fn(p + "attn_v.weight", l.wv);
    fn(p + "attn_output.weight", l.wo);
    fn(p + "ffn_gate.weight", l.w_gate);
    fn(p + "ffn_up.weight", l.w_up);
    fn(p + "ffn_down.weight", l.w_down);
  }
  fn(gguf_->find_tensor("output.weight") ? "output.weight" : "token_embd.weight", w_.output);
}

engine::KvCacheShape Model::kv_shape(int block_size) const {
  return {hp_.n_layers, hp_.n_kv_heads, hp_.head_dim_k, hp_.head_dim_v, block_size};
}

namespace {

// Tells an observer (if any) about a layer's matmul input; the name is built only then.
void observe(MatmulObserver* observer, int layer, const char* tensor, const WeightView& w,
             const float* x, int64_t n_tokens) {
  if (observer)
    observer->on_matmul(w, "blk." + std::to_string(layer) + "." + tensor, x, n_tokens);
}

void observe_after(MatmulObserver* observer, int layer, const char* tensor, const WeightView& w,
                   const float* x, int64_t n_tokens, const float* y) {
  if (observer)
    observer->after_matmul(w, "blk." + std::to_string(layer) + "." + tensor, x, n_tokens, y, w.rows);
}

void add_bias(float* y, const float* b, int64_t n_tokens, int64_t dim) {
  if (!b) return;
  for (int64_t t = 0; t < n_tokens; ++t) kernels::add(y + t * dim, b, y + t * dim, dim);
}

}  // namespace

namespace {

// Runs fn(t0, t1) over ranges of the step's tokens on the pool, or inline when there are too few
// tokens to repay a dispatch. Element-wise and per-token ops give the same bits either way.
void for_tokens(ThreadPool& pool, int64_t n_tokens, FunctionRef<void(int64_t, int64_t)> fn) {
  if (n_tokens < 8 || pool.size() < 2)
    fn(0, n_tokens);
  else
    pool.parallel_for(n_tokens, fn);
}

}  // namespace

Status Model::forward(const Batch& batch, engine::KvCache& kv, ThreadPool& pool,
                      std::vector<float>& logits, MatmulObserver* observer) const {
  const HParams& hp = hp_;
  const int64_t T = static_cast<int64_t>(batch.tokens.size());
  if (T == 0) return make_error("forward: empty batch");
  const auto& ks = kv.shape();
  if (ks.n_layers != hp.n_layers || ks.n_kv_heads != hp.n_kv_heads ||
      ks.head_dim_k != hp.head_dim_k || ks.head_dim_v != hp.head_dim_v)
    return make_error("forward: KV cache shape does not match the model");
  // Validate the batch once: tokens in vocabulary, block tables cover every position.
  std::vector<int32_t> positions(static_cast<size_t>(T));
  std::vector<kernels::AttnSequence> aseq(batch.seqs.size());
  {
    int64_t row = 0;
    for (size_t s = 0; s < batch.seqs.size(); ++s) {
      const auto& sq = batch.seqs[s];
      if (sq.n_tokens <= 0 || sq.pos0 < 0) return make_error("forward: bad sequence span");
      if (sq.n_logits < 0 || sq.n_logits > sq.n_tokens)
        return make_error("forward: n_logits must be in [0, n_tokens]");
      const int64_t need = static_cast<int64_t>(sq.pos0) + sq.n_tokens;
      if (static_cast<int64_t>(sq.block_table.size()) * ks.block_size < need)
        return make_error("forward: block table too short for position " + std::to_string(need - 1));
      for (int32_t b : sq.block_table)
        if (b < 0 || b >= kv.n_blocks()) return make_error("forward: block id out of range");
      for (int32_t i = 0; i < sq.n_tokens; ++i) positions[static_cast<size_t>(row + i)] = sq.pos0 + i;
      aseq[s] = {row, sq.n_tokens, sq.pos0, sq.block_table.data()};
      row += sq.n_tokens;
    }
    if (row != T) return make_error("forward: sequence spans do not cover the batch tokens");
    for (int32_t t : batch.tokens)
      if (t < 0 || t >= hp.n_vocab)
        return make_error("forward: token id " + std::to_string(t) + " is outside the vocabulary");
  }

  const int64_t E = hp.n_embd;
  const int64_t q_dim = static_cast<int64_t>(hp.n_heads) * hp.head_dim_k;
  const int64_t k_dim = static_cast<int64_t>(hp.n_kv_heads) * hp.head_dim_k;
  const int64_t v_dim = static_cast<int64_t>(hp.n_kv_heads) * hp.head_dim_v;
  const int64_t o_dim = static_cast<int64_t>(hp.n_heads) * hp.head_dim_v;

  // On cache-line boundaries (aligned_vector), as every row of them is when the width is a
  // multiple of 16: the norms, rope, activations and quantization load them 32 bytes at a time.
  aligned_vector<float> x(static_cast<size_t>(T * E)), h(static_cast<size_t>(T * E));
  aligned_vector<float> q(static_cast<size_t>(T * q_dim)), k(static_cast<size_t>(T * k_dim)),
      v(static_cast<size_t>(T * v_dim)), attn(static_cast<size_t>(T * o_dim));
  aligned_vector<float> gate(static_cast<size_t>(T * hp.n_ff)), up(static_cast<size_t>(T * hp.n_ff));

  kernels::get_rows(w_.token_embd, batch.tokens, x.data());
  if (hp.embed_scale != 1.0f) kernels::scale(x.data(), hp.embed_scale, T * E);

  const kernels::VecOps& vo = kernels::vec_ops();
  const float attn_scale = hp.attn_scale > 0 ? hp.attn_scale : 1.0f / std::sqrt(static_cast<float>(hp.head_dim_k));

  for (int il = 0; il < hp.n_layers; ++il) {
    const LayerWeights& L = w_.layers[static_cast<size_t>(il)];
    const bool swa = hp.layer_is_swa[static_cast<size_t>(il)];
    for_tokens(pool, T, [&](int64_t t0, int64_t t1) {
      kernels::rms_norm(x.data() + t0 * E, L.attn_norm, t1 - t0, E, hp.norm_eps, h.data() + t0 * E);
    });
    const kernels::MatmulJob qkv[] = {{&L.wq, q.data()}, {&L.wk, k.data()}, {&L.wv, v.data()}};
    observe(observer, il, "attn_q.weight", L.wq, h.data(), T);
    observe(observer, il, "attn_k.weight", L.wk, h.data(), T);
    observe(observer, il, "attn_v.weight", L.wv, h.data(), T);
    kernels::matmul_group(qkv, h.data(), T, pool);
    observe_after(observer, il, "attn_q.weight", L.wq, h.data(), T, q.data());
    observe_after(observer, il, "attn_k.weight", L.wk, h.data(), T, k.data());
    observe_after(observer, il, "attn_v.weight", L.wv, h.data(), T, v.data());
    kernels::RopeParams rp;
    rp.style = hp.rope_style;
    rp.n_dims = hp.rope_dims;
    rp.freq_base = swa ? hp.rope_base_local : hp.rope_base;
    rp.freq_scale = swa ? 1.0f : hp.rope_freq_scale;
    rp.freq_factors = swa ? nullptr : w_.rope_freqs;
    for_tokens(pool, T, [&](int64_t t0, int64_t t1) {
      float* qt = q.data() + t0 * q_dim;
      float* kt = k.data() + t0 * k_dim;
      const int64_t n = t1 - t0;
      add_bias(qt, L.bq, n, q_dim);
      add_bias(kt, L.bk, n, k_dim);
      add_bias(v.data() + t0 * v_dim, L.bv, n, v_dim);
      if (L.q_norm) kernels::rms_norm(qt, L.q_norm, n * hp.n_heads, hp.head_dim_k, hp.norm_eps, qt);
      if (L.k_norm) kernels::rms_norm(kt, L.k_norm, n * hp.n_kv_heads, hp.head_dim_k, hp.norm_eps, kt);
      kernels::rope(qt, n, q_dim, hp.n_heads, hp.head_dim_k, positions.data() + t0, rp);
      kernels::rope(kt, n, k_dim, hp.n_kv_heads, hp.head_dim_k, positions.data() + t0, rp);
      if (hp.scale_q_first) kernels::scale(qt, attn_scale, n * q_dim);
    });

    // Store this step's K and V in the sequences' blocks: fp16, or Q8_0 quantized as ggml's
    // x86 quantize_row_q8_0 does (what llama.cpp's -ctk/-ctv q8_0 write).
    uint8_t* kc = kv.k_layer(il);
    uint8_t* vc = kv.v_layer(il);
    auto store = [&](kernels::KvType t, const float* src, uint8_t* cache, int64_t slot, int64_t n) {
      uint8_t* dst = cache + kernels::kv_bytes(t, slot * n);
      if (t == kernels::KvType::kF16)
        vo.f32_to_fp16(src, reinterpret_cast<uint16_t*>(dst), n);
      else
        kernels::quantize_act(kernels::ActFormat::kQ8_0, src, dst, n);
    };
    for (size_t s = 0; s < batch.seqs.size(); ++s) {
      const auto& sq = batch.seqs[s];
      for (int32_t i = 0; i < sq.n_tokens; ++i) {
        const int32_t pos = sq.pos0 + i;
        const int64_t slot = kernels::cache_slot(sq.block_table.data(), ks.block_size, pos);
        const int64_t r = aseq[s].row + i;
        store(ks.k_type, k.data() + r * k_dim, kc, slot, k_dim);
        store(ks.v_type, v.data() + r * v_dim, vc, slot, v_dim);
      }
    }

    kernels::AttnParams ap;
    ap.n_heads = hp.n_heads;
    ap.n_kv_heads = hp.n_kv_heads;
    ap.head_dim_k = hp.head_dim_k;
    ap.head_dim_v = hp.head_dim_v;
    ap.block_size = ks.block_size;
    ap.scale = hp.scale_q_first ? 1.0f : attn_scale;
    ap.window = swa ? hp.sliding_window : 0;
    ap.softcap = hp.attn_softcap;
    ap.k_type = ks.k_type;
    ap.v_type = ks.v_type;
    kernels::paged_attention(q.data(), q_dim, aseq.data(), static_cast<int>(aseq.size()), kc, vc, ap,
                             attn.data(), o_dim, pool);

    observe(observer, il, "attn_output.weight", L.wo, attn.data(), T);
    kernels::matmul(L.wo, attn.data(), T, h.data(), pool);
    observe_after(observer, il, "attn_output.weight", L.wo, attn.data(), T, h.data());
    for_tokens(pool, T, [&](int64_t t0, int64_t t1) {
      float* ht = h.data() + t0 * E;
      float* xt = x.data() + t0 * E;
      const int64_t n = t1 - t0;
      add_bias(ht, L.bo, n, E);
      if (L.post_attn_norm) kernels::rms_norm(ht, L.post_attn_norm, n, E, hp.norm_eps, ht);
      kernels::add(xt, ht, xt, n * E);
      kernels::rms_norm(xt, L.ffn_norm, n, E, hp.norm_eps, ht);
    });
    const kernels::MatmulJob gate_up[] = {{&L.w_gate, gate.data()}, {&L.w_up, up.data()}};
    observe(observer, il, "ffn_gate.weight", L.w_gate, h.data(), T);
    observe(observer, il, "ffn_up.weight", L.w_up, h.data(), T);
    kernels::matmul_group(gate_up, h.data(), T, pool);
    observe_after(observer, il, "ffn_gate.weight", L.w_gate, h.data(), T, gate.data());
    observe_after(observer, il, "ffn_up.weight", L.w_up, h.data(), T, up.data());
    for_tokens(pool, T, [&](int64_t t0, int64_t t1) {
      float* gt = gate.data() + t0 * hp.n_ff;
      const float* ut = up.data() + t0 * hp.n_ff;
      if (hp.act == Activation::kGeluTanh)
        kernels::gelu_mul(gt, ut, gt, (t1 - t0) * hp.n_ff);
      else
        kernels::silu_mul(gt, ut, gt, (t1 - t0) * hp.n_ff);
    });
    observe(observer, il, "ffn_down.weight", L.w_down, gate.data(), T);
    kernels::matmul(L.w_down, gate.data(), T, h.data(), pool);
    observe_after(observer, il, "ffn_down.weight", L.w_down, gate.data(), T, h.data());
    for_tokens(pool, T, [&](int64_t t0, int64_t t1) {
      float* ht = h.data() + t0 * E;
      float* xt = x.data() + t0 * E;
      if (L.post_ffn_norm) kernels::rms_norm(ht, L.post_ffn_norm, t1 - t0, E, hp.norm_eps, ht);
      kernels::add(xt, ht, xt, (t1 - t0) * E);
    });
  }

  // Rows that produce logits.
  const int64_t n_out = batch.n_outputs();
  logits.resize(static_cast<size_t>(n_out * hp.n_vocab));
  if (n_out == 0) return {};
  aligned_vector<float> xo(static_cast<size_t>(n_out * E));
  {
    int64_t o = 0;
    for (size_t s = 0; s < batch.seqs.size(); ++s) {
      const auto& sq = batch.seqs[s];
      const int64_t n = sq.n_logits;
      const int64_t r0 = aseq[s].row + sq.n_tokens - n;
      std::memcpy(xo.data() + o * E, x.data() + r0 * E, static_cast<size_t>(n * E) * sizeof(float));
      o += n;
    }
  }
  kernels::rms_norm(xo.data(), w_.output_norm, n_out, E, hp.norm_eps, xo.data());
  const char* out_name = gguf_->find_tensor("output.weight") ? "output.weight" : "token_embd.weight";
  if (observer) observer->on_matmul(w_.output, out_name, xo.data(), n_out);
  kernels::matmul(w_.output, xo.data(), n_out, logits.data(), pool);
  if (observer) observer->after_matmul(w_.output, out_name, xo.data(), n_out, logits.data(), w_.output.rows);
  if (hp.final_softcap > 0) kernels::softcap(logits.data(), hp.final_softcap, n_out * hp.n_vocab);
  return {};
}

}  // namespace fennec::model
