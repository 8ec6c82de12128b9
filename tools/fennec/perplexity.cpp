#include <cstdio>
#include <fstream>
#include <sstream>

#include "engine/perplexity.h"
#include "tools/fennec/commands.h"

namespace fennec::cli {

void add_perplexity_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("perplexity", "perplexity of a text file (llama-perplexity's method)");
  static std::string model, file;
  static int ctx = 512, threads = 0, chunks = -1;
  static KvTypeFlags kv;
  cmd->add_option("-m,--model", model, "GGUF model file")->required();
  cmd->add_option("-f,--file", file, "text file")->required();
  cmd->add_option("-c,--ctx-size", ctx, "chunk size in tokens (default 512)");
  cmd->add_option("-t,--threads", threads, "compute threads");
  cmd->add_option("--chunks", chunks, "score at most this many chunks");
  add_kv_type_options(cmd, kv);
  cmd->callback([] {
    const std::optional<std::string> text = read_text_file(file);
    if (!text) return set_exit_code(1);
    auto lm = load_text_model(model, threads, ctx, kv);
    if (!lm) return set_exit_code(1);
    const std::vector<int32_t> ids = text_tokens(**lm, *text, ctx);
    auto r = engine::perplexity(**lm, ids, ctx, chunks, [](int c, double p) {
      std::fprintf(stderr, "[%d]%.4f,", c + 1, p);
      std::fflush(stderr);
    });
    std::fprintf(stderr, "\n");
    if (!r) {
      std::fprintf(stderr, "fennec: %s\n", r.error().message.c_str());
      return set_exit_code(1);
    }
    std::printf("Final estimate: PPL = %.4f +/- %.5f (%d chunks of %d, %lld tokens scored)\n", r->ppl,
                r->ppl_stderr, r->n_chunks, r->n_ctx, static_cast<long long>(r->n_scored));
  });
}

}  // namespace fennec::cli
