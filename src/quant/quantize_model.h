// The whole-file quantizer behind `fennec quantize`: reads a GGUF model, decides each tensor's
// type (policy below), quantizes with fennec's threads, and writes a GGUF that loads in
// llama.cpp and fennec, with all metadata copied and general.file_type updated.
//
// Policy (first that applies):
//  1. tensors of one row (norms, biases) stay F32; types fennec cannot dequantize are copied;
//  2. --tensor-type rules, in order: PATTERN=TYPE where PATTERN is a regex searched in the name
//     (as llama-quantize does) or, if it is not a valid regex, a glob over the whole name;
//  3. for a quantized target, token_embd.weight and output.weight get Q8_0 (the embeddings and
//     the logits are the most sensitive tensors);
//  4. everything else gets the target type.
//  A row length that is not a multiple of the chosen type's block falls back (NVFP4 -> MXFP4,
//  Q4_K -> Q5_0, Q6_K -> Q8_0, 32-blocks -> F16) and the log says so. A tensor whose type does
//  not change is copied byte for byte.
// NVFP4 writes a per-tensor scale "<base>.scale" (F32, shape [1], or [n_mat] for stacked
// experts) next to each weight "<base>.weight" for which llama.cpp applies it (attention and
// output projections for every architecture; the FFN ones only for the architectures whose
// graph passes them, e.g. llama and qwen3 but not gemma3 or qwen2); other NVFP4 tensors get no
// scale (g = 1).
// Errors (unknown type, NaN/Inf weights, a bad imatrix, I/O) leave no output file behind.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "core/expected.h"
#include "formats/ggml_type.h"

namespace fennec::quant {

struct TensorTypeRule {
  std::string pattern;
  formats::GgmlType type;
};

// Parses "PATTERN=TYPE" (TYPE a name parse_quant_type accepts).
Expected<TensorTypeRule> parse_tensor_type_rule(const std::string& arg);

struct QuantizeOptions {
  std::string input;
  std::string output;
  formats::GgmlType type = formats::GgmlType::Q8_0;
  bool naive = false;        // ggml's reference rounding for FP4 (no search, no .scale)
  bool tensor_scale = true;  // NVFP4 per-tensor scales where llama.cpp applies them
  std::string imatrix_path;  // llama.cpp imatrix (GGUF or legacy .dat), optional
  std::vector<TensorTypeRule> rules;
  int n_threads = 0;         // 0: default_thread_count()
  std::FILE* log = stderr;   // progress and per-tensor statistics; null for silence
  std::FILE* warn = stderr;  // warnings (re-quantizing a quantized input, ...); null: none
};

struct TensorReport {
  std::string name;
  formats::GgmlType in_type;
  formats::GgmlType out_type;
  uint64_t n_elements = 0;
  double rel_rmse = 0;  // sqrt(sum w (x - q)^2 / sum w x^2), w = imatrix weights or 1
  double max_abs = 0;   // max |x - q|
  bool weighted = false;
  float tensor_scale = 0;  // NVFP4 per-tensor scale written, 0 if none
  std::string note;        // why this type (policy) and what was done
};

struct QuantizeReport {
  std::vector<TensorReport> tensors;
  uint64_t in_bytes = 0;
  uint64_t out_bytes = 0;
  double seconds = 0;
};

Expected<QuantizeReport> quantize_model(const QuantizeOptions& opt);

// llama.cpp's general.file_type (LLAMA_FTYPE_*) for a file mostly of type t.
uint32_t file_type_for(formats::GgmlType t);

}  // namespace fennec::quant
