// Structured output: schema compilation and its errors, the byte matcher on hand-written valid
// and invalid documents, byte-level and token-level random walks whose output must parse and
// validate (against a small validator written here, independent of the compiler), the
// vocabulary walk against brute force, and the time of allowed_tokens on real vocabularies.
#include "engine/json_constraint.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "engine/json_matcher.h"
#include "engine/json_schema.h"
#include "engine/vocab_trie.h"
#include "formats/gguf.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace fennec::engine {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// ---- an independent validator for the subset of JSON Schema the tests use ----

size_t code_points(const std::string& s) {
  size_t n = 0;
  for (const char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

class Validator {
 public:
  explicit Validator(const json& root) : root_(root) {}

  bool valid(const json& v) const { return valid(v, root_, 0); }

 private:
  bool type_is(const json& v, const std::string& t) const {
    if (t == "object") return v.is_object();
    if (t == "array") return v.is_array();
    if (t == "string") return v.is_string();
    if (t == "number") return v.is_number();
    if (t == "integer") {
      return v.is_number_integer() ||
             (v.is_number_float() && v.get<double>() == std::floor(v.get<double>()));
    }
    if (t == "boolean") return v.is_boolean();
    if (t == "null") return v.is_null();
    return false;
  }

  bool valid(const json& v, const json& s, int depth) const {
    if (depth > 100) return false;
    if (s.is_boolean()) return s.get<bool>();
    if (s.contains("$ref")) {
      const std::string ref = s["$ref"];
      return valid(v, root_.at(json::json_pointer(ref.substr(1))), depth + 1);
    }
    if (s.contains("allOf")) {
      for (const auto& sub : s["allOf"]) {
        if (!valid(v, sub, depth + 1)) return false;
      }
    }
    if (s.contains("anyOf")) {
      bool any = false;
      for (const auto& sub : s["anyOf"]) any = any || valid(v, sub, depth + 1);
      if (!any) return false;
    }
    if (s.contains("oneOf")) {
      int count = 0;
      for (const auto& sub : s["oneOf"]) count += valid(v, sub, depth + 1);
      if (count != 1) return false;
    }
    if (s.contains("enum")) {
      bool found = false;
      for (const auto& e : s["enum"]) found = found || e == v;
      if (!found) return false;
    }
    if (s.contains("const") && s["const"] != v) return false;
    if (s.contains("type")) {
      bool ok = false;
      if (s["type"].is_array()) {
        for (const auto& t : s["type"]) ok = ok || type_is(v, t);
      } else {
        ok = type_is(v, s["type"]);
      }
      if (!ok) return false;
    }
    if (v.is_object()) {
      const json props = s.value("properties", json::object());
      for (const auto& r : s.value("required", json::array())) {
        if (!v.contains(r.get<std::string>())) return false;
      }
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (props.contains(it.key())) {
          if (!valid(it.value(), props[it.key()], depth + 1)) return false;
        } else if (s.contains("additionalProperties")) {
          if (!valid(it.value(), s["additionalProperties"], depth + 1)) return false;
        }
      }
    }
    if (v.is_array()) {
      if (s.contains("minItems") && v.size() < s["minItems"].get<size_t>()) return false;
      if (s.contains("maxItems") && v.size() > s["maxItems"].get<size_t>()) return false;
      if (s.contains("items")) {
        for (const auto& item : v) {
          if (!valid(item, s["items"], depth + 1)) return false;
        }
      }
    }
    if (v.is_string()) {
      const size_t n = code_points(v.get<std::string>());
      if (s.contains("minLength") && n < s["minLength"].get<size_t>()) return false;
      if (s.contains("maxLength") && n > s["maxLength"].get<size_t>()) return false;
    }
    if (v.is_number()) {
      const double d = v.get<double>();
      if (s.contains("minimum") && d < s["minimum"].get<double>()) return false;
      if (s.contains("maximum") && d > s["maximum"].get<double>()) return false;
      if (s.contains("exclusiveMinimum") && d <= s["exclusiveMinimum"].get<double>()) return false;
      if (s.contains("exclusiveMaximum") && d >= s["exclusiveMaximum"].get<double>()) return false;
    }
    return true;
  }

  const json& root_;
};

// ---- helpers ----

std::shared_ptr<const JsonSchema> must_compile(const std::string& text) {
  auto s = JsonSchema::compile(ordered_json::parse(text));
  EXPECT_TRUE(s.has_value()) << text << ": " << (s ? "" : s.error().message);
  return s ? *s : JsonSchema::any_object();
}

// Whole document accepted and complete.
bool matches(const std::shared_ptr<const JsonSchema>& schema, std::string_view doc) {
  JsonMatcher m(schema);
  return m.advance(doc) && m.is_complete();
}

struct Case {
  const char* schema;  // nullptr: json_object mode
  std::vector<std::string> valid;
  std::vector<std::string> invalid;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> kCases = {
      {nullptr,
       {"{}", R"({"a":1})", R"({"a": 1, "b": [1, 2.5e3, "x", true, false, null, {"c":{}}]})",
        R"({"":"\u00e9\ud83d\ude00\n\t\"\\\/\b\f\r"})",
        "{\"k\":\"h\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\"}", R"({"a":-0.0e-0,"b":0,"c":-12.5E+10})",
        R"({"a":{},"a":[]})"},
       {"[]",
        "\"x\"",
        "1",
        "{} ",
        " {}",
        "{\"a\":01}",
        "{\"a\":1,}",
        "{\"a\" :1}",
        "{\"a\":  1}",
        "{ \"a\":1}",
        "{\"a\":1 }",
        "{\"a\":\"\\ud800\"}",
        "{\"a\":\"\\udc00\"}",
        "{\"a\":\"\\ud800\\u0041\"}",
        "{\"a\":\"\x01\"}",
        "{\"a\":\"\xC0\xAF\"}",
        "{\"a\":\"\xED\xA0\x80\"}",
        "{\"a\":\"\xF4\x90\x80\x80\"}",
        "{a:1}",
        "{\"a\":tru}",
        "{\"a\":.5}",
        "{\"a\":1.}",
        "{\"a\":1e999}",
        "{\"a\":\"\\x\"}",
        "{\"a\":[1,]}",
        "{\"a\":[,1]}",
        "{\"a\":1}}",
        "{\"a\":\n1}",
        "{\"a\":1}\n"}},
      {R"({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},
          "required":["name","age"],"additionalProperties":false})",
       {R"({"name":"x","age":3})", R"({"name": "Ann", "age": -40})"},
       {R"({"age":3,"name":"x"})", R"({"name":"x"})", R"({"name":"x","age":3,"x":1})",
        R"({"name":"x","age":3.5})", R"({"name":1,"age":3})", "{}"}},
      {R"({"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"},
          "c":{"type":"integer"}},"required":["b"]})",
       {R"({"b":1})", R"({"a":1,"b":2})", R"({"b":1,"c":2})", R"({"a":1,"b":1,"c":1})"},
       {R"({"a":1})", R"({"c":1,"b":1})", R"({"b":1,"b":1})", R"({"b":1,"a":1})", "{}",
        R"({"d":1,"b":1})"}},
      {R"({"type":"string","minLength":2,"maxLength":3})",
       {"\"ab\"", "\"abc\"", "\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\"", R"("\n\u00e9")",
        R"("\ud83d\ude00x")"},
       {"\"a\"", "\"abcd\"", "\"\"", R"("\n")", "ab"}},
      {R"({"type":"integer"})",
       {"0", "-12", "1234567890123456", "7"},
       {"1.5", "1e3", "01", "12345678901234567", "-", "+1", "--1", "1 "}},
      {R"({"type":"number"})",
       {"-0.5e-10", "1E+99", "0.1234567890123456", "3"},
       {"1e999", ".5", "1.", "-", "1e", "1e+", "0x10", "Infinity", "NaN"}},
      {R"({"type":"integer","minimum":0})", {"0", "15"}, {"-1", "-0"}},
      {R"({"type":"integer","minimum":1,"maximum":5})",
       {"1", "3", "5"},
       {"0", "6", "10", "-1", "1.0"}},
      {R"({"type":"integer","exclusiveMinimum":1,"exclusiveMaximum":5})", {"2", "4"}, {"1", "5"}},
      {R"({"type":"boolean"})", {"true", "false"}, {"tru", "null", "1", "True"}},
      {R"({"type":"null"})", {"null"}, {"nul", "false"}},
      {R"({"enum":["red","green",1,null,{"a":[1]},2.5]})",
       {"\"red\"", "\"green\"", "1", "null", R"({"a":[1]})", "2.5"},
       {"\"blue\"", "\"re\"", "12", R"({"a": [1]})", "2", "true"}},
      {R"({"const":"x"})", {"\"x\""}, {"\"y\"", "\"xx\""}},
      {R"({"type":"string","enum":["a","b",3]})", {"\"a\"", "\"b\""}, {"3"}},
      {R"({"anyOf":[{"type":"string","maxLength":2},{"type":"integer"}]})",
       {"\"ab\"", "12", "\"\""},
       {"\"abc\"", "1.5", "null"}},
      {R"({"type":["string","null"]})", {"\"q\"", "null"}, {"1", "false"}},
      {R"({"type":["integer","number"]})", {"1", "1.5"}, {"\"1\""}},
      {R"({"anyOf":[
          {"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}},"required":["a","b"],"additionalProperties":false},
          {"type":"object","properties":{"a":{"type":"integer"},"c":{"type":"boolean"}},"required":["a","c"],"additionalProperties":false}]})",
       {R"({"a":1,"b":"x"})", R"({"a":1,"c":true})"},
       {R"({"a":1,"b":true})", R"({"a":1,"c":"x"})", R"({"a":1})"}},
      {R"({"$defs":{"node":{"type":"object","properties":{"value":{"type":"integer"},
          "children":{"type":"array","items":{"$ref":"#/$defs/node"}}},
          "required":["value","children"],"additionalProperties":false}},"$ref":"#/$defs/node"})",
       {R"({"value":1,"children":[]})", R"({"value":1,"children":[{"value":2,"children":[]}]})"},
       {R"({"value":1})", R"({"value":1,"children":[{}]})"}},
      {R"({"definitions":{"s":{"type":"string"}},"type":"array","items":{"$ref":"#/definitions/s"},
          "minItems":1,"maxItems":2})",
       {R"(["a"])", R"(["a", "b"])", R"(["a","b"])"},
       {"[]", R"(["a","b","c"])", "[1]", R"([ "a"])", R"(["a" ,"b"])"}},
      {R"({"type":"array","items":false})", {"[]"}, {"[1]"}},
      {R"({"type":"object","additionalProperties":{"type":"integer"}})",
       {"{}", R"({"x":1,"y":2})"},
       {R"({"x":"s"})"}},
      {R"({"type":"object","properties":{},"additionalProperties":false})", {"{}"}, {R"({"a":1})"}},
      {R"({"type":"object","properties":{"a":{"type":"integer"}},"required":["a","b"]})",
       {R"({"a":1,"b":"anything"})", R"({"a":1,"b":{"c":[]}})"},
       {R"({"a":1})"}},
      {R"({"type":"object","properties":{"a":false,"b":{"type":"integer"}}})",
       {"{}", R"({"b":1})"},
       {R"({"a":1})"}},
      {R"({"allOf":[{"type":"string","format":"date-time","description":"ignored"}]})",
       {"\"anything\""},
       {"1"}},
      {R"({"properties":{"k":{"type":"string"}},"required":["k"]})", {R"({"k":""})"}, {"{}"}},
      {R"({"type":"object","properties":{"a~/b":{"const":"x\"y"}},"required":["a~/b"]})",
       {R"({"a~/b":"x\"y"})"},
       {R"({"a~/b":"x"})"}},
      {"true", {"1", "{}", "[[]]", "\"s\"", "null"}, {"", "]"}},
      {"{}", {"1", "{\"a\":[{}]}"}, {"{"}},
  };
  return kCases;
}

TEST(JsonMatcher, AcceptsValidAndRejectsInvalidDocuments) {
  for (const Case& c : cases()) {
    const auto schema = c.schema ? must_compile(c.schema) : JsonSchema::any_object();
    const std::string name = c.schema ? c.schema : "json_object";
    for (const std::string& doc : c.valid) {
      EXPECT_TRUE(matches(schema, doc)) << name << "\n  should accept: " << doc;
      // The test's own expectations must be right: parse and validate independently.
      const json v = json::parse(doc, nullptr, false);
      EXPECT_FALSE(v.is_discarded()) << doc;
      if (c.schema) {
        const json s = json::parse(c.schema);
        EXPECT_TRUE(Validator(s).valid(v)) << name << "\n  validator rejects: " << doc;
      }
    }
    for (const std::string& doc : c.invalid) {
      EXPECT_FALSE(matches(schema, doc)) << name << "\n  should reject: " << doc;
    }
  }
}

TEST(JsonMatcher, RejectsBytesAfterTheValueAndKeepsStateOnReject) {
  JsonMatcher m(JsonSchema::any_object());
  EXPECT_FALSE(m.is_complete());
  EXPECT_TRUE(m.advance(std::string_view("{\"a\":1")));
  EXPECT_FALSE(m.advance(std::string_view("x")));
  EXPECT_FALSE(m.advance(std::string_view("}}")));  // all or nothing
  EXPECT_TRUE(m.advance('}'));
  EXPECT_TRUE(m.is_complete());
  for (int b = 0; b < 256; ++b) EXPECT_FALSE(m.can_accept(static_cast<uint8_t>(b))) << b;

  JsonMatcher num(must_compile(R"({"type":"number"})"));
  EXPECT_TRUE(num.advance(std::string_view("12")));
  EXPECT_TRUE(num.is_complete());  // complete, yet more digits may follow
  EXPECT_TRUE(num.can_accept('3'));
  EXPECT_FALSE(num.can_accept(' '));
}

TEST(JsonMatcher, BoundsNestingDepth) {
  const auto any = JsonSchema::any_object();
  std::string deep = "{\"a\":";
  for (int i = 1; i < JsonSchema::kMaxNesting; ++i) deep += "[";
  JsonMatcher m(any);
  ASSERT_TRUE(m.advance(deep));
  EXPECT_FALSE(m.can_accept('['));  // a 17th level
  EXPECT_FALSE(m.can_accept('{'));
  EXPECT_TRUE(m.can_accept('1'));
  EXPECT_TRUE(m.can_accept(']'));

  // A recursive schema whose recursion is optional stops offering it at the limit.
  const auto tree = must_compile(R"({"$defs":{"n":{"type":"object","properties":{
      "k":{"type":"array","items":{"$ref":"#/$defs/n"}}},"additionalProperties":false}},
      "$ref":"#/$defs/n"})");
  JsonMatcher t(tree);
  std::string text;
  for (int i = 0; i < 8; ++i) text += "{\"k\":[";
  ASSERT_TRUE(t.advance(text));  // 16 levels open
  EXPECT_FALSE(t.can_accept('{'));
  EXPECT_TRUE(t.can_accept(']'));
}

// ---- errors ----

TEST(JsonSchema, RejectsBadSchemasNamingThePlace) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"type":"int"})", "#/type: unknown type \"int\""},
      {R"({"type":"object","properties":{"a":{"type":"strin"}}})", "#/properties/a/type"},
      {R"({"type":["string",3]})", "#/type/1"},
      {R"({"type":[]})", "#/type"},
      {R"({"$ref":"#/$defs/missing"})", "#/$ref: '$ref' \"#/$defs/missing\" does not resolve"},
      {R"({"$ref":"https://example.com/s.json"})", "only local references"},
      {R"({"enum":[]})", "#/enum"},
      {R"({"type":"string","enum":[1,2]})", "#/enum: no value satisfies"},
      {R"({"const":1,"enum":[2]})", "#/enum"},
      {R"({"type":"object","properties":{},"required":["x"],"additionalProperties":false})",
       "#/required/0: required property \"x\""},
      {R"({"type":"array","minItems":3,"maxItems":2})", "#/minItems"},
      {R"({"type":"array","minItems":-1})", "#/minItems: must be a non-negative integer"},
      {R"({"type":"array","items":[{"type":"string"}]})", "#/items: tuple-form"},
      {R"({"type":"string","pattern":"^a"})", "#/pattern: regular expressions"},
      {R"({"type":"object","properties":{"a b":{"type":"string","pattern":"x"}}})",
       "#/properties/a b/pattern"},
      {R"({"type":"object","properties":{"a/b":{"not":{}}}})", "#/properties/a~1b/not"},
      {R"({"type":"string","minLength":5,"maxLength":2})", "#/minLength"},
      {R"({"type":"integer","minimum":5,"maximum":1})", "lower bound is above"},
      {R"({"type":"integer","minimum":1.2,"maximum":1.8})", "no integer"},
      {R"({"type":"number","multipleOf":2})", "#/multipleOf"},
      {R"({"type":"array","uniqueItems":true})", "#/uniqueItems"},
      {R"({"anyOf":[{"type":"string"}],"type":"string"})", "#/type: keywords beside 'anyOf'"},
      {R"({"anyOf":[]})", "#/anyOf"},
      {R"({"allOf":[{"type":"string"},{"maxLength":3}]})", "#/allOf"},
      {R"({"$ref":"#"})", "no value satisfies the schema"},
      {R"({"type":"object","properties":{"a":{"$ref":"#"}},"required":["a"]})",
       "no value satisfies the schema"},
      {R"({"type":"object","properties":{"a":false},"required":["a"]})", "#/properties/a"},
      {R"("a string")", "a schema must be an object or a boolean"},
      {"false", "`false`"},
      {R"({"type":"object","minProperties":2})", "#/minProperties"},
      {R"({"properties":[]})", "#/properties: 'properties' must be an object"},
      {R"({"required":"a"})", "#/required"},
  };
  for (const auto& [text, want] : bad) {
    auto s = JsonSchema::compile(json::parse(text));
    ASSERT_FALSE(s.has_value()) << text;
    EXPECT_NE(s.error().message.find(want), std::string::npos)
        << text << "\n  message: " << s.error().message << "\n  wanted: " << want;
    EXPECT_EQ(s.error().message.rfind("json schema: #", 0), 0u) << s.error().message;
  }
}

TEST(JsonSchema, BoundsHostileSchemas) {
  // Deep nesting of the schema document.
  std::string deep;
  for (int i = 0; i < 200; ++i) deep += R"({"type":"array","items":)";
  deep += "{}";
  for (int i = 0; i < 200; ++i) deep += "}";
  auto d = JsonSchema::compile(json::parse(deep));
  ASSERT_FALSE(d.has_value());
  EXPECT_NE(d.error().message.find("deeper than"), std::string::npos) << d.error().message;

  // Nesting the generator could not finish within its limit.
  std::string required_deep;
  for (int i = 0; i < 20; ++i) required_deep += R"({"type":"array","minItems":1,"items":)";
  required_deep += "{}";
  for (int i = 0; i < 20; ++i) required_deep += "}";
  auto r = JsonSchema::compile(json::parse(required_deep));
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("levels of nesting"), std::string::npos) << r.error().message;

  // Huge enum.
  json big = {{"enum", json::array()}};
  for (int i = 0; i < 40000; ++i) big["enum"].push_back("value-number-" + std::to_string(i));
  auto e = JsonSchema::compile(big);
  ASSERT_FALSE(e.has_value());
  EXPECT_NE(e.error().message.find("exceed"), std::string::npos) << e.error().message;

  // Too many alternatives after expansion.
  json alts = {{"anyOf", json::array()}};
  for (int i = 0; i < 100; ++i) alts["anyOf"].push_back({{"const", i}});
  auto a = JsonSchema::compile(alts);
  ASSERT_FALSE(a.has_value());
  EXPECT_NE(a.error().message.find("alternatives"), std::string::npos) << a.error().message;

  // Too many subschemas.
  json wide = {{"type", "object"}, {"properties", json::object()}};
  for (int i = 0; i < 12000; ++i)
    wide["properties"]["p" + std::to_string(i)] = {{"type", "integer"}};
  auto w = JsonSchema::compile(wide);
  ASSERT_FALSE(w.has_value());
  EXPECT_NE(w.error().message.find("too large"), std::string::npos) << w.error().message;

  // Many alternatives that all reach one wide anyOf: flattening must stay cheap.
  json web = {{"$defs", {{"B", {{"anyOf", json::array()}}}}},
              {"type", "object"},
              {"properties", json::object()}};
  for (int i = 0; i < 60; ++i) web["$defs"]["B"]["anyOf"].push_back({{"const", i}});
  for (int i = 0; i < 4000; ++i) {
    web["properties"]["p" + std::to_string(i)] = {
        {"anyOf", {{{"$ref", "#/$defs/B"}}, {{"anyOf", {{{"$ref", "#/$defs/B"}}}}}}}};
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto wb = JsonSchema::compile(web);
  std::printf(
      "[ hostile ] 4000 anyOf over one 60-way anyOf: %s in %.0f ms\n",
      wb ? "compiled" : wb.error().message.c_str(),
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());

  // A chain of $refs, each to the next, and mutual recursion with a way out.
  json chain = {{"$defs", json::object()}};
  for (int i = 0; i < 30; ++i)
    chain["$defs"]["d" + std::to_string(i)] = {{"$ref", "#/$defs/d" + std::to_string(i + 1)}};
  chain["$defs"]["d30"] = {{"anyOf", {{{"$ref", "#/$defs/d0"}}, {{"type", "null"}}}}};
  chain["$ref"] = "#/$defs/d0";
  auto c = JsonSchema::compile(chain);
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_TRUE(matches(*c, "null"));
}

// ---- random walks ----

struct WalkSchema {
  const char* text;  // nullptr: json_object
};

const std::vector<const char*>& walk_schemas() {
  static const std::vector<const char*> kSchemas = {
      nullptr,
      R"({"type":"object","properties":{"name":{"type":"string","maxLength":20},
          "age":{"type":"integer","minimum":0},"email":{"type":"string"},
          "tags":{"type":"array","items":{"type":"string","maxLength":8},"maxItems":3}},
          "required":["name","age"],"additionalProperties":false})",
      R"({"type":"object","properties":{"color":{"enum":["red","green","blue"]},"ok":{"type":"boolean"},
          "nothing":{"type":"null"},"version":{"const":2},"rating":{"type":"integer","minimum":1,"maximum":5}},
          "required":["color","ok","nothing","version","rating"],"additionalProperties":false})",
      R"({"type":"object","properties":{"v":{"anyOf":[{"type":"string","maxLength":5},{"type":"number"},
          {"type":"null"}]},"w":{"type":["integer","boolean"]}},"required":["v","w"],
          "additionalProperties":false})",
      R"({"$defs":{"node":{"type":"object","properties":{"name":{"type":"string","maxLength":6},
          "kids":{"type":"array","items":{"$ref":"#/$defs/node"},"maxItems":2}},"required":["name"],
          "additionalProperties":false}},"$ref":"#/$defs/node"})",
      R"({"type":"array","items":{"type":"object","properties":{"x":{"type":"number"},"y":{"type":"number"}},
          "required":["x","y"],"additionalProperties":false},"minItems":1,"maxItems":4})",
      R"({"type":"object","properties":{"s":{"type":"string","minLength":3,"maxLength":6}},"required":["s"],
          "additionalProperties":false})",
      R"({"oneOf":[{"type":"object","properties":{"kind":{"const":"a"},"x":{"type":"integer"}},
          "required":["kind","x"],"additionalProperties":false},{"type":"object","properties":{
          "kind":{"const":"b"},"y":{"type":"string","maxLength":10}},"required":["kind","y"],
          "additionalProperties":false}]})",
      R"({"type":"object","additionalProperties":{"type":"integer"}})",
      R"({"type":"number"})",
      R"({})",
  };
  return kSchemas;
}

bool parses_and_validates(const char* schema_text, const std::string& text, std::string* why) {
  const json v = json::parse(text, nullptr, false);
  if (v.is_discarded()) {
    *why = "not JSON";
    return false;
  }
  if (!schema_text) {
    if (!v.is_object()) *why = "not an object";
    return v.is_object();
  }
  const json s = json::parse(schema_text);
  if (!Validator(s).valid(v)) {
    *why = "does not validate";
    return false;
  }
  return true;
}

// Byte-level: from every state some byte fits unless the value is complete (no dead ends), and
// every finished walk is valid.
TEST(JsonMatcher, RandomByteWalksNeverDeadEndAndAlwaysValidate) {
  std::mt19937_64 rng(1234);
  for (const char* text : walk_schemas()) {
    const auto schema = text ? must_compile(text) : JsonSchema::any_object();
    int finished = 0;
    for (int walk = 0; walk < 60; ++walk) {
      JsonMatcher m(schema);
      JsonMatcher scratch(schema);
      std::string out;
      for (int step = 0; step < 3000; ++step) {
        std::vector<uint8_t> ok;
        std::vector<double> weight;
        for (int b = 0; b < 256; ++b) {
          if (!m.step_into(static_cast<uint8_t>(b), scratch)) continue;
          ok.push_back(static_cast<uint8_t>(b));
          // Favour bytes that close things so that walks end.
          weight.push_back(b == '"' || b == '}' || b == ']' ? 40.0 : b == '\\' ? 0.2 : 1.0);
        }
        if (m.is_complete() && (ok.empty() || rng() % 3 == 0)) break;
        ASSERT_FALSE(ok.empty()) << "dead end after " << json(out).dump();
        std::discrete_distribution<size_t> pick(weight.begin(), weight.end());
        const uint8_t b = ok[pick(rng)];
        ASSERT_TRUE(m.advance(b));
        out += static_cast<char>(b);
      }
      if (!m.is_complete()) continue;
      ++finished;
      std::string why;
      EXPECT_TRUE(parses_and_validates(text, out, &why))
          << why << ": " << out << "\n  schema: " << (text ? text : "json_object");
    }
    EXPECT_GE(finished, 30) << (text ? text : "json_object");
  }
}

// ---- real tokenizers ----

struct LoadedTokenizer {
  std::unique_ptr<formats::GgufFile> gguf;
  std::unique_ptr<tokenizer::Tokenizer> tok;
};

const tokenizer::Tokenizer* load_tokenizer(const char* file) {
  static std::map<std::string, LoadedTokenizer> loaded;
  auto it = loaded.find(file);
  if (it == loaded.end()) {
    LoadedTokenizer l;
    auto g = formats::GgufFile::open(test::model_path(file));
    if (g) {
      l.gguf = std::make_unique<formats::GgufFile>(std::move(*g));
      auto t = tokenizer::Tokenizer::from_gguf(*l.gguf);
      if (t) l.tok = std::move(*t);
    }
    it = loaded.emplace(file, std::move(l)).first;
  }
  return it->second.tok.get();
}

// Tokens allowed by brute force: each token's bytes run through the matcher.
std::vector<uint8_t> brute_force_allowed(const JsonMatcher& start, const VocabTrie& vocab) {
  std::vector<uint8_t> out(vocab.n_vocab(), 0);
  JsonMatcher x = start, y = start;
  for (int32_t id = 0; id < vocab.n_vocab(); ++id) {
    const std::string_view bytes = vocab.token_bytes(id);
    if (bytes.empty()) continue;
    const JsonMatcher* cur = &start;
    bool ok = true;
    for (size_t i = 0; i < bytes.size() && ok; ++i) {
      JsonMatcher& next = i % 2 ? y : x;
      ok = cur->step_into(static_cast<uint8_t>(bytes[i]), next);
      cur = &next;
    }
    out[id] = ok;
  }
  return out;
}

class JsonConstraintModels : public ::testing::TestWithParam<const char*> {};

TEST_P(JsonConstraintModels, RandomTokenWalksProduceValidJson) {
  FENNEC_REQUIRE_MODEL(GetParam());
  const tokenizer::Tokenizer* tok = load_tokenizer(GetParam());
  ASSERT_NE(tok, nullptr);
  const auto vocab = VocabTrie::for_tokenizer(*tok);
  ASSERT_EQ(vocab.get(), VocabTrie::for_tokenizer(*tok).get());  // cached
  ASSERT_FALSE(vocab->eog_tokens().empty());
  std::vector<uint8_t> closer(vocab->n_vocab(), 0);
  for (int32_t id = 0; id < vocab->n_vocab(); ++id) {
    for (const char c : vocab->token_bytes(id)) closer[id] |= c == '"' || c == '}' || c == ']';
  }
  const bool big = vocab->n_vocab() > 100000;
  std::mt19937_64 rng(42);
  int brute_checks = 0, finished = 0, walks = 0;
  for (const char* text : walk_schemas()) {
    for (int walk = 0; walk < (big ? 4 : 8); ++walk) {
      ++walks;
      auto made = text ? JsonConstraint::create(json::parse(text), *tok)
                       : JsonConstraint::create(json(nullptr), *tok);
      ASSERT_TRUE(made.has_value()) << made.error().message;
      JsonConstraint& c = **made;
      std::string out;
      std::vector<uint8_t> allowed;
      bool ended = false;
      for (int step = 0; step < 400 && !ended; ++step) {
        c.allowed_tokens(allowed);
        ASSERT_EQ(allowed.size(), static_cast<size_t>(vocab->n_vocab()));
        if (step % (big ? 23 : 5) == 2) {
          ++brute_checks;
          const auto want = brute_force_allowed(c.matcher(), *vocab);
          for (int32_t id = 0; id < vocab->n_vocab(); ++id) {
            if (vocab->is_eog(id)) continue;
            ASSERT_EQ(allowed[id], want[id])
                << "token " << id << " " << json(std::string(vocab->token_bytes(id))).dump()
                << " after " << json(out).dump();
          }
        }
        std::vector<int32_t> any, closing;
        bool eog_allowed = false;
        for (int32_t id = 0; id < vocab->n_vocab(); ++id) {
          if (!allowed[id]) continue;
          if (vocab->is_eog(id)) {
            eog_allowed = true;
            continue;
          }
          ASSERT_FALSE(tok->is_special(id));
          ASSERT_FALSE(vocab->token_bytes(id).empty());
          any.push_back(id);
          if (closer[id]) closing.push_back(id);
        }
        ASSERT_EQ(eog_allowed, c.is_complete()) << json(out).dump();
        ASSERT_TRUE(eog_allowed || !any.empty());
        if (eog_allowed && (any.empty() || rng() % 2 == 0)) {
          c.accept(vocab->eog_tokens()[0]);
          ended = true;
          break;
        }
        const auto& from = !closing.empty() && rng() % 5 < 3 ? closing : any;
        const int32_t id = from[rng() % from.size()];
        out += vocab->token_bytes(id);
        c.accept(id);
        ASSERT_FALSE(c.failed()) << json(out).dump();
      }
      if (!ended) continue;
      ++finished;
      std::string why;
      EXPECT_TRUE(parses_and_validates(text, out, &why))
          << why << ": " << json(out).dump() << "\n  schema: " << (text ? text : "json_object");
    }
  }
  std::printf("[ %s ] %d/%d token walks finished and validated, %d brute-force comparisons\n",
              GetParam(), finished, walks, brute_checks);
  EXPECT_GE(finished, walks * 3 / 4);
}

TEST_P(JsonConstraintModels, AllowedTokensTiming) {
  FENNEC_REQUIRE_MODEL(GetParam());
  const tokenizer::Tokenizer* tok = load_tokenizer(GetParam());
  ASSERT_NE(tok, nullptr);
  const auto t0 = std::chrono::steady_clock::now();
  const auto vocab = VocabTrie::build(*tok);
  const double build_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ %s ] vocab %d tokens, trie %zu nodes, longest token %zu bytes, built in %.0f ms\n",
              GetParam(), vocab->n_vocab(), vocab->nodes().size(), vocab->max_token_len(),
              build_ms);

  const char* person = R"({"type":"object","properties":{"name":{"type":"string","maxLength":20},
      "age":{"type":"integer"},"bio":{"type":"string"}},"required":["name","age","bio"],
      "additionalProperties":false})";
  struct Context {
    const char* what;
    const char* schema;  // nullptr: json_object
    const char* prefix;
  };
  const Context contexts[] = {
      {"json_object, start", nullptr, ""},
      {"json_object, after '{'", nullptr, "{"},
      {"json_object, in a key", nullptr, "{\"ke"},
      {"json_object, value start", nullptr, "{\"key\":"},
      {"json_object, in a string value", nullptr, "{\"key\": \"some text"},
      {"json_object, in a number", nullptr, "{\"key\": 12"},
      {"json_object, inside a UTF-8 char", nullptr, "{\"key\": \"\xE2\x82"},
      {"json_object, after a backslash", nullptr, "{\"key\": \"a\\"},
      {"json_object, nested array", nullptr, "{\"key\": [[1, {\"a\": [true, "},
      {"schema, key choice", person, "{\"name\": \"Al\", "},
      {"schema, string maxLength 20", person, "{\"name\": \"Albert Ein"},
      {"schema, unbounded string", person, "{\"name\": \"A\", \"age\": 3, \"bio\": \"Physicist"},
      {"schema, integer", person, "{\"name\": \"A\", \"age\": 3"},
  };
  std::vector<uint8_t> allowed;
  for (const Context& ctx : contexts) {
    std::shared_ptr<const JsonSchema> schema =
        ctx.schema ? must_compile(ctx.schema) : JsonSchema::any_object();
    JsonConstraint c(schema, vocab);
    const std::string prefix = ctx.prefix;
    // Feed the prefix byte by byte through single-byte tokens where the vocabulary has them;
    // the matcher is what matters here, so drive it directly.
    JsonMatcher m(schema);
    ASSERT_TRUE(m.advance(prefix)) << prefix;
    // Reach the same state through the constraint by accepting byte tokens greedily.
    size_t pos = 0;
    while (pos < prefix.size()) {
      int32_t best = -1;
      size_t best_len = 0;
      for (int32_t id = 0; id < vocab->n_vocab(); ++id) {
        const std::string_view b = vocab->token_bytes(id);
        if (!b.empty() && b.size() > best_len && prefix.compare(pos, b.size(), b) == 0) {
          best = id;
          best_len = b.size();
        }
      }
      ASSERT_GE(best, 0) << "no token for " << prefix.substr(pos);
      c.accept(best);
      pos += best_len;
    }
    ASSERT_FALSE(c.failed()) << prefix;
    c.allowed_tokens(allowed);  // warm up
    const int reps = 30;
    const auto s0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) c.allowed_tokens(allowed);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - s0).count() /
        reps;
    size_t n_allowed = 0;
    for (const uint8_t a : allowed) n_allowed += a;
    std::printf("[ %s ] allowed_tokens %-34s %7.3f ms  (%zu allowed)\n", GetParam(), ctx.what, ms,
                n_allowed);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, JsonConstraintModels,
                         ::testing::Values(test::kSmolLM2, test::kGemma3), [](const auto& info) {
                           return std::string(info.param == test::kSmolLM2 ? "smollm2" : "gemma3");
                         });

TEST(JsonConstraint, RejectsBadSchemaAndRefusesWrongTokens) {
  FENNEC_REQUIRE_MODEL(test::kSmolLM2);
  const tokenizer::Tokenizer* tok = load_tokenizer(test::kSmolLM2);
  ASSERT_NE(tok, nullptr);
  auto bad = JsonConstraint::create(json::parse(R"({"type":"strng"})"), *tok);
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().message.find("#/type"), std::string::npos);

  auto made = JsonConstraint::create(ordered_json::parse(R"({"type":"object","properties":{
      "b":{"type":"integer"},"a":{"type":"integer"}},"required":["b","a"],"additionalProperties":false})"),
                                     *tok);
  ASSERT_TRUE(made.has_value());
  JsonConstraint& c = **made;
  // ordered_json keeps the author's order: "b" before "a".
  JsonMatcher m = c.matcher();
  EXPECT_TRUE(m.advance(std::string_view("{\"b\":1,\"a\":2}")));
  EXPECT_TRUE(m.is_complete());
  // A token the grammar rejects marks the constraint failed; then only EOG is allowed.
  const auto x = tok->find_token("x");
  ASSERT_TRUE(x.has_value());
  c.accept(*x);
  EXPECT_TRUE(c.failed());
  EXPECT_TRUE(c.is_complete());
  std::vector<uint8_t> allowed;
  c.allowed_tokens(allowed);
  for (int32_t id = 0; id < tok->n_vocab(); ++id)
    EXPECT_EQ(allowed[id] != 0, tok->is_eog(id)) << id;
}

}  // namespace
}  // namespace fennec::engine
