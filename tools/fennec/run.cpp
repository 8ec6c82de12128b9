// `fennec run` (one prompt) and `fennec chat` (interactive). Flags follow llama.cpp's where it
// has one (-m -p -f -n -t -c --temp --top-k --top-p --seed ...).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "core/log.h"
#include "engine/generator.h"
#include "engine/loaded_model.h"
#include "tools/fennec/commands.h"

namespace fennec::cli {

namespace {

struct RunFlags {
  std::string model;
  std::string prompt;
  std::string prompt_file;
  std::string system;
  int n_predict = 256;
  int threads = 0;
  int ctx = 0;
  bool raw = false;
  bool ignore_eos = false;
  std::vector<std::string> stop;
  engine::SamplingParams sp;
  long long seed = -1;
  KvTypeFlags kv;
};

void add_common(CLI::App* cmd, RunFlags& f) {
  cmd->add_option("-m,--model", f.model, "GGUF model file")->required();
  cmd->add_option("-n,--n-predict,--max-tokens", f.n_predict, "tokens to generate (default 256)");
  cmd->add_option("-t,--threads", f.threads, "compute threads (default: all cores)");
  cmd->add_option("-c,--ctx,--ctx-size", f.ctx, "context length in tokens (default: min(train, 4096))");
  cmd->add_option("--temp,--temperature", f.sp.temperature, "temperature (0: greedy; default 0.8)");
  cmd->add_option("--top-k", f.sp.top_k, "top-k (0: off; default 40)");
  cmd->add_option("--top-p", f.sp.top_p, "top-p (1: off; default 0.95)");
  cmd->add_option("--min-p", f.sp.min_p, "min-p (0: off; default 0.05)");
  cmd->add_option("--repeat-penalty", f.sp.repetition_penalty, "repetition penalty (1: off)");
  cmd->add_option("--repeat-last-n", f.sp.repeat_last_n, "penalty window (-1: all)");
  cmd->add_option("--presence-penalty", f.sp.presence_penalty, "presence penalty");
  cmd->add_option("--frequency-penalty", f.sp.frequency_penalty, "frequency penalty");
  cmd->add_option("-s,--seed", f.seed, "random seed (default: random)");
  cmd->add_option("--stop", f.stop, "stop string (repeatable)");
  cmd->add_option("--system,--system-prompt", f.system, "system message (chat template)");
  cmd->add_flag("--ignore-eos", f.ignore_eos, "keep generating past end-of-generation tokens");
  add_kv_type_options(cmd, f.kv);
}

void finalize_sampling(RunFlags& f) {
  if (f.seed >= 0) {
    f.sp.seed = static_cast<uint64_t>(f.seed);
    f.sp.has_seed = true;
  }
}

std::unique_ptr<engine::LoadedModel> load_model(const RunFlags& f) {
  engine::LoadOptions o;
  o.n_threads = f.threads;
  o.n_ctx = f.ctx;
  f.kv.apply(o);
  auto lm = engine::LoadedModel::load(f.model, o);
  if (!lm) {
    std::fprintf(stderr, "fennec: %s\n", lm.error().message.c_str());
    return nullptr;
  }
  return std::move(*lm);
}

// Generates one answer, streaming text to stdout; returns false on error.
bool generate(engine::LoadedModel& lm, const RunFlags& f, std::vector<int32_t> prompt,
              std::string* answer, bool print_stats) {
  engine::GenerationRequest req;
  req.prompt = std::move(prompt);
  const int room = lm.n_ctx() - static_cast<int>(req.prompt.size());
  if (room <= 0) {
    std::fprintf(stderr, "fennec: prompt is %zu tokens, context is %d: raise --ctx or shorten the prompt\n",
                 req.prompt.size(), lm.n_ctx());
    return false;
  }
  req.max_tokens = std::min(f.n_predict < 0 ? room : f.n_predict, room);
  req.sampling = f.sp;
  req.stop = f.stop;
  req.ignore_eos = f.ignore_eos;
  engine::Generator gen(lm.model(), lm.tokenizer(), lm.kv(), lm.pool());
  auto res = gen.generate({req}, [&](size_t, const std::string& text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  });
  if (!res) {
    std::fprintf(stderr, "\nfennec: %s\n", res.error().message.c_str());
    return false;
  }
  if (answer) *answer = (*res)[0].text;
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (print_stats) {
    const auto& st = gen.stats();
    std::fprintf(stderr, "\nfennec: prompt %lld tokens in %.3f s (%.1f tok/s); generated %lld tokens in %.3f s (%.1f tok/s); finish: %s\n",
                 static_cast<long long>(st.prompt_tokens), st.prompt_seconds,
                 st.prompt_seconds > 0 ? st.prompt_tokens / st.prompt_seconds : 0.0,
                 static_cast<long long>(st.generated_tokens), st.generation_seconds,
                 st.generation_seconds > 0 ? st.generated_tokens / st.generation_seconds : 0.0,
                 engine::finish_reason_name((*res)[0].finish));
    std::fprintf(stderr, "fennec: resident memory %.1f MiB (model file %.1f MiB, KV cache %.1f MiB)\n",
                 engine::resident_memory_bytes() / 1048576.0, lm.gguf().file_size() / 1048576.0,
                 lm.kv().bytes() / 1048576.0);
  }
  return true;
}

RunFlags g_run, g_chat;

void do_run() {
  RunFlags& f = g_run;
  finalize_sampling(f);
  if (!f.prompt_file.empty()) {
    std::ifstream in(f.prompt_file, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "fennec: %s: cannot read prompt file\n", f.prompt_file.c_str());
      set_exit_code(1);
      return;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    f.prompt = ss.str();
  }
  auto lm = load_model(f);
  if (!lm) return set_exit_code(1);
  std::vector<int32_t> ids;
  if (f.raw || !lm->chat_template()) {
    if (!f.raw) log_warn("the model has no chat template: using the prompt as raw text");
    ids = lm->tokenizer().encode(f.prompt, true, false);
  } else {
    nlohmann::json msgs = nlohmann::json::array();
    if (!f.system.empty()) msgs.push_back({{"role", "system"}, {"content", f.system}});
    msgs.push_back({{"role", "user"}, {"content", f.prompt}});
    auto r = lm->tokenize_chat(msgs, true);
    if (!r) {
      std::fprintf(stderr, "fennec: %s\n", r.error().message.c_str());
      return set_exit_code(1);
    }
    ids = std::move(*r);
  }
  if (ids.empty()) {
    std::fprintf(stderr, "fennec: the prompt is empty\n");
    return set_exit_code(1);
  }
  if (!generate(*lm, f, ids, nullptr, true)) set_exit_code(1);
}

void do_chat() {
  RunFlags& f = g_chat;
  finalize_sampling(f);
  auto lm = load_model(f);
  if (!lm) return set_exit_code(1);
  if (!lm->chat_template()) {
    std::fprintf(stderr, "fennec: %s has no chat template\n", f.model.c_str());
    return set_exit_code(1);
  }
  nlohmann::json msgs = nlohmann::json::array();
  if (!f.system.empty()) msgs.push_back({{"role", "system"}, {"content", f.system}});
  std::fprintf(stderr, "fennec: chat with %s (empty line or Ctrl-D to quit)\n", f.model.c_str());
  std::string line;
  while (true) {
    std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line) || line.empty()) break;
    msgs.push_back({{"role", "user"}, {"content", line}});
    auto ids = lm->tokenize_chat(msgs, true);
    if (!ids) {
      std::fprintf(stderr, "fennec: %s\n", ids.error().message.c_str());
      msgs.erase(msgs.end() - 1);
      continue;
    }
    std::string answer;
    if (!generate(*lm, f, std::move(*ids), &answer, false)) {
      msgs.erase(msgs.end() - 1);
      continue;
    }
    msgs.push_back({{"role", "assistant"}, {"content", answer}});
  }
}

}  // namespace

void add_run_commands(CLI::App& app) {
  for (RunFlags* f : {&g_run, &g_chat}) {
    f->sp.temperature = 0.8f;
    f->sp.top_k = 40;
    f->sp.top_p = 0.95f;
    f->sp.min_p = 0.05f;
  }
  auto* run = app.add_subcommand("run", "generate an answer to one prompt (chat template on by default)");
  add_common(run, g_run);
  run->add_option("-p,--prompt", g_run.prompt, "prompt text");
  run->add_option("-f,--file", g_run.prompt_file, "read the prompt from a file");
  run->add_flag("--raw", g_run.raw, "do not apply the chat template");
  run->callback(do_run);
  auto* chat = app.add_subcommand("chat", "interactive chat");
  add_common(chat, g_chat);
  chat->callback(do_chat);
}

}  // namespace fennec::cli
