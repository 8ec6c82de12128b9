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
// Importance of the FP4 search (NVFP4/MXFP4, not --naive), per matrix: the imatrix entry when
// one is given; otherwise a data-free estimate from the model itself (AutoImportance below:
// by default the kurtosis of each weight column); or uniform. The per-tensor log line says
// which one was used.
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

// Column weights of the FP4 search for a matrix without an imatrix entry.
enum class AutoImportance {
  kNone,      // uniform
  kKurtosis,  // ColumnKurtosis of the matrix's own weights (every matrix)
  kNorm,      // norm_importance of the norm in front (input_norm_of), else uniform
};

struct QuantizeOptions {
  std::string input;
  std::string output;
  formats::GgmlType type = formats::GgmlType::Q8_0;
  bool naive = false;        // ggml's reference rounding for FP4 (no search, no .scale)
  bool tensor_scale = true;  // NVFP4 per-tensor scales where llama.cpp applies them
  std::string imatrix_path;  // llama.cpp imatrix (GGUF or legacy .dat), optional
  AutoImportance auto_importance = AutoImportance::kKurtosis;
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
  double rel_rmse = 0;    // sqrt(sum w (x - q)^2 / sum w x^2), w = imatrix weights or 1
  double max_abs = 0;     // max |x - q|
  bool weighted = false;  // rel_rmse weighted by the imatrix
  // Weights of the FP4 search: "imatrix", "kurtosis", "norm (NAME)", "uniform[ (why)]"; "" when
  // there was no search (other types, --naive, copies).
  std::string importance;
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

// Data-free importance, kurtosis (the default). An input column j that carries large
// activations (the outlier features of transformers' hidden states) tends to have a
// heavy-tailed weight column: a few large entries among small ones. The column's kurtosis
// k_j = mean_r(W_rj^4) / mean_r(W_rj^2)^2 (over the matrix's rows r) raised to a power is the
// column weight. On SmolLM2, log k_j correlates with the log imatrix (0.33-0.48 per matrix
// kind) at least as well as the norm weights below do, and for every matrix, not only those
// behind a norm; on SmolLM2 and Gemma 3 it lowers KLD where the norm weights raise it. The
// powers were measured on those two models (docs/fp4.md): NVFP4 (a fine scale search) gains
// from sharper weights on both, MXFP4 (a choice among four exponents) only on SmolLM2.
class ColumnKurtosis {
 public:
  explicit ColumnKurtosis(int64_t n_cols);
  void add_row(const float* x);  // n_cols values
  void merge(const ColumnKurtosis& other);
  // k_j^power scaled to mean 1; a column of zeros gets k = 1; all ones when no row was added.
  std::vector<float> weights(double power) const;

  static constexpr double kNvfp4Power = 2.0;  // the powers fennec quantize uses
  static constexpr double kMxfp4Power = 1.0;

 private:
  std::vector<double> m2_, m4_;  // per column, sums of x^2 and x^4
  int64_t rows_ = 0;
};

// Data-free importance, norm (kept for comparison: it loses to kurtosis). A matrix that reads
// the output of an RMSNorm/LayerNorm with weight g (and bias b) sees x_j = g_j * n_j + b_j, n
// the normalized hidden state; if n were isotropic (E[n_j^2] = 1), E[x_j^2] = g_j^2 + b_j^2
// would be the mean squared activation an imatrix measures, up to a constant. It is not: the
// hidden state's outlier channels are the ones the norms scale down. input_norm_of gives the
// norm in front of a weight, by GGUF names of pre-norm transformers: attn_q/k/v/qkv read
// "blk.N.attn_norm", ffn_gate/up (also _exps, _shexp, ffn_gate_inp) read "blk.N.ffn_norm"; ""
// for any other tensor (attn_output and ffn_down have no norm in front: they stay uniform).
// The result names the norm's weight ("blk.N.attn_norm.weight"); its bias, if any, is the same
// name with ".bias".
std::string input_norm_of(const std::string& weight_name);

// Column weights g_j^2 + b_j^2 (b may be null), scaled to mean 1; all ones when every g_j and
// b_j is 0.
std::vector<float> norm_importance(const float* g, const float* b, int64_t n);

// llama.cpp's general.file_type (LLAMA_FTYPE_*) for a file mostly of type t.
uint32_t file_type_for(formats::GgmlType t);

}  // namespace fennec::quant
