// Telemetry sources against a fake sysfs tree and replayed traces: values read and scaled,
// counter wrap-around, and sources that are missing or unreadable reported as unavailable (with
// a reason), never as zero.
#include "ras/telemetry.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "ras/replay.h"
#include "test_util.h"

namespace fennec::ras {
namespace {

namespace fs = std::filesystem;

const std::string kSysfs = test::source_path("tests/fixtures/ras/sysfs");

const Sample* find(const std::vector<Sample>& v, const std::string& name) {
  for (const auto& s : v)
    if (s.name == name) return &s;
  return nullptr;
}

// A scratch directory removed at the end of the test.
struct TempDir {
  TempDir() {
    path = fs::temp_directory_path() /
           ("fennec_ras_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
            "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  void put(const std::string& rel, const std::string& text) const {
    fs::create_directories((path / rel).parent_path());
    std::ofstream(path / rel) << text << "\n";
  }
  fs::path path;
};

TEST(CounterDelta, ForwardWrapAndReset) {
  EXPECT_EQ(counter_delta(100, 250, 0), 150);
  EXPECT_EQ(counter_delta(100, 250, 1000), 150);
  // 0..1000: from 900 to the wrap is 100, then 50 more.
  EXPECT_EQ(counter_delta(900, 50, 1000), 150);
  // Back without a known range: a reset, no delta rather than a wrong one.
  EXPECT_FALSE(counter_delta(900, 50, 0).has_value());
  EXPECT_FALSE(counter_delta(2000, 50, 1000).has_value());
}

TEST(SysfsSources, ReadFakeTree) {
  auto powercap = make_powercap_source(kSysfs)->read();
  ASSERT_EQ(powercap.size(), 2u);  // the control type "intel-rapl" has no energy_uj
  const Sample* pkg = find(powercap, "intel-rapl:0/package-0");
  ASSERT_NE(pkg, nullptr);
  EXPECT_EQ(pkg->kind, Kind::kEnergyUj);
  EXPECT_EQ(pkg->value, 123456789.0);
  EXPECT_EQ(pkg->wrap, 262143328850.0);
  ASSERT_NE(find(powercap, "intel-rapl:0:0/core"), nullptr);

  auto hwmon = make_hwmon_source(kSysfs)->read();
  const Sample* tctl = find(hwmon, "k10temp/Tctl");
  ASSERT_NE(tctl, nullptr);
  EXPECT_EQ(tctl->kind, Kind::kTempC);
  EXPECT_DOUBLE_EQ(*tctl->value, 45.25);
  const Sample* sock = find(hwmon, "amd_energy/Esocket0");
  ASSERT_NE(sock, nullptr);
  EXPECT_EQ(sock->device, "cpu");
  EXPECT_EQ(sock->kind, Kind::kEnergyUj);
  EXPECT_EQ(sock->value, 987654321.0);

  auto thermal = make_thermal_source(kSysfs)->read();
  ASSERT_EQ(thermal.size(), 1u);
  EXPECT_EQ(thermal[0].name, "thermal_zone0/x86_pkg_temp");
  EXPECT_DOUBLE_EQ(*thermal[0].value, 51.0);

  auto edac = make_edac_source(kSysfs)->read();
  ASSERT_EQ(edac.size(), 2u);
  EXPECT_EQ(edac[0].device, "mem:mc0");
  EXPECT_EQ(edac[0].kind, Kind::kCeCount);
  EXPECT_EQ(edac[0].value, 3.0);
  EXPECT_EQ(edac[1].kind, Kind::kUeCount);
  EXPECT_EQ(edac[1].value, 0.0);  // a real zero: the file says 0

  auto cpu = make_cpufreq_source(kSysfs)->read();
  ASSERT_EQ(cpu.size(), 2u);
  EXPECT_DOUBLE_EQ(*cpu[0].value, 2700.0);     // mean of 2.4 and 3.0 GHz
  EXPECT_DOUBLE_EQ(*cpu[1].value, 2 + 5 + 7);  // core counts plus the package's once
}

TEST(SysfsSources, MissingSourcesAreUnavailableNotZero) {
  TempDir empty;
  auto all = read_all(make_system_sources(empty.path.string()));
  ASSERT_FALSE(all.empty());
  for (const auto& s : all) {
    if (s.kind == Kind::kInfo && !s.text.empty()) continue;        // a real GPU driver's version
    if (s.device.rfind("gpu", 0) == 0 && s.available()) continue;  // a machine with a GPU
    EXPECT_FALSE(s.available()) << s.name;
    EXPECT_FALSE(s.why.empty()) << s.name;
  }
  // One sample per source, each saying what is missing.
  EXPECT_NE(find(all, "powercap")->why.find("powercap"), std::string::npos);
  EXPECT_NE(find(all, "edac")->why.find("EDAC"), std::string::npos);
}

TEST(SysfsSources, UnreadableAndGarbageFilesAreUnavailable) {
  TempDir t;
  // energy_uj that cannot be read (a directory stands in for a root-only file: tests may run
  // as root, where permissions do not stop a read).
  t.put("sys/class/powercap/intel-rapl:0/name", "package-0");
  fs::create_directories(t.path / "sys/class/powercap/intel-rapl:0/energy_uj");
  t.put("sys/devices/system/edac/mc/mc0/ce_count", "not a number");
  t.put("sys/devices/system/edac/mc/mc0/ue_count", "");
  auto p = make_powercap_source(t.path.string())->read();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].name, "intel-rapl:0/package-0");
  EXPECT_FALSE(p[0].available());
  EXPECT_FALSE(p[0].why.empty());
  auto e = make_edac_source(t.path.string())->read();
  ASSERT_EQ(e.size(), 2u);
  EXPECT_FALSE(e[0].available());
  EXPECT_NE(e[0].why.find("not hold a number"), std::string::npos);
  EXPECT_FALSE(e[1].available());
}

TEST(Nvml, UnavailableWithoutDriverIsCleanNotZero) {
  // This machine has no NVIDIA driver; point the loader at a library that cannot exist so the
  // test means the same on a GPU machine.
  ::setenv("FENNEC_NVML_LIBRARY", "/nonexistent/libnvidia-ml.so.1", 1);
  auto s = make_nvml_source()->read();
  ::unsetenv("FENNEC_NVML_LIBRARY");
  if (!s.empty() && s[0].why.empty()) GTEST_SKIP() << "NVML was already loaded in this process";
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].device, "gpu");
  EXPECT_FALSE(s[0].available());
  EXPECT_NE(s[0].why.find("no NVIDIA driver"), std::string::npos) << s[0].why;
}

TEST(Replay, ParsesTraceAndPlaysFrames) {
  auto frames = load_trace(test::source_path("tests/fixtures/ras/rapl_wrap.jsonl"));
  ASSERT_TRUE(frames) << frames.error().message;
  ASSERT_EQ(frames->size(), 4u);
  ReplaySource src(*frames);
  std::vector<double> pkg;
  while (!src.done()) {
    auto s = src.read();
    const Sample* p = find(s, "intel-rapl:0/package-0");
    ASSERT_NE(p, nullptr);
    pkg.push_back(*p->value);
    EXPECT_EQ(p->wrap, 262143328850.0);
  }
  // Deltas across the trace, wrap included: 50 J, 5 J, 80 J.
  EXPECT_EQ(counter_delta(pkg[0], pkg[1], 262143328850.0), 50e6);
  EXPECT_EQ(counter_delta(pkg[1], pkg[2], 262143328850.0), 5e6);
  EXPECT_EQ(counter_delta(pkg[2], pkg[3], 262143328850.0), 80e6);
  auto end = src.read();
  ASSERT_EQ(end.size(), 1u);
  EXPECT_FALSE(end[0].available());
}

TEST(Replay, RoundTripAndErrors) {
  Frame f;
  f.t = 1.5;
  Sample a;
  a.device = "gpu:0";
  a.name = "remap_pending";
  a.kind = Kind::kPendingRemaps;
  a.value = 1;
  Sample b;
  b.device = "cpu";
  b.name = "powercap";
  b.kind = Kind::kEnergyUj;
  b.why = "no RAPL";
  f.samples = {a, b};
  auto back = parse_trace(frame_to_json(f));
  ASSERT_TRUE(back);
  ASSERT_EQ(back->size(), 1u);
  const auto& g = (*back)[0];
  EXPECT_EQ(g.t, 1.5);
  ASSERT_EQ(g.samples.size(), 2u);
  EXPECT_EQ(g.samples[0].kind, Kind::kPendingRemaps);
  EXPECT_EQ(g.samples[0].value, 1.0);
  EXPECT_FALSE(g.samples[1].available());
  EXPECT_EQ(g.samples[1].why, "no RAPL");

  EXPECT_FALSE(parse_trace("{\"t\": 1}\n{\"t\": 0}\n"));  // time going back
  EXPECT_FALSE(parse_trace("{\"t\": 0, \"samples\": [{\"device\": \"x\", \"kind\": \"bogus\"}]}"));
  EXPECT_FALSE(parse_trace("not json"));
  EXPECT_FALSE(load_trace("/nonexistent/trace.jsonl"));
}

}  // namespace
}  // namespace fennec::ras
