#include "tokenizer/jinja/interpreter.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <memory>
#include <unordered_map>

namespace fennec::tokenizer::jinja {
namespace {

enum class Flow { Normal, Break, Continue };
using Frame = std::unordered_map<std::string, Value>;
using Scopes = std::vector<std::shared_ptr<Frame>>;

std::string ascii_lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
std::string ascii_upper(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

std::string py_strip(const std::string& s, const Value& chars, bool left, bool right) {
  auto chs = utf8_chars(s);
  std::vector<std::string> strip_set;
  bool custom = chars.is_string();
  if (custom) strip_set = utf8_chars(chars.as_string());
  auto strip_me = [&](const std::string& ch) {
    if (custom) return std::find(strip_set.begin(), strip_set.end(), ch) != strip_set.end();
    size_t i = 0;
    return is_py_space(decode_utf8(ch, i));
  };
  size_t b = 0, e = chs.size();
  if (left) while (b < e && strip_me(chs[b])) ++b;
  if (right) while (e > b && strip_me(chs[e - 1])) --e;
  std::string out;
  for (size_t k = b; k < e; ++k) out += chs[k];
  return out;
}

std::string py_capitalize(const std::string& s) {
  std::string out = ascii_lower(s);
  if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
  return out;
}

// Python str.title(): a letter after a non-letter is upper-cased, other letters lower-cased.
std::string py_title(const std::string& s) {
  std::string out = s;
  bool prev_letter = false;
  for (auto& c : out) {
    auto u = static_cast<unsigned char>(c);
    if (std::isalpha(u)) {
      c = static_cast<char>(prev_letter ? std::tolower(u) : std::toupper(u));
      prev_letter = true;
    } else {
      prev_letter = u >= 0x80;
    }
  }
  return out;
}

std::vector<std::string> py_split(const std::string& s, const Value& sep, int64_t maxsplit) {
  std::vector<std::string> out;
  if (sep.is_none() || sep.is_undefined()) {
    size_t i = 0;
    auto is_ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
    while (true) {
      while (i < s.size() && is_ws(s[i])) ++i;
      if (i >= s.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
        size_t e = s.size();
        while (e > i && is_ws(s[e - 1])) --e;
        out.push_back(s.substr(i, e - i));
        break;
      }
      size_t j = i;
      while (j < s.size() && !is_ws(s[j])) ++j;
      out.push_back(s.substr(i, j - i));
      i = j;
    }
    return out;
  }
  const std::string& d = sep.as_string();
  if (d.empty()) throw JinjaError("empty separator");
  size_t i = 0;
  while (true) {
    size_t j = s.find(d, i);
    if (j == std::string::npos || (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit)) {
      out.push_back(s.substr(i));
      break;
    }
    out.push_back(s.substr(i, j - i));
    i = j + d.size();
  }
  return out;
}

std::string py_replace(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  std::string out;
  if (from.empty()) {
    auto chs = utf8_chars(s);
    int64_t n = 0;
    for (size_t k = 0; k <= chs.size(); ++k) {
      if (count < 0 || n < count) {
        out += to;
        ++n;
      }
      if (k < chs.size()) out += chs[k];
    }
    return out;
  }
  size_t i = 0;
  int64_t n = 0;
  while (true) {
    size_t j = s.find(from, i);
    if (j == std::string::npos || (count >= 0 && n >= count)) break;
    out.append(s, i, j - i);
    out += to;
    i = j + from.size();
    ++n;
  }
  out.append(s, i, std::string::npos);
  return out;
}

std::vector<std::string> py_splitlines(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0, start = 0;
  while (i < s.size()) {
    if (s[i] == '\n' || s[i] == '\r') {
      out.push_back(s.substr(start, i - start));
      if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
      start = ++i;
    } else {
      ++i;
    }
  }
  if (start < s.size()) out.push_back(s.substr(start));
  return out;
}

// Python slice semantics over n elements.
std::vector<int64_t> slice_indices(int64_t n, const Value& start, const Value& stop, const Value& step) {
  int64_t st = step.is_none() || step.is_undefined() ? 1 : step.as_int();
  if (st == 0) throw JinjaError("slice step cannot be zero");
  auto norm = [&](const Value& v, int64_t def) {
    if (v.is_none() || v.is_undefined()) return def;
    int64_t x = v.as_int();
    if (x < 0) x += n;
    if (st > 0) return std::clamp<int64_t>(x, 0, n);
    return std::clamp<int64_t>(x, -1, n - 1);
  };
  int64_t b = norm(start, st > 0 ? 0 : n - 1);
  int64_t e = norm(stop, st > 0 ? n : -1);
  std::vector<int64_t> idx;
  if (st > 0)
    for (int64_t k = b; k < e; k += st) idx.push_back(k);
  else
    for (int64_t k = b; k > e; k += st) idx.push_back(k);
  return idx;
}

class Renderer {
 public:
  Renderer(const Value& context, const RenderLimits& limits) : limits_(limits) {
    auto globals = new_frame();
    install_globals(*globals);
    scopes_.push_back(globals);
    auto vars = new_frame();
    for (const auto& [k, v] : context.as_dict().items) (*vars)[k] = v;
    scopes_.push_back(vars);
  }

  // A macro's closure holds the scopes it was defined in, and those scopes hold the macro: a
  // reference cycle. Every frame this render made is emptied here, which breaks the cycles.
  ~Renderer() {
    for (auto& w : frames_)
      if (auto f = w.lock()) f->clear();
  }
  Renderer(const Renderer&) = delete;
  Renderer& operator=(const Renderer&) = delete;

  std::string run(const Body& body) {
    std::string out;
    exec_body(body, out);
    return out;
  }

 private:
  RenderLimits limits_;
  std::vector<std::weak_ptr<Frame>> frames_;  // every frame made, for the destructor
  Scopes scopes_;

  size_t prune_at_ = 1024;

  std::shared_ptr<Frame> new_frame() {
    if (frames_.size() >= prune_at_) {  // loops make many short-lived frames: forget dead ones
      std::erase_if(frames_, [](const std::weak_ptr<Frame>& w) { return w.expired(); });
      prune_at_ = std::max<size_t>(1024, frames_.size() * 2);
    }
    auto f = std::make_shared<Frame>();
    frames_.push_back(f);
    return f;
  }
  size_t iterations_ = 0;
  int call_depth_ = 0;

  // ---------------- scopes ----------------
  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = (*it)->find(name);
      if (f != (*it)->end()) return f->second;
    }
    return Value::undefined("'" + name + "' is undefined");
  }
  void assign(const std::string& name, Value v) { (*scopes_.back())[name] = std::move(v); }

  void check_size(size_t n) const {
    if (n > limits_.max_output_bytes)
      throw JinjaError("template output exceeds the limit of " + std::to_string(limits_.max_output_bytes) + " bytes");
  }
  void append(std::string& out, const std::string& s) const {
    check_size(out.size() + s.size());
    out += s;
  }

  // ---------------- statements ----------------
  Flow exec_body(const Body& body, std::string& out) {
    for (const auto& s : body) {
      Flow f = exec(*s, out);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow exec(const Stmt& s, std::string& out) {
    switch (s.kind) {
      case Stmt::Kind::Text: append(out, s.text); return Flow::Normal;
      case Stmt::Kind::Print: {
        Value v = eval(*s.expr);
        append(out, v.str());
        return Flow::Normal;
      }
      case Stmt::Kind::If:
        for (const auto& [cond, body] : s.branches)
          if (eval(*cond).truthy()) return exec_body(body, out);
        return exec_body(s.else_body, out);
      case Stmt::Kind::For: return exec_for(s, out);
      case Stmt::Kind::Set: {
        Value v = eval(*s.expr);
        if (!s.target_attr.empty()) {
          Value target = lookup(s.targets[0]);
          if (!target.is_namespace()) throw JinjaError("cannot assign attribute on non-namespace object");
          if (!s.target_attr.empty() && s.target_attr[0] == '_')
            throw JinjaError("Chat templates cannot store underscore-prefixed attributes on a namespace");
          target.as_dict().set(s.target_attr, v);
        } else if (s.targets.size() == 1) {
          assign(s.targets[0], v);
        } else {
          unpack_assign(s.targets, v);
        }
        return Flow::Normal;
      }
      case Stmt::Kind::SetBlock: {
        std::string inner;
        exec_body(s.body, inner);
        Value v(inner);
        for (const auto& f : s.filters) v = apply_filter_node(*f, v);
        assign(s.targets[0], v);
        return Flow::Normal;
      }
      case Stmt::Kind::FilterBlock: {
        std::string inner;
        exec_body(s.body, inner);
        Value v(inner);
        for (const auto& f : s.filters) v = apply_filter_node(*f, v);
        append(out, v.str());
        return Flow::Normal;
      }
      case Stmt::Kind::Macro: assign(s.name, make_macro(s, nullptr)); return Flow::Normal;
      case Stmt::Kind::CallBlock: {
        Value caller = make_macro(s, nullptr, "caller");
        const Expr& call = *s.expr;
        Value fn = eval(*call.args[0]);
        ValueList args;
        KwArgs kwargs;
        for (size_t k = 1; k < call.args.size(); ++k) args.push_back(eval(*call.args[k]));
        for (const auto& [n, e] : call.kwargs) kwargs.emplace_back(n, eval(*e));
        kwargs.emplace_back("caller", caller);
        append(out, call_value(fn, args, kwargs).str());
        return Flow::Normal;
      }
      case Stmt::Kind::Break: return Flow::Break;
      case Stmt::Kind::Continue: return Flow::Continue;
      case Stmt::Kind::Scope: return exec_body(s.body, out);
    }
    return Flow::Normal;
  }

  void unpack_assign(const std::vector<std::string>& targets, const Value& v) {
    ValueList items = iterate(v);
    if (items.size() != targets.size())
      throw JinjaError("cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(targets.size()) + " names");
    for (size_t k = 0; k < targets.size(); ++k) assign(targets[k], items[k]);
  }

  void count_iteration() {
    if (++iterations_ > limits_.max_loop_iterations)
      throw JinjaError("template exceeds the limit of " + std::to_string(limits_.max_loop_iterations) + " loop iterations");
  }

  Flow exec_for(const Stmt& s, std::string& out) {
    ValueList items = iterate(eval(*s.expr));
    scopes_.push_back(new_frame());
    struct Pop {
      Scopes& s;
      ~Pop() { s.pop_back(); }
    } pop{scopes_};
    auto bind = [&](const Value& item) {
      if (s.targets.size() == 1) assign(s.targets[0], item);
      else unpack_assign(s.targets, item);
    };
    if (s.filter_cond) {
      ValueList kept;
      for (const auto& item : items) {
        count_iteration();
        bind(item);
        if (eval(*s.filter_cond).truthy()) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) return exec_body(s.else_body, out);
    auto n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      count_iteration();
      bind(items[static_cast<size_t>(i)]);
      Value loop = Value::dict();
      Dict& d = loop.as_dict();
      d.set("index", Value(i + 1));
      d.set("index0", Value(i));
      d.set("revindex", Value(n - i));
      d.set("revindex0", Value(n - i - 1));
      d.set("first", Value(i == 0));
      d.set("last", Value(i == n - 1));
      d.set("length", Value(n));
      d.set("depth", Value(1));
      d.set("depth0", Value(0));
      d.set("previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value::undefined("there is no previous item"));
      d.set("nextitem", i + 1 < n ? items[static_cast<size_t>(i + 1)] : Value::undefined("there is no next item"));
      d.set("cycle", Value::function("cycle", [i](ValueList& a, KwArgs&) -> Value {
              if (a.empty()) throw JinjaError("no items for cycling given");
              return a[static_cast<size_t>(i) % a.size()];
            }));
      assign("loop", loop);
      Flow f = exec_body(s.body, out);
      if (f == Flow::Break) break;
    }
    return Flow::Normal;
  }

  Value make_macro(const Stmt& s, const Value*, const std::string& name_override = {}) {
    Scopes captured = scopes_;
    const Stmt* stmt = &s;
    std::string name = name_override.empty() ? s.name : name_override;
    return Value::function(name, [this, stmt, captured, name](ValueList& args, KwArgs& kwargs) -> Value {
      if (++call_depth_ > limits_.max_call_depth) {
        call_depth_ = 0;
        throw JinjaError("template exceeds the maximum call depth of " + std::to_string(limits_.max_call_depth) +
                         " (recursive macro?)");
      }
      Scopes saved = std::move(scopes_);
      scopes_ = captured;
      auto frame = new_frame();
      scopes_.push_back(frame);
      struct Restore {
        Renderer* r;
        Scopes& saved;
        ~Restore() {
          r->scopes_ = std::move(saved);
          if (r->call_depth_ > 0) --r->call_depth_;
        }
      } restore{this, saved};
      if (args.size() > stmt->params.size()) throw JinjaError("macro '" + name + "' takes not more than " + std::to_string(stmt->params.size()) + " argument(s)");
      for (size_t k = 0; k < stmt->params.size(); ++k) {
        const auto& [pname, def] = stmt->params[k];
        Value v;
        bool found = false;
        if (k < args.size()) {
          v = args[k];
          found = true;
        }
        for (auto& [kn, kv] : kwargs)
          if (kn == pname) {
            v = kv;
            found = true;
          }
        if (!found) v = def ? eval(*def) : Value::undefined("parameter '" + pname + "' was not provided");
        (*frame)[pname] = v;
      }
      for (auto& [kn, kv] : kwargs)
        if (kn == "caller") (*frame)["caller"] = kv;
      std::string out;
      exec_body(stmt->body, out);
      return Value(out);
    });
  }

  // ---------------- expressions ----------------
  ValueList iterate(const Value& v) {
    switch (v.kind()) {
      case Value::Kind::Undefined: return {};
      case Value::Kind::List: return v.as_list().items;
      case Value::Kind::Dict: {
        if (v.is_namespace()) throw JinjaError("'Namespace' object is not iterable");
        ValueList keys;
        for (const auto& kv : v.as_dict().items) keys.emplace_back(kv.first);
        return keys;
      }
      case Value::Kind::String: {
        ValueList out;
        for (auto& c : utf8_chars(v.as_string())) out.emplace_back(c);
        return out;
      }
      default: throw JinjaError(std::string("'") + v.type_name() + "' object is not iterable");
    }
  }

  static void require_defined(const Value& v) {
    if (v.is_undefined()) throw JinjaError(v.as_string().empty() ? "value is undefined" : v.as_string());
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::Literal: return e.literal;
      case Expr::Kind::Name: return lookup(e.name);
      case Expr::Kind::List:
      case Expr::Kind::Tuple: {
        ValueList items;
        for (const auto& a : e.args) items.push_back(eval(*a));
        return Value::list(std::move(items), e.kind == Expr::Kind::Tuple);
      }
      case Expr::Kind::Dict: {
        Value d = Value::dict();
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          Value key = eval(*e.args[k]);
          if (!key.is_string()) throw JinjaError("only string keys are supported in dict literals");
          d.as_dict().set(key.as_string(), eval(*e.args[k + 1]));
        }
        return d;
      }
      case Expr::Kind::GetAttr: return get_attr(eval(*e.args[0]), e.name);
      case Expr::Kind::GetItem: {
        Value obj = eval(*e.args[0]);
        if (e.args[1]->kind == Expr::Kind::Slice) {
          const Expr& sl = *e.args[1];
          auto ev = [&](const ExprPtr& p) { return p ? eval(*p) : Value::none(); };
          return slice(obj, ev(sl.args[0]), ev(sl.args[1]), ev(sl.args[2]));
        }
        return get_item(obj, eval(*e.args[1]));
      }
      case Expr::Kind::Slice: throw JinjaError("slice outside subscript");
      case Expr::Kind::Call: {
        Value fn = eval(*e.args[0]);
        ValueList args;
        KwArgs kwargs;
        for (size_t k = 1; k < e.args.size(); ++k) args.push_back(eval(*e.args[k]));
        for (const auto& [n, a] : e.kwargs) kwargs.emplace_back(n, eval(*a));
        return call_value(fn, args, kwargs);
      }
      case Expr::Kind::Filter: return apply_filter_node(e, eval(*e.args[0]));
      case Expr::Kind::Test: {
        Value v = eval(*e.args[0]);
        ValueList args;
        for (size_t k = 1; k < e.args.size(); ++k) args.push_back(eval(*e.args[k]));
        bool r = apply_test(e.name, v, args);
        return Value(e.op == "not" ? !r : r);
      }
      case Expr::Kind::Unary: {
        Value v = eval(*e.args[0]);
        if (e.op == "not") return Value(!v.truthy());
        require_defined(v);
        if (!v.is_number()) throw JinjaError(std::string("bad operand type for unary ") + e.op + ": '" + v.type_name() + "'");
        if (e.op == "+") return v.is_bool() ? Value(v.as_int()) : v;
        if (v.is_float()) return Value(-v.as_double());
        return Value(-v.as_int());
      }
      case Expr::Kind::Binary: return eval_binary(e);
      case Expr::Kind::Cond: {
        if (eval(*e.args[0]).truthy()) return eval(*e.args[1]);
        return e.args[2] ? eval(*e.args[2]) : Value::undefined("the inline if-expression evaluated to false and no else section was defined.");
      }
    }
    return Value();
  }

  Value call_value(const Value& fn, ValueList& args, KwArgs& kwargs) {
    if (fn.is_undefined()) require_defined(fn);
    if (!fn.is_function()) throw JinjaError(std::string("'") + fn.type_name() + "' object is not callable");
    return fn.as_function().fn(args, kwargs);
  }

  Value eval_binary(const Expr& e) {
    const std::string& op = e.op;
    if (op == "and") {
      Value l = eval(*e.args[0]);
      return l.truthy() ? eval(*e.args[1]) : l;
    }
    if (op == "or") {
      Value l = eval(*e.args[0]);
      return l.truthy() ? l : eval(*e.args[1]);
    }
    Value l = eval(*e.args[0]);
    Value r = eval(*e.args[1]);
    if (op == "~") {
      std::string s = l.str();
      std::string rs = r.str();
      check_size(s.size() + rs.size());
      return Value(s + rs);
    }
    if (op == "==") return Value(values_equal(l, r));
    if (op == "!=") return Value(!values_equal(l, r));
    if (op == "in") return Value(contains(r, l));
    if (op == "notin") return Value(!contains(r, l));
    require_defined(l);
    require_defined(r);
    if (op == "<") return Value(compare_values(l, r, "<") < 0);
    if (op == "<=") return Value(compare_values(l, r, "<=") <= 0);
    if (op == ">") return Value(compare_values(l, r, ">") > 0);
    if (op == ">=") return Value(compare_values(l, r, ">=") >= 0);
    return arithmetic(op, l, r);
  }

  Value arithmetic(const std::string& op, const Value& l, const Value& r) {
    if (op == "+") {
      if (l.is_string() && r.is_string()) {
        check_size(l.as_string().size() + r.as_string().size());
        return Value(l.as_string() + r.as_string());
      }
      if (l.is_list() && r.is_list() && l.is_tuple() == r.is_tuple()) {
        ValueList items = l.as_list().items;
        items.insert(items.end(), r.as_list().items.begin(), r.as_list().items.end());
        return Value::list(std::move(items), l.is_tuple());
      }
      if (l.is_string() && !r.is_string())
        throw JinjaError(std::string("can only concatenate str (not \"") + r.type_name() + "\") to str");
      if (l.is_list() && !r.is_list())
        throw JinjaError(std::string("can only concatenate list (not \"") + r.type_name() + "\") to list");
    }
    if (op == "*" && (l.is_string() || l.is_list() || r.is_string() || r.is_list())) {
      const Value& seq = (l.is_string() || l.is_list()) ? l : r;
      const Value& n = (l.is_string() || l.is_list()) ? r : l;
      if (!n.is_int() && !n.is_bool())
        throw JinjaError(std::string("can't multiply sequence by non-int of type '") + n.type_name() + "'");
      int64_t times = std::max<int64_t>(0, n.as_int());
      if (seq.is_string()) {
        check_size(seq.as_string().size() * static_cast<size_t>(std::min<int64_t>(times, INT32_MAX)));
        std::string out;
        for (int64_t k = 0; k < times; ++k) out += seq.as_string();
        return Value(out);
      }
      check_size(seq.as_list().items.size() * static_cast<size_t>(std::min<int64_t>(times, INT32_MAX)) * 16);
      ValueList items;
      for (int64_t k = 0; k < times; ++k)
        items.insert(items.end(), seq.as_list().items.begin(), seq.as_list().items.end());
      return Value::list(std::move(items), seq.is_tuple());
    }
    if (op == "%" && l.is_string()) return Value(printf_format(l.as_string(), r.is_tuple() ? r.as_list().items : ValueList{r}));
    if (!l.is_number() || !r.is_number())
      throw JinjaError("unsupported operand type(s) for " + op + ": '" + l.type_name() + "' and '" + r.type_name() + "'");
    bool fl = l.is_float() || r.is_float();
    if (op == "/") {
      if (r.as_double() == 0) throw JinjaError("division by zero");
      return Value(l.as_double() / r.as_double());
    }
    if (op == "**") {
      if (!fl && r.as_int() >= 0) {
        int64_t base = l.as_int(), res = 1;
        for (int64_t k = 0; k < r.as_int(); ++k) {
          if (__builtin_mul_overflow(res, base, &res)) throw JinjaError("integer overflow in '**'");
          if (res == 0 || res == 1) break;
        }
        return Value(res);
      }
      return Value(std::pow(l.as_double(), r.as_double()));
    }
    if (fl) {
      double a = l.as_double(), b = r.as_double();
      if (op == "+") return Value(a + b);
      if (op == "-") return Value(a - b);
      if (op == "*") return Value(a * b);
      if (b == 0) throw JinjaError(op == "%" ? "float modulo" : "float divmod()");
      if (op == "//") return Value(std::floor(a / b));
      if (op == "%") {
        double m = std::fmod(a, b);
        if (m != 0 && ((m < 0) != (b < 0))) m += b;
        return Value(m);
      }
    } else {
      int64_t a = l.as_int(), b = r.as_int(), res = 0;
      if (op == "+" && !__builtin_add_overflow(a, b, &res)) return Value(res);
      if (op == "-" && !__builtin_sub_overflow(a, b, &res)) return Value(res);
      if (op == "*" && !__builtin_mul_overflow(a, b, &res)) return Value(res);
      if (op == "+" || op == "-" || op == "*") throw JinjaError("integer overflow in '" + op + "'");
      if (b == 0) throw JinjaError("integer division or modulo by zero");
      int64_t q = a / b, m = a % b;
      if (m != 0 && ((m < 0) != (b < 0))) {
        --q;
        m += b;
      }
      if (op == "//") return Value(q);
      if (op == "%") return Value(m);
    }
    throw JinjaError("unsupported operator " + op);
  }

  bool contains(const Value& container, const Value& item) {
    switch (container.kind()) {
      case Value::Kind::String:
        if (!item.is_string()) throw JinjaError(std::string("'in <string>' requires string as left operand, not ") + item.type_name());
        return container.as_string().find(item.as_string()) != std::string::npos;
      case Value::Kind::List:
        for (const auto& v : container.as_list().items)
          if (values_equal(v, item)) return true;
        return false;
      case Value::Kind::Dict: return item.is_string() && container.as_dict().find(item.as_string()) != nullptr;
      case Value::Kind::Undefined: return false;
      default: throw JinjaError(std::string("argument of type '") + container.type_name() + "' is not iterable");
    }
  }

  Value slice(const Value& obj, const Value& a, const Value& b, const Value& c) {
    require_defined(obj);
    if (obj.is_string()) {
      auto chs = utf8_chars(obj.as_string());
      std::string out;
      for (int64_t k : slice_indices(static_cast<int64_t>(chs.size()), a, b, c)) out += chs[static_cast<size_t>(k)];
      return Value(out);
    }
    if (obj.is_list()) {
      const auto& items = obj.as_list().items;
      ValueList out;
      for (int64_t k : slice_indices(static_cast<int64_t>(items.size()), a, b, c)) out.push_back(items[static_cast<size_t>(k)]);
      return Value::list(std::move(out), obj.is_tuple());
    }
    throw JinjaError(std::string("'") + obj.type_name() + "' object is not subscriptable");
  }

  static Value missing(const Value& obj, const std::string& what) {
    return Value::undefined(std::string("'") + obj.type_name() + " object' has no attribute '" + what + "'");
  }

  Value get_item(const Value& obj, const Value& key) {
    require_defined(obj);
    if (obj.is_dict()) {
      if (key.is_string()) {
        if (const Value* v = obj.as_dict().find(key.as_string())) return *v;
        return method(obj, key.as_string());
      }
      return missing(obj, key.str());
    }
    if ((obj.is_list() || obj.is_string()) && (key.is_int() || key.is_bool())) {
      if (obj.is_list()) {
        const auto& items = obj.as_list().items;
        int64_t i = key.as_int();
        if (i < 0) i += static_cast<int64_t>(items.size());
        if (i < 0 || i >= static_cast<int64_t>(items.size())) return Value::undefined(std::string("list object has no element ") + key.str());
        return items[static_cast<size_t>(i)];
      }
      auto chs = utf8_chars(obj.as_string());
      int64_t i = key.as_int();
      if (i < 0) i += static_cast<int64_t>(chs.size());
      if (i < 0 || i >= static_cast<int64_t>(chs.size())) return Value::undefined("string index out of range");
      return Value(chs[static_cast<size_t>(i)]);
    }
    if (key.is_string()) return method(obj, key.as_string());
    return missing(obj, key.str());
  }

  Value get_attr(const Value& obj, const std::string& name) {
    require_defined(obj);
    if (obj.is_dict() && !obj.is_namespace()) {
      Value m = method(obj, name);
      if (!m.is_undefined()) return m;
      if (const Value* v = obj.as_dict().find(name)) return *v;
      return missing(obj, name);
    }
    if (obj.is_namespace()) {
      if (const Value* v = obj.as_dict().find(name)) return *v;
      return missing(obj, name);
    }
    return method(obj, name);
  }

  // Bound methods of str, dict and list that templates use.
  Value method(const Value& obj, const std::string& name) {
    auto bind = [&](auto fn) { return Value::function(name, fn); };
    auto arg = [](ValueList& a, size_t i, Value def = Value::none()) { return i < a.size() ? a[i] : def; };
    if (obj.is_string()) {
      const std::string s = obj.as_string();
      if (name == "strip" || name == "lstrip" || name == "rstrip") {
        bool l = name != "rstrip", r = name != "lstrip";
        return bind([s, l, r, arg](ValueList& a, KwArgs&) { return Value(py_strip(s, arg(a, 0), l, r)); });
      }
      if (name == "upper") return bind([s](ValueList&, KwArgs&) { return Value(ascii_upper(s)); });
      if (name == "lower") return bind([s](ValueList&, KwArgs&) { return Value(ascii_lower(s)); });
      if (name == "title") return bind([s](ValueList&, KwArgs&) { return Value(py_title(s)); });
      if (name == "capitalize") return bind([s](ValueList&, KwArgs&) { return Value(py_capitalize(s)); });
      if (name == "split" || name == "rsplit") {
        return bind([s, arg](ValueList& a, KwArgs& kw) {
          Value sep = arg(a, 0), maxs = arg(a, 1, Value(int64_t{-1}));
          for (auto& [k, v] : kw) {
            if (k == "sep") sep = v;
            if (k == "maxsplit") maxs = v;
          }
          ValueList out;
          for (auto& p : py_split(s, sep, maxs.as_int())) out.emplace_back(p);
          return Value::list(std::move(out));
        });
      }
      if (name == "splitlines") return bind([s](ValueList&, KwArgs&) {
          ValueList out;
          for (auto& p : py_splitlines(s)) out.emplace_back(p);
          return Value::list(std::move(out));
        });
      if (name == "startswith" || name == "endswith") {
        bool starts = name == "startswith";
        return bind([s, starts](ValueList& a, KwArgs&) {
          if (a.empty()) throw JinjaError("startswith/endswith takes one argument");
          ValueList cands = a[0].is_list() ? a[0].as_list().items : ValueList{a[0]};
          for (const auto& c : cands) {
            if (!c.is_string()) throw JinjaError("startswith/endswith argument must be str or a tuple of str");
            const std::string& p = c.as_string();
            if (p.size() <= s.size() && (starts ? s.compare(0, p.size(), p) == 0 : s.compare(s.size() - p.size(), p.size(), p) == 0))
              return Value(true);
          }
          return Value(false);
        });
      }
      if (name == "replace") return bind([s, arg](ValueList& a, KwArgs&) {
          if (a.size() < 2 || !a[0].is_string() || !a[1].is_string()) throw JinjaError("replace() takes two string arguments");
          return Value(py_replace(s, a[0].as_string(), a[1].as_string(), arg(a, 2, Value(int64_t{-1})).as_int()));
        });
      if (name == "count") return bind([s](ValueList& a, KwArgs&) {
          if (a.empty() || !a[0].is_string()) throw JinjaError("count() takes a string argument");
          const std::string& sub = a[0].as_string();
          if (sub.empty()) return Value(static_cast<int64_t>(utf8_length(s) + 1));
          int64_t n = 0;
          for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
          return Value(n);
        });
      if (name == "find" || name == "index" || name == "rfind") {
        bool rev = name == "rfind", raise = name == "index";
        return bind([s, rev, raise](ValueList& a, KwArgs&) {
          if (a.empty() || !a[0].is_string()) throw JinjaError("find() takes a string argument");
          size_t p = rev ? s.rfind(a[0].as_string()) : s.find(a[0].as_string());
          if (p == std::string::npos) {
            if (raise) throw JinjaError("substring not found");
            return Value(int64_t{-1});
          }
          return Value(static_cast<int64_t>(utf8_length(s.substr(0, p))));
        });
      }
      if (name == "join") return bind([this, s](ValueList& a, KwArgs&) {
          std::string out;
          bool first = true;
          for (const auto& v : iterate(arg0(a))) {
            if (!v.is_string()) throw JinjaError(std::string("sequence item: expected str instance, ") + v.type_name() + " found");
            if (!first) out += s;
            first = false;
            out += v.as_string();
            check_size(out.size());
          }
          return Value(out);
        });
      if (name == "format") return bind([s](ValueList& a, KwArgs& kw) { return Value(brace_format(s, a, kw)); });
      if (name == "isdigit" || name == "isalpha" || name == "isspace" || name == "isalnum") {
        return bind([s, name](ValueList&, KwArgs&) {
          if (s.empty()) return Value(false);
          for (unsigned char c : s) {
            bool ok = name == "isdigit" ? std::isdigit(c) : name == "isalpha" ? std::isalpha(c) : name == "isspace" ? std::isspace(c) : std::isalnum(c);
            if (!ok) return Value(false);
          }
          return Value(true);
        });
      }
    } else if (obj.is_dict() && !obj.is_namespace()) {
      if (name == "items") return bind([obj](ValueList&, KwArgs&) { return dict_items(obj); });
      if (name == "keys") return bind([obj](ValueList&, KwArgs&) {
          ValueList out;
          for (const auto& kv : obj.as_dict().items) out.emplace_back(kv.first);
          return Value::list(std::move(out));
        });
      if (name == "values") return bind([obj](ValueList&, KwArgs&) {
          ValueList out;
          for (const auto& kv : obj.as_dict().items) out.push_back(kv.second);
          return Value::list(std::move(out));
        });
      if (name == "get") return bind([obj, arg](ValueList& a, KwArgs&) {
          if (a.empty()) throw JinjaError("get expected at least 1 argument, got 0");
          if (a[0].is_string())
            if (const Value* v = obj.as_dict().find(a[0].as_string())) return *v;
          return arg(a, 1);
        });
      if (name == "update" || name == "pop" || name == "clear" || name == "setdefault" || name == "popitem")
        return unsafe(obj, name);
    } else if (obj.is_list()) {
      if (name == "append" || name == "extend" || name == "insert" || name == "pop" || name == "remove" || name == "clear" ||
          name == "sort" || name == "reverse")
        return unsafe(obj, name);
      if (name == "index") return bind([obj](ValueList& a, KwArgs&) {
          const auto& items = obj.as_list().items;
          for (size_t k = 0; k < items.size(); ++k)
            if (!a.empty() && values_equal(items[k], a[0])) return Value(static_cast<int64_t>(k));
          throw JinjaError("value is not in list");
        });
      if (name == "count") return bind([obj](ValueList& a, KwArgs&) {
          int64_t n = 0;
          for (const auto& v : obj.as_list().items) n += !a.empty() && values_equal(v, a[0]);
          return Value(n);
        });
    }
    return missing(obj, name);
  }

  static Value arg0(ValueList& a) {
    if (a.empty()) throw JinjaError("missing argument");
    return a[0];
  }

  static Value unsafe(const Value& obj, const std::string& name) {
    std::string msg = "access to attribute '" + name + "' of '" + obj.type_name() + "' object is unsafe.";
    return Value::function(name, [msg](ValueList&, KwArgs&) -> Value { throw JinjaError(msg); });
  }

  static Value dict_items(const Value& obj) {
    ValueList out;
    for (const auto& [k, v] : obj.as_dict().items) out.push_back(Value::list({Value(k), v}, true));
    return Value::list(std::move(out));
  }

  static std::string brace_format(const std::string& fmt, ValueList& a, KwArgs& kw) {
    std::string out;
    size_t auto_idx = 0;
    for (size_t i = 0; i < fmt.size(); ++i) {
      char c = fmt[i];
      if (c == '{' && i + 1 < fmt.size() && fmt[i + 1] == '{') {
        out += '{';
        ++i;
      } else if (c == '}' && i + 1 < fmt.size() && fmt[i + 1] == '}') {
        out += '}';
        ++i;
      } else if (c == '{') {
        size_t e = fmt.find('}', i);
        if (e == std::string::npos) throw JinjaError("Single '{' encountered in format string");
        std::string field = fmt.substr(i + 1, e - i - 1);
        Value v;
        if (field.empty()) {
          if (auto_idx >= a.size()) throw JinjaError("Replacement index out of range for positional args tuple");
          v = a[auto_idx++];
        } else if (std::isdigit(static_cast<unsigned char>(field[0]))) {
          size_t idx = std::stoul(field);
          if (idx >= a.size()) throw JinjaError("Replacement index out of range for positional args tuple");
          v = a[idx];
        } else {
          bool found = false;
          for (auto& [k, kv] : kw)
            if (k == field) {
              v = kv;
              found = true;
            }
          if (!found) throw JinjaError("format: missing key '" + field + "'");
        }
        out += v.str();
        i = e;
      } else {
        out += c;
      }
    }
    return out;
  }

  static std::string printf_format(const std::string& fmt, const ValueList& a) {
    std::string out;
    size_t idx = 0;
    for (size_t i = 0; i < fmt.size(); ++i) {
      if (fmt[i] != '%') {
        out += fmt[i];
        continue;
      }
      if (++i >= fmt.size()) throw JinjaError("incomplete format");
      std::string spec;
      while (i < fmt.size() && (std::isdigit(static_cast<unsigned char>(fmt[i])) || fmt[i] == '.' || fmt[i] == '-')) spec += fmt[i++];
      char c = fmt[i];
      if (c == '%') {
        out += '%';
        continue;
      }
      if (idx >= a.size()) throw JinjaError("not enough arguments for format string");
      const Value& v = a[idx++];
      char buf[128];
      if (c == 's') out += v.str();
      else if (c == 'r') out += v.repr();
      else if (c == 'd' || c == 'i') {
        if (!v.is_number()) throw JinjaError("%d format: a real number is required");
        std::snprintf(buf, sizeof(buf), ("%" + spec + "lld").c_str(), static_cast<long long>(v.is_float() ? static_cast<int64_t>(v.as_double()) : v.as_int()));
        out += buf;
      } else if (c == 'f' || c == 'e' || c == 'g') {
        if (!v.is_number()) throw JinjaError("%f format: a real number is required");
        std::snprintf(buf, sizeof(buf), ("%" + spec + c).c_str(), v.as_double());
        out += buf;
      } else {
        throw JinjaError(std::string("unsupported format character '") + c + "'");
      }
    }
    if (idx < a.size()) throw JinjaError("not all arguments converted during string formatting");
    return out;
  }

  // ---------------- filters ----------------
  struct Args {
    ValueList& pos;
    KwArgs& kw;
    Value get(size_t i, const char* name, Value def = Value()) const {
      for (auto& [k, v] : kw)
        if (k == name) return v;
      return i < pos.size() ? pos[i] : def;
    }
  };

  Value apply_filter_node(const Expr& f, const Value& input) {
    ValueList args;
    KwArgs kwargs;
    for (size_t k = 1; k < f.args.size(); ++k) args.push_back(eval(*f.args[k]));
    for (const auto& [n, e] : f.kwargs) kwargs.emplace_back(n, eval(*e));
    return apply_filter(f.name, input, args, kwargs);
  }

  Value attr_path(const Value& item, const Value& attr) {
    if (attr.is_int()) return get_item(item, attr);
    Value cur = item;
    for (auto& part : py_split(attr.str(), Value("."), -1)) {
      if (cur.is_undefined()) return cur;
      bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
      cur = digits ? get_item(cur, Value(static_cast<int64_t>(std::stoll(part)))) : get_item(cur, Value(part));
    }
    return cur;
  }

  ValueList sorted(ValueList items, bool reverse, bool case_sensitive, const Value& attribute) {
    auto key = [&](const Value& v) {
      Value k = attribute.is_undefined() || attribute.is_none() ? v : attr_path(v, attribute);
      if (!case_sensitive && k.is_string()) return Value(ascii_lower(k.as_string()));
      return k;
    };
    std::vector<std::pair<Value, Value>> keyed;
    for (auto& v : items) keyed.emplace_back(key(v), v);
    std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {
      return reverse ? compare_values(b.first, a.first, "<") < 0 : compare_values(a.first, b.first, "<") < 0;
    });
    ValueList out;
    for (auto& kv : keyed) out.push_back(kv.second);
    return out;
  }

  Value apply_filter(const std::string& name, const Value& v, ValueList& pos, KwArgs& kw) {
    Args a{pos, kw};
    if (name == "tojson") {
      Value indent = a.get(0, "indent", Value::none());
      std::string ind;
      if (indent.is_int()) ind = std::string(static_cast<size_t>(std::clamp<int64_t>(indent.as_int(), 0, 64)), ' ');
      else if (indent.is_string()) ind = indent.as_string();
      Value seps = a.get(2, "separators", Value::none());
      std::string item_sep, key_sep;
      if (seps.is_list() && seps.as_list().items.size() == 2) {
        item_sep = seps.as_list().items[0].str();
        key_sep = seps.as_list().items[1].str();
      }
      if (v.is_undefined()) throw JinjaError("Object of type Undefined is not JSON serializable");
      return Value(json_dumps(v, indent.is_none() ? nullptr : &ind, item_sep, key_sep, a.get(3, "sort_keys", Value(false)).truthy()));
    }
    if (name == "trim") return Value(py_strip(v.str(), a.get(0, "chars", Value::none()), true, true));
    if (name == "upper") return Value(ascii_upper(v.str()));
    if (name == "lower") return Value(ascii_lower(v.str()));
    if (name == "capitalize") return Value(py_capitalize(v.str()));
    if (name == "title") {
      // jinja2 do_title: words start after whitespace, '-', or an opening bracket.
      std::string s = v.str(), out;
      bool start = true;
      for (char c : s) {
        auto u = static_cast<unsigned char>(c);
        bool sep = std::isspace(u) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
        out += static_cast<char>(sep ? c : start ? std::toupper(u) : std::tolower(u));
        start = sep;
      }
      return Value(out);
    }
    if (name == "length" || name == "count") {
      if (v.is_string()) return Value(static_cast<int64_t>(utf8_length(v.as_string())));
      if (v.is_list()) return Value(static_cast<int64_t>(v.as_list().items.size()));
      if (v.is_dict()) return Value(static_cast<int64_t>(v.as_dict().items.size()));
      if (v.is_undefined()) return Value(int64_t{0});
      throw JinjaError(std::string("object of type '") + v.type_name() + "' has no len()");
    }
    if (name == "first" || name == "last") {
      ValueList items = iterate(v);
      if (items.empty()) return Value::undefined("No first item, sequence was empty.");
      return name == "first" ? items.front() : items.back();
    }
    if (name == "join") {
      Value attr = a.get(1, "attribute", Value::none());
      std::string sep = a.get(0, "d", Value("")).str(), out;
      bool first = true;
      for (const auto& item : iterate(v)) {
        if (!first) out += sep;
        first = false;
        out += (attr.is_none() ? item : attr_path(item, attr)).str();
        check_size(out.size());
      }
      return Value(out);
    }
    if (name == "default" || name == "d") {
      bool boolean = a.get(1, "boolean", Value(false)).truthy();
      if (v.is_undefined() || (boolean && !v.truthy())) return a.get(0, "default_value", Value(""));
      return v;
    }
    if (name == "items") {
      if (v.is_undefined()) return Value::list();
      if (!v.is_dict()) throw JinjaError("can only get item pairs from a mapping.");
      return dict_items(v);
    }
    if (name == "list") return Value::list(iterate(v));
    if (name == "string") return Value(v.str());
    if (name == "safe" || name == "e" || name == "escape") {
      if (name == "safe") return v;
      std::string out;
      for (char c : v.str()) {
        switch (c) {
          case '&': out += "&amp;"; break;
          case '<': out += "&lt;"; break;
          case '>': out += "&gt;"; break;
          case '"': out += "&#34;"; break;
          case '\'': out += "&#39;"; break;
          default: out += c;
        }
      }
      return Value(out);
    }
    if (name == "int") {
      Value def = a.get(0, "default", Value(int64_t{0}));
      if (v.is_bool() || v.is_int()) return Value(v.as_int());
      if (v.is_float()) return std::isfinite(v.as_double()) ? Value(static_cast<int64_t>(v.as_double())) : def;
      if (v.is_string()) {
        std::string s = py_strip(v.as_string(), Value::none(), true, true);
        char* end = nullptr;
        long long i = std::strtoll(s.c_str(), &end, 10);
        if (!s.empty() && end && *end == 0) return Value(static_cast<int64_t>(i));
        double d = std::strtod(s.c_str(), &end);
        if (!s.empty() && end && *end == 0 && std::isfinite(d)) return Value(static_cast<int64_t>(d));
      }
      return def;
    }
    if (name == "float") {
      Value def = a.get(0, "default", Value(0.0));
      if (v.is_number()) return Value(v.as_double());
      if (v.is_string()) {
        std::string s = py_strip(v.as_string(), Value::none(), true, true);
        char* end = nullptr;
        double d = std::strtod(s.c_str(), &end);
        if (!s.empty() && end && *end == 0) return Value(d);
      }
      return def;
    }
    if (name == "abs") {
      if (v.is_float()) return Value(std::fabs(v.as_double()));
      if (v.is_number()) return Value(v.as_int() < 0 ? -v.as_int() : v.as_int());
      throw JinjaError(std::string("bad operand type for abs(): '") + v.type_name() + "'");
    }
    if (name == "round") {
      int64_t prec = a.get(0, "precision", Value(int64_t{0})).as_int();
      std::string method = a.get(1, "method", Value("common")).str();
      if (!v.is_number()) throw JinjaError("round filter needs a number");
      if (method == "common" && !v.is_float()) return Value(v.as_int());
      double x = v.as_double(), scale = std::pow(10.0, static_cast<double>(prec));
      if (method == "ceil") return Value(std::ceil(x * scale) / scale);
      if (method == "floor") return Value(std::floor(x * scale) / scale);
      if (method != "common") throw JinjaError("method must be common, ceil or floor");
      char buf[512];
      std::snprintf(buf, sizeof(buf), "%.*f", static_cast<int>(std::clamp<int64_t>(prec, 0, 300)), x);
      return Value(std::strtod(buf, nullptr));
    }
    if (name == "replace") {
      Value count = a.get(2, "count", Value::none());
      return Value(py_replace(v.str(), a.get(0, "old").str(), a.get(1, "new").str(), count.is_none() ? -1 : count.as_int()));
    }
    if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
      bool by_attr = name == "selectattr" || name == "rejectattr";
      bool want = name == "selectattr" || name == "select";
      size_t first_test = by_attr ? 1 : 0;
      ValueList out;
      for (const auto& item : iterate(v)) {
        Value subject = by_attr ? attr_path(item, a.get(0, "attribute")) : item;
        bool ok;
        if (pos.size() > first_test) {
          ValueList targs(pos.begin() + static_cast<long>(first_test) + 1, pos.end());
          ok = apply_test(pos[first_test].str(), subject, targs);
        } else {
          ok = subject.truthy();
        }
        if (ok == want) out.push_back(item);
      }
      return Value::list(std::move(out));
    }
    if (name == "map") {
      ValueList out;
      Value attr = a.get(99, "attribute");
      if (!attr.is_undefined()) {
        Value def = a.get(99, "default");
        for (const auto& item : iterate(v)) {
          Value r = attr_path(item, attr);
          out.push_back(r.is_undefined() && !def.is_undefined() ? def : r);
        }
      } else {
        if (pos.empty()) throw JinjaError("map requires a filter name or attribute=");
        std::string fname = pos[0].str();
        ValueList rest(pos.begin() + 1, pos.end());
        for (const auto& item : iterate(v)) {
          ValueList fa = rest;
          KwArgs fk = kw;
          out.push_back(apply_filter(fname, item, fa, fk));
        }
      }
      return Value::list(std::move(out));
    }
    if (name == "unique") {
      bool cs = a.get(0, "case_sensitive", Value(false)).truthy();
      Value attr = a.get(1, "attribute", Value::none());
      ValueList out, seen;
      for (const auto& item : iterate(v)) {
        Value k = attr.is_none() ? item : attr_path(item, attr);
        if (!cs && k.is_string()) k = Value(ascii_lower(k.as_string()));
        bool dup = false;
        for (const auto& s : seen) dup = dup || values_equal(s, k);
        if (!dup) {
          seen.push_back(k);
          out.push_back(item);
        }
      }
      return Value::list(std::move(out));
    }
    if (name == "sort") {
      return Value::list(sorted(iterate(v), a.get(0, "reverse", Value(false)).truthy(), a.get(1, "case_sensitive", Value(false)).truthy(),
                                a.get(2, "attribute", Value::none())));
    }
    if (name == "dictsort") {
      if (!v.is_dict()) throw JinjaError("dictsort requires a mapping");
      bool cs = a.get(0, "case_sensitive", Value(false)).truthy();
      std::string by = a.get(1, "by", Value("key")).str();
      bool rev = a.get(2, "reverse", Value(false)).truthy();
      return Value::list(sorted(dict_items(v).as_list().items, rev, cs, Value(int64_t{by == "value" ? 1 : 0})));
    }
    if (name == "reverse") {
      if (v.is_string()) {
        auto chs = utf8_chars(v.as_string());
        std::string out;
        for (auto it = chs.rbegin(); it != chs.rend(); ++it) out += *it;
        return Value(out);
      }
      ValueList items = iterate(v);
      std::reverse(items.begin(), items.end());
      return Value::list(std::move(items));
    }
    if (name == "sum") {
      Value attr = a.get(0, "attribute", Value::none());
      Value total = a.get(1, "start", Value(int64_t{0}));
      for (const auto& item : iterate(v)) total = arithmetic("+", total, attr.is_none() ? item : attr_path(item, attr));
      return total;
    }
    if (name == "min" || name == "max") {
      ValueList items = sorted(iterate(v), false, a.get(0, "case_sensitive", Value(false)).truthy(), a.get(1, "attribute", Value::none()));
      if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
      return name == "min" ? items.front() : items.back();
    }
    if (name == "indent") {
      Value width = a.get(0, "width", Value(int64_t{4}));
      bool first = a.get(1, "first", Value(false)).truthy();
      bool blank = a.get(2, "blank", Value(false)).truthy();
      std::string ind = width.is_string() ? width.as_string() : std::string(static_cast<size_t>(std::clamp<int64_t>(width.as_int(), 0, 1024)), ' ');
      auto lines = py_splitlines(v.str() + "\n");
      std::string out;
      for (size_t k = 0; k < lines.size(); ++k) {
        if (k) out += "\n";
        if (k > 0 && (blank || !lines[k].empty())) out += ind;
        out += lines[k];
        check_size(out.size());
      }
      if (first) out = ind + out;
      return Value(out);
    }
    if (name == "wordcount") {
      int64_t n = 0;
      bool in_word = false;
      for (char c : v.str()) {
        auto u = static_cast<unsigned char>(c);
        bool w = std::isalnum(u) || c == '_' || u >= 0x80;
        if (w && !in_word) ++n;
        in_word = w;
      }
      return Value(n);
    }
    if (name == "batch") {
      int64_t size = a.get(0, "linecount").as_int();
      if (size <= 0) throw JinjaError("batch size must be positive");
      Value fill = a.get(1, "fill_with", Value::none());
      ValueList out, cur;
      for (const auto& item : iterate(v)) {
        cur.push_back(item);
        if (static_cast<int64_t>(cur.size()) == size) {
          out.push_back(Value::list(std::move(cur)));
          cur.clear();
        }
      }
      if (!cur.empty()) {
        if (!fill.is_none())
          while (static_cast<int64_t>(cur.size()) < size) cur.push_back(fill);
        out.push_back(Value::list(std::move(cur)));
      }
      return Value::list(std::move(out));
    }
    if (name == "format") return Value(printf_format(v.str(), pos));
    if (name == "attr") return get_attr(v, a.get(0, "name").str());
    if (name == "center") {
      int64_t w = a.get(0, "width", Value(int64_t{80})).as_int();
      std::string s = v.str();
      int64_t len = static_cast<int64_t>(utf8_length(s));
      if (w <= len) return Value(s);
      int64_t total = std::min<int64_t>(w, 1 << 20) - len, left = total / 2 + (total & w & 1);
      return Value(std::string(static_cast<size_t>(left), ' ') + s + std::string(static_cast<size_t>(total - left), ' '));
    }
    throw JinjaError("No filter named '" + name + "'.");
  }

  // ---------------- tests ----------------
  bool apply_test(const std::string& name, const Value& v, ValueList& args) {
    auto arg = [&](size_t i) -> const Value& {
      if (i >= args.size()) throw JinjaError("test '" + name + "' needs an argument");
      return args[i];
    };
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.is_none();
    if (name == "string") return v.is_string();
    if (name == "number") return v.is_number();
    if (name == "integer") return v.is_int();
    if (name == "float") return v.is_float();
    if (name == "boolean") return v.is_bool();
    if (name == "true") return v.is_bool() && v.as_bool();
    if (name == "false") return v.is_bool() && !v.as_bool();
    if (name == "mapping") return v.is_dict() && !v.is_namespace();
    if (name == "iterable") return v.is_string() || v.is_list() || (v.is_dict() && !v.is_namespace()) || v.is_undefined();
    if (name == "sequence") return v.is_string() || v.is_list() || (v.is_dict() && !v.is_namespace());
    if (name == "callable") return v.is_function();
    if (name == "odd" || name == "even") {
      if (!v.is_number() || v.is_float()) throw JinjaError("odd/even test needs an integer");
      bool odd = (v.as_int() % 2) != 0;
      return name == "odd" ? odd : !odd;
    }
    if (name == "divisibleby") {
      int64_t d = arg(0).as_int();
      if (d == 0) throw JinjaError("integer division or modulo by zero");
      return v.as_int() % d == 0;
    }
    if (name == "equalto" || name == "eq" || name == "==") return values_equal(v, arg(0));
    if (name == "ne" || name == "!=") return !values_equal(v, arg(0));
    if (name == "lt" || name == "lessthan" || name == "<") return compare_values(v, arg(0), "<") < 0;
    if (name == "le" || name == "<=") return compare_values(v, arg(0), "<=") <= 0;
    if (name == "gt" || name == "greaterthan" || name == ">") return compare_values(v, arg(0), ">") > 0;
    if (name == "ge" || name == ">=") return compare_values(v, arg(0), ">=") >= 0;
    if (name == "in") return contains(arg(0), v);
    if (name == "sameas") {
      const Value& o = arg(0);
      if (v.kind() != o.kind()) return false;
      if (v.is_list()) return &v.as_list() == &o.as_list();
      if (v.is_dict()) return &v.as_dict() == &o.as_dict();
      return values_equal(v, o);
    }
    if (name == "lower") return v.is_string() && ascii_lower(v.as_string()) == v.as_string();
    if (name == "upper") return v.is_string() && ascii_upper(v.as_string()) == v.as_string();
    if (name == "escaped") return false;
    throw JinjaError("No test named '" + name + "'.");
  }

  // ---------------- globals ----------------
  void install_globals(Frame& g) {
    g["range"] = Value::function("range", [this](ValueList& a, KwArgs&) {
      if (a.empty() || a.size() > 3) throw JinjaError("range expected 1 to 3 arguments");
      for (auto& x : a)
        if (!x.is_int() && !x.is_bool()) throw JinjaError(std::string("'") + x.type_name() + "' object cannot be interpreted as an integer");
      int64_t start = a.size() > 1 ? a[0].as_int() : 0, stop = a.size() > 1 ? a[1].as_int() : a[0].as_int();
      int64_t step = a.size() > 2 ? a[2].as_int() : 1;
      if (step == 0) throw JinjaError("range() arg 3 must not be zero");
      ValueList out;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        count_iteration();
        out.emplace_back(i);
      }
      return Value::list(std::move(out));
    });
    g["dict"] = Value::function("dict", [](ValueList& a, KwArgs& kw) {
      Value d = Value::dict();
      if (!a.empty()) {
        if (a[0].is_dict()) {
          for (const auto& [k, v] : a[0].as_dict().items) d.as_dict().set(k, v);
        } else {
          for (const auto& pair : a[0].is_list() ? a[0].as_list().items : ValueList{}) {
            if (!pair.is_list() || pair.as_list().items.size() != 2 || !pair.as_list().items[0].is_string())
              throw JinjaError("dict() sequence elements must be (str, value) pairs");
            d.as_dict().set(pair.as_list().items[0].as_string(), pair.as_list().items[1]);
          }
        }
      }
      for (const auto& [k, v] : kw) d.as_dict().set(k, v);
      return d;
    });
    g["namespace"] = Value::function("namespace", [](ValueList& a, KwArgs& kw) {
      Value ns = Value::ns();
      if (!a.empty() && a[0].is_dict())
        for (const auto& [k, v] : a[0].as_dict().items) ns.as_dict().set(k, v);
      for (const auto& [k, v] : kw) {
        if (!k.empty() && k[0] == '_') throw JinjaError("Chat templates cannot store underscore-prefixed attributes on a namespace");
        ns.as_dict().set(k, v);
      }
      return ns;
    });
    g["raise_exception"] = Value::function("raise_exception", [](ValueList& a, KwArgs&) -> Value {
      throw JinjaError(a.empty() ? std::string() : a[0].str());
    });
    g["strftime_now"] = Value::function("strftime_now", [](ValueList& a, KwArgs&) {
      if (a.empty() || !a[0].is_string()) throw JinjaError("strftime_now expects a format string");
      std::time_t t = std::time(nullptr);
      std::tm tm{};
      localtime_r(&t, &tm);
      char buf[512];
      size_t n = std::strftime(buf, sizeof(buf), a[0].as_string().c_str(), &tm);
      return Value(std::string(buf, n));
    });
  }
};

}  // namespace

Expected<std::string> render_template(const Body& body, const Value& context, const RenderLimits& limits) {
  try {
    Renderer r(context, limits);
    return r.run(body);
  } catch (const JinjaError& e) {
    return make_error(e.what());
  } catch (const std::bad_alloc&) {
    return make_error("template rendering ran out of memory");
  } catch (const std::exception& e) {
    return make_error(std::string("template rendering failed: ") + e.what());
  }
}

}  // namespace fennec::tokenizer::jinja
