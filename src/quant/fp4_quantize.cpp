#include "quant/fp4_quantize.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "core/float_convert.h"

namespace fennec::quant {

namespace {

constexpr float kE2M1Mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
constexpr int kMaxUe4m3Code = 0x7e;  // 448

struct Ue4m3Table {
  std::array<float, kMaxUe4m3Code + 1> v{};
  Ue4m3Table() {
    for (int c = 0; c <= kMaxUe4m3Code; ++c) v[c] = ue4m3_to_f32(static_cast<uint8_t>(c));
  }
};
const Ue4m3Table& ue4m3_table() {
  static const Ue4m3Table t;
  return t;
}

// Magnitude code of a >= 0 (in units of the scale), nearest with ties to the even code.
inline int e2m1_mag_code(float a) {
  if (a <= 0.25f) return 0;
  if (a < 0.75f) return 1;
  if (a <= 1.25f) return 2;
  if (a < 1.75f) return 3;
  if (a <= 2.5f) return 4;
  if (a < 3.5f) return 5;
  if (a <= 5.0f) return 6;
  return 7;
}

// Weighted squared error of n magnitudes a[] at scale s, and their codes.
inline float eval_scale(const float* a, const float* w, int n, float s, uint8_t* codes) {
  float err = 0.0f;
  if (s <= 0.0f) {
    for (int i = 0; i < n; ++i) {
      codes[i] = 0;
      err += (w ? w[i] : 1.0f) * a[i] * a[i];
    }
    return err;
  }
  const float inv = 1.0f / s;
  for (int i = 0; i < n; ++i) {
    const int c = e2m1_mag_code(a[i] * inv);
    codes[i] = static_cast<uint8_t>(c);
    const float e = a[i] - s * kE2M1Mag[c];
    err += (w ? w[i] : 1.0f) * e * e;
  }
  return err;
}

// Least-squares scale for fixed codes: sum(w a m) / sum(w m^2), or 0.
inline float ls_scale(const float* a, const float* w, int n, const uint8_t* codes) {
  float num = 0.0f, den = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float m = kE2M1Mag[codes[i]];
    const float wi = w ? w[i] : 1.0f;
    num += wi * a[i] * m;
    den += wi * m * m;
  }
  return den > 0.0f ? num / den : 0.0f;
}

// Chooses the UE4M3 code of one NVFP4 sub-block of kQKNvfp4Sub values (already divided by the
// tensor scale) and writes their signed E2M1 codes.
uint8_t nvfp4_sub_block(const float* x, const float* w, uint8_t* q) {
  constexpr int n = kQKNvfp4Sub;
  const auto& tab = ue4m3_table().v;
  float a[n];
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) {
    a[i] = std::fabs(x[i]);
    amax = std::max(amax, a[i]);
  }
  if (!(amax > 0.0f)) {
    for (int i = 0; i < n; ++i) q[i] = 0;
    return 0;
  }
  std::array<bool, kMaxUe4m3Code + 1> tried{};
  uint8_t codes[n], best_codes[n];
  float best_err = INFINITY;
  int best = 0;
  auto try_code = [&](int c) {
    if (c < 1 || c > kMaxUe4m3Code || tried[c]) return;
    tried[c] = true;
    const float err = eval_scale(a, w, n, tab[c], codes);
    if (err < best_err) {
      best_err = err;
      best = c;
      std::copy(codes, codes + n, best_codes);
    }
  };
  // amax/6 maps the largest value to E2M1's 6. Larger scales (up to 2x, 8 codes) often win:
  // the top values then land on 4 instead of 6, where the grid is finer (steps of 0.5 up to 2,
  // of 1 up to 4), which pays when the other values sit there. Measured on SmolLM2 and Gemma 3
  // this window [-3, +8] finds the same optimum as a search over all 126 codes.
  const int c0 = std::max<int>(1, f32_to_ue4m3_rne(amax / 6.0f));
  for (int d = -3; d <= 8; ++d) try_code(c0 + d);
  // Refit the scale to the chosen codes, then try the codes around the refit: repeat while the
  // refit lands somewhere new.
  for (int it = 0; it < 3; ++it) {
    const int prev = best;
    const int c = f32_to_ue4m3_rne(ls_scale(a, w, n, best_codes));
    for (int d = -1; d <= 1; ++d) try_code(c + d);
    if (best == prev) break;
  }
  for (int i = 0; i < n; ++i) {
    const uint8_t c = best_codes[i];
    q[i] = (x[i] < 0.0f && c != 0) ? static_cast<uint8_t>(c | 8) : c;
  }
  return static_cast<uint8_t>(best);
}

}  // namespace

uint8_t f32_to_ue4m3_rne(float v) {
  if (!(v > 0.0f)) return 0;
  const auto& tab = ue4m3_table().v;
  if (v >= tab[kMaxUe4m3Code]) return kMaxUe4m3Code;
  const auto it = std::lower_bound(tab.begin() + 1, tab.end(), v);
  const int hi = static_cast<int>(it - tab.begin());
  const int lo = hi - 1;
  const float dhi = tab[hi] - v, dlo = v - tab[lo];
  if (dhi < dlo) return static_cast<uint8_t>(hi);
  if (dlo < dhi) return static_cast<uint8_t>(lo);
  return static_cast<uint8_t>((hi & 1) == 0 ? hi : lo);
}

uint8_t f32_to_e2m1_rne(float y) {
  const int c = e2m1_mag_code(std::fabs(y));
  return static_cast<uint8_t>((y < 0.0f && c != 0) ? (c | 8) : c);
}

float nvfp4_tensor_scale(const float* x, int64_t n) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  if (!(amax > 0.0f) || !std::isfinite(amax)) return 1.0f;
  return amax / (6.0f * 448.0f);
}

void quantize_nvfp4_rows(const float* x, BlockNvfp4* y, int64_t n_rows, int64_t n_per_row, float g,
                         const float* col_weights) {
  constexpr int kHalf = kQKNvfp4Sub / 2;
  const int64_t nb = n_per_row / kQKNvfp4;
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* xr = x + r * n_per_row;
    for (int64_t b = 0; b < nb; ++b) {
      BlockNvfp4& blk = y[r * nb + b];
      for (int s = 0; s < kQKNvfp4 / kQKNvfp4Sub; ++s) {
        const int64_t col = b * kQKNvfp4 + s * kQKNvfp4Sub;
        float xs[kQKNvfp4Sub];
        for (int j = 0; j < kQKNvfp4Sub; ++j) xs[j] = xr[col + j] / g;
        uint8_t q[kQKNvfp4Sub];
        blk.d[s] = nvfp4_sub_block(xs, col_weights ? col_weights + col : nullptr, q);
        for (int j = 0; j < kHalf; ++j)
          blk.qs[s * kHalf + j] = static_cast<uint8_t>(q[j] | (q[j + kHalf] << 4));
      }
    }
  }
}

void quantize_mxfp4_rows(const float* x, BlockMxfp4* y, int64_t n_rows, int64_t n_per_row,
                         const float* col_weights) {
  constexpr int n = kQK;
  const int64_t nb = n_per_row / kQK;
  for (int64_t r = 0; r < n_rows; ++r) {
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x + r * n_per_row + b * kQK;
      const float* w = col_weights ? col_weights + b * kQK : nullptr;
      BlockMxfp4& blk = y[r * nb + b];
      float a[n];
      float amax = 0.0f;
      for (int i = 0; i < n; ++i) {
        a[i] = std::fabs(xb[i]);
        amax = std::max(amax, a[i]);
      }
      if (!(amax > 0.0f)) {
        blk.e = 0;
        std::fill(std::begin(blk.qs), std::end(blk.qs), uint8_t{0});
        continue;
      }
      int k;
      std::frexp(amax, &k);  // amax = m * 2^k, m in [0.5, 1): floor(log2 amax) = k - 1
      const int e_ocp = std::clamp(k - 1 - 2 + 127, 1, 254);
      uint8_t codes[n], best_codes[n];
      float best_err = INFINITY;
      int best = e_ocp;
      for (int e : {e_ocp, e_ocp + 1, e_ocp - 1, e_ocp + 2}) {
        if (e < 1 || e > 254) continue;
        const float s = 2.0f * e8m0_to_f32_half(static_cast<uint8_t>(e));
        const float err = eval_scale(a, w, n, s, codes);
        if (err < best_err) {
          best_err = err;
          best = e;
          std::copy(codes, codes + n, best_codes);
        }
      }
      blk.e = static_cast<uint8_t>(best);
      for (int j = 0; j < n / 2; ++j) {
        auto code = [&](int i) {
          const uint8_t c = best_codes[i];
          return static_cast<uint8_t>((xb[i] < 0.0f && c != 0) ? (c | 8) : c);
        };
        blk.qs[j] = static_cast<uint8_t>(code(j) | (code(j + n / 2) << 4));
      }
    }
  }
}

}  // namespace fennec::quant
