// JSON Schema compiled for constrained generation (OpenAI `response_format`). compile() treats
// the schema as hostile: it checks every keyword it uses, refuses what it cannot enforce, and
// bounds size and depth, so a bad schema yields an Error naming the JSON pointer of the bad part
// (the server answers HTTP 400), never a crash or a hang. The result is a graph of nodes that
// JsonMatcher (json_matcher.h) follows one byte at a time.
//
// Generation emits a subset of what the schema accepts, always valid compact JSON:
// - `type` (one name or a list), `properties`, `required`, `additionalProperties`, `items`,
//   `minItems`/`maxItems`, `minLength`/`maxLength`, `enum`, `const`, `anyOf`, `oneOf` (treated
//   as anyOf: alternatives should not overlap), `allOf` of one schema, local `$ref`
//   (`#`, `#/$defs/...`, `#/definitions/...`, any `#/json/pointer`; recursion allowed).
// - Objects emit declared properties only, in declaration order (nlohmann::json keeps keys
//   sorted; pass an ordered_json to keep the schema author's order); required ones always,
//   optional ones may be skipped. A `required` name that is not declared is emitted with the
//   `additionalProperties` schema (an error when additionalProperties is false). An object that
//   declares no properties and allows additional ones takes any keys.
// - Integers bounded on both sides by at most 1025 values are enforced exactly (they become a
//   list). Otherwise `minimum`/`exclusiveMinimum` >= 0 only forbids a minus sign and other
//   numeric bounds are NOT enforced during generation (the output may violate them); enum and
//   const values are checked against them. A schema without `type` takes it from its keywords
//   (`properties` -> object, `items` -> array, `minLength` -> string, `minimum` -> number);
//   with none, any JSON value. Enum/const values are checked against `type`, string lengths
//   and numeric bounds only (an object value is not checked against `properties`).
// - `format` and annotations (`description`, `title`, `default`, `examples`, `$schema`, `$id`,
//   `$comment`, `strict`, `deprecated`, `readOnly`, `writeOnly`) are ignored; unknown keywords
//   are ignored. Keywords that constrain values but cannot be enforced are errors: `pattern`,
//   `patternProperties`, `not`, `if`/`then`/`else`, `allOf` of several schemas, `uniqueItems`,
//   `contains`, `prefixItems`, tuple `items`, `multipleOf`, `propertyNames`, `dependent*`,
//   `unevaluated*`, `min/maxProperties` beyond what required/declared properties imply, remote
//   `$ref`, and constraining keywords beside `$ref`/`anyOf`/`oneOf`/`allOf`.
// - Limits: schema documents nest at most kMaxSchemaDepth levels, compile to at most kMaxNodes
//   subschemas, kMaxLiteralBytes of enum values and property names, kMaxAlternatives per anyOf.
// - Objects and arrays nest at most kMaxNesting levels while generating; a schema whose values
//   all need deeper nesting is an error.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/expected.h"

namespace fennec::engine {

// Byte trie over a fixed set of texts (serialized enum values, quoted property names).
class LiteralTrie {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;

  LiteralTrie();
  // Adds `text` with the given value; a text added twice keeps its first value.
  void insert(std::string_view text, uint32_t value);
  // Child of `node` along `byte`, kNone when absent. The root is node 0.
  uint32_t child(uint32_t node, uint8_t byte) const;
  // Value of the text that ends at `node`, or kNone.
  uint32_t value(uint32_t node) const { return nodes_[node].value; }
  // Values of every text through `node`, ascending.
  std::span<const uint32_t> values_below(uint32_t node) const { return nodes_[node].below; }
  size_t size() const { return nodes_.size(); }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, uint32_t>> children;  // sorted by byte
    std::vector<uint32_t> below;
    uint32_t value = kNone;
  };
  std::vector<Node> nodes_;
};

struct JsonProperty {
  std::string name;   // as written in the schema
  uint32_t node = 0;  // schema of its value
  bool required = false;
};

struct JsonNode {
  enum class Kind : uint8_t { kObject, kArray, kString, kNumber, kLiteral, kAnyOf };
  Kind kind = Kind::kAnyOf;
  // Frames (nested values, this one included) a matcher needs to finish a value of this node;
  // kInfeasible when no value fits within kMaxNesting levels.
  uint8_t need = 0;
  // kNumber
  bool integer = false;
  bool non_negative = false;
  // kString: length in code points
  uint32_t min_length = 0;
  uint32_t max_length = UINT32_MAX;
  // kArray
  uint32_t items = 0;
  uint32_t min_items = 0;
  uint32_t max_items = UINT32_MAX;
  // kObject. With free_keys, any key (a JSON string) takes a value of free_values; otherwise
  // only `properties`, in order, keyed through `keys` (texts "\"name\"" -> property index).
  bool free_keys = false;
  uint32_t free_values = 0;
  std::vector<JsonProperty> properties;
  std::vector<uint32_t> next_required;  // [i]: first required property index >= i, or size
  LiteralTrie keys;
  // kLiteral: the compact JSON texts allowed
  LiteralTrie literals;
  // The nodes a value of this node starts as: itself, or for kAnyOf its alternatives with
  // nested anyOf and $ref flattened (never kAnyOf themselves).
  std::vector<uint32_t> leaves;
};

class JsonSchema {
 public:
  static constexpr int kMaxNesting = 16;              // objects/arrays inside each other
  static constexpr int kMaxFrames = kMaxNesting + 1;  // + the innermost scalar
  static constexpr uint8_t kInfeasible = 255;
  static constexpr int kMaxSchemaDepth = 64;  // nesting of the schema document
  static constexpr size_t kMaxNodes = 10000;
  static constexpr size_t kMaxLiteralBytes = 256 * 1024;  // enum values and property names
  static constexpr size_t kMaxAlternatives = 64;          // per anyOf after flattening
  static constexpr uint32_t kAnyStringNode = 3;           // any string: keys of free objects

  // Compiles a JSON Schema (the `schema` of response_format json_schema).
  static Expected<std::shared_ptr<const JsonSchema>> compile(const nlohmann::json& schema);
  static Expected<std::shared_ptr<const JsonSchema>> compile(const nlohmann::ordered_json& schema);
  // response_format json_object: any JSON object.
  static std::shared_ptr<const JsonSchema> any_object();

  uint32_t root() const { return root_; }
  const JsonNode& node(uint32_t id) const { return nodes_[id]; }
  size_t size() const { return nodes_.size(); }
  // Frames needed to finish a value of `id` (min over its leaves), kInfeasible if none fits.
  uint8_t need(uint32_t id) const { return nodes_[id].need; }

 private:
  template <class J>
  friend class SchemaCompiler;
  std::vector<JsonNode> nodes_;
  uint32_t root_ = 0;
};

}  // namespace fennec::engine
