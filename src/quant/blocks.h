// Byte layouts of the ggml weight blocks, as stored in GGUF (ggml-common.h). Packed (alignment 1)
// so a block may be read at any address of a mapped file; fp16 fields are raw IEEE half bits
// (convert with fp16_to_f32). The static_asserts pin each size to formats/ggml_type.cpp.
#pragma once

#include <cstdint>

namespace fennec::quant {

inline constexpr int kQK = 32;       // elements per block of the legacy types and MXFP4
inline constexpr int kQKK = 256;     // elements per super-block of the K-quants
inline constexpr int kQKNvfp4 = 64;  // elements per NVFP4 block (4 sub-blocks of 16)
inline constexpr int kQKNvfp4Sub = 16;

#pragma pack(push, 1)

// x = d * (q - 8), q in nibbles: qs[j] holds element j (low) and j + 16 (high).
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK / 2];
};

// x = d * q + m.
struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[kQK / 2];
};

// x = d * (q - 16); bit j of the little-endian word qh is the fifth bit of element j.
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};

struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};

struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK];
};

// Q8_0 plus s = d * sum(qs), for the dot products of Q4_1/Q5_1.
struct BlockQ8_1 {
  uint16_t d;
  uint16_t s;
  int8_t qs[kQK];
};

// 16 sub-blocks of 16: x = d * (scales & 15) * q - dmin * (scales >> 4), q 2 bits.
struct BlockQ2K {
  uint8_t scales[kQKK / 16];
  uint8_t qs[kQKK / 4];
  uint16_t d;
  uint16_t dmin;
};

// 16 sub-blocks of 16 with 6-bit signed scales (packed in 12 bytes, offset 32); q is 2 low
// bits in qs plus a high bit in hmask, where a *clear* bit subtracts 4.
struct BlockQ3K {
  uint8_t hmask[kQKK / 8];
  uint8_t qs[kQKK / 4];
  uint8_t scales[12];
  uint16_t d;
};

// 8 sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes: x = d*sc*q - dmin*m.
struct BlockQ4K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qs[kQKK / 2];
};

struct BlockQ5K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[kQKK / 8];
  uint8_t qs[kQKK / 2];
};

// 16 sub-blocks of 16 with int8 scales: x = d * scales * (q - 32), q 6 bits.
struct BlockQ6K {
  uint8_t ql[kQKK / 2];
  uint8_t qh[kQKK / 4];
  int8_t scales[kQKK / 16];
  uint16_t d;
};

// Activations for the K-quant dot products; d is fp32, bsums are sums of 16 qs.
struct BlockQ8K {
  float d;
  int8_t qs[kQKK];
  int16_t bsums[kQKK / 16];
};

// x = kE2M1Doubled[q] * 2^(e-128); qs[j] holds element j (low) and j + 16 (high).
struct BlockMxfp4 {
  uint8_t e;
  uint8_t qs[kQK / 2];
};

// Sub-block s (16 elements) has UE4M3 scale d[s]; byte qs[8s + j] holds element 16s + j (low)
// and 16s + j + 8 (high); x = kE2M1Doubled[q] * ue4m3(d[s]) / 2.
struct BlockNvfp4 {
  uint8_t d[kQKNvfp4 / kQKNvfp4Sub];
  uint8_t qs[kQKNvfp4 / 2];
};

#pragma pack(pop)

static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ8_1) == 36);
static_assert(sizeof(BlockQ2K) == 84);
static_assert(sizeof(BlockQ3K) == 110);
static_assert(sizeof(BlockQ4K) == 144);
static_assert(sizeof(BlockQ5K) == 176);
static_assert(sizeof(BlockQ6K) == 210);
static_assert(sizeof(BlockQ8K) == 292);
static_assert(sizeof(BlockMxfp4) == 17);
static_assert(sizeof(BlockNvfp4) == 36);

}  // namespace fennec::quant
