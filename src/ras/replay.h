// Replayed telemetry: a recorded or synthetic trace played back through the TelemetrySource
// interface, so the health rules and energy metering are tested without the hardware.
//
// Trace format (JSON lines, one frame per line, '#' lines and blank lines ignored):
//   {"t": 12.5, "samples": [
//     {"device": "cpu", "name": "intel-rapl:0/package-0", "kind": "energy_uj",
//      "value": 262143000000, "wrap": 262143328850},
//     {"device": "mem:mc0", "name": "mc0/ce_count", "kind": "ce_count", "why": "no EDAC"}]}
// A sample without "value" is unavailable ("why" says why). `fennec doctor --record` writes
// this format from the live machine.
#pragma once

#include <string>
#include <vector>

#include "core/expected.h"
#include "ras/telemetry.h"

namespace fennec::ras {

struct Frame {
  double t = 0;  // seconds since the trace began
  std::vector<Sample> samples;
};

Expected<std::vector<Frame>> parse_trace(const std::string& text);
Expected<std::vector<Frame>> load_trace(const std::string& path);
std::string frame_to_json(const Frame& f);  // one line, no newline

class ReplaySource final : public TelemetrySource {
 public:
  explicit ReplaySource(std::vector<Frame> frames, std::string name = "replay")
      : frames_(std::move(frames)), name_(std::move(name)) {}
  std::string name() const override { return name_; }
  // The next frame's samples; past the end, one unavailable sample ("the trace has ended").
  std::vector<Sample> read() override;
  // Time of the frame the last read() returned (the last frame's once the trace has ended).
  double time() const { return t_; }
  bool done() const { return next_ >= frames_.size(); }

 private:
  std::vector<Frame> frames_;
  std::string name_;
  size_t next_ = 0;
  double t_ = 0;
};

}  // namespace fennec::ras
