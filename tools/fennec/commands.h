#pragma once

#include <CLI/CLI.hpp>

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
int exit_code();
void set_exit_code(int code);

}  // namespace fennec::cli
