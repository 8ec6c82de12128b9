// Syntax tree of a parsed template: expressions (Expr) and statements (Stmt).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace fennec::tokenizer::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal,   // literal
    Name,      // name
    List,      // args
    Tuple,     // args
    Dict,      // kwargs-like: keys in args[2k], values in args[2k+1]
    GetAttr,   // args[0].name
    GetItem,   // args[0][args[1]]
    Slice,     // args[0..2] may be null: start, stop, step
    Call,      // args[0](args[1..], kwargs)
    Filter,    // args[0] | name(args[1..], kwargs); args[0] null inside filter blocks
    Test,      // args[0] is name(args[1..]); negated when op == "not"
    Unary,     // op args[0]: "-", "+", "not"
    Binary,    // args[0] op args[1]: + - * / // % ** ~ == != < <= > >= in notin and or
    Cond,      // args[1] if args[0] else args[2] (args[2] may be null)
  };
  Kind kind;
  int line = 0;
  int column = 0;
  Value literal;
  std::string name;  // Name, GetAttr, Filter, Test
  std::string op;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum class Kind { Text, Print, If, For, Set, SetBlock, Macro, CallBlock, FilterBlock, Break, Continue, Scope };
  Kind kind;
  int line = 0;
  std::string text;                  // Text
  ExprPtr expr;                      // Print, Set value, For iterable, CallBlock call
  std::vector<std::pair<ExprPtr, Body>> branches;  // If: (condition, body)
  Body body;                         // For, SetBlock, Macro, CallBlock, FilterBlock, Scope, If else
  Body else_body;                    // For else, If else
  std::vector<std::string> targets;  // For/Set names; Set "ns.attr" uses target_attr
  std::string target_attr;           // Set ns.attr = ...
  ExprPtr filter_cond;               // For ... if cond
  std::vector<ExprPtr> filters;      // SetBlock / FilterBlock filter chain (Filter nodes, args[0] null)
  std::string name;                  // Macro name
  std::vector<std::pair<std::string, ExprPtr>> params;  // Macro params with optional defaults
};

}  // namespace fennec::tokenizer::jinja
