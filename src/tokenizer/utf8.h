// UTF-8 helpers for the tokenizers: validation, lossy repair, code point iteration, and the
// GPT-2 byte-level alphabet (each byte spelled as one printable code point).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace fennec::tokenizer::utf8 {

// Length of the valid UTF-8 sequence starting at s[i]: 1..4, or 0 when the bytes there are not a
// complete valid sequence. `incomplete` is set when they are a valid but truncated prefix.
size_t valid_seq_len(std::string_view s, size_t i, bool* incomplete = nullptr);
bool is_valid(std::string_view s);
// Replaces each maximal invalid subpart with U+FFFD (the rule Rust's from_utf8_lossy follows).
std::string lossy(std::string_view s);
size_t count_chars(std::string_view s);  // code points, invalid bytes count as one each
void append_cp(std::string& out, uint32_t cp);
// Decodes the sequence at s[i] (caller ensures valid_seq_len > 0).
uint32_t decode_at(std::string_view s, size_t i, size_t len);

// GPT-2 bytes_to_unicode: byte -> code point, and code point -> byte (-1 if not in the alphabet).
uint32_t byte_to_cp(uint8_t b);
int cp_to_byte(uint32_t cp);

inline constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

}  // namespace fennec::tokenizer::utf8
