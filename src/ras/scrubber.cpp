#include "ras/scrubber.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <iterator>

namespace fennec::ras {

uint64_t scrub_checksum(const uint8_t* p, size_t n) {
  // Four independent multiply-rotate lanes over 8-byte words (memory speed on one core), then a
  // mix of the lanes, the tail and the length. Any single flipped bit changes the result.
  constexpr uint64_t k1 = 0x9E3779B185EBCA87ull, k2 = 0xC2B2AE3D27D4EB4Full;
  uint64_t h[4] = {k1, k2, k1 ^ k2, ~k1};
  auto round = [&](uint64_t acc, uint64_t w) {
    acc += w * k2;
    acc = (acc << 31) | (acc >> 33);
    return acc * k1;
  };
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    uint64_t w[4];
    std::memcpy(w, p + i, 32);
    for (int k = 0; k < 4; ++k) h[k] = round(h[k], w[k]);
  }
  uint64_t r = n * k1;
  for (int k = 0; k < 4; ++k) r = round(r ^ h[k], h[k]);
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    r = round(r, w);
  }
  for (; i < n; ++i) r = round(r, p[i]);
  r ^= r >> 33;
  r *= k2;
  r ^= r >> 29;
  return r;
}

size_t scrub_bytes_per_read(size_t total_bytes, double interval_s, double pass_s,
                            size_t min_bytes) {
  const double reads = std::max(1.0, std::floor(pass_s / std::max(interval_s, 1e-3)));
  const size_t need = static_cast<size_t>(std::ceil(static_cast<double>(total_bytes) / reads));
  constexpr size_t kMiB = size_t{1} << 20;
  return std::max(min_bytes, (need + kMiB - 1) / kMiB * kMiB);
}

double WeightScrubber::pass_s(double interval_s) const {
  const size_t reads = std::max<size_t>(1, (total_ + bytes_per_read_ - 1) / bytes_per_read_);
  return static_cast<double>(reads) * interval_s;
}

WeightScrubber::WeightScrubber(std::vector<ScrubRegion> regions, size_t bytes_per_read,
                               size_t chunk_bytes)
    : regions_(std::move(regions)), bytes_per_read_(std::max<size_t>(1, bytes_per_read)) {
  chunk_bytes = std::max<size_t>(64, chunk_bytes);
  for (size_t r = 0; r < regions_.size(); ++r) {
    if (!regions_[r].data) continue;
    for (size_t off = 0; off < regions_[r].size; off += chunk_bytes)
      chunks_.push_back({r, off, std::min(chunk_bytes, regions_[r].size - off), 0, 0});
    total_ += regions_[r].size;
  }
}

std::vector<WeightScrubber::Mismatch> WeightScrubber::scrub(size_t bytes) {
  std::vector<Mismatch> found;
  size_t done = 0;
  while (done < bytes && !chunks_.empty()) {
    Chunk& c = chunks_[next_];
    const uint64_t sum = scrub_checksum(regions_[c.region].data + c.offset, c.size);
    if (passes_ == 0) c.ref = sum;
    // A chunk that changes back to its load-time bytes (a repaired fault) is not a new fault.
    if (passes_ > 0 && sum != c.sum && sum != c.ref) {
      found.push_back({regions_[c.region].name, c.offset});
      ++n_mismatches_;
      last_ = regions_[c.region].name + " changed in memory (bytes " + std::to_string(c.offset) +
              ".." + std::to_string(c.offset + c.size) + ")";
    }
    c.sum = sum;
    if (passes_ > 0) {
      if (sum != c.ref)
        dirty_.insert(next_);
      else
        dirty_.erase(next_);
    }
    done += c.size;
    if (++next_ == chunks_.size()) {
      next_ = 0;
      ++passes_;
    }
  }
  return found;
}

size_t WeightScrubber::reverify() {
  for (auto it = dirty_.begin(); it != dirty_.end();) {
    Chunk& c = chunks_[*it];
    c.sum = scrub_checksum(regions_[c.region].data + c.offset, c.size);
    it = c.sum == c.ref ? dirty_.erase(it) : std::next(it);
  }
  return dirty_.size();
}

std::vector<Sample> WeightScrubber::read() {
  // At most one pass per reading: checking the same bytes twice finds nothing more.
  scrub(std::min(bytes_per_read_, total_));
  Sample m;
  m.device = "weights";
  m.name = "scrub_mismatches";
  m.kind = Kind::kCriticalEvents;
  m.text = last_;
  if (passes_ > 0)
    m.value = static_cast<double>(n_mismatches_);
  else
    m.why = "the reference pass is not finished";
  Sample p;
  p.device = "weights";
  p.name = "scrub_progress";
  p.text = std::to_string(passes_) + " passes over " + std::to_string(total_ >> 20) + " MiB in " +
           std::to_string(chunks_.size()) + " chunks";
  return {m, p};
}

ScrubThread::ScrubThread(WeightScrubber& scrubber, double interval_s) : scrubber_(scrubber) {
  loop_.start(interval_s, [this] { read_once(); });
}

ScrubThread::~ScrubThread() { stop(); }

void ScrubThread::stop() { loop_.stop(); }

void ScrubThread::read_once() {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  (void)scrubber_.read();
  busy_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - t0).count();
  timespec cpu{};
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu) == 0)
    cpu_ns_ = static_cast<int64_t>(cpu.tv_sec) * 1000000000 + cpu.tv_nsec;
  ++reads_;
}

}  // namespace fennec::ras
