#include "ras/replay.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace fennec::ras {

namespace {

Expected<Sample> parse_sample(const nlohmann::json& j, int line) {
  const std::string where = "trace line " + std::to_string(line) + ": ";
  if (!j.is_object()) return make_error(where + "a sample must be an object");
  Sample s;
  if (!j.contains("device") || !j["device"].is_string())
    return make_error(where + "sample without a \"device\" string");
  s.device = j["device"].get<std::string>();
  s.name = j.value("name", s.device);
  const std::string kind = j.value("kind", "info");
  auto k = kind_from_name(kind);
  if (!k) return make_error(where + "unknown kind \"" + kind + "\"");
  s.kind = *k;
  if (j.contains("value") && !j["value"].is_null()) {
    if (!j["value"].is_number()) return make_error(where + "\"value\" must be a number");
    s.value = j["value"].get<double>();
  }
  s.why = j.value("why", s.value ? "" : "unavailable in the trace");
  s.text = j.value("text", "");
  if (j.contains("wrap")) {
    if (!j["wrap"].is_number()) return make_error(where + "\"wrap\" must be a number");
    s.wrap = j["wrap"].get<double>();
  }
  return s;
}

}  // namespace

Expected<std::vector<Frame>> parse_trace(const std::string& text) {
  std::vector<Frame> frames;
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object())
      return make_error("trace line " + std::to_string(n) + ": not a JSON object");
    Frame f;
    if (!j.contains("t") || !j["t"].is_number())
      return make_error("trace line " + std::to_string(n) + ": frame without a number \"t\"");
    f.t = j["t"].get<double>();
    if (!frames.empty() && f.t < frames.back().t)
      return make_error("trace line " + std::to_string(n) + ": time goes backwards");
    if (j.contains("samples")) {
      if (!j["samples"].is_array())
        return make_error("trace line " + std::to_string(n) + ": \"samples\" must be an array");
      for (const auto& sj : j["samples"]) {
        auto s = parse_sample(sj, n);
        if (!s) return s.error();
        f.samples.push_back(std::move(*s));
      }
    }
    frames.push_back(std::move(f));
  }
  return frames;
}

Expected<std::vector<Frame>> load_trace(const std::string& path) {
  std::ifstream f(path);
  if (!f) return make_error(path + ": cannot open the trace");
  std::stringstream ss;
  ss << f.rdbuf();
  auto r = parse_trace(ss.str());
  if (!r) return make_error(path + ": " + r.error().message);
  return r;
}

std::string frame_to_json(const Frame& f) {
  nlohmann::json j;
  j["t"] = f.t;
  j["samples"] = nlohmann::json::array();
  for (const auto& s : f.samples) {
    nlohmann::json o;
    o["device"] = s.device;
    o["name"] = s.name;
    o["kind"] = kind_name(s.kind);
    if (s.value) o["value"] = *s.value;
    if (!s.why.empty()) o["why"] = s.why;
    if (!s.text.empty()) o["text"] = s.text;
    if (s.wrap > 0) o["wrap"] = s.wrap;
    j["samples"].push_back(std::move(o));
  }
  return j.dump();
}

std::vector<Sample> ReplaySource::read() {
  if (next_ >= frames_.size()) {
    Sample s;
    s.device = name_;
    s.name = name_;
    s.why = "the trace has ended";
    return {s};
  }
  t_ = frames_[next_].t;
  return frames_[next_++].samples;
}

}  // namespace fennec::ras
