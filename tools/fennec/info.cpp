#include <cstdio>

#include "formats/gguf.h"
#include "formats/gguf_info.h"
#include "tools/fennec/commands.h"

namespace fennec::cli {

namespace {
int g_exit = 0;
}
int exit_code() { return g_exit; }
void set_exit_code(int code) { g_exit = code; }

void add_info_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "print a GGUF file's metadata and tensor table");
  static std::string path;
  static bool full = false;
  cmd->add_option("model,-m,--model", path, "GGUF file")->required();
  cmd->add_flag("--full", full, "print whole arrays and every tensor");
  cmd->callback([] {
    auto g = formats::GgufFile::open(path);
    if (!g) {
      std::fprintf(stderr, "fennec: %s\n", g.error().message.c_str());
      set_exit_code(1);
      return;
    }
    std::fputs(formats::render_info(*g, full).c_str(), stdout);
  });
}

}  // namespace fennec::cli
