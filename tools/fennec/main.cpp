// fennec: the one command-line tool. Thin: parse flags, call the library, print.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "tools/fennec/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"fennec: open LLM inference"};
  app.require_subcommand(1);
  fennec::cli::add_info_command(app);
  fennec::cli::add_run_commands(app);
  fennec::cli::add_perplexity_command(app);
  fennec::cli::add_kld_command(app);
  fennec::cli::add_imatrix_command(app);
  fennec::cli::add_serve_command(app);
  fennec::cli::add_bench_command(app);
  fennec::cli::add_quantize_command(app);
  fennec::cli::add_doctor_command(app);
  // llama.cpp's multi-letter single-dash flags, which CLI11 cannot name: spelled out.
  std::vector<char*> args(argv, argv + argc);
  for (auto& a : args) {
    const std::string_view v = a;
    if (v == "-ctk") a = const_cast<char*>("--cache-type-k");
    if (v == "-ctv") a = const_cast<char*>("--cache-type-v");
  }
  try {
    app.parse(static_cast<int>(args.size()), args.data());
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return fennec::cli::exit_code();
}
