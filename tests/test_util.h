// Shared helpers for tests: fixture and model paths.
#pragma once

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace fennec::test {

inline std::string source_path(const std::string& rel) { return std::string(FENNEC_SOURCE_DIR) + "/" + rel; }
inline std::string model_path(const std::string& file) { return source_path("models/" + file); }
inline bool model_exists(const std::string& file) { return std::filesystem::exists(model_path(file)); }
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline constexpr const char* kSmolLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf";
inline constexpr const char* kGemma3 = "gemma-3-270m-q4_k_m.gguf";

}  // namespace fennec::test

#define FENNEC_REQUIRE_MODEL(file)                                                             \
  do {                                                                                         \
    if (!fennec::test::model_exists(file))                                                     \
      GTEST_SKIP() << "model " << file << " not found under models/: run scripts/fetch_models.sh"; \
  } while (0)
