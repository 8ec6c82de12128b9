// ggml tensor type ids as stored in GGUF, with their block geometry. The numbers are ggml's
// (ggml.h enum ggml_type); the layouts of the blocks live in src/quant/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace fennec::formats {

enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
  NVFP4 = 40,
};

struct TypeTraits {
  const char* name;
  uint32_t block_size;  // elements per block
  uint32_t type_size;   // bytes per block
};

// Traits of a known type id, or nullopt for an id fennec does not know.
std::optional<TypeTraits> type_traits(uint32_t type_id);
std::string type_name(GgmlType t);

// Bytes for a row of n elements; n must be a multiple of the block size.
inline size_t row_bytes(const TypeTraits& t, uint64_t n) { return n / t.block_size * t.type_size; }

}  // namespace fennec::formats
