// Scalar conversions of the small float formats used by GGUF weights: IEEE fp16, bf16,
// E8M0 (MX shared exponent), UE4M3 (NVFP4 block scale) and E2M1 (FP4 element).
#pragma once

#include <cstdint>
#include <cstring>

namespace fennec {

inline float bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t f32_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float fp16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  if (exp == 0) {
    if (mant == 0) return bits_to_f32(sign);
    // subnormal: mant * 2^-24
    float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (mant << 13));
  return bits_to_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

// Round-to-nearest-even fp32 -> fp16.
inline uint16_t f32_to_fp16(float f) {
  uint32_t x = f32_to_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00 | (x > 0x7f800000u ? 0x200 : 0));
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00);  // overflow to inf
  if (x < 0x38800000u) {  // subnormal or zero in fp16
    if (x < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t e = x >> 23;
    const uint32_t m = (x & 0x7fffff) | 0x800000;
    const uint32_t shift = 126 - e;  // 14 + (112 - (e - 127 + 127))... bring to 2^-24 units
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = ((x >> 13) - (112u << 10));
  const uint32_t rem = x & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) ++r;
  return static_cast<uint16_t>(sign | r);
}

inline float bf16_to_f32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }

// E8M0: value 2^(e-127); 0xff is NaN (OCP MX spec). Not what ggml's MXFP4 uses: see below.
inline float e8m0_to_f32(uint8_t e) {
  if (e == 0xff) return bits_to_f32(0x7fc00000u);
  if (e == 0) return bits_to_f32(0x00400000u);  // 2^-127 (subnormal)
  return bits_to_f32(static_cast<uint32_t>(e) << 23);
}

// Half of an E8M0 scale, 2^(e-128), exactly as ggml_e8m0_to_fp32_half (ggml-impl.h): ggml's
// MXFP4 multiplies this by the doubled E2M1 codes of kE2M1Doubled. ggml does not treat 0xff as
// NaN: it decodes to 2^127 here, and GGUF files are ggml's format, so neither does fennec.
inline float e8m0_to_f32_half(uint8_t e) {
  const uint32_t bits = e < 2 ? (0x00200000u << e) : (static_cast<uint32_t>(e) - 1) << 23;
  return bits_to_f32(bits);
}

// UE4M3 (NVFP4 block scale) as ggml decodes it (ggml_ue4m3_to_fp32 without its final * 0.5):
// bias 7, subnormals mant * 2^-9, bit 7 ignored by exponent and mantissa. ggml has no NaN:
// 0x00 and 0x7f decode to 0, and 0xff (not special there) to 480. Exact in float.
inline float ue4m3_to_f32(uint8_t v) {
  if (v == 0 || v == 0x7f) return 0.0f;
  const uint32_t exp = (v >> 3) & 0xf;
  const uint32_t mant = v & 7;
  if (exp == 0) return static_cast<float>(mant) * (1.0f / 512.0f);
  return bits_to_f32((exp + 120) << 23 | mant << 20);
}

// Half of the above, the factor NVFP4 multiplies by the doubled E2M1 codes (ggml convention).
inline float ue4m3_to_f32_half(uint8_t v) { return ue4m3_to_f32(v) * 0.5f; }

// E2M1 values indexed by the 4-bit code (the true values; code 8 is -0).
inline constexpr float kE2M1Values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                          -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// E2M1 values doubled, as integers: ggml's kvalues_mxfp4, used by MXFP4 and NVFP4 with half
// scales. Bit-exact ggml results need this table: code 8 gives +0, not -0.
inline constexpr int8_t kE2M1Doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

}  // namespace fennec
