// Shared steps of the commands that run a model over a text file (perplexity, kld, imatrix).
#include <cstdio>
#include <fstream>
#include <sstream>

#include "tools/fennec/commands.h"

namespace fennec::cli {

std::optional<std::string> read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "fennec: %s: cannot read\n", path.c_str());
    return std::nullopt;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Expected<std::unique_ptr<engine::LoadedModel>> load_text_model(const std::string& path, int threads, int ctx) {
  engine::LoadOptions o;
  o.n_threads = threads;
  o.n_ctx = ctx;
  auto lm = engine::LoadedModel::load(path, o);
  if (!lm) std::fprintf(stderr, "fennec: %s\n", lm.error().message.c_str());
  return lm;
}

}  // namespace fennec::cli
