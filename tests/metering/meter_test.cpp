// Energy and cost per request: measured from a replayed RAPL trace (across the counter's wrap)
// and estimated from --device-watts, each labelled.
#include "metering/meter.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "ras/replay.h"
#include "test_util.h"

namespace fennec::metering {
namespace {

std::unique_ptr<EnergyCounter> replayed_rapl() {
  auto frames = ras::load_trace(test::source_path("tests/fixtures/ras/rapl_wrap.jsonl"));
  EXPECT_TRUE(frames);
  return std::make_unique<EnergyCounter>(std::make_unique<ras::ReplaySource>(*frames));
}

TEST(EnergyCounter, PackagesOnlyAndWrap) {
  auto c = replayed_rapl();
  EXPECT_FALSE(c->advance());  // the first reading is the baseline
  EXPECT_EQ(c->why(), "first reading");
  EXPECT_DOUBLE_EQ(*c->advance(), 50.0);  // the core subzone is inside the package: not added
  EXPECT_DOUBLE_EQ(*c->advance(), 5.0);
  EXPECT_DOUBLE_EQ(*c->advance(), 80.0);  // across max_energy_range_uj
  EXPECT_FALSE(c->advance());             // the trace has ended: no package counter
  EXPECT_FALSE(c->why().empty());
}

TEST(EnergyCounter, FindOnFakeSysfsAndNone) {
  std::string why;
  auto c = EnergyCounter::find(test::source_path("tests/fixtures/ras/sysfs"), &why);
  ASSERT_NE(c, nullptr) << why;
  auto none = EnergyCounter::find(test::source_path("tests/fixtures/ras/no-such-root"), &why);
  EXPECT_EQ(none, nullptr);
  EXPECT_NE(why.find("no CPU package energy counter"), std::string::npos) << why;
}

TEST(EnergyCounter, LiveFakeSysfsAcrossTheWrap) {
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / "fennec_meter_live_sysfs";
  fs::remove_all(root);
  const fs::path pkg = root / "sys/class/powercap/intel-rapl:0";
  const fs::path core = root / "sys/class/powercap/intel-rapl:0:0";
  fs::create_directories(pkg);
  fs::create_directories(core);
  auto put = [](const fs::path& p, const std::string& v) { std::ofstream(p) << v << "\n"; };
  put(pkg / "name", "package-0");
  put(pkg / "max_energy_range_uj", "1000000000");
  put(pkg / "energy_uj", "999000000");
  put(core / "name", "core");
  put(core / "energy_uj", "5");
  std::string why;
  auto c = EnergyCounter::find(root.string(), &why);
  ASSERT_NE(c, nullptr) << why;
  put(pkg / "energy_uj", "999500000");
  EXPECT_DOUBLE_EQ(*c->advance(), 0.5);
  fs::remove_all(core);  // only the package file is read from now on
  put(pkg / "energy_uj", "1500000");
  EXPECT_DOUBLE_EQ(*c->advance(), 2.0);  // 0.5 J to the wrap, 1.5 J after it
  fs::remove(pkg / "energy_uj");
  EXPECT_FALSE(c->advance());  // unreadable: no value, and why says so
  EXPECT_NE(c->why().find("energy_uj"), std::string::npos) << c->why();
  fs::remove_all(root);
}

TEST(StepMeter, MeasuredJoulesAndCostPerRequestFromReplayedRapl) {
  MeterOptions o;
  o.price_kwh = 0.30;
  o.price_hour = 3.6;  // 0.001 USD per busy second
  StepMeter m(o, replayed_rapl());
  ASSERT_EQ(m.source(), EnergySource::kMeasured);

  // Step 1 (frames 0 -> 1, 50 J, 2 s busy): request A computes 3 tokens, B 1.
  Usage a, b;
  m.begin_step();
  const StepMeter::Share s1[] = {{1, 3}, {2, 1}};
  auto u1 = m.end_step(2.0, s1);
  ASSERT_EQ(u1.size(), 2u);
  a.add(u1[0]);
  b.add(u1[1]);
  // Idle between steps (frames 1 -> 2, 5 J) is charged to no one. Step 2 (frames 2 -> 3, across
  // the counter's wrap, 80 J, 1 s busy): A alone.
  m.begin_step();
  const StepMeter::Share s2[] = {{1, 1}};
  a.add(m.end_step(1.0, s2)[0]);

  EXPECT_DOUBLE_EQ(a.joules, 50.0 * 0.75 + 80.0);
  EXPECT_DOUBLE_EQ(b.joules, 50.0 * 0.25);
  EXPECT_EQ(a.source, EnergySource::kMeasured);
  EXPECT_STREQ(energy_source_name(b.source), "measured");
  EXPECT_DOUBLE_EQ(a.busy_s, 1.5 + 1.0);
  EXPECT_NEAR(a.cost_usd, 117.5 / 3.6e6 * 0.30 + 2.5 * 0.001, 1e-12);
  EXPECT_NEAR(b.cost_usd, 12.5 / 3.6e6 * 0.30 + 0.5 * 0.001, 1e-12);

  auto t = m.totals();
  EXPECT_DOUBLE_EQ(t.measured_joules, 130.0);
  EXPECT_DOUBLE_EQ(t.estimated_joules, 0.0);
  EXPECT_NEAR(t.cost_usd, a.cost_usd + b.cost_usd, 1e-12);

  // The trace has ended: the next step cannot be measured and says so.
  m.begin_step();
  auto u3 = m.end_step(0.5, s2);
  EXPECT_EQ(u3[0].source, EnergySource::kEstimated);
  a.add(u3[0]);
  EXPECT_EQ(a.source, EnergySource::kEstimated);  // any estimated step makes the request estimated
}

TEST(StepMeter, EstimatedFromDeviceWattsIsLabelled) {
  MeterOptions o;
  o.device_watts = 100;
  o.price_kwh = 0.15;
  o.price_hour = 0;
  StepMeter m(o, nullptr);
  EXPECT_EQ(m.source(), EnergySource::kEstimated);
  m.begin_step();
  const StepMeter::Share s[] = {{7, 30}, {8, 10}};
  auto u = m.end_step(0.5, s);
  ASSERT_EQ(u.size(), 2u);
  EXPECT_DOUBLE_EQ(u[0].joules, 37.5);
  EXPECT_DOUBLE_EQ(u[1].joules, 12.5);
  EXPECT_EQ(u[0].source, EnergySource::kEstimated);
  EXPECT_STREQ(energy_source_name(u[1].source), "estimated");
  EXPECT_NEAR(u[0].cost_usd, 37.5 / 3.6e6 * 0.15, 1e-15);
  EXPECT_DOUBLE_EQ(m.totals().estimated_joules, 50.0);
  EXPECT_DOUBLE_EQ(m.totals().measured_joules, 0.0);
}

TEST(StepMeter, Defaults) {
  StepMeter m({}, nullptr);
  EXPECT_GE(m.options().device_watts, 10.0);
  EXPECT_DOUBLE_EQ(m.options().price_kwh, 0.15);
  EXPECT_DOUBLE_EQ(m.options().price_hour, 0.0);
  // A step without tokens splits evenly; an empty step returns nothing.
  const StepMeter::Share s[] = {{1, 0}, {2, 0}};
  auto u = m.end_step(1.0, s);
  EXPECT_DOUBLE_EQ(u[0].joules, u[1].joules);
  EXPECT_TRUE(m.end_step(1.0, {}).empty());
}

}  // namespace
}  // namespace fennec::metering
