#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/aligned_vector.h"
#include "core/float_convert.h"
#include "kernels/cpu/activation_quant.h"
#include "kernels/cpu/quant_dot.h"
#include "kernels/cpu/quant_gemm.h"
#include "kernels/cpu/repack.h"
#include "kernels/cpu/vec.h"
#include "quant/dequantize.h"

namespace fennec::kernels {

namespace {

// Rows of W per unit of work split across threads (and, for types without an integer kernel,
// dequantized per tile: every token reuses the tile while it is in cache).
constexpr int64_t kRowTile = 16;
static_assert(kRowTile == kPackRows);

void dequantize_rows(const WeightView& w, int64_t r0, int64_t n, float* out) {
  if (w.type == formats::GgmlType::F32) {
    for (int64_t r = 0; r < n; ++r)
      std::copy_n(reinterpret_cast<const float*>(w.data + (r0 + r) * w.row_bytes), w.cols,
                  out + r * w.cols);
    return;
  }
  if (w.type == formats::GgmlType::F16) {
    const VecOps& v = vec_ops();
    for (int64_t r = 0; r < n; ++r)
      v.fp16_to_f32(reinterpret_cast<const uint16_t*>(w.data + (r0 + r) * w.row_bytes),
                    out + r * w.cols, w.cols);
    return;
  }
  for (int64_t r = 0; r < n; ++r) {
    Status s =
        quant::dequantize_row(w.type, w.data + (r0 + r) * w.row_bytes, out + r * w.cols, w.cols);
    assert(s.has_value());
    (void)s;
  }
}

void scale_outputs(float* y, int64_t ldy, int64_t n_tokens, int64_t r0, int64_t r1, float s) {
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t r = r0; r < r1; ++r) y[t * ldy + r] *= s;
}

}  // namespace

void matmul(const WeightView& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool,
            int64_t ldy) {
  if (ldy == 0) ldy = w.rows;
  if (has_quant_dot(w.type) || w.packed) {
    const MatmulJob job{&w, y, ldy};
    matmul_group(std::span<const MatmulJob>(&job, 1), x, n_tokens, pool);
    return;
  }
  const int64_t n_tiles = (w.rows + kRowTile - 1) / kRowTile;
  const ActFormat af = activation_format(w.type);
  // Other types: dequantize a tile of rows and take float dots with the activations rounded
  // through the format ggml pairs with the type, so the result carries the same rounding.
  const VecOps& v = vec_ops();
  std::vector<float> xr;
  if (af != ActFormat::kF32) {
    xr.resize(static_cast<size_t>(n_tokens * w.cols));
    for (int64_t t = 0; t < n_tokens; ++t)
      round_activations(af, x + t * w.cols, xr.data() + t * w.cols, w.cols);
    x = xr.data();
  }
  pool.parallel_for(n_tiles, [&](int64_t t0, int64_t t1) {
    thread_local aligned_vector<float> tile;
    tile.resize(static_cast<size_t>(kRowTile * w.cols));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * kRowTile;
      const int64_t nr = std::min(kRowTile, w.rows - r0);
      dequantize_rows(w, r0, nr, tile.data());
      for (int64_t tok = 0; tok < n_tokens; ++tok) {
        const float* xt = x + tok * w.cols;
        float* yt = y + tok * ldy + r0;
        for (int64_t r = 0; r < nr; ++r) yt[r] = v.dot(tile.data() + r * w.cols, xt, w.cols);
      }
      if (w.out_scale != 1.0f) scale_outputs(y, ldy, n_tokens, r0, r0 + nr, w.out_scale);
    }
  });
}

void matmul_group(std::span<const MatmulJob> jobs, const float* x, int64_t n_tokens, ThreadPool& pool) {
  bool fused = !jobs.empty();
  for (const auto& j : jobs)
    fused = fused && (has_quant_dot(j.w->type) || j.w->packed) && j.w->cols == jobs[0].w->cols;
  if (!fused) {
    for (const auto& j : jobs) matmul(*j.w, x, n_tokens, j.y, pool, j.ldy);
    return;
  }
  // The call's bookkeeping lives on the stack, not in vectors: a decode step makes four calls
  // per layer, and their heap traffic ran on the caller alone while the workers waited.
  constexpr size_t kMaxJobs = 8;
  if (jobs.size() > kMaxJobs) {  // not a case the models have: in slices (outputs are separate)
    for (size_t i = 0; i < jobs.size(); i += kMaxJobs)
      matmul_group(jobs.subspan(i, std::min(kMaxJobs, jobs.size() - i)), x, n_tokens, pool);
    return;
  }
  const int64_t cols = jobs[0].w->cols;
  // One quantized copy of x per activation format the jobs need.
  struct Act {
    ActFormat fmt;
    int64_t bytes;  // per token
    std::vector<uint8_t>* buf;
  };
  thread_local std::vector<uint8_t> bufs[4];
  Act acts[4];
  size_t n_acts = 0;
  size_t act_of[kMaxJobs];
  for (size_t i = 0; i < jobs.size(); ++i) {
    const ActFormat af = activation_format(jobs[i].w->type);
    size_t a = 0;
    while (a < n_acts && acts[a].fmt != af) ++a;
    if (a == n_acts) {
      if (a == 4) {  // more formats than buffers: not a case the models have
        for (const auto& j : jobs) matmul(*j.w, x, n_tokens, j.y, pool, j.ldy);
        return;
      }
      acts[n_acts++] = {af, quantized_act_bytes(af, cols), &bufs[a]};
      acts[a].buf->resize(static_cast<size_t>(n_tokens * acts[a].bytes));
    }
    act_of[i] = a;
  }
  const std::span<const Act> act_list(acts, n_acts);
  // Packed matrices (repack.h) also read each Q8_0 block's scale as float and its byte sum.
  bool any_packed = false;
  for (const auto& j : jobs) any_packed = any_packed || j.w->packed;
  const int64_t nb = cols / 32;
  thread_local std::vector<float> side_d;
  thread_local std::vector<int32_t> side_sum;
  // With AMX (repack_avx512.cpp), also the Q8_0 rows as tiles of 16 tokens, laid out once here
  // rather than by each thread's every chunk.
  thread_local std::vector<uint8_t, CacheAlignedAllocator<uint8_t>> amx_tiles;
  thread_local std::vector<float, CacheAlignedAllocator<float>> amx_d;
  const Act* q8 = nullptr;
  if (any_packed) {
    for (const Act& a : act_list)
      if (a.fmt == ActFormat::kQ8_0) q8 = &a;
    side_d.resize(static_cast<size_t>(n_tokens * nb));
    side_sum.resize(static_cast<size_t>(2 * n_tokens * nb));
  }
  const int64_t n_amx = q8 && packed_amx_wanted(n_tokens) ? n_tokens / 16 * 16 : 0;
  if (n_amx > 0) {
    amx_tiles.resize(static_cast<size_t>(n_amx * nb * 32));
    amx_d.resize(static_cast<size_t>(n_amx * nb));
  }
  // Pointers, not the thread_local names: the workers would see their own (empty) vectors.
  float* const sd = side_d.data();
  int32_t* const ss = side_sum.data();
  uint8_t* const at = n_amx > 0 ? amx_tiles.data() : nullptr;
  float* const ad = n_amx > 0 ? amx_d.data() : nullptr;
  pool.parallel_for(n_tokens, [&](int64_t t0, int64_t t1) {
    for (const Act& a : act_list)
      for (int64_t t = t0; t < t1; ++t) quantize_act(a.fmt, x + t * cols, a.buf->data() + t * a.bytes, cols);
    if (q8)
      for (int64_t t = t0; t < t1; ++t) {
        packed_act_sides(q8->buf->data() + t * q8->bytes, nb, sd + t * nb, ss + 2 * t * nb);
        if (t < n_amx) packed_act_tiles(q8->buf->data() + t * q8->bytes, nb, t, at, ad);
      }
  });
  // Row tiles of all jobs, numbered one after another.
  int64_t first_tile[kMaxJobs + 1] = {};
  QuantGemmArgs args[kMaxJobs];
  QuantGemmFn fns[kMaxJobs];
  PackedGemmArgs pargs[kMaxJobs];
  PackedGemmFn pfns[kMaxJobs] = {};
  for (size_t i = 0; i < jobs.size(); ++i) {
    const WeightView& w = *jobs[i].w;
    const Act& a = acts[act_of[i]];
    args[i] = {w.data, w.row_bytes, a.buf->data(), a.bytes, w.cols, n_tokens, jobs[i].y,
               jobs[i].ldy > 0 ? jobs[i].ldy : w.rows};
    fns[i] = quant_gemm_fn(w.type, w.rows);
    if (w.packed) {
      pfns[i] = packed_gemm_pick(packed_gemm_ops(), w.type);
      const bool k = w.type == formats::GgmlType::Q4_K || w.type == formats::GgmlType::Q6_K;
      const bool sides = a.fmt == ActFormat::kQ8_0;  // Q8_K (Q4_K, Q6_K), Q8_1 (Q4_1): none
      pargs[i] = {w.packed,      k ? cols / 256 : nb, a.buf->data(), a.bytes, sides ? sd : nullptr, sides ? ss : nullptr,
                  n_tokens,      jobs[i].y,  args[i].ldy,   w.rows,   w.packed_run_end,
                  sides ? at : nullptr, sides ? ad : nullptr};
    }
    first_tile[i + 1] = first_tile[i] + (w.rows + kRowTile - 1) / kRowTile;
  }
  auto body = [&](int64_t t0, int64_t t1) {
    size_t i = 0;
    while (first_tile[i + 1] <= t0) ++i;
    for (int64_t t = t0; t < t1;) {
      const int64_t end = std::min(t1, first_tile[i + 1]);
      const int64_t rows = jobs[i].w->rows;
      const int64_t r0 = (t - first_tile[i]) * kRowTile, r1 = std::min(rows, (end - first_tile[i]) * kRowTile);
      if (pfns[i])  // a row tile is one packed group (kRowTile == kPackRows)
        pfns[i](pargs[i], t - first_tile[i], end - first_tile[i]);
      else
        fns[i](args[i], r0, r1);
      if (jobs[i].w->out_scale != 1.0f) scale_outputs(args[i].y, args[i].ldy, n_tokens, r0, r1, jobs[i].w->out_scale);
      t = end;
      ++i;
    }
  };
  // Guided chunks: a thread that runs slower than the other (its stream from memory, or a core
  // that the machine gives to someone else for a while) leaves its tail to them instead of
  // holding them at the end. A few tokens (decode): at least 8 tiles a chunk. Two threads, a
  // 226 MB Q4_0 matrix, alternating with the equal split in one process: 1 token 5.90-5.94 ->
  // 5.77 ms at the first quartile, 4 tokens 10.24 -> 10.02-10.08. Prefill: one tile (16 rows of
  // every token) a chunk at least. On the shared 2-core VM of the thirteenth session, pp512 at
  // two threads, equal split against guided, alternating: SmolLM2 Q8_0 414-476 -> 469-527 t/s,
  // Q4_0 602-780 -> 627-738 (medians 606 -> 678), Gemma 3 474-694 -> 596-691, the 1.2B 91-127
  // -> 98-154; the twelfth session, in a quieter hour, had seen guided 2-4% slower there.
  pool.parallel_for_guided(first_tile[jobs.size()], n_tokens <= 4 ? 8 : 1, body);
}

void get_rows(const WeightView& w, std::span<const int32_t> ids, float* out) {
  for (size_t i = 0; i < ids.size(); ++i) dequantize_rows(w, ids[i], 1, out + i * w.cols);
}

void rms_norm(const float* x, const float* weight, int64_t n_tokens, int64_t dim, float eps,
              float* out) {
  // Each token's sum of squares in double, in element order as ggml adds it: one chain of
  // dependent additions per token, so four tokens' chains run side by side.
  auto finish = [&](int64_t t, double ss) {
    const float* xt = x + t * dim;
    float* ot = out + t * dim;
    const float s = 1.0f / std::sqrt(static_cast<float>(ss / dim) + eps);
    if (weight)
      for (int64_t i = 0; i < dim; ++i) ot[i] = xt[i] * s * weight[i];
    else
      for (int64_t i = 0; i < dim; ++i) ot[i] = xt[i] * s;
  };
  int64_t t = 0;
  for (; t + 4 <= n_tokens; t += 4) {
    const float* x0 = x + t * dim;
    double ss[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < dim; ++i)
      for (int k = 0; k < 4; ++k) {
        const float v = x0[k * dim + i];
        ss[k] += static_cast<double>(v * v);
      }
    for (int k = 0; k < 4; ++k) finish(t + k, ss[k]);
  }
  for (; t < n_tokens; ++t) {
    const float* xt = x + t * dim;
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xt[i] * xt[i]);
    finish(t, ss);
  }
}

namespace {

// The cosines and sines of one rope call's angles per token ([t][half] each), kept per thread
// for the next calls with the same positions and parameters: a forward pass ropes Q and K of
// every layer at the same positions, so the libm cos and sin run once per pass (twice for
// Gemma 3's local and global bases), not twice per layer.
struct RopeAngles {
  std::vector<int32_t> pos;
  int n_dims = 0;
  float freq_base = 0, freq_scale = 0;
  const float* freq_factors = nullptr;
  std::vector<float> cos, sin;
  bool matches(const int32_t* positions, int64_t n, const RopeParams& p) const {
    return n_dims == p.n_dims && freq_base == p.freq_base && freq_scale == p.freq_scale &&
           freq_factors == p.freq_factors && static_cast<int64_t>(pos.size()) == n &&
           std::equal(pos.begin(), pos.end(), positions);
  }
};

const RopeAngles& rope_angles(const int32_t* positions, int64_t n_tokens, const RopeParams& p) {
  thread_local RopeAngles slots[2];
  thread_local int next = 0;
  for (const RopeAngles& a : slots)
    if (a.matches(positions, n_tokens, p)) return a;
  RopeAngles& a = slots[next];
  next = 1 - next;
  const int half = p.n_dims / 2;
  a.pos.assign(positions, positions + n_tokens);
  a.n_dims = p.n_dims;
  a.freq_base = p.freq_base;
  a.freq_scale = p.freq_scale;
  a.freq_factors = p.freq_factors;
  a.cos.resize(static_cast<size_t>(n_tokens * half));
  a.sin.resize(a.cos.size());
  const float theta_scale = std::pow(p.freq_base, -2.0f / static_cast<float>(p.n_dims));
  for (int64_t t = 0; t < n_tokens; ++t) {
    // theta_i = pos * base^(-2i/n_dims), built by repeated multiplication in float the way
    // ggml's rope cache is, so the angles carry the same rounding.
    float theta = static_cast<float>(positions[t]);
    for (int i = 0; i < half; ++i) {
      const float ff = p.freq_factors ? p.freq_factors[i] : 1.0f;
      const float th = p.freq_scale * (theta / ff);
      a.cos[static_cast<size_t>(t * half + i)] = std::cos(th);
      a.sin[static_cast<size_t>(t * half + i)] = std::sin(th);
      theta *= theta_scale;
    }
  }
  return a;
}

}  // namespace

void rope(float* x, int64_t n_tokens, int64_t ld, int n_heads, int head_dim,
          const int32_t* positions, const RopeParams& p) {
  const int half = p.n_dims / 2;
  const RopeAngles& a = rope_angles(positions, n_tokens, p);
  const auto rotate = quant_dot_ops().rope_rotate;
  for (int64_t t = 0; t < n_tokens; ++t)
    rotate(x + t * ld, n_heads, head_dim, half, p.style == RopeStyle::kNeox, a.cos.data() + t * half,
           a.sin.data() + t * half);
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  swiglu(gate, up, out, n);
}

namespace {

// GELU (tanh form) of every fp16 value, rounded to fp16, as ggml's table holds it.
const std::vector<float>& gelu_fp16_table() {
  static const std::vector<float> table = [] {
    constexpr float kSqrt2OverPi = 0.79788456080286535587989211986876f;
    constexpr float kCoefA = 0.044715f;
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) {
      const float x = fp16_to_f32(static_cast<uint16_t>(i));
      const float g = 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * x * (1.0f + kCoefA * x * x)));
      t[i] = fp16_to_f32(f32_to_fp16(g));
    }
    return t;
  }();
  return table;
}

}  // namespace

void gelu_mul(const float* gate, const float* up, float* out, int64_t n) {
  // ggml_vec_geglu_f32: GELU looked up by the fp16 rounding of the input, saturated outside
  // [-10, 10].
  quant_dot_ops().geglu(gate, up, out, n, gelu_fp16_table().data());
}

void add(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void scale(float* x, float s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

void softcap(float* x, float cap, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] / cap);
}

double log_softmax(const float* logits, int64_t n, std::vector<float>& out) {
  out.resize(static_cast<size_t>(n));
  float m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, logits[i]);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(logits[i]) - m);
  const double lse = m + std::log(sum);
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = static_cast<float>(logits[i] - lse);
  return lse;
}

void softmax(float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

}  // namespace fennec::kernels
