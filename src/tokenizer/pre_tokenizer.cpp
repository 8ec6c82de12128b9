#include "tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <map>

#include "tokenizer/utf8.h"

namespace fennec::tokenizer {

struct PreTokenizer::Code {
  pcre2_code* code = nullptr;
  ~Code() { pcre2_code_free(code); }
};

namespace {

// The patterns are facts from the models' tokenizer.json files (as collected by llama.cpp).
constexpr const char* kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kTekken =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kGpt4o =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kGpt2NoTrail =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr const char* kBloom = R"( ?[^(\s|.,!?…。，、।۔،)]+)";
constexpr const char* kDeepseekLetters =
    "\\s?[A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF"
    "\u0370-\u0373\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5"
    "\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA"
    "\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45"
    "\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE"
    "\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC"
    "\u2102\u2107\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139"
    "\u213C-\u213F\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE\u2CF2\u2CF3"
    "\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF\uFB00-\uFB06"
    "\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A\U00010400-\U0001044F\U000104B0-\U000104D3"
    "\U000104D8-\U000104FB\U00010C80-\U00010CB2\U00010CC0-\U00010CF2\U000118A0-\U000118DF"
    "\U0001E900-\U0001E943]+";
constexpr const char* kDeepseekPunct = "\\s?[!-/:-~\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3000-\u3002]+";
constexpr const char* kDeepseekCjk = "[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+";

struct PreSpec {
  std::vector<std::string> patterns;
  bool ignore_merges = false;
};

const std::map<std::string, PreSpec, std::less<>>& specs() {
  static const auto* m = [] {
    auto* t = new std::map<std::string, PreSpec, std::less<>>();
    const PreSpec gpt2{{kGpt2}};
    const PreSpec llama3{{kLlama3}, true};
    const PreSpec qwen2{{kQwen2}};
    const PreSpec digits_gpt2{{R"(\p{N})", kGpt2}};
    for (const char* n : {"gpt-2", "gpt2", "mpt", "olmo", "jais", "trillion", "granite-docling"}) (*t)[n] = gpt2;
    for (const char* n : {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"})
      (*t)[n] = llama3;
    for (const char* n : {"dbrx", "smaug-bpe", "chatglm4", "chatglm-bpe"}) (*t)[n] = PreSpec{{kLlama3}};
    for (const char* n : {"qwen2", "stablelm2", "hunyuan", "deepseek-r1-qwen", "megrez", "kormo", "grok-2"})
      (*t)[n] = qwen2;
    for (const char* n : {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"})
      (*t)[n] = digits_gpt2;
    (*t)["tekken"] = PreSpec{{kTekken}};
    for (const char* n : {"gpt-4o", "llama4", "minimax-m2"}) (*t)[n] = PreSpec{{kGpt4o}};
    (*t)["falcon"] = PreSpec{{R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2NoTrail, "[0-9][0-9][0-9]"}};
    (*t)["deepseek-llm"] = PreSpec{{"[\r\n]", kDeepseekLetters, kDeepseekPunct, R"(\s+$)", kDeepseekCjk, R"(\p{N}+)"}};
    (*t)["deepseek-coder"] = PreSpec{{"[\r\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", kDeepseekCjk, R"(\p{N})"}};
    (*t)["deepseek-v3"] = PreSpec{{R"(\p{N}{1,3})", "[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+",
                                   R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}};
    for (const char* n : {"poro-chat", "bloom", "gpt3-finnish"}) (*t)[n] = PreSpec{{kBloom}};
    (*t)["viking"] = PreSpec{{kBloom, R"(\p{N})"}};
    (*t)["seed-coder"] = PreSpec{
        {R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+)"}};
    (*t)["default"] = PreSpec{{R"([\p{P}\$\+<=>\^~\|]+)", kGpt2NoTrail, R"(\p{N}+)", "[0-9][0-9][0-9]"}};
    return t;
  }();
  return *m;
}

}  // namespace

Expected<PreTokenizer> PreTokenizer::from_patterns(const std::vector<std::string>& patterns) {
  PreTokenizer p;
  for (const auto& pat : patterns) {
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code* c = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pat.data()), pat.size(), PCRE2_UTF | PCRE2_UCP,
                                  &err, &off, nullptr);
    if (!c) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      return make_error("pre-tokenizer pattern '" + pat + "' does not compile at offset " + std::to_string(off) +
                        ": " + reinterpret_cast<const char*>(msg));
    }
    pcre2_jit_compile(c, PCRE2_JIT_COMPLETE);  // best effort: falls back to the interpreter
    auto code = std::make_shared<Code>();
    code->code = c;
    p.codes_.push_back(std::move(code));
  }
  return p;
}

Expected<PreTokenizer> PreTokenizer::for_name(const std::string& pre_name) {
  const auto& m = specs();
  auto it = m.find(pre_name);
  const PreSpec& spec = it != m.end() ? it->second : m.find("gpt-2")->second;
  auto p = from_patterns(spec.patterns);
  if (!p) return p.error();
  p->ignore_merges_ = spec.ignore_merges;
  return p;
}

std::vector<std::string_view> PreTokenizer::split(std::string_view text) const {
  // Invalid UTF-8 bytes become single-byte pieces that bypass the patterns.
  struct Piece {
    std::string_view s;
    bool raw;
  };
  std::vector<Piece> pieces;
  size_t run = 0;
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8::valid_seq_len(text, i);
    if (n) {
      i += n;
      continue;
    }
    if (i > run) pieces.push_back({text.substr(run, i - run), false});
    pieces.push_back({text.substr(i, 1), true});
    run = ++i;
  }
  if (run < text.size()) pieces.push_back({text.substr(run), false});

  pcre2_match_data* md = nullptr;
  for (const auto& code : codes_) {
    if (!md) md = pcre2_match_data_create(1, nullptr);
    std::vector<Piece> next;
    next.reserve(pieces.size() * 2);
    for (const Piece& p : pieces) {
      if (p.raw) {
        next.push_back(p);
        continue;
      }
      const auto* subj = reinterpret_cast<PCRE2_SPTR>(p.s.data());
      size_t pos = 0, gap = 0;
      while (pos <= p.s.size()) {
        const int rc = pcre2_match(code->code, subj, p.s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
        if (rc < 0) break;  // no match (or a matching error: keep the rest as a gap)
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        const size_t s = ov[0], e = ov[1];
        if (e == s) {  // empty match: step one code point
          if (s >= p.s.size()) break;
          pos = s + std::max<size_t>(1, utf8::valid_seq_len(p.s, s));
          continue;
        }
        if (s > gap) next.push_back({p.s.substr(gap, s - gap), false});
        next.push_back({p.s.substr(s, e - s), false});
        gap = pos = e;
      }
      if (gap < p.s.size()) next.push_back({p.s.substr(gap), false});
    }
    pieces = std::move(next);
  }
  if (md) pcre2_match_data_free(md);
  std::vector<std::string_view> out;
  out.reserve(pieces.size());
  for (const Piece& p : pieces) out.push_back(p.s);
  return out;
}

}  // namespace fennec::tokenizer
