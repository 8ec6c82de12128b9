#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/expected.h"
#include "engine/loaded_model.h"

namespace fennec::cli {

void add_info_command(CLI::App& app);
void add_run_commands(CLI::App& app);        // run, chat
void add_perplexity_command(CLI::App& app);
void add_kld_command(CLI::App& app);          // kld
void add_imatrix_command(CLI::App& app);      // imatrix
void add_serve_command(CLI::App& app);       // serve
void add_bench_command(CLI::App& app);       // bench
void add_quantize_command(CLI::App& app);    // quantize
void add_doctor_command(CLI::App& app);      // doctor
// -ctk/--cache-type-k and -ctv/--cache-type-v (llama.cpp's names): the KV cache's K and V
// types, f16 (default) or q8_0; other names are refused when parsed. env_prefix: also read from
// <env_prefix>CACHE_TYPE_K / _V when not empty.
struct KvTypeFlags {
  std::string k = "f16";
  std::string v = "f16";
  // Sets o.k_type and o.v_type (the names were checked when parsed).
  void apply(engine::LoadOptions& o) const;
};
void add_kv_type_options(CLI::App* cmd, KvTypeFlags& f, const std::string& env_prefix = "");
// The text tools' shared steps; each prints its error ("fennec: ...") on failure.
std::optional<std::string> read_text_file(const std::string& path);
Expected<std::unique_ptr<engine::LoadedModel>> load_text_model(const std::string& path, int threads, int ctx,
                                                               const KvTypeFlags& kv = {});
// The text as the model tokenizes it for scoring (BOS/EOS added, special-token text kept as
// text), with a line on stderr: "N tokens, ctx per chunk".
std::vector<int32_t> text_tokens(const engine::LoadedModel& lm, const std::string& text, int ctx);
int exit_code();
void set_exit_code(int code);

}  // namespace fennec::cli
