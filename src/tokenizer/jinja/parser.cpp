#include "tokenizer/jinja/parser.h"

#include <charconv>
#include <cstdlib>

#include "tokenizer/jinja/lexer.h"

namespace fennec::tokenizer::jinja {
namespace {

struct SyntaxError {
  std::string message;
};

class Parser {
 public:
  Parser(std::vector<Token> tokens, const ParseLimits& limits) : toks_(std::move(tokens)), limits_(limits) {}

  Body parse_root() {
    std::string which;
    Body body = parse_until({}, &which);
    return body;
  }

 private:
  std::vector<Token> toks_;
  size_t p_ = 0;
  ParseLimits limits_;
  int depth_ = 0;

  struct DepthGuard {
    Parser* p;
    explicit DepthGuard(Parser* parser) : p(parser) {
      if (++p->depth_ > p->limits_.max_nesting)
        p->fail(p->cur(), "template nested too deeply (more than " + std::to_string(p->limits_.max_nesting) + " levels)");
    }
    ~DepthGuard() { --p->depth_; }
  };

  const Token& cur() const { return toks_[p_]; }
  const Token& peek(size_t n = 1) const { return toks_[std::min(p_ + n, toks_.size() - 1)]; }
  Token next() { return toks_[p_ < toks_.size() - 1 ? p_++ : p_]; }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case TokenType::Name: return "'" + t.value + "'";
      case TokenType::Operator: return "'" + t.value + "'";
      case TokenType::String: return "string";
      case TokenType::Integer:
      case TokenType::Float: return "number " + t.value;
      default: return token_type_name(t.type);
    }
  }
  [[noreturn]] void fail(const Token& t, const std::string& msg) const {
    throw SyntaxError{"template syntax error at line " + std::to_string(t.line) + ", column " +
                      std::to_string(t.column) + ": " + msg};
  }
  [[noreturn]] void expected(const std::string& what) const {
    fail(cur(), "expected " + what + ", got " + describe(cur()));
  }
  bool is_op(const char* op) const { return cur().type == TokenType::Operator && cur().value == op; }
  bool is_name(const char* n) const { return cur().type == TokenType::Name && cur().value == n; }
  bool accept_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool accept_name(const char* n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }
  void expect_op(const char* op) {
    if (!accept_op(op)) expected(std::string("'") + op + "'");
  }
  void expect_name_kw(const char* n) {
    if (!accept_name(n)) expected(std::string("'") + n + "'");
  }
  std::string expect_name() {
    if (cur().type != TokenType::Name) expected("a name");
    return next().value;
  }
  void expect_block_end() {
    if (cur().type != TokenType::BlockEnd) expected("end of statement block");
    next();
  }

  ExprPtr make(Expr::Kind k, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = at.line;
    e->column = at.column;
    return e;
  }

  // ---- statements ----

  Body parse_until(const std::vector<std::string>& ends, std::string* which) {
    DepthGuard guard(this);
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == TokenType::End) {
        if (ends.empty()) return body;
        std::string list;
        for (size_t k = 0; k < ends.size(); ++k) list += (k ? " or '" : "'") + ends[k] + "'";
        fail(t, "unexpected end of template, expected " + list);
      }
      if (t.type == TokenType::Text) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::Text;
        s->text = next().value;
        body.push_back(std::move(s));
      } else if (t.type == TokenType::VarBegin) {
        Token start = next();
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::Print;
        s->line = start.line;
        s->expr = parse_tuple(true);
        if (cur().type != TokenType::VarEnd) expected("end of print statement");
        next();
        body.push_back(std::move(s));
      } else if (t.type == TokenType::BlockBegin) {
        const Token& name = peek();
        if (name.type != TokenType::Name) {
          next();
          expected("a statement name");
        }
        for (const auto& e : ends) {
          if (name.value == e) {
            next();
            next();
            *which = e;
            return body;
          }
        }
        next();
        body.push_back(parse_statement());
      } else {
        fail(t, "unexpected " + describe(t));
      }
    }
  }

  StmtPtr parse_statement() {
    Token kw = next();
    auto s = std::make_unique<Stmt>();
    s->line = kw.line;
    const std::string& k = kw.value;
    std::string which;
    if (k == "if") {
      s->kind = Stmt::Kind::If;
      while (true) {
        ExprPtr cond = parse_tuple(false);
        expect_block_end();
        Body b = parse_until({"elif", "else", "endif"}, &which);
        s->branches.emplace_back(std::move(cond), std::move(b));
        if (which == "elif") continue;
        if (which == "else") {
          expect_block_end();
          s->else_body = parse_until({"endif"}, &which);
        }
        break;
      }
      expect_block_end();
    } else if (k == "for") {
      s->kind = Stmt::Kind::For;
      s->targets.push_back(expect_name());
      while (accept_op(",")) s->targets.push_back(expect_name());
      expect_name_kw("in");
      s->expr = parse_tuple(false, /*with_condexpr=*/false);
      if (accept_name("if")) s->filter_cond = parse_expression();
      accept_name("recursive");
      expect_block_end();
      s->body = parse_until({"else", "endfor"}, &which);
      if (which == "else") {
        expect_block_end();
        s->else_body = parse_until({"endfor"}, &which);
      }
      expect_block_end();
    } else if (k == "set") {
      s->targets.push_back(expect_name());
      if (accept_op(".")) {
        s->target_attr = expect_name();
      } else {
        while (accept_op(",")) s->targets.push_back(expect_name());
      }
      if (accept_op("=")) {
        s->kind = Stmt::Kind::Set;
        s->expr = parse_tuple(false);
        expect_block_end();
      } else {
        s->kind = Stmt::Kind::SetBlock;
        if (s->targets.size() != 1) expected("'='");
        parse_filter_chain(s->filters);
        expect_block_end();
        s->body = parse_until({"endset"}, &which);
        expect_block_end();
      }
    } else if (k == "macro") {
      s->kind = Stmt::Kind::Macro;
      s->name = expect_name();
      parse_params(s->params);
      expect_block_end();
      s->body = parse_until({"endmacro"}, &which);
      expect_block_end();
    } else if (k == "call") {
      s->kind = Stmt::Kind::CallBlock;
      if (is_op("(")) parse_params(s->params);
      s->expr = parse_expression();
      if (s->expr->kind != Expr::Kind::Call) fail(kw, "expected a call expression after 'call'");
      expect_block_end();
      s->body = parse_until({"endcall"}, &which);
      expect_block_end();
    } else if (k == "filter") {
      s->kind = Stmt::Kind::FilterBlock;
      accept_op("|");
      parse_filter_chain(s->filters, /*first_without_pipe=*/true);
      expect_block_end();
      s->body = parse_until({"endfilter"}, &which);
      expect_block_end();
    } else if (k == "break" || k == "continue") {
      s->kind = k == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue;
      expect_block_end();
    } else if (k == "generation") {  // transformers' assistant-mask extension: renders its body
      s->kind = Stmt::Kind::Scope;
      expect_block_end();
      s->body = parse_until({"endgeneration"}, &which);
      expect_block_end();
    } else {
      fail(kw, "Encountered unknown tag '" + k + "'.");
    }
    return s;
  }

  void parse_params(std::vector<std::pair<std::string, ExprPtr>>& params) {
    expect_op("(");
    while (!is_op(")")) {
      if (!params.empty()) expect_op(",");
      if (is_op(")")) break;
      std::string n = expect_name();
      ExprPtr def;
      if (accept_op("=")) def = parse_expression();
      params.emplace_back(n, std::move(def));
    }
    expect_op(")");
  }

  void parse_filter_chain(std::vector<ExprPtr>& out, bool first_without_pipe = false) {
    bool first = true;
    while ((first && first_without_pipe) || accept_op("|")) {
      first = false;
      out.push_back(parse_filter(nullptr));
    }
  }

  // ---- expressions ----

  ExprPtr parse_tuple(bool allow_empty_parens, bool with_condexpr = true) {
    (void)allow_empty_parens;
    const Token& at = cur();
    ExprPtr first = with_condexpr ? parse_expression() : parse_or();
    if (!is_op(",")) return first;
    auto t = make(Expr::Kind::Tuple, at);
    t->args.push_back(std::move(first));
    while (accept_op(",")) {
      if (!starts_expression()) break;
      t->args.push_back(with_condexpr ? parse_expression() : parse_or());
    }
    return t;
  }

  bool starts_expression() const {
    const Token& t = cur();
    if (t.type == TokenType::Name || t.type == TokenType::String || t.type == TokenType::Integer || t.type == TokenType::Float)
      return true;
    return t.type == TokenType::Operator && (t.value == "(" || t.value == "[" || t.value == "{" || t.value == "-" || t.value == "+");
  }

  ExprPtr parse_expression() {
    DepthGuard guard(this);
    const Token& at = cur();
    ExprPtr e = parse_or();
    while (accept_name("if")) {
      auto c = make(Expr::Kind::Cond, at);
      c->args.push_back(parse_or());
      c->args.push_back(std::move(e));
      c->args.push_back(accept_name("else") ? parse_expression() : nullptr);
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(const Token& at, std::string op, ExprPtr l, ExprPtr r) {
    auto b = make(Expr::Kind::Binary, at);
    b->op = std::move(op);
    b->args.push_back(std::move(l));
    b->args.push_back(std::move(r));
    return b;
  }

  ExprPtr parse_or() {
    ExprPtr l = parse_and();
    while (is_name("or")) {
      Token at = next();
      l = binary(at, "or", std::move(l), parse_and());
    }
    return l;
  }
  ExprPtr parse_and() {
    ExprPtr l = parse_not();
    while (is_name("and")) {
      Token at = next();
      l = binary(at, "and", std::move(l), parse_not());
    }
    return l;
  }
  ExprPtr parse_not() {
    if (is_name("not")) {
      DepthGuard guard(this);
      Token at = next();
      auto u = make(Expr::Kind::Unary, at);
      u->op = "not";
      u->args.push_back(parse_not());
      return u;
    }
    return parse_compare();
  }
  ExprPtr parse_compare() {
    ExprPtr l = parse_math1();
    while (true) {
      const Token& t = cur();
      if (t.type == TokenType::Operator &&
          (t.value == "==" || t.value == "!=" || t.value == "<" || t.value == "<=" || t.value == ">" || t.value == ">=")) {
        Token at = next();
        l = binary(at, at.value, std::move(l), parse_math1());
      } else if (is_name("in")) {
        Token at = next();
        l = binary(at, "in", std::move(l), parse_math1());
      } else if (is_name("not") && peek().type == TokenType::Name && peek().value == "in") {
        Token at = next();
        next();
        l = binary(at, "notin", std::move(l), parse_math1());
      } else {
        return l;
      }
    }
  }
  ExprPtr parse_math1() {
    ExprPtr l = parse_concat();
    while (is_op("+") || is_op("-")) {
      Token at = next();
      l = binary(at, at.value, std::move(l), parse_concat());
    }
    return l;
  }
  ExprPtr parse_concat() {
    ExprPtr l = parse_math2();
    while (is_op("~")) {
      Token at = next();
      l = binary(at, "~", std::move(l), parse_math2());
    }
    return l;
  }
  ExprPtr parse_math2() {
    ExprPtr l = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      Token at = next();
      l = binary(at, at.value, std::move(l), parse_pow());
    }
    return l;
  }
  ExprPtr parse_pow() {
    ExprPtr l = parse_unary(true);
    while (is_op("**")) {
      Token at = next();
      l = binary(at, "**", std::move(l), parse_unary(true));
    }
    return l;
  }
  ExprPtr parse_unary(bool with_filter) {
    DepthGuard guard(this);
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      Token at = next();
      node = make(Expr::Kind::Unary, at);
      node->op = at.value;
      node->args.push_back(parse_unary(false));
    } else {
      node = parse_primary();
      node = parse_postfix(std::move(node));
    }
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    if (t.type == TokenType::Name) {
      Token n = next();
      auto e = make(Expr::Kind::Literal, n);
      if (n.value == "true" || n.value == "True") e->literal = Value(true);
      else if (n.value == "false" || n.value == "False") e->literal = Value(false);
      else if (n.value == "none" || n.value == "None") e->literal = Value::none();
      else {
        e->kind = Expr::Kind::Name;
        e->name = n.value;
      }
      return e;
    }
    if (t.type == TokenType::String) {
      Token s = next();
      std::string v = s.value;
      while (cur().type == TokenType::String) v += next().value;
      auto e = make(Expr::Kind::Literal, s);
      e->literal = Value(v);
      return e;
    }
    if (t.type == TokenType::Integer) {
      Token n = next();
      auto e = make(Expr::Kind::Literal, n);
      int64_t v = 0;
      auto r = std::from_chars(n.value.data(), n.value.data() + n.value.size(), v);
      if (r.ec != std::errc()) fail(n, "integer literal out of range");
      e->literal = Value(v);
      return e;
    }
    if (t.type == TokenType::Float) {
      Token n = next();
      auto e = make(Expr::Kind::Literal, n);
      e->literal = Value(std::strtod(n.value.c_str(), nullptr));
      return e;
    }
    if (is_op("(")) {
      Token at = next();
      if (accept_op(")")) return make(Expr::Kind::Tuple, at);
      ExprPtr first = parse_expression();
      if (is_op(",")) {
        auto tup = make(Expr::Kind::Tuple, at);
        tup->args.push_back(std::move(first));
        while (accept_op(",")) {
          if (is_op(")")) break;
          tup->args.push_back(parse_expression());
        }
        first = std::move(tup);
      }
      expect_op(")");
      return first;
    }
    if (is_op("[")) {
      Token at = next();
      auto l = make(Expr::Kind::List, at);
      while (!is_op("]")) {
        if (!l->args.empty()) expect_op(",");
        if (is_op("]")) break;
        l->args.push_back(parse_expression());
      }
      expect_op("]");
      return l;
    }
    if (is_op("{")) {
      Token at = next();
      auto d = make(Expr::Kind::Dict, at);
      while (!is_op("}")) {
        if (!d->args.empty()) expect_op(",");
        if (is_op("}")) break;
        d->args.push_back(parse_expression());
        expect_op(":");
        d->args.push_back(parse_expression());
      }
      expect_op("}");
      return d;
    }
    expected("an expression");
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      if (is_op(".")) {
        Token at = next();
        if (cur().type == TokenType::Name) {
          auto g = make(Expr::Kind::GetAttr, at);
          g->name = next().value;
          g->args.push_back(std::move(node));
          node = std::move(g);
        } else if (cur().type == TokenType::Integer) {
          auto g = make(Expr::Kind::GetItem, at);
          g->args.push_back(std::move(node));
          g->args.push_back(parse_primary());
          node = std::move(g);
        } else {
          expected("an attribute name");
        }
      } else if (is_op("[")) {
        Token at = next();
        auto g = make(Expr::Kind::GetItem, at);
        g->args.push_back(std::move(node));
        g->args.push_back(parse_subscript(at));
        expect_op("]");
        node = std::move(g);
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_subscript(const Token& at) {
    ExprPtr start;
    if (!is_op(":")) {
      start = parse_expression();
      if (!is_op(":")) return start;
    }
    next();  // ':'
    auto sl = make(Expr::Kind::Slice, at);
    sl->args.push_back(std::move(start));
    sl->args.push_back(!is_op("]") && !is_op(":") ? parse_expression() : nullptr);
    if (accept_op(":")) sl->args.push_back(!is_op("]") ? parse_expression() : nullptr);
    else sl->args.push_back(nullptr);
    return sl;
  }

  void parse_args(Expr& call) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (is_op(")")) break;
      if (is_op("*") || is_op("**")) fail(cur(), "*args and **kwargs are not supported");
      if (cur().type == TokenType::Name && peek().type == TokenType::Operator && peek().value == "=") {
        std::string n = next().value;
        next();
        call.kwargs.emplace_back(n, parse_expression());
      } else {
        if (!call.kwargs.empty()) fail(cur(), "positional argument follows keyword argument");
        call.args.push_back(parse_expression());
      }
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr callee) {
    DepthGuard guard(this);
    auto c = make(Expr::Kind::Call, cur());
    c->args.push_back(std::move(callee));
    parse_args(*c);
    return c;
  }

  ExprPtr parse_filter(ExprPtr input) {
    DepthGuard guard(this);
    auto f = make(Expr::Kind::Filter, cur());
    f->name = expect_name();
    while (is_op(".") && peek().type == TokenType::Name) {
      next();
      f->name.push_back('.');
      f->name.append(next().value);
    }
    f->args.push_back(std::move(input));
    if (is_op("(")) parse_args(*f);
    return f;
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (accept_op("|")) {
        node = parse_filter(std::move(node));
      } else if (is_name("is")) {
        DepthGuard guard(this);
        Token at = next();
        auto t = make(Expr::Kind::Test, at);
        if (accept_name("not")) t->op = "not";
        t->name = expect_name();
        t->args.push_back(std::move(node));
        if (is_op("(")) {
          parse_args(*t);
        } else if ((cur().type == TokenType::Name || cur().type == TokenType::String || cur().type == TokenType::Integer ||
                    cur().type == TokenType::Float || is_op("(") || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          ExprPtr arg = parse_primary();
          t->args.push_back(parse_postfix(std::move(arg)));
        }
        node = std::move(t);
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }
};

}  // namespace

Expected<Body> parse_template(const std::string& source, const ParseLimits& limits) {
  auto tokens = tokenize(source);
  if (!tokens) return tokens.error();
  try {
    Parser p(std::move(*tokens), limits);
    return p.parse_root();
  } catch (const SyntaxError& e) {
    return make_error(e.message);
  }
}

}  // namespace fennec::tokenizer::jinja
