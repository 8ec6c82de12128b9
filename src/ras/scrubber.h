// Weight scrubbing: memory that must never change (the model's mmapped weights) is checksummed in
// chunks and re-verified in slices, a little per telemetry reading, so a bit that flips in DRAM
// or the page cache after load is found instead of silently changing every answer. The first pass
// records the reference checksums; later passes compare. A changed chunk counts as a critical
// event (health rule U3: unhealthy) and becomes the new reference, so a lasting flip is counted
// once. The first pass's checksums are kept too: a chunk that returns to them is repaired, not
// changed again, and reverify() tells the server when every chunk is back (recovery).
//
// It covers the bytes it is given: weight_scrub_regions() (src/ras/weight_regions.h) lists the
// ones the kernels read, packed copies included.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "core/periodic_thread.h"
#include "ras/telemetry.h"

namespace fennec::ras {

struct ScrubRegion {
  std::string name;  // a tensor's name
  const uint8_t* data = nullptr;
  size_t size = 0;
};

class WeightScrubber final : public TelemetrySource {
 public:
  // bytes_per_read: how much each read() verifies (the scrub rate is that per --ras-interval).
  explicit WeightScrubber(std::vector<ScrubRegion> regions,
                          size_t bytes_per_read = size_t{256} << 20,
                          size_t chunk_bytes = size_t{1} << 20);

  std::string name() const override { return "scrub"; }
  // Scrubs the next bytes_per_read bytes (at most one pass). Samples on device "weights":
  // "scrub_mismatches" (kCriticalEvents, cumulative; text: the last changed chunk) and
  // "scrub_progress" (kInfo).
  std::vector<Sample> read() override;

  struct Mismatch {
    std::string region;
    size_t offset = 0;  // of the chunk within the region
  };
  // Verifies (or, on the first pass, records) up to `bytes` more bytes, wrapping around to a new
  // pass at the end; returns the chunks found changed.
  std::vector<Mismatch> scrub(size_t bytes);

  // Re-checksums the chunks that differ from their load-time (first-pass) checksums and returns
  // how many still differ: 0 means the weights are the ones loaded again (recovery, docs/ras.md).
  // Same thread as read().
  size_t reverify();
  size_t dirty() const { return dirty_.size(); }

  int64_t mismatches() const { return n_mismatches_; }
  int64_t passes() const { return passes_; }  // complete passes, the reference pass included
  size_t total_bytes() const { return total_; }
  // Seconds a full pass takes at one read() every interval_s: whole reads of bytes_per_read.
  double pass_s(double interval_s) const;

 private:
  struct Chunk {
    size_t region = 0;
    size_t offset = 0, size = 0;
    uint64_t sum = 0;  // at the last visit
    uint64_t ref = 0;  // at the first pass (the weights as loaded)
  };
  std::set<size_t> dirty_;  // chunks whose bytes differ from the first pass
  std::vector<ScrubRegion> regions_;
  std::vector<Chunk> chunks_;
  size_t bytes_per_read_;
  size_t total_ = 0;
  size_t next_ = 0;  // next chunk
  int64_t passes_ = 0;
  int64_t n_mismatches_ = 0;
  std::string last_;  // the last mismatch, in words
};

// Runs a scrubber's read() on its own thread, one now and one every interval_s: the server's
// scrubbing (--scrub-mb per --ras-interval) without the rest of the RAS loop, to measure what it
// costs the engine (`fennec bench --scrub-mb`).
class ScrubThread {
 public:
  ScrubThread(WeightScrubber& scrubber, double interval_s);
  ~ScrubThread();  // stop()
  ScrubThread(const ScrubThread&) = delete;
  ScrubThread& operator=(const ScrubThread&) = delete;
  void stop();

  int64_t reads() const { return reads_.load(); }
  double busy_s() const { return busy_ns_.load() * 1e-9; }  // wall time inside read()
  double cpu_s() const { return cpu_ns_.load() * 1e-9; }    // the thread's CPU time

 private:
  void read_once();
  WeightScrubber& scrubber_;
  std::atomic<int64_t> reads_{0}, busy_ns_{0}, cpu_ns_{0};
  PeriodicThread loop_;  // as the RAS loop paces its readings: interval_s after each
};

// Bytes per read() so that a full pass over total_bytes takes at most pass_s seconds at one read
// every interval_s (whole MiB, at least min_bytes): the server's `--scrub-mb auto`. A flip is
// found within one pass (plus the reads' own time) of happening. Scrubbing no faster than that
// bound asks for keeps its cost down: it reads the model once per pass_s, where decoding reads
// it once per token.
size_t scrub_bytes_per_read(size_t total_bytes, double interval_s, double pass_s = 50,
                            size_t min_bytes = size_t{16} << 20);

// A 64-bit checksum of n bytes (fast, not cryptographic: it guards against flips, not attackers).
uint64_t scrub_checksum(const uint8_t* p, size_t n);

}  // namespace fennec::ras
