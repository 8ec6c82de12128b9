#include "engine/stop_matcher.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace fennec::engine {
namespace {

struct Fed {
  std::string emitted;  // everything emitted, including flush() when not stopped
  bool stopped = false;
  std::vector<std::string> chunks;
};

Fed feed(StopMatcher& m, const std::vector<std::string>& pieces) {
  Fed run;
  for (const std::string& p : pieces) {
    StopMatcher::Output out = m.push(p);
    run.chunks.push_back(out.text);
    run.emitted += out.text;
    if (out.stopped) {
      run.stopped = true;
      return run;
    }
  }
  run.emitted += m.flush();
  return run;
}

TEST(StopMatcher, NoStopPassesEverythingThrough) {
  StopMatcher m({"###"});
  Fed r = feed(m, {"Hello", ", ", "world", "!"});
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(r.emitted, "Hello, world!");
  EXPECT_EQ(r.chunks[0], "Hello");  // nothing that could start "###" is held
}

TEST(StopMatcher, NoStopStringsAtAll) {
  StopMatcher m({"", ""});
  Fed r = feed(m, {"a", "b"});
  EXPECT_EQ(r.chunks, (std::vector<std::string>{"a", "b"}));
  EXPECT_FALSE(r.stopped);
}

TEST(StopMatcher, StopInFirstPiece) {
  StopMatcher m({"END"});
  Fed r = feed(m, {"doneEND and more", "never seen"});
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emitted, "done");
  EXPECT_EQ(r.chunks.size(), 1u);
  EXPECT_TRUE(m.stopped());
  EXPECT_TRUE(m.push("more").stopped);
  EXPECT_EQ(m.push("more").text, "");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, StopAtVeryStart) {
  StopMatcher m({"<|end|>"});
  Fed r = feed(m, {"<|end|>"});
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emitted, "");
}

TEST(StopMatcher, StopSpanningSeveralPieces) {
  StopMatcher m({"</answer>"});
  Fed r = feed(m, {"42", "</", "ans", "wer", "> trailing"});
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emitted, "42");
  EXPECT_EQ(r.chunks[0], "42");
  EXPECT_EQ(r.chunks[1], "");  // "</" is held
  EXPECT_EQ(r.chunks[2], "");
}

TEST(StopMatcher, HeldPrefixIsReleasedWhenItDoesNotComplete) {
  StopMatcher m({"</answer>"});
  Fed r = feed(m, {"a </ans", "wers> b"});
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(r.chunks[0], "a ");
  EXPECT_EQ(r.chunks[1], "</answers> b");
  EXPECT_EQ(r.emitted, "a </answers> b");
}

TEST(StopMatcher, OverlappingPrefixes) {
  {
    StopMatcher m({"ab"});
    Fed r = feed(m, {"a", "a", "b"});
    EXPECT_TRUE(r.stopped);
    EXPECT_EQ(r.emitted, "a");
    EXPECT_EQ(r.chunks, (std::vector<std::string>{"", "a", ""}));
  }
  {
    StopMatcher m({"ab"});
    Fed r = feed(m, {"aab"});
    EXPECT_TRUE(r.stopped);
    EXPECT_EQ(r.emitted, "a");
  }
  {
    // Self-overlapping stop string: "aab" in "aaab" starts at the second 'a'.
    StopMatcher m({"aab"});
    Fed r = feed(m, {"a", "a", "a", "b"});
    EXPECT_TRUE(r.stopped);
    EXPECT_EQ(r.emitted, "a");
  }
}

TEST(StopMatcher, EarliestOfSeveralStopsWins) {
  StopMatcher m({"world", "lo"});
  Fed r = feed(m, {"hel", "lo world"});
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emitted, "hel");

  // The held tail is the longest prefix of any stop string.
  StopMatcher m2({"xyz", "yz!"});
  StopMatcher::Output out = m2.push("axy");
  EXPECT_EQ(out.text, "a");
  out = m2.push("z");
  EXPECT_TRUE(out.stopped);
  EXPECT_EQ(out.text, "");  // "a" was already emitted
}

TEST(StopMatcher, FlushReturnsHeldText) {
  StopMatcher m({"STOP"});
  StopMatcher::Output out = m.push("go ST");
  EXPECT_EQ(out.text, "go ");
  EXPECT_FALSE(out.stopped);
  EXPECT_EQ(m.held_bytes(), 2u);
  EXPECT_EQ(m.flush(), "ST");
}

TEST(StopMatcher, NeverSplitsUtf8WhenHoldingBack) {
  // The stop string starts with the last byte of "é" (0xC3 0xA9): holding back only that byte
  // would split the character, so the whole character is held.
  const std::string e_acute = "\xC3\xA9";
  StopMatcher m({"\xA9x"});
  StopMatcher::Output out = m.push("caf" + e_acute);
  EXPECT_EQ(out.text, "caf");
  EXPECT_EQ(m.flush(), e_acute);
}

TEST(StopMatcher, UnicodeStopStringAcrossPieces) {
  // "😀" is F0 9F 98 80; the stop is the emoji followed by '!'.
  const std::string smile = "\xF0\x9F\x98\x80";
  StopMatcher m({smile + "!"});
  Fed r = feed(m, {"ok ", "\xF0\x9F", "\x98\x80", "!", "rest"});
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emitted, "ok ");

  StopMatcher m2({smile + "!"});
  Fed r2 = feed(m2, {"ok ", "\xF0\x9F", "\x98\x80", "?"});
  EXPECT_FALSE(r2.stopped);
  EXPECT_EQ(r2.emitted, "ok " + smile + "?");
}

TEST(StopMatcher, IncompleteUtf8AtEndOfPieceIsHeld) {
  // A piece that ends inside a character (a byte-level detokenizer may do this) is not emitted
  // until the character is complete, even when no stop string is involved.
  const std::string cjk = "\xE4\xB8\xAD";  // 中
  StopMatcher m({"zzz"});
  StopMatcher::Output a = m.push("x\xE4\xB8");
  EXPECT_EQ(a.text, "x");
  StopMatcher::Output b = m.push(
      "\xAD"
      "y");
  EXPECT_EQ(b.text, cjk + "y");
  // Every chunk is valid UTF-8 on its own.
  for (const std::string& chunk : {a.text, b.text}) {
    for (size_t i = 0; i < chunk.size();) {
      const unsigned char c = static_cast<unsigned char>(chunk[i]);
      const size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
      ASSERT_LE(i + len, chunk.size());
      i += len;
    }
  }
}

TEST(StopMatcher, InvalidBytesAreNotHeldForever) {
  StopMatcher m({"zzz"});
  // Stray continuation bytes without a lead byte: emitted as they are.
  StopMatcher::Output out = m.push("a\x80\x80\x80\x80");
  EXPECT_EQ(out.text, "a\x80\x80\x80\x80");
}

}  // namespace
}  // namespace fennec::engine
