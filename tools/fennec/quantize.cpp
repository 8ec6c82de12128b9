// fennec quantize IN.gguf OUT.gguf --type TYPE: flags in, quant::quantize_model does the work.
#include "quant/quantize.h"

#include <cmath>
#include <cstdio>

#include "quant/quantize_model.h"
#include "tools/fennec/commands.h"

namespace fennec::cli {

void add_quantize_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "quantize", "quantize a GGUF model (nvfp4, mxfp4 with range search; q8_0, q4_k, ...)");
  static std::string in, out, type = "q8_0", imatrix, auto_importance = "kurtosis";
  static std::vector<std::string> tensor_types;
  static int threads = 0;
  static bool naive = false, no_tensor_scale = false, no_auto_importance = false, quiet = false;
  cmd->add_option("input", in, "input GGUF (F32/F16/BF16, or quantized: dequantized first)")
      ->required();
  cmd->add_option("output", out, "output GGUF (written to OUTPUT.tmp, then renamed)")->required();
  cmd->add_option("--type", type, "target type: " + quant::quant_type_names());
  cmd->add_option("--imatrix", imatrix, "importance matrix (llama.cpp GGUF or legacy .dat)");
  cmd->add_option("--tensor-type", tensor_types,
                  "PATTERN=TYPE: type of the tensors whose name matches PATTERN (regex, or glob); "
                  "repeatable, first match wins");
  cmd->add_flag("--naive", naive, "ggml's reference rounding for FP4 (no range search/scales)");
  cmd->add_option("--auto-importance", auto_importance,
                  "FP4 column weights where no imatrix entry exists: kurtosis (of each weight "
                  "column, default), norm (squared weights of the norm in front), none")
      ->check(CLI::IsMember({"kurtosis", "norm", "none"}));
  cmd->add_flag("--no-auto-importance", no_auto_importance, "same as --auto-importance none");
  cmd->add_flag("--no-tensor-scale", no_tensor_scale, "NVFP4 without per-tensor '.scale' tensors");
  cmd->add_option("-t,--threads", threads, "threads (default: physical cores)");
  cmd->add_flag("-q,--quiet", quiet, "no per-tensor lines");
  cmd->callback([] {
    quant::QuantizeOptions o;
    o.input = in;
    o.output = out;
    const auto t = quant::parse_quant_type(type);
    if (!t) {
      std::fprintf(stderr, "fennec: unknown --type '%s' (known: %s)\n", type.c_str(),
                   quant::quant_type_names().c_str());
      return set_exit_code(2);
    }
    o.type = *t;
    o.naive = naive;
    o.tensor_scale = !no_tensor_scale;
    o.imatrix_path = imatrix;
    o.auto_importance = no_auto_importance          ? quant::AutoImportance::kNone
                        : auto_importance == "norm" ? quant::AutoImportance::kNorm
                        : auto_importance == "none" ? quant::AutoImportance::kNone
                                                    : quant::AutoImportance::kKurtosis;
    o.n_threads = threads;
    o.log = quiet ? nullptr : stderr;
    for (const auto& s : tensor_types) {
      auto r = quant::parse_tensor_type_rule(s);
      if (!r) {
        std::fprintf(stderr, "fennec: %s\n", r.error().message.c_str());
        return set_exit_code(2);
      }
      o.rules.push_back(*r);
    }
    auto rep = quant::quantize_model(o);
    if (!rep) {
      std::fprintf(stderr, "fennec: %s\n", rep.error().message.c_str());
      return set_exit_code(1);
    }
    double werr = 0, wn = 0;
    for (const auto& tr : rep->tensors)
      if (tr.rel_rmse > 0) {
        werr += tr.rel_rmse * tr.rel_rmse * static_cast<double>(tr.n_elements);
        wn += static_cast<double>(tr.n_elements);
      }
    std::fprintf(stderr,
                 "fennec: wrote %s: %.1f MiB -> %.1f MiB in %.1f s; rel-rmse over quantized "
                 "tensors %.4f\n",
                 out.c_str(), rep->in_bytes / 1048576.0, rep->out_bytes / 1048576.0, rep->seconds,
                 wn > 0 ? std::sqrt(werr / wn) : 0.0);
  });
}

}  // namespace fennec::cli
