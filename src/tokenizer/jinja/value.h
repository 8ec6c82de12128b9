// The dynamic value of the Jinja interpreter, modelled on the Python objects jinja2 works with:
// Undefined, None, bool, int, float, str (UTF-8), list/tuple, dict (insertion ordered, string
// keys), namespace and callables. Lists and dicts are shared by reference, as in Python.
// str()/repr()/json dumps follow CPython's formatting so rendered text matches jinja2 byte for byte.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace fennec::tokenizer::jinja {

// Raised inside the interpreter for template errors; never escapes the public API.
struct JinjaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Value;
using ValueList = std::vector<Value>;
using KwArgs = std::vector<std::pair<std::string, Value>>;

struct List;
struct Dict;
struct Function;

class Value {
 public:
  enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Function };

  Value() = default;  // Undefined
  static Value undefined(std::string hint = {});
  static Value none();
  Value(bool b);                  // NOLINT
  Value(int64_t i);               // NOLINT
  Value(int i) : Value(static_cast<int64_t>(i)) {}  // NOLINT
  Value(double d);                // NOLINT
  Value(std::string s);           // NOLINT
  Value(const char* s) : Value(std::string(s)) {}  // NOLINT
  static Value list(ValueList items = {}, bool tuple = false);
  static Value dict();
  static Value ns();  // jinja2 namespace(): a mutable attribute bag
  static Value function(std::string name, std::function<Value(ValueList&, KwArgs&)> fn);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_int() const { return kind_ == Kind::Int; }
  bool is_float() const { return kind_ == Kind::Float; }
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float || kind_ == Kind::Bool; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_dict() const { return kind_ == Kind::Dict; }
  bool is_function() const { return kind_ == Kind::Function; }
  bool is_tuple() const;
  bool is_namespace() const;

  bool as_bool() const { return b_; }
  int64_t as_int() const { return kind_ == Kind::Bool ? (b_ ? 1 : 0) : i_; }
  double as_double() const { return kind_ == Kind::Float ? f_ : static_cast<double>(as_int()); }
  const std::string& as_string() const { return s_; }  // also the hint of an Undefined
  List& as_list() const { return *list_; }
  Dict& as_dict() const { return *dict_; }
  Function& as_function() const { return *fn_; }

  bool truthy() const;
  std::string str() const;   // Python str()
  std::string repr() const;  // Python repr()
  const char* type_name() const;  // Python type name, for error messages

 private:
  Kind kind_ = Kind::Undefined;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::string s_;
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<Function> fn_;
};

struct List {
  ValueList items;
  bool tuple = false;
};

struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  std::unordered_map<std::string, size_t> index;
  bool is_namespace = false;

  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value v);
};

struct Function {
  std::string name;
  std::function<Value(ValueList&, KwArgs&)> fn;
};

bool values_equal(const Value& a, const Value& b);
// Python's ordering for numbers, strings and sequences; throws JinjaError otherwise.
int compare_values(const Value& a, const Value& b, const char* op);

// CPython float repr ("1.0", "1e-05", "0.30000000000000004", "inf").
std::string format_float(double d);
std::string repr_string(const std::string& s);

// json.dumps(value, ensure_ascii=False, indent=..., separators=..., sort_keys=...).
// indent: nullptr for none, otherwise the indent text. item_sep/key_sep empty for defaults.
std::string json_dumps(const Value& v, const std::string* indent, const std::string& item_sep,
                       const std::string& key_sep, bool sort_keys);

template <class Json>
Value from_json(const Json& j);

// UTF-8 helpers: strings index and measure by code point, as Python str does.
std::vector<std::string> utf8_chars(const std::string& s);
size_t utf8_length(const std::string& s);
bool is_py_space(uint32_t cp);
uint32_t decode_utf8(const std::string& s, size_t& i);

}  // namespace fennec::tokenizer::jinja
