// Faults on demand, for tests and drills: `fennec serve --enable-fault-injection` opens
// POST /admin/inject (404 otherwise). Bodies:
//   {"kind": "weight_bitflip", "tensor": "blk.3.attn_q.weight", "byte": N, "bit": B,
//    "target": "file" | "memory"}
//       flips bit B (0..7) of byte N.
//       target "file" (the default): of the tensor in the model FILE (written through the file,
//       so the shared mapping changes as a DRAM flip would change it; the file on disk changes
//       too: use a copy). It reaches what the products read only for the tensors the kernels do
//       not repack; matrices repacked at load (Q4_0, Q5_0, Q8_0, Q4_K, Q6_K, MXFP4, NVFP4:
//       kernels/cpu/repack.h) are computed from their copies, which a file flip does not reach.
//       target "memory": of the copy the kernels read: for a packed matrix, byte N of its packed
//       copy (the packed layout's bytes, kernels/cpu/repack_layout.h; the file is untouched);
//       else byte N of the mapped tensor, through the file as above (the map is read-only and
//       MAP_SHARED, so writing the file's page is how its bytes change in memory).
//       Flipping the same bit again restores it. The answer names where it flipped.
//   {"kind": "nan_activation", "steps": 1, "repeat": false}
//       puts a NaN in the logits of the next `steps` forward passes (the scheduler's logits_fault
//       hook). repeat=false poisons the first try only, so the NaN guard's recompute is clean;
//       repeat=true poisons the recompute too and the step fails.
//   {"kind": "telemetry_trace", "path": "trace.jsonl"}
//       the RAS service replays this trace instead of the machine from its next reading on.
// Answers {"injected": kind, ...details} or an error (400).
#pragma once

#include <atomic>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/expected.h"
#include "ras/scrubber.h"

namespace fennec::formats {
class GgufFile;
}

namespace fennec::ras {

class RasService;

class FaultInjector {
 public:
  // Either may be null (that kind then answers an error).
  FaultInjector(const formats::GgufFile* model, RasService* ras) : model_(model), ras_(ras) {}
  // The model, once loaded (the server opens before it loads), and the packed copies its
  // products read (weight_regions.h: packed_copies), for target "memory".
  void set_model(const formats::GgufFile* model, std::vector<ScrubRegion> packed = {});

  Expected<nlohmann::json> inject(const nlohmann::json& body);
  // SchedulerOptions::logits_fault: called on the engine thread after every forward pass.
  void on_logits(std::vector<float>& logits, int attempt);

  int64_t nan_injected() const { return nan_injected_.load(); }

 private:
  std::atomic<const formats::GgufFile*> model_;
  std::vector<ScrubRegion> packed_;  // written before model_ is published, then read-only
  RasService* ras_;
  std::atomic<int64_t> nan_pending_{0};  // steps still to poison
  std::atomic<bool> nan_repeat_{false};
  std::atomic<int64_t> nan_injected_{0};
  bool poisoned_this_step_ = false;  // engine thread
};

}  // namespace fennec::ras
