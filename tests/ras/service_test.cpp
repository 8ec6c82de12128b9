// The server's RAS loop: a replayed trace drives the health state seen in /v1/ras, and a source
// that throws is reported, not fatal.
#include "ras/service.h"

#include <gtest/gtest.h>

#include <stdexcept>

#include "test_util.h"

namespace fennec::ras {
namespace {

TEST(RasService, ReplayedTraceReachesUnhealthy) {
  RasOptions o;
  o.trace = test::source_path("tests/fixtures/ras/ce_rising.jsonl");
  auto svc = RasService::create(o);
  ASSERT_TRUE(svc) << svc.error().message;
  for (int i = 0; i < 100; ++i) (*svc)->poll();  // past the end: the last state stays
  EXPECT_EQ((*svc)->worst(), HealthState::kUnhealthy);
  auto j = (*svc)->to_json();
  EXPECT_EQ(j["source"], "trace");
  EXPECT_EQ(j["state"], "unhealthy");
  EXPECT_EQ(j["readings"], 20);
  ASSERT_EQ(j["events"].size(), 2u);
  EXPECT_EQ(j["events"][0]["to"], "suspect");
  EXPECT_EQ(j["events"][1]["to"], "unhealthy");
  EXPECT_FALSE(j["telemetry"].empty());
}

TEST(RasService, BadTraceIsAnError) {
  RasOptions o;
  o.trace = "/nonexistent/trace.jsonl";
  EXPECT_FALSE(RasService::create(o));
  o.trace.clear();
  o.interval_s = 0;
  EXPECT_FALSE(RasService::create(o));
}

class Throwing final : public TelemetrySource {
 public:
  std::string name() const override { return "broken"; }
  std::vector<Sample> read() override { throw std::runtime_error("driver fell over"); }
};

TEST(RasService, ThrowingSourceIsUnavailableAndThreadRuns) {
  std::vector<std::unique_ptr<TelemetrySource>> v;
  v.push_back(std::make_unique<Throwing>());
  RasOptions o;
  o.interval_s = 0.01;
  RasService svc(std::move(v), o);
  svc.start();
  svc.poll();
  svc.stop();
  auto last = svc.last_samples();
  ASSERT_EQ(last.size(), 1u);
  EXPECT_FALSE(last[0].available());
  EXPECT_NE(last[0].why.find("driver fell over"), std::string::npos);
  EXPECT_EQ(svc.worst(), HealthState::kHealthy);
}

}  // namespace
}  // namespace fennec::ras
