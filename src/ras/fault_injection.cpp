#include "ras/fault_injection.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <limits>

#include "formats/gguf.h"
#include "ras/service.h"
#include "ras/weight_regions.h"

namespace fennec::ras {

namespace {

// Flips a bit of the file at `off` (the shared read-only mapping sees the page change).
Expected<nlohmann::json> flip_file_bit(const formats::GgufFile& g, off_t off, int bit) {
  const int fd = ::open(g.path().c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return make_error("cannot open " + g.path() + " for writing");
  uint8_t b = 0;
  bool ok = ::pread(fd, &b, 1, off) == 1;
  const uint8_t before = b;
  b = static_cast<uint8_t>(b ^ (1u << bit));
  ok = ok && ::pwrite(fd, &b, 1, off) == 1;
  ::close(fd);
  if (!ok) return make_error("cannot rewrite byte " + std::to_string(off) + " of " + g.path());
  return nlohmann::json{{"file_offset", off}, {"before", before}, {"after", b}};
}

Expected<nlohmann::json> flip_weight_bit(const formats::GgufFile& g,
                                         const std::vector<ScrubRegion>& packed,
                                         const nlohmann::json& body) {
  if (!body.contains("tensor") || !body["tensor"].is_string())
    return make_error("weight_bitflip needs \"tensor\"");
  const std::string name = body["tensor"].get<std::string>();
  const auto* t = g.find_tensor(name);
  if (!t) return make_error("no tensor '" + name + "' in the model");
  const std::string target = body.value("target", std::string("file"));
  if (target != "file" && target != "memory")
    return make_error("target must be \"file\" or \"memory\"");
  const int64_t byte = body.value("byte", int64_t{0});
  const int bit = body.value("bit", 0);
  if (bit < 0 || bit > 7) return make_error("bit must be 0..7");
  nlohmann::json out{{"injected", "weight_bitflip"},
                     {"tensor", name},
                     {"byte", byte},
                     {"bit", bit},
                     {"target", target}};
  if (target == "memory") {
    const ScrubRegion* copy = nullptr;
    for (const auto& r : packed)
      if (packed_tensor_name(r.name) == name) copy = &r;
    if (copy) {
      if (byte < 0 || static_cast<uint64_t>(byte) >= copy->size)
        return make_error("byte " + std::to_string(byte) + " is outside the packed copy (" +
                          std::to_string(copy->size) + " bytes)");
      // The copy is the engine's own heap buffer (written once at load, read by the products
      // on other threads): one atomic xor, as a flip in DRAM would change it under them.
      auto* p = const_cast<uint8_t*>(copy->data) + byte;
      const uint8_t before =
          std::atomic_ref<uint8_t>(*p).fetch_xor(static_cast<uint8_t>(1u << bit));
      out["where"] = "packed copy";
      out["region"] = copy->name;
      out["region_bytes"] = copy->size;
      out["before"] = before;
      out["after"] = static_cast<uint8_t>(before ^ (1u << bit));
      return out;
    }
    if (!g.file()->mapped())
      return make_error("the model is not a file map: no memory target for '" + name + "'");
    out["where"] = "mapped tensor (through the file: the map is shared)";
  }
  if (byte < 0 || static_cast<uint64_t>(byte) >= t->n_bytes)
    return make_error("byte " + std::to_string(byte) + " is outside the tensor (" +
                      std::to_string(t->n_bytes) + " bytes)");
  if (target == "file") out["where"] = "file";
  const off_t off = static_cast<off_t>(g.data_offset() + t->offset + static_cast<uint64_t>(byte));
  auto r = flip_file_bit(g, off, bit);
  if (!r) return r.error();
  out.update(*r);
  return out;
}

}  // namespace

void FaultInjector::set_model(const formats::GgufFile* model, std::vector<ScrubRegion> packed) {
  packed_ = std::move(packed);
  model_.store(model, std::memory_order_release);
}

Expected<nlohmann::json> FaultInjector::inject(const nlohmann::json& body) {
  if (!body.is_object() || !body.contains("kind") || !body["kind"].is_string())
    return make_error(
        "the body must be a JSON object with \"kind\": weight_bitflip, nan_activation or "
        "telemetry_trace");
  const std::string kind = body["kind"].get<std::string>();
  try {
    if (kind == "weight_bitflip") {
      const formats::GgufFile* g = model_.load(std::memory_order_acquire);
      if (!g) return make_error("no model to inject into (still loading)");
      return flip_weight_bit(*g, packed_, body);
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
