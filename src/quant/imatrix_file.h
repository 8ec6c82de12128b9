// Importance matrices on disk, in llama.cpp's formats, so files move freely between fennec and
// llama.cpp (`llama-imatrix`, `llama-quantize --imatrix`).
//
// Contract (shared with `fennec imatrix`, which writes and `fennec quantize`, which reads):
//  - One entry per weight matrix, keyed by the weight tensor's GGUF name ("blk.0.attn_q.weight").
//  - `sums` holds, per input column j (the matrix's row length ne[0]), the RAW sum over all
//    tokens seen of x_j^2 (x = the activation vector multiplied by that matrix). For a stacked
//    expert tensor with n_mat matrices, sums has n_mat * ne[0] values (matrix-major) and counts
//    has n_mat entries; otherwise counts has one entry.
//  - `counts[m]` is the number of activation rows (tokens) accumulated into matrix m.
//  - The importance of column j is sums[j] / counts[m] (mean squared activation); see
//    ImatrixEntry::mean().
//
// GGUF format (what llama.cpp's tools/imatrix writes and common/imatrix-loader.cpp reads):
//  metadata general.type = "imatrix", imatrix.datasets = [string...], imatrix.chunk_count = u32,
//  imatrix.chunk_size = u32; per entry two F32 tensors "<name>.in_sum2" of shape
//  [ne0, n_mat] and "<name>.counts" of shape [1, n_mat] (counts stored as float).
//
// Legacy .dat format (read and written): i32 n_entries; per entry i32 name_len, name bytes,
//  i32 ncall, i32 nval, f32[nval] values where value = mean * ncall; then optional trailing
//  i32 chunk_count, i32 len, dataset bytes. On read, a legacy entry becomes sums = values,
//  counts = {ncall}, so mean() = value / ncall is the same quantity as for GGUF.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/expected.h"

namespace fennec::quant {

struct ImatrixEntry {
  std::vector<float> sums;      // n_mat * n_cols raw sums of squared activations
  std::vector<int64_t> counts;  // n_mat token counts

  int64_t n_mat() const { return static_cast<int64_t>(counts.size()); }
  int64_t n_cols() const {
    return counts.empty() ? 0 : static_cast<int64_t>(sums.size()) / n_mat();
  }
  // Mean squared activation per column of matrix m (counts of zero give 1.0 everywhere, as
  // llama.cpp does for partial data).
  std::vector<float> mean(int64_t m = 0) const;
};

struct Imatrix {
  std::map<std::string, ImatrixEntry> entries;  // by weight tensor name
  std::vector<std::string> datasets;            // names of the text files it was computed on
  int32_t chunk_count = 0;
  int32_t chunk_size = 0;
  bool is_legacy = false;

  const ImatrixEntry* find(const std::string& tensor_name) const;
};

// Reads a GGUF imatrix, or falls back to the legacy .dat format when the file is not GGUF.
// Errors name the file and the problem: missing file, truncated data, sums without counts,
// sums not a multiple of counts, NaN/Inf/negative values.
Expected<Imatrix> read_imatrix(const std::string& path);

// Writes the GGUF format above (atomically: path + ".tmp", then rename).
Status write_imatrix_gguf(const std::string& path, const Imatrix& im);
// Writes the legacy .dat format (for older llama.cpp builds).
Status write_imatrix_legacy(const std::string& path, const Imatrix& im);

// Checks an entry against a weight matrix: ne0 columns and n_mat matrices (1 unless stacked).
// Error text: "imatrix: entry 'blk.0.attn_q.weight' has 576 columns, tensor has 1536".
Status check_imatrix_entry(const std::string& tensor_name, const ImatrixEntry& e, int64_t ne0,
                           int64_t n_mat);

}  // namespace fennec::quant
