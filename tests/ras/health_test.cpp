// Health rules on replayed traces: a rising corrected-error rate moves the device to suspect
// before the injected uncorrected error moves it to unhealthy; pending remaps, throttling and
// telemetry that goes missing make a device suspect; drain is final.
#include "ras/health.h"

#include <gtest/gtest.h>

#include "ras/replay.h"
#include "test_util.h"

namespace fennec::ras {
namespace {

Sample counter(const std::string& device, const std::string& name, Kind kind, double v) {
  Sample s;
  s.device = device;
  s.name = name;
  s.kind = kind;
  s.value = v;
  return s;
}

Sample missing(const std::string& device, const std::string& name, Kind kind) {
  Sample s;
  s.device = device;
  s.name = name;
  s.kind = kind;
  s.why = "gone";
  return s;
}

TEST(Health, RisingCorrectedErrorsSuspectBeforeUncorrectedUnhealthy) {
  auto frames = load_trace(test::source_path("tests/fixtures/ras/ce_rising.jsonl"));
  ASSERT_TRUE(frames) << frames.error().message;
  ReplaySource src(*frames);
  HealthMonitor mon;
  double suspect_at = -1, unhealthy_at = -1, ue_at = -1;
  while (!src.done()) {
    auto samples = src.read();
    for (const auto& s : samples)
      if (s.kind == Kind::kUeCount && s.value && *s.value > 0 && ue_at < 0) ue_at = src.time();
    for (const auto& e : mon.observe(src.time(), samples)) {
      EXPECT_EQ(e.device, "mem:mc0");
      if (e.to == HealthState::kSuspect) {
        suspect_at = e.t;
        EXPECT_EQ(e.from, HealthState::kHealthy);
        EXPECT_NE(e.reason.find("corrected errors"), std::string::npos) << e.reason;
      }
      if (e.to == HealthState::kUnhealthy) {
        unhealthy_at = e.t;
        EXPECT_EQ(e.from, HealthState::kSuspect);
        EXPECT_NE(e.reason.find("uncorrected"), std::string::npos) << e.reason;
      }
    }
  }
  ASSERT_GT(ue_at, 0);
  ASSERT_GE(suspect_at, 0) << "the rising corrected-error rate was not flagged";
  EXPECT_LT(suspect_at, ue_at);
  EXPECT_EQ(unhealthy_at, ue_at);
  // The 40 errors present at the first reading were a baseline, not a warning: nothing fired
  // during the five quiet minutes.
  EXPECT_GT(suspect_at, 270);
  EXPECT_EQ(mon.worst(), HealthState::kUnhealthy);
  auto d = mon.device("mem:mc0");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->state, HealthState::kUnhealthy);
  EXPECT_EQ(mon.device("thermal")->state, HealthState::kHealthy);
  ASSERT_EQ(mon.events().size(), 2u);

  // Unhealthy stays until drained; drained is final.
  EXPECT_TRUE(mon.drain("mem:mc0", 1000, "operator"));
  EXPECT_EQ(mon.device("mem:mc0")->state, HealthState::kDrained);
  EXPECT_FALSE(mon.drain("mem:mc0", 1001, "again"));
}

TEST(Health, SteadyCorrectedErrorsOverThreshold) {
  HealthRules r;
  r.ce_window_s = 100;
  r.ce_suspect_count = 6;
  r.ce_accel_min = 1e9;  // rule S1 alone
  HealthMonitor mon(r);
  double ce = 0;
  double suspect_at = -1;
  for (int i = 0; i <= 10; ++i) {
    ce += i > 0 ? 1 : 0;
    for (const auto& e : mon.observe(
             i * 10.0, {counter("gpu:0", "ecc_corrected_volatile", Kind::kCeCount, ce),
                        counter("gpu:0", "ecc_corrected_aggregate", Kind::kCeCount, ce + 100)}))
      if (e.to == HealthState::kSuspect) suspect_at = e.t;
  }
  // One error per reading, counted once though two counters saw it: the sixth is at t=60.
  EXPECT_EQ(suspect_at, 60);
}

TEST(Health, OneCorrectedErrorNowAndThenIsNotSuspect) {
  HealthMonitor mon;
  double ce = 0;
  for (int i = 0; i < 200; ++i) {
    if (i % 20 == 0) ce += 1;
    mon.observe(i * 30.0, {counter("mem:mc0", "mc0/ce_count", Kind::kCeCount, ce)});
  }
  EXPECT_EQ(mon.worst(), HealthState::kHealthy);
  EXPECT_TRUE(mon.events().empty());
}

TEST(Health, PendingRemapSuspectAndRemapFailureUnhealthy) {
  HealthMonitor mon;
  mon.observe(0, {counter("gpu:0", "remap_pending", Kind::kPendingRemaps, 0)});
  EXPECT_EQ(mon.worst(), HealthState::kHealthy);
  auto ev = mon.observe(1, {counter("gpu:0", "remap_pending", Kind::kPendingRemaps, 1)});
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].to, HealthState::kSuspect);
  EXPECT_NE(ev[0].reason.find("remap"), std::string::npos);
  ev = mon.observe(2, {counter("gpu:0", "remap_pending", Kind::kPendingRemaps, 1),
                       counter("gpu:0", "remap_failure", Kind::kRemapFailure, 1)});
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].to, HealthState::kUnhealthy);
}

TEST(Health, RepeatedThrottlingSuspectAndRecovery) {
  HealthRules r;
  r.throttle_window_s = 60;
  r.throttle_suspect_events = 3;
  r.suspect_clear_s = 100;
  HealthMonitor mon(r);
  double count = 0;
  // Throttled at 10, 20 and 30 s: the third within 60 s makes it suspect.
  for (int i = 0; i <= 3; ++i) {
    if (i > 0) count += 2;
    mon.observe(i * 10.0, {counter("cpu", "thermal_throttle", Kind::kThrottleCount, count)});
  }
  EXPECT_EQ(mon.device("cpu")->state, HealthState::kSuspect);
  EXPECT_NE(mon.device("cpu")->reason.find("throttled in 3 readings"), std::string::npos);
  // Quiet from then on: healthy again 100 s after the last warning.
  for (int i = 4; i <= 14; ++i)
    mon.observe(i * 10.0, {counter("cpu", "thermal_throttle", Kind::kThrottleCount, count)});
  EXPECT_EQ(mon.device("cpu")->state, HealthState::kHealthy);
  // Two throttled readings alone (NVML's active flag) are not enough.
  HealthMonitor mon2(r);
  mon2.observe(0, {counter("gpu:0", "clocks", Kind::kThrottleActive, 1)});
  mon2.observe(10, {counter("gpu:0", "clocks", Kind::kThrottleActive, 1)});
  mon2.observe(20, {counter("gpu:0", "clocks", Kind::kThrottleActive, 0)});
  EXPECT_EQ(mon2.worst(), HealthState::kHealthy);
}

TEST(Health, TelemetryGoingMissingIsSuspectNeverAvailableIsNot) {
  HealthMonitor mon;  // missing_suspect_reads = 3
  mon.observe(0, {counter("gpu:0", "temperature", Kind::kTempC, 60),
                  missing("cpu", "powercap", Kind::kEnergyUj)});
  mon.observe(1, {missing("gpu:0", "temperature", Kind::kTempC),
                  missing("cpu", "powercap", Kind::kEnergyUj)});
  mon.observe(2, {missing("gpu:0", "temperature", Kind::kTempC)});  // powercap not even reported
  EXPECT_EQ(mon.worst(), HealthState::kHealthy);
  auto ev = mon.observe(3, {});  // the GPU's series is no longer reported at all
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].device, "gpu:0");
  EXPECT_EQ(ev[0].to, HealthState::kSuspect);
  EXPECT_NE(ev[0].reason.find("telemetry missing: temperature"), std::string::npos) << ev[0].reason;
  EXPECT_FALSE(mon.device("cpu"));  // never had a value: not a device with a health state
}

TEST(Health, CounterResetIsNotAnError) {
  HealthMonitor mon;
  mon.observe(0, {counter("mem:mc0", "mc0/ue_count", Kind::kUeCount, 5)});
  mon.observe(1, {counter("mem:mc0", "mc0/ue_count", Kind::kUeCount, 0)});  // driver reloaded
  EXPECT_EQ(mon.worst(), HealthState::kHealthy);
  mon.observe(2, {counter("mem:mc0", "mc0/ue_count", Kind::kUeCount, 1)});
  EXPECT_EQ(mon.worst(), HealthState::kUnhealthy);
}

}  // namespace
}  // namespace fennec::ras
