#include "engine/kld.h"

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tools/fennec/commands.h"

namespace fennec::cli {

void add_kld_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "kld", "KL divergence of a model against a base model (llama-perplexity --kl-divergence)");
  static std::string base, model, file;
  static int ctx = 512, threads = 0, chunks = -1;
  static bool json = false;
  static KvTypeFlags kv;
  cmd->add_option("--base", base, "base (reference) GGUF model, e.g. F16 or Q8_0")->required();
  cmd->add_option("-m,--model", model, "GGUF model compared against the base")->required();
  cmd->add_option("-f,--file", file, "text file")->required();
  cmd->add_option("-c,--ctx-size", ctx, "chunk size in tokens (default 512)");
  cmd->add_option("-t,--threads", threads, "compute threads");
  cmd->add_option("--chunks", chunks, "score at most this many chunks");
  cmd->add_flag("--json", json, "print the result as one JSON object");
  add_kv_type_options(cmd, kv);  // the model's cache only: the base keeps f16 (same file: the cache's own loss)
  cmd->callback([] {
    const std::optional<std::string> text = read_text_file(file);
    if (!text) return set_exit_code(1);
    auto lb = load_text_model(base, threads, ctx);
    if (!lb) return set_exit_code(1);
    auto lm = load_text_model(model, threads, ctx, kv);
    if (!lm) return set_exit_code(1);
    if (auto s = engine::check_same_vocab(**lb, **lm); !s) {
      std::fprintf(stderr, "fennec: %s\n", s.error().message.c_str());
      return set_exit_code(1);
    }
    // The base model's tokens, as llama-perplexity --kl-divergence-base stores them.
    const std::vector<int32_t> ids = text_tokens(**lb, *text, ctx);
    std::fprintf(stderr,
                 "chunk      PPL        ln(PPL(Q)/PPL(base))   KL divergence      same top p\n");
    auto r =
        engine::kl_divergence(**lb, **lm, ids, ctx, chunks, [](int c, const engine::KldResult& k) {
          std::fprintf(stderr, "%4d  %10.4f  %10.5f ± %8.5f  %10.5f ± %8.5f  %6.2f ± %5.2f %%\n",
                       c + 1, k.ppl_model.value, k.ln_ppl_ratio.value, k.ln_ppl_ratio.error,
                       k.kld_mean.value, k.kld_mean.error, 100 * k.same_top.value,
                       100 * k.same_top.error);
        });
    if (!r) {
      std::fprintf(stderr, "fennec: %s\n", r.error().message.c_str());
      return set_exit_code(1);
    }
    if (json) {
      nlohmann::ordered_json j = {
          {"base", base},
          {"model", model},
          {"file", file},
          {"n_ctx", r->n_ctx},
          {"n_chunks", r->n_chunks},
          {"n_scored", r->n_scored},
          {"ppl_base", r->ppl_base.value},
          {"ppl_base_stderr", r->ppl_base.error},
          {"ppl_model", r->ppl_model.value},
          {"ppl_model_stderr", r->ppl_model.error},
          {"ppl_correlation", r->ppl_correlation},
          {"ln_ppl_ratio", r->ln_ppl_ratio.value},
          {"ln_ppl_ratio_stderr", r->ln_ppl_ratio.error},
          {"ppl_ratio", r->ppl_ratio.value},
          {"ppl_ratio_stderr", r->ppl_ratio.error},
          {"ppl_diff", r->ppl_diff.value},
          {"ppl_diff_stderr", r->ppl_diff.error},
          {"kld_mean", r->kld_mean.value},
          {"kld_mean_stderr", r->kld_mean.error},
          {"kld_median", r->kld_median},
          {"kld_p90", r->kld_p90},
          {"kld_p95", r->kld_p95},
          {"kld_p99", r->kld_p99},
          {"kld_p99_9", r->kld_p99_9},
          {"kld_max", r->kld_max},
          {"kld_min", r->kld_min},
          {"same_top_p", r->same_top.value},
          {"same_top_p_stderr", r->same_top.error},
          {"dp_mean", r->dp_mean.value},
          {"dp_mean_stderr", r->dp_mean.error},
          {"dp_rms", r->dp_rms.value},
          {"dp_rms_stderr", r->dp_rms.error},
      };
      std::printf("%s\n", j.dump(2).c_str());
      return;
    }
    std::printf("====== Perplexity statistics ======\n");
    std::printf("Mean PPL(Q)                   : %10.6f ± %10.6f\n", r->ppl_model.value,
                r->ppl_model.error);
    std::printf("Mean PPL(base)                : %10.6f ± %10.6f\n", r->ppl_base.value,
                r->ppl_base.error);
    std::printf("Cor(ln(PPL(Q)), ln(PPL(base))): %6.2f%%\n", 100 * r->ppl_correlation);
    std::printf("Mean ln(PPL(Q)/PPL(base))     : %10.6f ± %10.6f\n", r->ln_ppl_ratio.value,
                r->ln_ppl_ratio.error);
    std::printf("Mean PPL(Q)/PPL(base)         : %10.6f ± %10.6f\n", r->ppl_ratio.value,
                r->ppl_ratio.error);
    std::printf("Mean PPL(Q)-PPL(base)         : %10.6f ± %10.6f\n", r->ppl_diff.value,
                r->ppl_diff.error);
    std::printf("\n====== KL divergence statistics ======\n");
    std::printf("Mean    KLD: %10.6f ± %10.6f\n", r->kld_mean.value, r->kld_mean.error);
    std::printf("Maximum KLD: %10.6f\n", r->kld_max);
    std::printf("99.9%%   KLD: %10.6f\n", r->kld_p99_9);
    std::printf("99.0%%   KLD: %10.6f\n", r->kld_p99);
    std::printf("95.0%%   KLD: %10.6f\n", r->kld_p95);
    std::printf("90.0%%   KLD: %10.6f\n", r->kld_p90);
    std::printf("Median  KLD: %10.6f\n", r->kld_median);
    std::printf("10.0%%   KLD: %10.6f\n", r->kld_p10);
    std::printf(" 5.0%%   KLD: %10.6f\n", r->kld_p5);
    std::printf(" 1.0%%   KLD: %10.6f\n", r->kld_p1);
    std::printf(" 0.1%%   KLD: %10.6f\n", r->kld_p0_1);
    std::printf("Minimum KLD: %10.6f\n", r->kld_min);
    std::printf("\n====== Token probability statistics ======\n");
    std::printf("Mean    Δp: %6.3f ± %5.3f %%\n", 100 * r->dp_mean.value, 100 * r->dp_mean.error);
    std::printf("Maximum Δp: %6.3f%%\n", 100 * r->dp_max);
    std::printf("Median  Δp: %6.3f%%\n", 100 * r->dp_median);
    std::printf("Minimum Δp: %6.3f%%\n", 100 * r->dp_min);
    std::printf("RMS Δp    : %6.3f ± %5.3f %%\n", 100 * r->dp_rms.value, 100 * r->dp_rms.error);
    std::printf("Same top p: %6.3f ± %5.3f %%\n", 100 * r->same_top.value, 100 * r->same_top.error);
    std::printf("(%d chunks of %d, %lld tokens scored)\n", r->n_chunks, r->n_ctx,
                static_cast<long long>(r->n_scored));
  });
}

}  // namespace fennec::cli
