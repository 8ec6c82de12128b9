#include "engine/imatrix.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "tools/fennec/commands.h"

namespace fennec::cli {

void add_imatrix_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "imatrix", "importance matrix of a model over a text (llama-imatrix's GGUF format)");
  static std::string model, file, out = "imatrix.gguf";
  static int ctx = 512, threads = 0, chunks = -1;
  static bool process_output = false;
  cmd->add_option("-m,--model", model, "GGUF model file")->required();
  cmd->add_option("-f,--file", file, "text file (calibration data)")->required();
  cmd->add_option("-o,--output", out, "output file (default imatrix.gguf)");
  cmd->add_option("-c,--ctx-size", ctx, "chunk size in tokens (default 512)");
  cmd->add_option("-t,--threads", threads, "compute threads");
  cmd->add_option("--chunks", chunks, "use at most this many chunks");
  cmd->add_flag("--process-output", process_output, "also collect output.weight");
  cmd->callback([] {
    const std::optional<std::string> text = read_text_file(file);
    if (!text) return set_exit_code(1);
    auto lm = load_text_model(model, threads, ctx);
    if (!lm) return set_exit_code(1);
    const std::vector<int32_t> ids = text_tokens(**lm, *text, ctx);
    auto r =
        engine::compute_imatrix(**lm, ids, ctx, chunks, process_output, file, [](int c, double p) {
          std::fprintf(stderr, "[%d]%.4f,", c + 1, p);
          std::fflush(stderr);
        });
    std::fprintf(stderr, "\n");
    if (!r) {
      std::fprintf(stderr, "fennec: %s\n", r.error().message.c_str());
      return set_exit_code(1);
    }
    if (auto s = quant::write_imatrix_gguf(out, r->imatrix); !s) {
      std::fprintf(stderr, "fennec: %s\n", s.error().message.c_str());
      return set_exit_code(1);
    }
    std::printf("Final estimate: PPL = %.4f +/- %.5f\n", r->ppl, r->ppl_stderr);
    std::printf("imatrix: %zu matrices, %d chunks of %d tokens, written to %s\n",
                r->imatrix.entries.size(), r->n_chunks, r->n_ctx, out.c_str());
  });
}

}  // namespace fennec::cli
