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
// The text tools' shared steps; each prints its error ("fennec: ...") on failure.
std::optional<std::string> read_text_file(const std::string& path);
Expected<std::unique_ptr<engine::LoadedModel>> load_text_model(const std::string& path, int threads, int ctx);
// The text as the model tokenizes it for scoring (BOS/EOS added, special-token text kept as
// text), with a line on stderr: "N tokens, ctx per chunk".
std::vector<int32_t> text_tokens(const engine::LoadedModel& lm, const std::string& text, int ctx);
int exit_code();
void set_exit_code(int code);

}  // namespace fennec::cli
