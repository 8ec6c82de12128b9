// A loaded model: hyper-parameters plus zero-copy weight views into the GGUF map, and the
// batched forward pass over a paged KV cache. Architectures differ only in how they read their
// hyper-parameters and tensor names (one file each, listed in registry.cpp).
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/expected.h"
#include "core/thread_pool.h"
#include "engine/kv_cache.h"
#include "formats/gguf.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/repack.h"
#include "model/hparams.h"

namespace fennec::model {

// One forward step for many sequences. Tokens of a sequence are contiguous in `tokens` and sit
// at consecutive positions pos0, pos0+1, ...; its K/V go to (and are read from) the blocks of
// its block table, which must cover positions [0, pos0 + n_tokens).
struct Batch {
  struct Sequence {
    int32_t n_tokens = 0;
    int32_t pos0 = 0;
    std::vector<int32_t> block_table;
    int32_t n_logits = 1;  // logits for the last n_logits tokens (n_tokens: all of them)
  };
  std::vector<int32_t> tokens;
  std::vector<Sequence> seqs;

  void add(std::span<const int32_t> toks, int32_t pos0, std::vector<int32_t> block_table,
           int32_t n_logits = 1) {
    tokens.insert(tokens.end(), toks.begin(), toks.end());
    seqs.push_back({static_cast<int32_t>(toks.size()), pos0, std::move(block_table), n_logits});
  }
  // Rows of logits forward() produces.
  int64_t n_outputs() const {
    int64_t n = 0;
    for (const auto& s : seqs) n += s.n_logits;
    return n;
  }
};

// Sees the input of every weight matmul of forward() (importance matrices: `fennec imatrix`).
// `name` is the weight's GGUF tensor name ("blk.0.attn_q.weight"; "token_embd.weight" for a tied
// output); x is [n_tokens][w.cols]. Called on the forward thread, before the matmul. forward()
// without an observer pays nothing for it.
class MatmulObserver {
 public:
  virtual ~MatmulObserver() = default;
  virtual void on_matmul(const kernels::WeightView& w, std::string_view name, const float* x,
                         int64_t n_tokens) = 0;
  // After the product, before y is used: y is [n_tokens][ldy] (its first w.rows columns are the
  // product). For checks of the product itself (ABFT, src/ras/abft.h).
  virtual void after_matmul(const kernels::WeightView& w, std::string_view name, const float* x,
                            int64_t n_tokens, const float* y, int64_t ldy) {
    (void)w, (void)name, (void)x, (void)n_tokens, (void)y, (void)ldy;
  }
};

struct LayerWeights {
  const float* attn_norm = nullptr;
  kernels::WeightView wq, wk, wv, wo;
  const float* bq = nullptr;
  const float* bk = nullptr;
  const float* bv = nullptr;
  const float* bo = nullptr;
  const float* q_norm = nullptr;
  const float* k_norm = nullptr;
  const float* post_attn_norm = nullptr;
  const float* ffn_norm = nullptr;
  kernels::WeightView w_gate, w_up, w_down;
  const float* post_ffn_norm = nullptr;
};

struct Weights {
  kernels::WeightView token_embd;
  kernels::WeightView output;  // token_embd when tied
  const float* output_norm = nullptr;
  const float* rope_freqs = nullptr;
  std::vector<LayerWeights> layers;
};

class Model {
 public:
  // Reads the architecture from `general.architecture` and loads it; errors name the file and
  // the missing or malformed key or tensor.
  static Expected<std::unique_ptr<Model>> load(std::shared_ptr<const formats::GgufFile> gguf);

  const HParams& hparams() const { return hp_; }
  const formats::GgufFile& gguf() const { return *gguf_; }
  engine::KvCacheShape kv_shape(int block_size = 16) const;

  // Runs the batch; writes batch.n_outputs() rows of n_vocab logits, in sequence order.
  // An observer, when given, sees every matmul input (see MatmulObserver).
  Status forward(const Batch& batch, engine::KvCache& kv, ThreadPool& pool,
                 std::vector<float>& logits, MatmulObserver* observer = nullptr) const;

  Model(std::shared_ptr<const formats::GgufFile> gguf, HParams hp, Weights w)
      : gguf_(std::move(gguf)), hp_(std::move(hp)), w_(std::move(w)) {}

  // Repacks the matrices whose type has a packed form (kernels/cpu/repack.h) into interleaved
  // copies the products then read; load() does it. Returns the bytes of the copies.
  int64_t pack_weights(ThreadPool& pool);

  // The packed copies by tensor name: weights the products read that are not in the file's map
  // (the weight scrubber must cover them too; their mapped originals are no longer read).
  struct PackedRegion {
    std::string name;
    const uint8_t* data = nullptr;
    size_t size = 0;
  };
  const std::vector<PackedRegion>& packed_regions() const { return packed_regions_; }

  // Calls fn(name, view) for every matrix forward() multiplies by, with the names a
  // MatmulObserver sees.
  void for_each_matrix(const std::function<void(const std::string&, const kernels::WeightView&)>& fn) const;

 private:
  std::shared_ptr<const formats::GgufFile> gguf_;
  HParams hp_;
  Weights w_;
  kernels::PackedWeights packed_;
  std::vector<PackedRegion> packed_regions_;
};

// Helpers the architecture files use to read metadata and bind tensors.
class Loader {
 public:
  explicit Loader(const formats::GgufFile& g, std::string arch) : g_(g), arch_(std::move(arch)) {}
  // "<arch>.<key>"
  Expected<int64_t> arch_int(const std::string& key) const;
  int64_t arch_int_or(const std::string& key, int64_t def) const;
  double arch_float_or(const std::string& key, double def) const;
  // Binds a 2-D weight tensor, checking its shape is [cols, rows].
  Expected<kernels::WeightView> matrix(const std::string& name, int64_t cols, int64_t rows) const;
  // Binds an F32 vector of length n; optional ones return nullptr when absent.
  Expected<const float*> vector(const std::string& name, int64_t n) const;
  Expected<const float*> optional_vector(const std::string& name, int64_t n) const;
  bool has(const std::string& name) const { return g_.find_tensor(name) != nullptr; }
  const formats::GgufFile& gguf() const { return g_; }

 private:
  const formats::GgufFile& g_;
  std::string arch_;
};

// Fills the common tensors of a llama-style decoder (names as llama.cpp writes them), using the
// HParams dimensions. Optional tensors (biases, q/k norms, post norms) are bound when present.
Expected<Weights> load_decoder_weights(const Loader& l, const HParams& hp);

// Reads the metadata shared by llama-style architectures (sizes, eps, rope base and scaling).
Expected<HParams> read_common_hparams(const Loader& l, const std::string& arch);

}  // namespace fennec::model
