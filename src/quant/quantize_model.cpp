#include "quant/quantize_model.h"

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <set>

#include "core/float_convert.h"
#include "core/thread_pool.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "quant/dequantize.h"
#include "quant/fp4_quantize.h"
#include "quant/imatrix_file.h"
#include "quant/quantize.h"

namespace fennec::quant {

using formats::GgmlType;

namespace {

bool is_quantized(GgmlType t) {
  return t != GgmlType::F32 && t != GgmlType::F16 && t != GgmlType::BF16;
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

uint32_t block_size(GgmlType t) {
  return formats::type_traits(static_cast<uint32_t>(t))->block_size;
}

GgmlType fallback(GgmlType t) {
  switch (t) {
    case GgmlType::NVFP4:
      return GgmlType::MXFP4;
    case GgmlType::Q4_K:
      return GgmlType::Q5_0;
    case GgmlType::Q6_K:
      return GgmlType::Q8_0;
    default:
      return GgmlType::F16;
  }
}

std::string glob_to_regex(const std::string& g) {
  std::string r = "^";
  for (char c : g) {
    if (c == '*')
      r += ".*";
    else if (c == '?')
      r += '.';
    else if (std::strchr(".^$+()[]{}|\\", c))
      (r += '\\') += c;
    else
      r += c;
  }
  return r + "$";
}

struct CompiledRule {
  std::regex re;
  std::string pattern;
  GgmlType type;
};

// Architectures whose llama.cpp graph applies the FFN ".scale" tensors (src/models/*.cpp pass
// ffn_*_s to build_ffn); attention and output scales are applied by every architecture.
const std::set<std::string, std::less<>>& ffn_scale_archs() {
  static const std::set<std::string, std::less<>> s = {
      "llama",        "llama4",     "qwen3",      "qwen3moe",    "qwen35",     "qwen35moe",
      "qwen3next",    "qwen2moe",   "deepseek",   "deepseek2",   "granite",    "granitemoe",
      "mistral3",     "minicpm",    "refact",     "cohere2",     "dots1",      "ernie4_5",
      "ernie4_5-moe", "glm4moe",    "bitnet",     "hunyuan-moe", "bailingmoe", "bailingmoe2",
      "afmoe",        "nemotron_h", "exaone_moe", "step35",      "gemma4",     "nanbeige"};
  return s;
}

// The "<base>.scale" name llama.cpp reads for weight `name`, or "" if llama.cpp would not apply
// one to it (it then must not get a per-tensor scale).
std::string scale_name_for(const std::string& name, const std::string& arch) {
  if (!ends_with(name, ".weight")) return "";
  const std::string base = name.substr(0, name.size() - 7);
  if (base == "output") return "output.scale";
  static const std::regex attn(R"(^blk\.\d+\.attn_(q|k|v|output|qkv|gate)$)");
  static const std::regex ffn(R"(^blk\.\d+\.ffn_(up|gate|down)(_shexp|_exps)?$)");
  if (std::regex_match(base, attn)) return base + ".scale";
  if (std::regex_match(base, ffn) && ffn_scale_archs().count(arch)) return base + ".scale";
  return "";
}

struct Plan {
  const formats::GgufTensor* in = nullptr;
  GgmlType out_type = GgmlType::F32;
  bool copy = false;      // bytes copied unchanged
  float in_scale = 1.0f;  // input per-tensor scale folded in when requantizing
  const formats::GgufTensor* in_scale_tensor = nullptr;  // copied along when copy
  std::string scale_name;                                // NVFP4 per-tensor scale to write, "" none
  std::string note;
  int64_t n_mat = 1;
  std::vector<std::vector<float>> weights;  // per matrix, FP4 search importance (empty: none)
  bool imatrix_weights = false;  // the weights are imatrix means (they weight the stats too)
  bool kurtosis = false;         // the weights come from the column kurtosis (first pass)
  std::string importance;        // where the weights come from, for the log
};

// Reads a 1-D tensor of n values as F32, or returns false.
bool read_vector(const formats::GgufTensor* t, int64_t n, std::vector<float>& out) {
  if (t == nullptr || t->n_rows() != 1 || static_cast<int64_t>(t->row_length()) != n ||
      !can_dequantize(t->type))
    return false;
  out.resize(static_cast<size_t>(n));
  if (!dequantize_row(t->type, t->data, out.data(), n)) return false;
  for (float v : out)
    if (!std::isfinite(v)) return false;
  return true;
}

std::string fmt_g(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

}  // namespace

std::string input_norm_of(const std::string& weight_name) {
  static const std::regex attn(R"(^(blk\.\d+\.)attn_(q|k|v|qkv)\.weight$)");
  static const std::regex ffn(R"(^(blk\.\d+\.)ffn_(gate|up|gate_up)(_exps|_shexp)?\.weight$)");
  static const std::regex router(R"(^(blk\.\d+\.)ffn_gate_inp(_shexp)?\.weight$)");
  std::smatch m;
  if (std::regex_match(weight_name, m, attn)) return m[1].str() + "attn_norm.weight";
  if (std::regex_match(weight_name, m, ffn) || std::regex_match(weight_name, m, router))
    return m[1].str() + "ffn_norm.weight";
  return "";
}

ColumnKurtosis::ColumnKurtosis(int64_t n_cols)
    : m2_(static_cast<size_t>(n_cols), 0.0), m4_(static_cast<size_t>(n_cols), 0.0) {}

void ColumnKurtosis::add_row(const float* x) {
  for (size_t j = 0; j < m2_.size(); ++j) {
    const double v2 = static_cast<double>(x[j]) * x[j];
    m2_[j] += v2;
    m4_[j] += v2 * v2;
  }
  ++rows_;
}

void ColumnKurtosis::merge(const ColumnKurtosis& other) {
  for (size_t j = 0; j < m2_.size(); ++j) {
    m2_[j] += other.m2_[j];
    m4_[j] += other.m4_[j];
  }
  rows_ += other.rows_;
}

std::vector<float> ColumnKurtosis::weights(double power) const {
  const size_t n = m2_.size();
  std::vector<float> w(n, 1.0f);
  if (rows_ == 0) return w;
  const auto rows = static_cast<double>(rows_);
  double sum = 0;
  for (size_t j = 0; j < n; ++j) {
    const double a2 = m2_[j] / rows, a4 = m4_[j] / rows;
    if (a2 > 0) w[j] = static_cast<float>(a4 / (a2 * a2));
    if (power != 1.0) w[j] = static_cast<float>(std::pow(static_cast<double>(w[j]), power));
    sum += w[j];
  }
  if (!(sum > 0) || !std::isfinite(sum)) return std::vector<float>(n, 1.0f);
  const double mean = sum / static_cast<double>(n);
  for (auto& v : w) v = static_cast<float>(v / mean);
  return w;
}

std::vector<float> norm_importance(const float* g, const float* b, int64_t n) {
  std::vector<float> w(static_cast<size_t>(n), 1.0f);
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double v =
        static_cast<double>(g[j]) * g[j] + (b ? static_cast<double>(b[j]) * b[j] : 0.0);
    w[static_cast<size_t>(j)] = static_cast<float>(v);
    sum += v;
  }
  if (!(sum > 0.0) || !std::isfinite(sum)) {
    std::fill(w.begin(), w.end(), 1.0f);
    return w;
  }
  const double inv_mean = static_cast<double>(n) / sum;
  for (auto& v : w) v = static_cast<float>(v * inv_mean);
  return w;
}

Expected<TensorTypeRule> parse_tensor_type_rule(const std::string& arg) {
  const auto eq = arg.rfind('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == arg.size())
    return make_error("--tensor-type '" + arg + "': expected PATTERN=TYPE (e.g. 'attn_v=q8_0')");
  const auto t = parse_quant_type(arg.substr(eq + 1));
  if (!t)
    return make_error("--tensor-type '" + arg + "': unknown type '" + arg.substr(eq + 1) +
                      "' (known: " + quant_type_names() + ")");
  return TensorTypeRule{arg.substr(0, eq), *t};
}

uint32_t file_type_for(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
      return 0;
    case GgmlType::F16:
      return 1;
    case GgmlType::Q4_0:
      return 2;
    case GgmlType::Q4_1:
      return 3;
    case GgmlType::Q8_0:
      return 7;
    case GgmlType::Q5_0:
      return 8;
    case GgmlType::Q5_1:
      return 9;
    case GgmlType::Q4_K:
      return 14;  // Q4_K_S: every matrix Q4_K
    case GgmlType::Q6_K:
      return 18;
    case GgmlType::BF16:
      return 32;
    case GgmlType::MXFP4:
      return 38;  // llama.cpp's only MXFP4 file type (MXFP4_MOE)
    case GgmlType::NVFP4:
      return 39;
    default:
      return 1024;  // LLAMA_FTYPE_GUESSED
  }
}

Expected<QuantizeReport> quantize_model(const QuantizeOptions& opt) {
  const auto t_start = std::chrono::steady_clock::now();
  std::FILE* log = opt.log;
  if (!can_quantize(opt.type))
    return make_error("cannot quantize to " + formats::type_name(opt.type) +
                      " (known: " + quant_type_names() + ")");
  auto in_file = formats::GgufFile::open(opt.input);
  if (!in_file) return in_file.error();
  const formats::GgufFile& in = *in_file;
  const std::string arch = in.get_string_or("general.architecture", "");

  std::vector<CompiledRule> rules;
  for (const auto& r : opt.rules) {
    if (!can_quantize(r.type))
      return make_error("--tensor-type " + r.pattern + ": cannot quantize to " +
                        formats::type_name(r.type));
    try {
      rules.push_back({std::regex(r.pattern), r.pattern, r.type});
    } catch (const std::regex_error&) {
      try {
        rules.push_back({std::regex(glob_to_regex(r.pattern)), r.pattern, r.type});
      } catch (const std::regex_error&) {
        return make_error("--tensor-type: pattern '" + r.pattern +
                          "' is neither a regex nor a glob");
      }
    }
  }

  std::optional<Imatrix> imatrix;
  if (!opt.imatrix_path.empty()) {
    auto im = read_imatrix(opt.imatrix_path);
    if (!im) return im.error();
    imatrix = std::move(*im);
    if (log)
      std::fprintf(log, "fennec: imatrix %s: %zu entries%s\n", opt.imatrix_path.c_str(),
                   imatrix->entries.size(), imatrix->is_legacy ? " (legacy format)" : "");
    if (opt.warn && ((opt.type != GgmlType::NVFP4 && opt.type != GgmlType::MXFP4) || opt.naive))
      std::fprintf(opt.warn,
                   "fennec: warning: the imatrix weights the range-managed NVFP4/MXFP4 "
                   "quantizers only; other types use ggml's reference rounding and the imatrix "
                   "just weights the error statistics\n");
  }

  // Input per-tensor scales ("<base>.scale" next to "<base>.weight").
  std::map<std::string, const formats::GgufTensor*> in_scales;
  for (const auto& t : in.tensors()) {
    if (!ends_with(t.name, ".scale") || t.type != GgmlType::F32) continue;
    const std::string w = t.name.substr(0, t.name.size() - 6) + ".weight";
    if (in.find_tensor(w)) in_scales[w] = &t;
  }
  std::set<const formats::GgufTensor*> scale_tensors;
  for (const auto& [w, t] : in_scales) scale_tensors.insert(t);

  // Plan every tensor.
  std::vector<Plan> plans;
  bool warned_requant = false;
  const bool target_quantized = is_quantized(opt.type);
  for (const auto& t : in.tensors()) {
    if (scale_tensors.count(&t)) continue;  // handled with its weight
    Plan p;
    p.in = &t;
    const uint64_t rows = t.n_rows();
    if (!can_dequantize(t.type)) {
      p.out_type = t.type;
      p.copy = true;
      p.note = "copied (" + formats::type_name(t.type) + " is not a weight type fennec converts)";
    } else {
      std::string why;
      if (rows <= 1) {
        p.out_type = GgmlType::F32;
        why = "1-D";
      } else {
        bool ruled = false;
        for (const auto& r : rules) {
          if (std::regex_search(t.name, r.re)) {
            p.out_type = r.type;
            why = "rule '" + r.pattern + "'";
            ruled = true;
            break;
          }
        }
        if (!ruled) {
          if (target_quantized && (t.name == "token_embd.weight" || t.name == "output.weight") &&
              opt.type != GgmlType::Q8_0) {
            p.out_type = GgmlType::Q8_0;
            why =
                t.name == "output.weight" ? "output kept at Q8_0" : "token embeddings kept at Q8_0";
          } else {
            p.out_type = opt.type;
          }
        }
        while (t.row_length() % block_size(p.out_type) != 0) {
          const GgmlType fb = fallback(p.out_type);
          why += (why.empty() ? "" : "; ") + std::string("row length ") +
                 std::to_string(t.row_length()) + " is not a multiple of " +
                 formats::type_name(p.out_type) + "'s block " +
                 std::to_string(block_size(p.out_type)) + ": " + formats::type_name(fb);
          p.out_type = fb;
        }
      }
      if (auto it = in_scales.find(t.name); it != in_scales.end()) {
        p.in_scale_tensor = it->second;
        float s = 1.0f;
        if (it->second->n_elements() == 1) std::memcpy(&s, it->second->data, 4);
        p.in_scale = s;
      }
      p.copy = p.out_type == t.type && (p.in_scale_tensor == nullptr || t.type == GgmlType::NVFP4);
      if (p.copy) {
        why += (why.empty() ? "" : "; ") + std::string("copied");
      } else if (is_quantized(t.type) && target_quantized && rows > 1 && !warned_requant) {
        warned_requant = true;
        if (opt.warn)
          std::fprintf(opt.warn,
                       "fennec: warning: %s is quantized (%s): its tensors are dequantized and "
                       "quantized again, which loses quality compared with quantizing the "
                       "original F32/F16/BF16 weights\n",
                       opt.input.c_str(), formats::type_name(t.type).c_str());
      }
      p.note = why;
    }
    const uint64_t ne0 = t.row_length();
    p.n_mat = 1;
    for (size_t d = 2; d < t.shape.size(); ++d) p.n_mat *= static_cast<int64_t>(t.shape[d]);
    if (!p.copy && p.out_type == GgmlType::NVFP4 && !opt.naive && opt.tensor_scale) {
      p.scale_name = scale_name_for(t.name, arch);
      if (p.scale_name.empty())
        p.note += std::string(p.note.empty() ? "" : "; ") +
                  "no per-tensor scale (llama.cpp would not apply it to this tensor" +
                  (arch.empty() ? "" : " for " + arch) + ")";
    }
    if (imatrix && !p.copy && rows > 1) {
      if (const ImatrixEntry* e = imatrix->find(t.name)) {
        if (auto st = check_imatrix_entry(t.name, *e, static_cast<int64_t>(ne0), p.n_mat); !st)
          return make_error(opt.imatrix_path + ": " + st.error().message);
        for (int64_t m = 0; m < p.n_mat; ++m) p.weights.push_back(e->mean(e->n_mat() == 1 ? 0 : m));
        p.imatrix_weights = true;
        p.importance = "imatrix";
      }
    }
    const bool fp4_search =
        !opt.naive && (p.out_type == GgmlType::NVFP4 || p.out_type == GgmlType::MXFP4);
    if (fp4_search && !p.copy && rows > 1 && p.weights.empty()) {
      p.importance = "uniform";
      if (opt.auto_importance == AutoImportance::kKurtosis) {
        p.kurtosis = true;  // computed in the first pass over the weights
        p.importance = "kurtosis";
      } else if (opt.auto_importance == AutoImportance::kNorm) {
        const std::string norm = input_norm_of(t.name);
        std::vector<float> g, b;
        const auto n = static_cast<int64_t>(ne0);
        if (!norm.empty() && read_vector(in.find_tensor(norm), n, g)) {
          const std::string bias = norm.substr(0, norm.size() - 7) + ".bias";
          const bool has_bias = read_vector(in.find_tensor(bias), n, b);
          p.weights.assign(static_cast<size_t>(p.n_mat),
                           norm_importance(g.data(), has_bias ? b.data() : nullptr, n));
          p.importance = "norm (" + norm + (has_bias ? " + bias" : "") + ")";
        } else if (!norm.empty()) {
          p.importance = "uniform (no usable " + norm + ")";
        } else {
          p.importance = "uniform (no norm in front)";
        }
      }
    }
    plans.push_back(std::move(p));
  }

  // Output layout.
  formats::GgufWriter w;
  w.set_alignment(in.alignment());
  for (const auto& [key, value] : in.metadata()) {
    if (key == "general.alignment") continue;
    w.set_value(key, value);
  }
  w.set_u32("general.quantization_version", 2);
  w.set_u32("general.file_type", file_type_for(opt.type));
  if (imatrix) {
    w.set_string("quantize.imatrix.file", opt.imatrix_path);
    if (!imatrix->datasets.empty()) w.set_string("quantize.imatrix.dataset", imatrix->datasets[0]);
    w.set_i32("quantize.imatrix.entries_count", static_cast<int32_t>(imatrix->entries.size()));
    w.set_i32("quantize.imatrix.chunks_count", imatrix->chunk_count);
  }
  for (const auto& p : plans) {
    if (auto st = w.add_tensor(p.in->name, p.out_type, p.in->shape); !st) return st.error();
    if (!p.scale_name.empty()) {
      const uint64_t n = static_cast<uint64_t>(p.n_mat);
      if (auto st = w.add_tensor(p.scale_name, GgmlType::F32, {n}); !st) return st.error();
    } else if (p.copy && p.in_scale_tensor) {
      if (auto st = w.add_tensor(p.in_scale_tensor->name, GgmlType::F32, p.in_scale_tensor->shape);
          !st)
        return st.error();
    }
  }
  if (auto st = w.open(opt.output); !st) return st.error();

  ThreadPool pool(opt.n_threads > 0 ? opt.n_threads : default_thread_count());
  QuantizeReport report;
  report.in_bytes = in.file_size();
  const size_t n_plans = plans.size();
  for (size_t pi = 0; pi < n_plans; ++pi) {
    Plan& p = plans[pi];
    const formats::GgufTensor& t = *p.in;
    TensorReport tr;
    tr.name = t.name;
    tr.in_type = t.type;
    tr.out_type = p.out_type;
    tr.n_elements = t.n_elements();
    tr.note = p.note;
    tr.importance = p.importance;
    if (p.copy) {
      if (auto st = w.write_tensor_data(t.data, t.n_bytes); !st) return st.error();
      if (p.in_scale_tensor)
        if (auto st = w.write_tensor_data(p.in_scale_tensor->data, p.in_scale_tensor->n_bytes); !st)
          return st.error();
    } else {
      const int64_t ne0 = static_cast<int64_t>(t.row_length());
      const int64_t n_rows = static_cast<int64_t>(t.n_rows());
      const int64_t rows_per_mat = n_rows / p.n_mat;
      const auto in_tr = *formats::type_traits(static_cast<uint32_t>(t.type));
      const auto out_tr = *formats::type_traits(static_cast<uint32_t>(p.out_type));
      const size_t in_row_bytes = formats::row_bytes(in_tr, ne0);
      const size_t out_row_bytes = formats::row_bytes(out_tr, ne0);
      std::vector<uint8_t> out(out_row_bytes * static_cast<size_t>(n_rows));
      const bool weighted = p.imatrix_weights;
      std::mutex mu;
      std::string error;
      auto set_error = [&](std::string e) {
        std::lock_guard<std::mutex> lk(mu);
        if (error.empty()) error = std::move(e);
      };
      constexpr int64_t kChunk = 16;  // rows per dequantize buffer

      // Dequantizes rows [r0, r0 + n) into buf (times the input scale), checking values.
      auto load_rows = [&](int64_t r0, int64_t n, float* buf) -> bool {
        for (int64_t r = 0; r < n; ++r) {
          float* row = buf + r * ne0;
          if (auto st = dequantize_row(t.type, t.data + (r0 + r) * in_row_bytes, row, ne0); !st) {
            set_error(opt.input + ": tensor '" + t.name + "': " + st.error().message);
            return false;
          }
          for (int64_t j = 0; j < ne0; ++j) {
            if (!std::isfinite(row[j])) {
              set_error(opt.input + ": tensor '" + t.name + "' has " +
                        (std::isnan(row[j]) ? "NaN" : "Inf") + " at row " + std::to_string(r0 + r) +
                        ", column " + std::to_string(j) + ": the model file is corrupt");
              return false;
            }
          }
          if (p.in_scale != 1.0f)
            for (int64_t j = 0; j < ne0; ++j) row[j] *= p.in_scale;
        }
        return true;
      };

      // First pass: amax per matrix (NVFP4 per-tensor scales), column kurtosis per matrix.
      std::vector<float> g(static_cast<size_t>(p.n_mat), 1.0f);
      if (!p.scale_name.empty() || p.kurtosis) {
        std::vector<float> amax(static_cast<size_t>(p.n_mat), 0.0f);
        std::vector<ColumnKurtosis> kurt;
        if (p.kurtosis) kurt.assign(static_cast<size_t>(p.n_mat), ColumnKurtosis(ne0));
        pool.parallel_for(n_rows, [&](int64_t b, int64_t e) {
          std::vector<float> buf(static_cast<size_t>(kChunk * ne0));
          std::vector<float> local(static_cast<size_t>(p.n_mat), 0.0f);
          std::vector<ColumnKurtosis> lk;
          if (p.kurtosis) lk.assign(static_cast<size_t>(p.n_mat), ColumnKurtosis(ne0));
          for (int64_t r0 = b; r0 < e; r0 += kChunk) {
            const int64_t n = std::min(kChunk, e - r0);
            if (!load_rows(r0, n, buf.data())) return;
            for (int64_t r = 0; r < n; ++r) {
              const auto m = static_cast<size_t>((r0 + r) / rows_per_mat);
              const float* x = buf.data() + r * ne0;
              for (int64_t j = 0; j < ne0; ++j) local[m] = std::max(local[m], std::fabs(x[j]));
              if (p.kurtosis) lk[m].add_row(x);
            }
          }
          std::lock_guard<std::mutex> lock(mu);
          for (size_t m = 0; m < amax.size(); ++m) amax[m] = std::max(amax[m], local[m]);
          for (size_t m = 0; m < lk.size(); ++m) kurt[m].merge(lk[m]);
        });
        if (!error.empty()) return make_error(error);
        if (!p.scale_name.empty()) {
          for (size_t m = 0; m < g.size(); ++m)
            g[m] = amax[m] > 0.0f ? amax[m] / (6.0f * 448.0f) : 1.0f;
          tr.tensor_scale = g[0];
        }
        const double power = p.out_type == GgmlType::NVFP4 ? ColumnKurtosis::kNvfp4Power
                                                           : ColumnKurtosis::kMxfp4Power;
        for (const auto& k : kurt) p.weights.push_back(k.weights(power));
      }

      double sum_err2 = 0, sum_x2 = 0, max_abs = 0;
      pool.parallel_for(n_rows, [&](int64_t b, int64_t e) {
        std::vector<float> buf(static_cast<size_t>(kChunk * ne0));
        std::vector<float> deq(static_cast<size_t>(ne0));
        double l_err2 = 0, l_x2 = 0, l_max = 0;
        for (int64_t r0 = b; r0 < e; r0 += kChunk) {
          const int64_t n = std::min(kChunk, e - r0);
          if (!load_rows(r0, n, buf.data())) return;
          for (int64_t r = 0; r < n; ++r) {
            const int64_t row = r0 + r;
            const int64_t m = row / rows_per_mat;
            const float* x = buf.data() + r * ne0;
            const float* cw =
                p.weights.empty() ? nullptr : p.weights[static_cast<size_t>(m)].data();
            const float* sw = weighted ? cw : nullptr;  // statistics: imatrix weights only
            uint8_t* dst = out.data() + row * out_row_bytes;
            const float gm = g[static_cast<size_t>(m)];
            if (p.out_type == GgmlType::NVFP4 && !opt.naive) {
              quantize_nvfp4_rows(x, reinterpret_cast<BlockNvfp4*>(dst), 1, ne0, gm, cw);
            } else if (p.out_type == GgmlType::MXFP4 && !opt.naive) {
              quantize_mxfp4_rows(x, reinterpret_cast<BlockMxfp4*>(dst), 1, ne0, cw);
            } else if (auto st = quantize_row_ref(p.out_type, x, dst, ne0); !st) {
              set_error(t.name + ": " + st.error().message);
              return;
            }
            if (auto st = dequantize_row(p.out_type, dst, deq.data(), ne0); !st) {
              set_error(t.name + ": " + st.error().message);
              return;
            }
            for (int64_t j = 0; j < ne0; ++j) {
              const double wj = sw ? sw[j] : 1.0;
              const double d = static_cast<double>(x[j]) - static_cast<double>(deq[j]) * gm;
              l_err2 += wj * d * d;
              l_x2 += wj * static_cast<double>(x[j]) * x[j];
              l_max = std::max(l_max, std::fabs(d));
            }
          }
        }
        std::lock_guard<std::mutex> lk(mu);
        sum_err2 += l_err2;
        sum_x2 += l_x2;
        max_abs = std::max(max_abs, l_max);
      });
      if (!error.empty()) return make_error(error);
      tr.rel_rmse = sum_x2 > 0 ? std::sqrt(sum_err2 / sum_x2) : 0.0;
      tr.max_abs = max_abs;
      tr.weighted = weighted;
      if (auto st = w.write_tensor_data(out.data(), out.size()); !st) return st.error();
      if (!p.scale_name.empty())
        if (auto st = w.write_tensor_data(g.data(), g.size() * sizeof(float)); !st)
          return st.error();
    }
    if (log) {
      std::string line = "[" + std::to_string(pi + 1) + "/" + std::to_string(n_plans) + "] " +
                         t.name + "  " + formats::type_name(t.type) + " -> " +
                         formats::type_name(p.out_type);
      if (!p.copy && t.n_rows() > 1) {
        line += "  rel-rmse " + fmt_g(tr.rel_rmse) + "  max-abs " + fmt_g(tr.max_abs);
        if (tr.weighted) line += " (imatrix-weighted)";
      }
      if (tr.tensor_scale != 0) line += "  scale " + fmt_g(tr.tensor_scale);
      if (!tr.importance.empty() && tr.importance != "imatrix")
        line += "  importance " + tr.importance;
      if (!tr.note.empty()) line += "  [" + tr.note + "]";
      std::fprintf(log, "%s\n", line.c_str());
    }
    report.tensors.push_back(std::move(tr));
  }
  if (auto st = w.finish(); !st) return st.error();
  std::error_code ec;
  report.out_bytes = std::filesystem::file_size(opt.output, ec);
  report.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return report;
}

}  // namespace fennec::quant
