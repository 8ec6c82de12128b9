// The model the RAS tests drive through the scheduler: SmolLM2 with a 256-token context for
// n_seqs sequences, and one-message chat prompts for it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/loaded_model.h"
#include "test_util.h"

namespace fennec::test {

inline Expected<std::unique_ptr<engine::LoadedModel>> load_small_smollm2(int n_seqs) {
  engine::LoadOptions o;
  o.n_ctx = 256;
  o.n_seqs = n_seqs;
  return engine::LoadedModel::load(model_path(kSmolLM2), o);
}

// The prompt of a chat with one user message, ready for the assistant's answer.
inline std::vector<int32_t> user_prompt(const engine::LoadedModel& lm, const std::string& text) {
  return *lm.tokenize_chat(nlohmann::json::array({{{"role", "user"}, {"content", text}}}), true);
}

}  // namespace fennec::test
