#include "ras/fault_injection.h"

#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <limits>

#include "formats/gguf.h"
#include "ras/service.h"

namespace fennec::ras {

namespace {

Expected<nlohmann::json> flip_weight_bit(const formats::GgufFile& g, const nlohmann::json& body) {
  if (!body.contains("tensor") || !body["tensor"].is_string())
    return make_error("weight_bitflip needs \"tensor\"");
  const std::string name = body["tensor"].get<std::string>();
  const auto* t = g.find_tensor(name);
  if (!t) return make_error("no tensor '" + name + "' in the model");
  const int64_t byte = body.value("byte", int64_t{0});
  const int bit = body.value("bit", 0);
  if (byte < 0 || static_cast<uint64_t>(byte) >= t->n_bytes)
    return make_error("byte " + std::to_string(byte) + " is outside the tensor (" +
                      std::to_string(t->n_bytes) + " bytes)");
  if (bit < 0 || bit > 7) return make_error("bit must be 0..7");
  const off_t off = static_cast<off_t>(g.data_offset() + t->offset + static_cast<uint64_t>(byte));
  const int fd = ::open(g.path().c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return make_error("cannot open " + g.path() + " for writing");
  uint8_t b = 0;
  bool ok = ::pread(fd, &b, 1, off) == 1;
  const uint8_t before = b;
  b = static_cast<uint8_t>(b ^ (1u << bit));
  ok = ok && ::pwrite(fd, &b, 1, off) == 1;
  ::close(fd);
  if (!ok) return make_error("cannot rewrite byte " + std::to_string(off) + " of " + g.path());
  return nlohmann::json{
      {"injected", "weight_bitflip"}, {"tensor", name},   {"byte", byte}, {"bit", bit},
      {"file_offset", off},           {"before", before}, {"after", b}};
}

}  // namespace

Expected<nlohmann::json> FaultInjector::inject(const nlohmann::json& body) {
  if (!body.is_object() || !body.contains("kind") || !body["kind"].is_string())
    return make_error(
        "the body must be a JSON object with \"kind\": weight_bitflip, nan_activation or "
        "telemetry_trace");
  const std::string kind = body["kind"].get<std::string>();
  try {
    if (kind == "weight_bitflip") {
      const formats::GgufFile* g = model_.load();
      if (!g) return make_error("no model to inject into (still loading)");
      return flip_weight_bit(*g, body);
    }
    if (kind == "nan_activation") {
      const int64_t steps = body.value("steps", int64_t{1});
      if (steps < 1 || steps > 1000000) return make_error("steps must be 1..1000000");
      nan_repeat_ = body.value("repeat", false);
      nan_pending_ += steps;
      return nlohmann::json{
          {"injected", "nan_activation"}, {"steps", steps}, {"repeat", nan_repeat_.load()}};
    }
    if (kind == "telemetry_trace") {
      if (!ras_) return make_error("the RAS service is off");
      if (!body.contains("path") || !body["path"].is_string())
        return make_error("telemetry_trace needs \"path\"");
      const std::string path = body["path"].get<std::string>();
      if (auto st = ras_->use_trace(path); !st) return st.error();
      return nlohmann::json{{"injected", "telemetry_trace"}, {"path", path}};
    }
  } catch (const nlohmann::json::exception& e) {
    return make_error(std::string("bad field: ") + e.what());
  }
  return make_error("unknown fault kind '" + kind +
                    "' (weight_bitflip, nan_activation, telemetry_trace)");
}

void FaultInjector::on_logits(std::vector<float>& logits, int attempt) {
  if (attempt == 0) {
    poisoned_this_step_ = false;
    if (nan_pending_.load() <= 0) return;
    if (nan_pending_.fetch_sub(1) <= 0) {
      ++nan_pending_;
      return;
    }
    poisoned_this_step_ = true;
  } else if (!(poisoned_this_step_ && nan_repeat_.load())) {
    return;
  }
  if (!logits.empty()) logits[0] = std::numeric_limits<float>::quiet_NaN();
  ++nan_injected_;
}

}  // namespace fennec::ras
