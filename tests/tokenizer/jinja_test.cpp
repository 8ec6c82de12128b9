// Chat-template interpreter against Python jinja2: fixtures made by
// tests/fixtures/templates/make_template_fixtures.py (real model templates + feature snippets).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "tokenizer/chat_template.h"
#include "tokenizer/jinja/lexer.h"

using fennec::tokenizer::ChatTemplate;
using nlohmann::ordered_json;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string fixture_dir() { return std::string(FENNEC_SOURCE_DIR) + "/tests/fixtures/templates/"; }

ordered_json load_fixture(const std::string& name) {
  std::string text = read_file(fixture_dir() + name);
  EXPECT_FALSE(text.empty()) << "missing fixture " << name;
  return ordered_json::parse(text);
}

// Compares one case: byte-identical output, or an error when Python raised one.
void check_case(const ordered_json& c, const std::string& source, const std::string& label) {
  auto tmpl = ChatTemplate::parse(source);
  if (c.contains("error")) {
    std::string py_error = c["error"].get<std::string>();
    std::string type = c["error_type"].get<std::string>();
    std::string got;
    if (!tmpl) {
      got = tmpl.error().message;
    } else {
      auto out = tmpl->render(c["context"]);
      ASSERT_FALSE(out.has_value()) << label << ": expected error '" << py_error << "', got output:\n" << *out;
      got = out.error().message;
    }
    // Syntax errors are worded our own way (line/column + what was expected); others match jinja2.
    if (type != "TemplateSyntaxError")
      EXPECT_NE(got.find(py_error), std::string::npos) << label << ": error '" << got << "' lacks '" << py_error << "'";
    return;
  }
  ASSERT_TRUE(tmpl.has_value()) << label << ": " << tmpl.error().message;
  auto out = tmpl->render(c["context"]);
  ASSERT_TRUE(out.has_value()) << label << ": " << out.error().message;
  EXPECT_EQ(*out, c["expected"].get<std::string>()) << label;
}

}  // namespace

TEST(JinjaChatTemplates, MatchPythonJinja2OnRealTemplates) {
  ordered_json fx = load_fixture("chat_templates.json");
  ASSERT_GT(fx["cases"].size(), 40u);
  for (const auto& c : fx["cases"]) {
    std::string name = c["template"].get<std::string>();
    check_case(c, read_file(fixture_dir() + name), name + " / " + c["name"].get<std::string>());
  }
}

TEST(JinjaFeatures, MatchPythonJinja2) {
  ordered_json fx = load_fixture("jinja_features.json");
  for (const auto& c : fx["cases"])
    check_case(c, c["template"].get<std::string>(), c["name"].get<std::string>());
}

TEST(JinjaApply, ConvenienceMatchesRender) {
  auto t = ChatTemplate::parse(read_file(fixture_dir() + "smollm2.jinja"));
  ASSERT_TRUE(t.has_value());
  nlohmann::json msgs = nlohmann::json::array({{{"role", "user"}, {"content", "Hi"}}});
  auto out = t->apply(msgs, true, "<s>", "</s>");
  ASSERT_TRUE(out.has_value()) << out.error().message;
  EXPECT_EQ(*out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(JinjaErrors, SyntaxErrorNamesLineColumnAndExpectation) {
  auto t = ChatTemplate::parse("line one\n{% for x in y %}\n{{ x }}");
  ASSERT_FALSE(t.has_value());
  const std::string& m = t.error().message;
  EXPECT_NE(m.find("line 3"), std::string::npos) << m;
  EXPECT_NE(m.find("'endfor'"), std::string::npos) << m;

  auto t2 = ChatTemplate::parse("{{ 1 + }}");
  ASSERT_FALSE(t2.has_value());
  EXPECT_NE(t2.error().message.find("line 1, column 8"), std::string::npos) << t2.error().message;
  EXPECT_NE(t2.error().message.find("expected an expression"), std::string::npos) << t2.error().message;

  auto t3 = ChatTemplate::parse("{% if x %}a{% endfor %}");
  ASSERT_FALSE(t3.has_value());
  auto t4 = ChatTemplate::parse("{{ 'unterminated }}");
  ASSERT_FALSE(t4.has_value());
  EXPECT_NE(t4.error().message.find("string"), std::string::npos) << t4.error().message;
}

TEST(JinjaErrors, UnknownFilterAndTest) {
  auto t = ChatTemplate::parse("{{ x | frobnicate }}");
  ASSERT_TRUE(t.has_value());
  auto out = t->render(nlohmann::json{{"x", 1}});
  ASSERT_FALSE(out.has_value());
  EXPECT_NE(out.error().message.find("No filter named 'frobnicate'"), std::string::npos);
  auto t2 = ChatTemplate::parse("{{ x is frob }}");
  ASSERT_TRUE(t2.has_value());
  EXPECT_FALSE(t2->render(nlohmann::json::object()).has_value());
}

TEST(JinjaErrors, RaiseException) {
  auto t = ChatTemplate::parse("ok{{ raise_exception('bad role: ' + role) }}");
  ASSERT_TRUE(t.has_value());
  auto out = t->render(nlohmann::json{{"role", "robot"}});
  ASSERT_FALSE(out.has_value());
  EXPECT_NE(out.error().message.find("bad role: robot"), std::string::npos) << out.error().message;
}

TEST(JinjaLimits, RecursionDepth) {
  auto t = ChatTemplate::parse("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  ASSERT_TRUE(t.has_value());
  auto out = t->render(nlohmann::json::object());
  ASSERT_FALSE(out.has_value());
  EXPECT_NE(out.error().message.find("call depth"), std::string::npos) << out.error().message;
}

TEST(JinjaLimits, ParserNesting) {
  std::string deep = "{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}";
  auto t = ChatTemplate::parse(deep);
  ASSERT_FALSE(t.has_value());
  EXPECT_NE(t.error().message.find("nested too deeply"), std::string::npos) << t.error().message;
  std::string deep_not = "{{ " + std::string(0, ' ');
  for (int i = 0; i < 50000; ++i) deep_not += "not ";
  deep_not += "1 }}";
  EXPECT_FALSE(ChatTemplate::parse(deep_not).has_value());
}

TEST(JinjaLimits, LoopIterations) {
  auto t = ChatTemplate::parse("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
  ASSERT_TRUE(t.has_value());
  auto out = t->render(nlohmann::json::object());
  ASSERT_FALSE(out.has_value());
  EXPECT_NE(out.error().message.find("loop iterations"), std::string::npos) << out.error().message;

  auto t2 = ChatTemplate::parse("{{ range(10000000000) | length }}");
  ASSERT_TRUE(t2.has_value());
  EXPECT_FALSE(t2->render(nlohmann::json::object()).has_value());
}

TEST(JinjaLimits, OutputSize) {
  auto t = ChatTemplate::parse("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}");
  ASSERT_TRUE(t.has_value());
  auto out = t->render(nlohmann::json::object());
  ASSERT_FALSE(out.has_value());
  EXPECT_NE(out.error().message.find("limit"), std::string::npos) << out.error().message;

  auto t2 = ChatTemplate::parse("{{ 'x' * 100000000000 }}");
  ASSERT_TRUE(t2.has_value());
  EXPECT_FALSE(t2->render(nlohmann::json::object()).has_value());

  fennec::tokenizer::jinja::RenderLimits small;
  small.max_output_bytes = 10;
  auto t3 = ChatTemplate::parse("{% for i in range(20) %}{{ i }}{% endfor %}");
  ASSERT_TRUE(t3.has_value());
  t3->set_limits(small);
  EXPECT_FALSE(t3->render(nlohmann::json::object()).has_value());
}

TEST(JinjaValues, UndefinedSemantics) {
  auto t = ChatTemplate::parse("[{{ missing }}][{{ missing | default('d') }}][{{ m.nokey }}]");
  ASSERT_TRUE(t.has_value());
  auto out = t->render(nlohmann::json{{"m", nlohmann::json::object()}});
  ASSERT_TRUE(out.has_value()) << out.error().message;
  EXPECT_EQ(*out, "[][d][]");
  auto t2 = ChatTemplate::parse("{{ missing.attr }}");
  ASSERT_TRUE(t2.has_value());
  auto out2 = t2->render(nlohmann::json::object());
  ASSERT_FALSE(out2.has_value());
  EXPECT_NE(out2.error().message.find("'missing' is undefined"), std::string::npos) << out2.error().message;
}

TEST(JinjaValues, KeyOrderFollowsOrderedJson) {
  auto t = ChatTemplate::parse("{{ d | tojson }}");
  ASSERT_TRUE(t.has_value());
  auto out = t->render(ordered_json::parse(R"({"d": {"z": 1, "a": [1.0, "é"]}})"));
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(*out, "{\"z\": 1, \"a\": [1.0, \"é\"]}");
}
