// CPU operators used by the model code. Each op checks shapes once, then runs the active SIMD
// path (see cpu_features.h). Activations are float32, row-major [n_tokens][dim].
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/thread_pool.h"
#include "formats/ggml_type.h"

namespace fennec::kernels {

// A weight matrix in its stored (possibly quantized) form: `rows` rows of `cols` elements,
// each row `row_bytes` long. A view into the model file; never copied. Where `packed` is set,
// products read that interleaved copy instead (repack.h); `data` stays valid for get_rows.
struct WeightView {
  formats::GgmlType type = formats::GgmlType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_bytes = 0;
  const uint8_t* packed = nullptr;
  // With packed: the end of the packed matrices that follow this one in memory, in the order the
  // products read them (PackedWeights::pack_all); nullptr: none follow.
  const uint8_t* packed_run_end = nullptr;
  float out_scale = 1.0f;  // products are multiplied by it (a per-tensor scale "<name>.scale", NVFP4)
};

// y[t][r] = sum_c W[r][c] * x[t][c] for t < n_tokens, r < W.rows. x is [n_tokens][W.cols],
// y is [n_tokens][W.rows] (row stride ldy >= W.rows; 0 means W.rows).
void matmul(const WeightView& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool,
            int64_t ldy = 0);

// Several products of the same input x (e.g. Q, K and V; gate and up) in one parallel pass (matmul()
// of a type with an integer dot is the case of one job):
// x is quantized once per activation format, and one barrier ends them all. Each y is exactly
// what matmul() would write. Falls back to one matmul() per job where a type has no integer dot.
struct MatmulJob {
  const WeightView* w = nullptr;
  float* y = nullptr;  // [n_tokens][ldy]
  int64_t ldy = 0;     // 0: w->rows
};
void matmul_group(std::span<const MatmulJob> jobs, const float* x, int64_t n_tokens, ThreadPool& pool);

// Copies (dequantized) rows `ids` of W into out ([ids.size()][W.cols]).
void get_rows(const WeightView& w, std::span<const int32_t> ids, float* out);

// out[t] = x[t] / rms(x[t]) * weight  (weight may be null: no scaling). In place allowed.
void rms_norm(const float* x, const float* weight, int64_t n_tokens, int64_t dim, float eps,
              float* out);

enum class RopeStyle { kNormal, kNeox };  // adjacent pairs vs. halves (ggml's NORM / NEOX)

struct RopeParams {
  RopeStyle style = RopeStyle::kNormal;
  int n_dims = 0;            // rotated dimensions per head (<= head_dim)
  float freq_base = 10000.f;
  float freq_scale = 1.0f;   // linear scaling: position * freq_scale
  const float* freq_factors = nullptr;  // optional per-pair divisors (Llama 3 rope_freqs)
};

// Rotates n_heads heads of head_dim in each token row x[t] (row stride ld) at positions[t].
void rope(float* x, int64_t n_tokens, int64_t ld, int n_heads, int head_dim,
          const int32_t* positions, const RopeParams& p);

void silu_mul(const float* gate, const float* up, float* out, int64_t n);  // silu(g) * u
void gelu_mul(const float* gate, const float* up, float* out, int64_t n);  // gelu_tanh(g) * u
void add(const float* a, const float* b, float* out, int64_t n);
void scale(float* x, float s, int64_t n);
void softcap(float* x, float cap, int64_t n);  // cap * tanh(x / cap)

// Log-softmax of one row of n logits into out (resized to n); returns the log-sum-exp.
double log_softmax(const float* logits, int64_t n, std::vector<float>& out);

// In-place softmax of n values; returns nothing. Uses max-subtraction.
void softmax(float* x, int64_t n);

}  // namespace fennec::kernels
