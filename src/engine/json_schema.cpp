#include "engine/json_schema.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <utility>

namespace fennec::engine {

// ---- LiteralTrie ----

LiteralTrie::LiteralTrie() : nodes_(1) {}

uint32_t LiteralTrie::child(uint32_t node, uint8_t byte) const {
  for (const auto& [b, c] : nodes_[node].children) {
    if (b == byte) return c;
    if (b > byte) break;
  }
  return kNone;
}

void LiteralTrie::insert(std::string_view text, uint32_t value) {
  uint32_t node = 0;
  std::vector<uint32_t> path{0};
  for (const char ch : text) {
    const uint8_t b = static_cast<uint8_t>(ch);
    uint32_t next = child(node, b);
    if (next == kNone) {
      next = static_cast<uint32_t>(nodes_.size());
      nodes_.emplace_back();
      auto& kids = nodes_[node].children;
      kids.insert(std::upper_bound(kids.begin(), kids.end(), std::make_pair(b, 0u),
                                   [](const auto& x, const auto& y) { return x.first < y.first; }),
                  {b, next});
    }
    node = next;
    path.push_back(node);
  }
  if (nodes_[node].value != kNone) return;
  nodes_[node].value = value;
  for (const uint32_t n : path) {
    auto& below = nodes_[n].below;
    below.insert(std::lower_bound(below.begin(), below.end(), value), value);
  }
}

namespace {

using Kind = JsonNode::Kind;

// Nodes every schema has; generic JSON (json_object mode, `{}`, `true`) is built from them.
enum Builtin : uint32_t {
  kAny = 0,    // any JSON value
  kAnyObject,  // any object
  kAnyArray,   // any array
  kAnyString,  // any string
  kAnyNumber,  // any number
  kScalars,    // true, false, null
  kBool,       // true, false
  kNull,       // null
  kBuiltinCount
};

JsonNode literal_node(std::initializer_list<const char*> texts) {
  JsonNode n;
  n.kind = Kind::kLiteral;
  uint32_t i = 0;
  for (const char* t : texts) n.literals.insert(t, i++);
  return n;
}

static_assert(kAnyString == JsonSchema::kAnyStringNode);

void add_builtins(std::vector<JsonNode>& nodes, std::vector<std::string>& where) {
  nodes.assign(kBuiltinCount, JsonNode{});
  nodes[kAny].kind = Kind::kAnyOf;
  nodes[kAny].leaves = {kAnyObject, kAnyArray, kAnyString, kAnyNumber, kScalars};
  nodes[kAnyObject].kind = Kind::kObject;
  nodes[kAnyObject].free_keys = true;
  nodes[kAnyObject].free_values = kAny;
  nodes[kAnyArray].kind = Kind::kArray;
  nodes[kAnyArray].items = kAny;
  nodes[kAnyString].kind = Kind::kString;
  nodes[kAnyNumber].kind = Kind::kNumber;
  nodes[kScalars] = literal_node({"true", "false", "null"});
  nodes[kBool] = literal_node({"true", "false"});
  nodes[kNull] = literal_node({"null"});
  where.assign(kBuiltinCount, "#");
}

// An anyOf takes the least need of its leaves.
void update_any_of_needs(std::vector<JsonNode>& nodes) {
  for (JsonNode& node : nodes) {
    if (node.kind != Kind::kAnyOf) continue;
    uint8_t best = JsonSchema::kInfeasible;
    for (const uint32_t leaf : node.leaves) best = std::min(best, nodes[leaf].need);
    node.need = best;
  }
}

// Flattens anyOf/$ref chains into leaves, computes `need` for every node and checks that the
// root has a value that fits within the nesting limit.
Status finalize(std::vector<JsonNode>& nodes, const std::vector<std::string>& where,
                uint32_t root) {
  const size_t n = nodes.size();
  std::vector<uint32_t> stamp(n, 0);
  uint32_t round = 0;
  std::vector<uint32_t> stack;
  size_t total_work = 0;  // all nodes together: a web of anyOf/$ref must not take long
  for (uint32_t id = 0; id < n; ++id) {
    if (nodes[id].kind != Kind::kAnyOf) {
      nodes[id].leaves = {id};
      continue;
    }
    ++round;
    std::vector<uint32_t> leaves;
    size_t visits = 0;
    stack.assign(nodes[id].leaves.rbegin(), nodes[id].leaves.rend());
    stamp[id] = round;
    while (!stack.empty()) {
      const uint32_t y = stack.back();
      stack.pop_back();
      if (++total_work > 4000000) {
        return make_error("json schema: " + where[id] +
                          ": anyOf/$ref expands through too many schemas");
      }
      if (stamp[y] == round) continue;
      stamp[y] = round;
      if (++visits > 4096) {
        return make_error("json schema: " + where[id] +
                          ": anyOf/$ref expands through too many schemas");
      }
      if (nodes[y].kind == Kind::kAnyOf) {
        stack.insert(stack.end(), nodes[y].leaves.rbegin(), nodes[y].leaves.rend());
      } else {
        leaves.push_back(y);
        if (leaves.size() > JsonSchema::kMaxAlternatives) {
          return make_error("json schema: " + where[id] + ": more than " +
                            std::to_string(JsonSchema::kMaxAlternatives) +
                            " alternatives after expanding anyOf/oneOf/$ref");
        }
      }
    }
    nodes[id].leaves = std::move(leaves);
  }

  // Level by level: a node finishes within d frames when its required contents finish within
  // d - 1 (anyOf needs are refreshed after each level, so they are exact for d - 1).
  for (JsonNode& node : nodes) node.need = JsonSchema::kInfeasible;
  for (int d = 1; d <= JsonSchema::kMaxFrames; ++d) {
    const uint8_t inner = static_cast<uint8_t>(d - 1);
    for (JsonNode& node : nodes) {
      if (node.kind == Kind::kAnyOf || node.need != JsonSchema::kInfeasible) continue;
      // A container takes one level more than its contents, and reserves a level for them
      // even when empty: objects and arrays nest at most kMaxNesting deep.
      bool ok = d >= 2 || (node.kind != Kind::kObject && node.kind != Kind::kArray);
      if (!ok) continue;
      if (node.kind == Kind::kObject && !node.free_keys) {
        for (const JsonProperty& p : node.properties) {
          if (p.required && nodes[p.node].need > inner) {
            ok = false;
            break;
          }
        }
      } else if (node.kind == Kind::kArray) {
        ok = node.min_items == 0 || nodes[node.items].need <= inner;
      }
      if (ok) node.need = static_cast<uint8_t>(d);
    }
    update_any_of_needs(nodes);
  }
  if (nodes[root].need == JsonSchema::kInfeasible) {
    return make_error("json schema: " + where[root] + ": no value satisfies the schema within " +
                      std::to_string(JsonSchema::kMaxNesting) +
                      " levels of nesting (a recursive $ref with no way out?)");
  }
  return {};
}

std::string child_pointer(const std::string& ptr, std::string_view token) {
  std::string out = ptr + "/";
  for (const char c : token) {
    if (c == '~')
      out += "~0";
    else if (c == '/')
      out += "~1";
    else
      out += c;
  }
  return out;
}

// Keywords that constrain values and that this compiler enforces.
bool is_supported_constraint(std::string_view k) {
  static const std::set<std::string_view> kNames = {"type",
                                                    "properties",
                                                    "required",
                                                    "additionalProperties",
                                                    "items",
                                                    "minItems",
                                                    "maxItems",
                                                    "minLength",
                                                    "maxLength",
                                                    "enum",
                                                    "const",
                                                    "minimum",
                                                    "maximum",
                                                    "exclusiveMinimum",
                                                    "exclusiveMaximum",
                                                    "anyOf",
                                                    "oneOf",
                                                    "allOf",
                                                    "$ref",
                                                    "minProperties",
                                                    "maxProperties",
                                                    "uniqueItems"};
  return kNames.count(k) > 0;
}

// Keywords that constrain values in ways generation cannot follow.
const char* unsupported_reason(std::string_view k) {
  static const std::map<std::string_view, const char*> kReasons = {
      {"pattern", "regular expressions are not supported"},
      {"patternProperties", "pattern-matched property names are not supported"},
      {"not", "'not' is not supported"},
      {"if", "conditional schemas (if/then/else) are not supported"},
      {"then", "conditional schemas (if/then/else) are not supported"},
      {"else", "conditional schemas (if/then/else) are not supported"},
      {"contains", "'contains' is not supported"},
      {"minContains", "'minContains' is not supported"},
      {"maxContains", "'maxContains' is not supported"},
      {"prefixItems", "tuple arrays (prefixItems) are not supported"},
      {"additionalItems", "tuple arrays (additionalItems) are not supported"},
      {"multipleOf", "'multipleOf' is not supported"},
      {"propertyNames", "'propertyNames' is not supported"},
      {"dependentRequired", "'dependentRequired' is not supported"},
      {"dependentSchemas", "'dependentSchemas' is not supported"},
      {"dependencies", "'dependencies' is not supported"},
      {"unevaluatedProperties", "'unevaluatedProperties' is not supported"},
      {"unevaluatedItems", "'unevaluatedItems' is not supported"},
      {"$dynamicRef", "'$dynamicRef' is not supported"},
      {"$recursiveRef", "'$recursiveRef' is not supported"},
  };
  const auto it = kReasons.find(k);
  return it == kReasons.end() ? nullptr : it->second;
}

// Code points in valid UTF-8.
size_t utf8_length(std::string_view s) {
  size_t n = 0;
  for (const char c : s) n += (static_cast<uint8_t>(c) & 0xC0) != 0x80;
  return n;
}

const char* const kTypeNames[] = {"object",  "array",   "string", "number",
                                  "integer", "boolean", "null"};

}  // namespace

template <class J>
class SchemaCompiler {
 public:
  explicit SchemaCompiler(const J& doc) : doc_(doc) { add_builtins(nodes_, where_); }

  Expected<std::shared_ptr<const JsonSchema>> run() {
    if (is_false(doc_)) return fail("#", "the schema is `false`: no value is valid");
    auto root = compile(doc_, "#", 0);
    if (!root) return root.error();
    if (auto st = finalize(nodes_, where_, *root); !st) return st.error();
    auto out = std::make_shared<JsonSchema>();
    out->nodes_ = std::move(nodes_);
    out->root_ = *root;
    return std::shared_ptr<const JsonSchema>(std::move(out));
  }

 private:
  using Number = std::optional<double>;

  static Error fail(const std::string& ptr, const std::string& what) {
    return make_error("json schema: " + ptr + ": " + what);
  }
  static bool is_false(const J& s) { return s.is_boolean() && !s.template get<bool>(); }

  Expected<uint32_t> add(JsonNode node, const std::string& ptr) {
    if (nodes_.size() >= JsonSchema::kMaxNodes) {
      return fail(ptr, "schema too large (more than " + std::to_string(JsonSchema::kMaxNodes) +
                           " subschemas)");
    }
    nodes_.push_back(std::move(node));
    where_.push_back(ptr);
    return static_cast<uint32_t>(nodes_.size() - 1);
  }

  Status count_literal(size_t bytes, const std::string& ptr) {
    literal_bytes_ += bytes;
    if (literal_bytes_ > JsonSchema::kMaxLiteralBytes) {
      return fail(ptr, "enum values and property names exceed " +
                           std::to_string(JsonSchema::kMaxLiteralBytes) + " bytes");
    }
    return {};
  }

  // Non-negative integer keyword (minItems, maxLength, ...); nullopt when absent.
  Expected<std::optional<uint32_t>> read_count(const J& s, const char* key,
                                               const std::string& ptr) {
    const auto it = s.find(key);
    if (it == s.end()) return std::optional<uint32_t>();
    const std::string at = child_pointer(ptr, key);
    if (!it->is_number()) return fail(at, "must be a non-negative integer");
    const double v = it->template get<double>();
    if (!(v >= 0) || v != std::floor(v)) return fail(at, "must be a non-negative integer");
    return std::optional<uint32_t>(v >= 4294967295.0 ? UINT32_MAX : static_cast<uint32_t>(v));
  }

  Expected<Number> read_number(const J& s, const char* key, const std::string& ptr) {
    const auto it = s.find(key);
    if (it == s.end()) return Number();
    // Draft 4 spelled exclusive bounds as booleans beside minimum/maximum: ignored here.
    if (it->is_boolean()) return Number();
    if (!it->is_number()) return fail(child_pointer(ptr, key), "must be a number");
    return Number(it->template get<double>());
  }

  static bool has_key(const J& s, std::string_view key) {
    return s.find(std::string(key)) != s.end();
  }

  // Constraining keywords beside `key` (for $ref, anyOf, oneOf, allOf, which must stand alone).
  static std::optional<std::string> sibling_constraint(const J& s, std::string_view key) {
    for (auto it = s.begin(); it != s.end(); ++it) {
      if (it.key() != key && is_supported_constraint(it.key())) return it.key();
    }
    return std::nullopt;
  }

  Expected<uint32_t> compile(const J& s, const std::string& ptr, int depth) {
    if (depth > JsonSchema::kMaxSchemaDepth) {
      return fail(ptr, "schema nests deeper than " + std::to_string(JsonSchema::kMaxSchemaDepth) +
                           " levels");
    }
    if (s.is_boolean()) {
      if (s.template get<bool>()) return static_cast<uint32_t>(kAny);
      return fail(ptr, "the schema is `false`: no value is valid here");
    }
    if (!s.is_object()) return fail(ptr, "a schema must be an object or a boolean");
    for (auto it = s.begin(); it != s.end(); ++it) {
      if (const char* why = unsupported_reason(it.key())) {
        return fail(child_pointer(ptr, it.key()), why);
      }
    }
    for (const char* key : {"$ref", "anyOf", "oneOf", "allOf"}) {
      if (!has_key(s, key)) continue;
      if (auto other = sibling_constraint(s, key)) {
        return fail(child_pointer(ptr, *other),
                    std::string("keywords beside '") + key +
                        "' are not supported; move them into the referenced or alternative "
                        "schemas");
      }
    }
    if (const auto it = s.find("$ref"); it != s.end()) return compile_ref(*it, ptr, depth);
    if (const auto it = s.find("allOf"); it != s.end()) {
      const std::string at = child_pointer(ptr, "allOf");
      if (!it->is_array() || it->size() != 1) {
        return fail(at, "only 'allOf' with exactly one schema is supported");
      }
      return compile((*it)[0], child_pointer(at, "0"), depth + 1);
    }
    for (const char* key : {"anyOf", "oneOf"}) {
      if (const auto it = s.find(key); it != s.end())
        return compile_any_of(*it, child_pointer(ptr, key), depth);
    }

    auto types = read_types(s, ptr);
    if (!types) return types.error();
    if (has_key(s, "enum") || has_key(s, "const")) return compile_literals(s, *types, ptr);
    std::vector<std::string>& names = *types;
    if (names.empty()) {
      // No `type`: infer it from the keywords present; none at all means any value.
      if (has_key(s, "properties") || has_key(s, "required") ||
          has_key(s, "additionalProperties") || has_key(s, "minProperties") ||
          has_key(s, "maxProperties")) {
        names = {"object"};
      } else if (has_key(s, "items") || has_key(s, "minItems") || has_key(s, "maxItems")) {
        names = {"array"};
      } else if (has_key(s, "minLength") || has_key(s, "maxLength")) {
        names = {"string"};
      } else if (has_key(s, "minimum") || has_key(s, "maximum") || has_key(s, "exclusiveMinimum") ||
                 has_key(s, "exclusiveMaximum")) {
        names = {"number"};
      } else {
        return static_cast<uint32_t>(kAny);
      }
    }
    const bool has_number = std::find(names.begin(), names.end(), "number") != names.end();
    std::vector<uint32_t> options;
    for (const std::string& t : names) {
      Expected<uint32_t> id = static_cast<uint32_t>(kNull);
      if (t == "object")
        id = compile_object(s, ptr, depth);
      else if (t == "array")
        id = compile_array(s, ptr, depth);
      else if (t == "string")
        id = compile_string(s, ptr);
      else if (t == "number")
        id = compile_number(s, ptr, false);
      else if (t == "integer") {
        if (has_number) continue;  // every integer is a number
        id = compile_number(s, ptr, true);
      } else if (t == "boolean")
        id = static_cast<uint32_t>(kBool);
      if (!id) return id.error();
      if (std::find(options.begin(), options.end(), *id) == options.end()) options.push_back(*id);
    }
    if (options.size() == 1) return options[0];
    JsonNode alt;
    alt.kind = Kind::kAnyOf;
    alt.leaves = std::move(options);
    return add(std::move(alt), ptr);
  }

  // `type`: a name or a list of names, validated; empty when absent.
  Expected<std::vector<std::string>> read_types(const J& s, const std::string& ptr) {
    std::vector<std::string> out;
    const auto it = s.find("type");
    if (it == s.end()) return out;
    const std::string at = child_pointer(ptr, "type");
    const auto check = [&](const J& v, const std::string& where) -> Status {
      if (!v.is_string()) return fail(where, "a type must be a string");
      const std::string name = v.template get<std::string>();
      for (const char* known : kTypeNames) {
        if (name == known) {
          if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
          return {};
        }
      }
      return fail(where, "unknown type \"" + name +
                             "\" (expected object, array, string, number, integer, boolean or "
                             "null)");
    };
    if (it->is_array()) {
      if (it->empty()) return fail(at, "the list of types is empty");
      for (size_t i = 0; i < it->size(); ++i) {
        if (auto st = check((*it)[i], child_pointer(at, std::to_string(i))); !st) return st.error();
      }
    } else if (auto st = check(*it, at); !st) {
      return st.error();
    }
    return out;
  }

  Expected<uint32_t> compile_ref(const J& ref, const std::string& ptr, int depth) {
    const std::string at = child_pointer(ptr, "$ref");
    if (!ref.is_string()) return fail(at, "'$ref' must be a string");
    const std::string target = ref.template get<std::string>();
    if (target.empty() || target[0] != '#') {
      return fail(at,
                  "only local references ('#/$defs/...') are supported, got \"" + target + "\"");
    }
    if (const auto it = refs_.find(target); it != refs_.end()) return it->second;
    const J* resolved = nullptr;
    try {
      const typename J::json_pointer jp(target.substr(1));
      if (doc_.contains(jp)) resolved = &doc_.at(jp);
    } catch (const std::exception&) {
      resolved = nullptr;
    }
    if (!resolved) return fail(at, "'$ref' \"" + target + "\" does not resolve within the schema");
    if (is_false(*resolved)) return fail(at, "'$ref' \"" + target + "\" is the schema `false`");
    // Reserve the alias first so that recursion through this reference finds it.
    JsonNode alias;
    alias.kind = Kind::kAnyOf;
    auto id = add(std::move(alias), ptr);
    if (!id) return id.error();
    refs_.emplace(target, *id);
    auto body = compile(*resolved, target, depth + 1);
    if (!body) return body.error();
    nodes_[*id].leaves = {*body};
    return id;
  }

  Expected<uint32_t> compile_any_of(const J& list, const std::string& at, int depth) {
    if (!list.is_array() || list.empty()) return fail(at, "must be a non-empty array of schemas");
    JsonNode alt;
    alt.kind = Kind::kAnyOf;
    for (size_t i = 0; i < list.size(); ++i) {
      if (is_false(list[i])) continue;  // matches nothing: not an alternative
      auto id = compile(list[i], child_pointer(at, std::to_string(i)), depth + 1);
      if (!id) return id.error();
      if (std::find(alt.leaves.begin(), alt.leaves.end(), *id) != alt.leaves.end()) continue;
      if (alt.leaves.size() >= JsonSchema::kMaxAlternatives) {
        return fail(at,
                    "more than " + std::to_string(JsonSchema::kMaxAlternatives) + " alternatives");
      }
      alt.leaves.push_back(*id);
    }
    if (alt.leaves.empty()) return fail(at, "every alternative is `false`");
    return add(std::move(alt), at);
  }

  static bool type_matches(const J& v, const std::vector<std::string>& types) {
    if (types.empty()) return true;
    for (const std::string& t : types) {
      if ((t == "object" && v.is_object()) || (t == "array" && v.is_array()) ||
          (t == "string" && v.is_string()) || (t == "number" && v.is_number()) ||
          (t == "boolean" && v.is_boolean()) || (t == "null" && v.is_null())) {
        return true;
      }
      if (t == "integer" && v.is_number()) {
        const double d = v.template get<double>();
        if (v.is_number_integer() || d == std::floor(d)) return true;
      }
    }
    return false;
  }

  // Nesting depth of a value, exact up to limit; above it, some number > limit.
  static int depth_of(const J& v, int limit) {
    if (!v.is_object() && !v.is_array()) return 0;
    if (limit <= 0) return 1;
    int d = 0;
    for (const auto& child : v) {
      d = std::max(d, depth_of(child, limit - 1));
      if (d >= limit) break;
    }
    return d + 1;
  }

  // enum / const: the allowed values, filtered by the other keywords that apply to them.
  Expected<uint32_t> compile_literals(const J& s, const std::vector<std::string>& types,
                                      const std::string& ptr) {
    std::vector<const J*> values;
    const auto c = s.find("const");
    const auto e = s.find("enum");
    const std::string at = child_pointer(ptr, e != s.end() ? "enum" : "const");
    // Deeply nested values would make comparison and serialization recurse without bound.
    const auto too_deep = [](const J& v) {
      return depth_of(v, JsonSchema::kMaxSchemaDepth) > JsonSchema::kMaxSchemaDepth;
    };
    const std::string deep =
        "a value nests deeper than " + std::to_string(JsonSchema::kMaxSchemaDepth) + " levels";
    if (c != s.end() && too_deep(*c)) return fail(child_pointer(ptr, "const"), deep);
    if (e != s.end()) {
      if (!e->is_array() || e->empty()) return fail(at, "'enum' must be a non-empty array");
      for (const auto& v : *e) {
        if (too_deep(v)) return fail(at, deep);
        if (c == s.end() || v == *c) values.push_back(&v);
      }
      if (values.empty()) return fail(at, "'const' is not one of the 'enum' values");
    } else {
      values.push_back(&*c);
    }
    auto min_len = read_count(s, "minLength", ptr);
    if (!min_len) return min_len.error();
    auto max_len = read_count(s, "maxLength", ptr);
    if (!max_len) return max_len.error();
    Number lo, hi, xlo, xhi;
    for (auto [key, out] :
         {std::pair{"minimum", &lo}, std::pair{"maximum", &hi}, std::pair{"exclusiveMinimum", &xlo},
          std::pair{"exclusiveMaximum", &xhi}}) {
      auto v = read_number(s, key, ptr);
      if (!v) return v.error();
      *out = *v;
    }
    JsonNode node;
    node.kind = Kind::kLiteral;
    uint32_t kept = 0;
    for (const J* v : values) {
      if (!type_matches(*v, types)) continue;
      if (v->is_string()) {
        const size_t len = utf8_length(v->template get_ref<const std::string&>());
        if ((*min_len && len < **min_len) || (*max_len && len > **max_len)) continue;
      }
      if (v->is_number()) {
        const double d = v->template get<double>();
        if ((lo && d < *lo) || (hi && d > *hi) || (xlo && d <= *xlo) || (xhi && d >= *xhi))
          continue;
      }
      std::string text;
      try {
        text = v->dump();
      } catch (const std::exception& ex) {
        return fail(at, std::string("a value cannot be serialized: ") + ex.what());
      }
      if (auto st = count_literal(text.size(), at); !st) return st.error();
      node.literals.insert(text, kept++);
    }
    if (kept == 0) {
      return fail(at, "no value satisfies the schema's other keywords (type, lengths, bounds)");
    }
    return add(std::move(node), ptr);
  }

  Expected<uint32_t> compile_object(const J& s, const std::string& ptr, int depth) {
    JsonNode node;
    node.kind = Kind::kObject;
    // additionalProperties: absent/true -> any value; false -> none; a schema -> that schema.
    bool additional_allowed = true;
    uint32_t additional = kAny;
    if (const auto it = s.find("additionalProperties"); it != s.end()) {
      if (is_false(*it)) {
        additional_allowed = false;
      } else {
        auto id = compile(*it, child_pointer(ptr, "additionalProperties"), depth + 1);
        if (!id) return id.error();
        additional = *id;
      }
    }
    std::vector<std::string> required;
    std::set<std::string> required_set;
    if (const auto it = s.find("required"); it != s.end()) {
      const std::string at = child_pointer(ptr, "required");
      if (!it->is_array()) return fail(at, "'required' must be an array of property names");
      for (size_t i = 0; i < it->size(); ++i) {
        if (!(*it)[i].is_string()) {
          return fail(child_pointer(at, std::to_string(i)), "a property name must be a string");
        }
        std::string name = (*it)[i].template get<std::string>();
        if (required_set.insert(name).second) required.push_back(std::move(name));
      }
    }
    const auto is_required = [&](const std::string& name) { return required_set.count(name) > 0; };
    const auto too_many = [&](const std::string& at) {
      return fail(at, "more than " + std::to_string(JsonSchema::kMaxNodes) + " properties");
    };
    const std::string props_at = child_pointer(ptr, "properties");
    const auto props = s.find("properties");
    if (props != s.end() && !props->is_object()) {
      return fail(props_at, "'properties' must be an object");
    }
    std::set<std::string> declared;
    if (props != s.end()) {
      for (auto it = props->begin(); it != props->end(); ++it) {
        const std::string at = child_pointer(props_at, it.key());
        if (declared.size() >= JsonSchema::kMaxNodes) return too_many(props_at);
        declared.insert(it.key());
        if (is_false(it.value())) {
          if (is_required(it.key())) return fail(at, "a required property has the schema `false`");
          continue;  // may never appear: never emitted
        }
        auto id = compile(it.value(), at, depth + 1);
        if (!id) return id.error();
        node.properties.push_back({it.key(), *id, is_required(it.key())});
      }
    }
    for (size_t i = 0; i < required.size(); ++i) {
      if (declared.count(required[i])) continue;
      if (node.properties.size() >= JsonSchema::kMaxNodes) return too_many(ptr);
      if (!additional_allowed) {
        return fail(child_pointer(child_pointer(ptr, "required"), std::to_string(i)),
                    "required property \"" + required[i] +
                        "\" is not in 'properties' and additionalProperties is false");
      }
      node.properties.push_back({required[i], additional, true});
    }
    if (node.properties.empty() && additional_allowed) {
      node.free_keys = true;
      node.free_values = additional;
    }
    for (size_t i = 0; i < node.properties.size(); ++i) {
      std::string key;
      try {
        key = J(node.properties[i].name).dump();
      } catch (const std::exception& ex) {
        return fail(props_at, std::string("a property name cannot be serialized: ") + ex.what());
      }
      if (auto st = count_literal(key.size(), props_at); !st) return st.error();
      node.keys.insert(key, static_cast<uint32_t>(i));
    }
    const uint32_t n = static_cast<uint32_t>(node.properties.size());
    node.next_required.assign(n + 1, n);
    for (uint32_t i = n; i-- > 0;) {
      node.next_required[i] = node.properties[i].required ? i : node.next_required[i + 1];
    }
    // min/maxProperties only where what is emitted satisfies them anyway.
    auto min_props = read_count(s, "minProperties", ptr);
    if (!min_props) return min_props.error();
    auto max_props = read_count(s, "maxProperties", ptr);
    if (!max_props) return max_props.error();
    if (*min_props && **min_props > required.size()) {
      return fail(child_pointer(ptr, "minProperties"),
                  "'minProperties' above the number of required properties is not supported");
    }
    if (*max_props && (node.free_keys || **max_props < n)) {
      return fail(child_pointer(ptr, "maxProperties"),
                  "'maxProperties' below the number of declared properties is not supported");
    }
    return add(std::move(node), ptr);
  }

  Expected<uint32_t> compile_array(const J& s, const std::string& ptr, int depth) {
    JsonNode node;
    node.kind = Kind::kArray;
    node.items = kAny;
    auto min_items = read_count(s, "minItems", ptr);
    if (!min_items) return min_items.error();
    auto max_items = read_count(s, "maxItems", ptr);
    if (!max_items) return max_items.error();
    node.min_items = min_items->value_or(0);
    node.max_items = max_items->value_or(UINT32_MAX);
    if (node.min_items > node.max_items) {
      return fail(child_pointer(ptr, "minItems"), "'minItems' is greater than 'maxItems'");
    }
    if (const auto it = s.find("items"); it != s.end()) {
      const std::string at = child_pointer(ptr, "items");
      if (it->is_array())
        return fail(at, "tuple-form 'items' (an array of schemas) is not supported");
      if (is_false(*it)) {
        if (node.min_items > 0) return fail(at, "'items' is `false` but 'minItems' is above 0");
        node.max_items = 0;
      } else {
        auto id = compile(*it, at, depth + 1);
        if (!id) return id.error();
        node.items = *id;
      }
    }
    if (const auto it = s.find("uniqueItems"); it != s.end()) {
      if (!it->is_boolean()) return fail(child_pointer(ptr, "uniqueItems"), "must be a boolean");
      if (it->template get<bool>() && node.max_items > 1) {
        return fail(child_pointer(ptr, "uniqueItems"), "'uniqueItems' is not supported");
      }
    }
    if (node.items == kAny && node.min_items == 0 && node.max_items == UINT32_MAX) {
      return static_cast<uint32_t>(kAnyArray);
    }
    return add(std::move(node), ptr);
  }

  Expected<uint32_t> compile_string(const J& s, const std::string& ptr) {
    auto min_len = read_count(s, "minLength", ptr);
    if (!min_len) return min_len.error();
    auto max_len = read_count(s, "maxLength", ptr);
    if (!max_len) return max_len.error();
    if (!*min_len && !*max_len) return static_cast<uint32_t>(kAnyString);
    JsonNode node;
    node.kind = Kind::kString;
    node.min_length = min_len->value_or(0);
    node.max_length = max_len->value_or(UINT32_MAX);
    if (node.min_length > node.max_length) {
      return fail(child_pointer(ptr, "minLength"), "'minLength' is greater than 'maxLength'");
    }
    return add(std::move(node), ptr);
  }

  Expected<uint32_t> compile_number(const J& s, const std::string& ptr, bool integer) {
    Number lo, hi, xlo, xhi;
    for (auto [key, out] :
         {std::pair{"minimum", &lo}, std::pair{"maximum", &hi}, std::pair{"exclusiveMinimum", &xlo},
          std::pair{"exclusiveMaximum", &xhi}}) {
      auto v = read_number(s, key, ptr);
      if (!v) return v.error();
      *out = *v;
    }
    const double low = std::max(lo.value_or(-INFINITY), xlo.value_or(-INFINITY));
    const double high = std::min(hi.value_or(INFINITY), xhi.value_or(INFINITY));
    const bool low_open = xlo && *xlo >= lo.value_or(-INFINITY);
    const bool high_open = xhi && *xhi <= hi.value_or(INFINITY);
    if (low > high || (low == high && (low_open || high_open))) {
      return fail(child_pointer(ptr, lo ? "minimum" : "exclusiveMinimum"),
                  "the lower bound is above the upper bound");
    }
    if (integer && std::fabs(low) < 1e15 && std::fabs(high) < 1e15 && high - low <= 1024) {
      // A small integer range is enforced exactly: it becomes the list of its values.
      const double first = low_open ? std::floor(low) + 1 : std::ceil(low);
      const double last = high_open ? std::ceil(high) - 1 : std::floor(high);
      if (first > last) {
        return fail(child_pointer(ptr, lo ? "minimum" : "exclusiveMinimum"),
                    "no integer lies between the bounds");
      }
      JsonNode node;
      node.kind = Kind::kLiteral;
      uint32_t i = 0;
      for (double v = first; v <= last; v += 1) {
        const std::string text = std::to_string(static_cast<long long>(v));
        if (auto st = count_literal(text.size(), ptr); !st) return st.error();
        node.literals.insert(text, i++);
      }
      return add(std::move(node), ptr);
    }
    if (!integer && !lo && !xlo && !hi && !xhi) return static_cast<uint32_t>(kAnyNumber);
    JsonNode node;
    node.kind = Kind::kNumber;
    node.integer = integer;
    node.non_negative = low >= 0;
    return add(std::move(node), ptr);
  }

  const J& doc_;
  std::vector<JsonNode> nodes_;
  std::vector<std::string> where_;  // JSON pointer of each node, for errors
  std::map<std::string, uint32_t> refs_;
  size_t literal_bytes_ = 0;
};

Expected<std::shared_ptr<const JsonSchema>> JsonSchema::compile(const nlohmann::json& schema) {
  return SchemaCompiler<nlohmann::json>(schema).run();
}

Expected<std::shared_ptr<const JsonSchema>> JsonSchema::compile(
    const nlohmann::ordered_json& schema) {
  return SchemaCompiler<nlohmann::ordered_json>(schema).run();
}

std::shared_ptr<const JsonSchema> JsonSchema::any_object() {
  static const std::shared_ptr<const JsonSchema> kSchema = [] {
    auto s = std::make_shared<JsonSchema>();
    std::vector<std::string> where;
    add_builtins(s->nodes_, where);
    s->root_ = kAnyObject;
    (void)finalize(s->nodes_, where, s->root_);
    return s;
  }();
  return kSchema;
}

}  // namespace fennec::engine
