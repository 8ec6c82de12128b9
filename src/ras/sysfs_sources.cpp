// The Linux telemetry sources: powercap (RAPL), hwmon (temperatures, power, amd_energy), thermal
// zones, EDAC memory controllers, cpufreq and thermal_throttle. Each reads files under a root
// directory so tests point it at a fake sysfs tree. Nothing here throws: filesystem calls use
// error codes, and every failure becomes an unavailable Sample with its reason.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <utility>

#include "core/expected.h"
#include "ras/telemetry.h"

namespace fennec::ras {

namespace fs = std::filesystem;

namespace {

std::string join(const std::string& root, const std::string& path) {
  std::string r = root.empty() ? "/" : root;
  while (r.size() > 1 && r.back() == '/') r.pop_back();
  if (r == "/") return path;
  return r + path;
}

std::string errno_reason(int err, const std::string& path) {
  if (err == EACCES || err == EPERM)
    return "permission denied reading " + path + " (run as root or grant read access)";
  if (err == ENOENT) return path + " does not exist";
  return std::string(std::strerror(err)) + " reading " + path;
}

// The file's first line, without the newline. Small files only (sysfs attributes).
Expected<std::string> read_line(const std::string& path) {
  errno = 0;
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (!f) return make_error(errno_reason(errno, path));
  char buf[256];
  errno = 0;
  const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  const int err = errno;
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return make_error(errno_reason(err ? err : EIO, path));
  std::string s(buf, n);
  if (auto nl = s.find('\n'); nl != std::string::npos) s.resize(nl);
  return s;
}

Expected<double> read_number(const std::string& path) {
  auto line = read_line(path);
  if (!line) return line.error();
  const char* b = line->c_str();
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(b, &end);
  if (end == b || errno == ERANGE) return make_error(path + " does not hold a number");
  return v;
}

// Sorted entries of a directory whose names start with `prefix` ({} if it cannot be listed).
std::vector<std::string> list_dir(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> names;
  std::error_code ec;
  fs::directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    std::string n = it->path().filename().string();
    if (n.rfind(prefix, 0) == 0) names.push_back(std::move(n));
  }
  std::sort(names.begin(), names.end(), [](const std::string& a, const std::string& b) {
    // Natural order, so hwmon10 follows hwmon9.
    if (a.size() != b.size()) return a.size() < b.size();
    return a < b;
  });
  return names;
}

bool exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

Sample unavailable(std::string device, std::string name, Kind kind, std::string why) {
  Sample s;
  s.device = std::move(device);
  s.name = std::move(name);
  s.kind = kind;
  s.why = std::move(why);
  return s;
}

// A sample read from one file, scaled; unavailable with the reason when the read fails.
Sample number_sample(std::string device, std::string name, Kind kind, const std::string& path,
                     double scale) {
  Sample s;
  s.device = std::move(device);
  s.name = std::move(name);
  s.kind = kind;
  s.path = path;
  s.scale = scale;
  auto v = read_number(path);
  if (v)
    s.value = *v * scale;
  else
    s.why = v.error().message;
  return s;
}

class FileSource final : public TelemetrySource {
 public:
  FileSource(std::string name, std::vector<Sample> samples) : name_(std::move(name)) {
    for (auto& s : samples)
      if (!s.path.empty()) files_.push_back(std::move(s));
  }
  std::string name() const override { return name_; }
  std::vector<Sample> read() override {
    std::vector<Sample> out;
    out.reserve(files_.size());
    for (const auto& f : files_) {
      Sample s = f;
      s.value.reset();
      s.why.clear();
      auto v = read_number(f.path);
      if (v)
        s.value = *v * f.scale;
      else
        s.why = v.error().message;
      out.push_back(std::move(s));
    }
    return out;
  }

 private:
  std::string name_;
  std::vector<Sample> files_;
};

class PowercapSource final : public TelemetrySource {
 public:
  explicit PowercapSource(std::string root) : root_(std::move(root)) {}
  std::string name() const override { return "powercap"; }
  std::vector<Sample> read() override {
    const std::string dir = join(root_, "/sys/class/powercap");
    std::vector<Sample> out;
    for (const auto& zone : list_dir(dir, "")) {
      const std::string z = dir + "/" + zone;
      if (!exists(z + "/energy_uj")) continue;  // a control type (intel-rapl), not a zone
      auto label = read_line(z + "/name");
      Sample s = number_sample("cpu", zone + "/" + (label ? *label : std::string("?")),
                               Kind::kEnergyUj, z + "/energy_uj", 1.0);
      if (auto w = read_number(z + "/max_energy_range_uj")) s.wrap = *w;
      if (!s.available() && s.why.find("permission") != std::string::npos)
        s.why += "; since Linux 5.10 energy_uj is readable by root only";
      out.push_back(std::move(s));
    }
    if (out.empty())
      out.push_back(unavailable("cpu", "powercap", Kind::kEnergyUj,
                                exists(dir) ? "no RAPL zone under " + dir
                                            : "no " + dir +
                                                  " (no RAPL driver, or a virtual machine that "
                                                  "hides it)"));
    return out;
  }

 private:
  std::string root_;
};

class HwmonSource final : public TelemetrySource {
 public:
  explicit HwmonSource(std::string root) : root_(std::move(root)) {}
  std::string name() const override { return "hwmon"; }
  std::vector<Sample> read() override {
    const std::string dir = join(root_, "/sys/class/hwmon");
    std::vector<Sample> out;
    for (const auto& hw : list_dir(dir, "hwmon")) {
      const std::string h = dir + "/" + hw;
      auto chip = read_line(h + "/name");
      const std::string chip_name = chip ? *chip : hw;
      // amd_energy's counters are the CPU's (per core and per socket); others are the chip's.
      const std::string device = chip_name == "amd_energy" ? "cpu" : "hwmon:" + chip_name;
      for (const auto& f : list_dir(h, "")) {
        Kind kind;
        double scale;
        std::string stem;
        auto ends = [&](const char* suffix) {
          const size_t n = std::strlen(suffix);
          if (f.size() <= n || f.compare(f.size() - n, n, suffix) != 0) return false;
          stem = f.substr(0, f.size() - n);
          return true;
        };
        if (f.rfind("temp", 0) == 0 && ends("_input")) {
          kind = Kind::kTempC, scale = 1e-3;  // millidegrees
        } else if (f.rfind("power", 0) == 0 && (ends("_input") || ends("_average"))) {
          kind = Kind::kPowerW, scale = 1e-6;  // microwatts
        } else if (f.rfind("energy", 0) == 0 && ends("_input")) {
          kind = Kind::kEnergyUj, scale = 1.0;  // microjoules
        } else {
          continue;
        }
        auto label = read_line(h + "/" + stem + "_label");
        out.push_back(number_sample(device, chip_name + "/" + (label ? *label : stem), kind,
                                    h + "/" + f, scale));
      }
    }
    if (out.empty())
      out.push_back(unavailable("hwmon", "hwmon", Kind::kTempC,
                                exists(dir) ? "no hwmon sensor under " + dir
                                            : "no " + dir + " (no sensor drivers loaded)"));
    return out;
  }

 private:
  std::string root_;
};

class ThermalSource final : public TelemetrySource {
 public:
  explicit ThermalSource(std::string root) : root_(std::move(root)) {}
  std::string name() const override { return "thermal"; }
  std::vector<Sample> read() override {
    const std::string dir = join(root_, "/sys/class/thermal");
    std::vector<Sample> out;
    for (const auto& zone : list_dir(dir, "thermal_zone")) {
      const std::string z = dir + "/" + zone;
      auto type = read_line(z + "/type");
      out.push_back(number_sample("thermal", zone + "/" + (type ? *type : std::string("?")),
                                  Kind::kTempC, z + "/temp", 1e-3));
    }
    if (out.empty())
      out.push_back(unavailable("thermal", "thermal", Kind::kTempC,
                                exists(dir) ? "no thermal zone under " + dir : "no " + dir));
    return out;
  }

 private:
  std::string root_;
};

class EdacSource final : public TelemetrySource {
 public:
  explicit EdacSource(std::string root) : root_(std::move(root)) {}
  std::string name() const override { return "edac"; }
  std::vector<Sample> read() override {
    const std::string dir = join(root_, "/sys/devices/system/edac/mc");
    std::vector<Sample> out;
    for (const auto& mc : list_dir(dir, "mc")) {
      const std::string m = dir + "/" + mc;
      if (!exists(m + "/ce_count") && !exists(m + "/ue_count")) continue;
      out.push_back(
          number_sample("mem:" + mc, mc + "/ce_count", Kind::kCeCount, m + "/ce_count", 1));
      out.push_back(
          number_sample("mem:" + mc, mc + "/ue_count", Kind::kUeCount, m + "/ue_count", 1));
    }
    if (out.empty())
      out.push_back(unavailable("mem", "edac", Kind::kCeCount,
                                "no EDAC memory controller under " + dir +
                                    " (no ECC memory, a virtual machine, or no EDAC driver)"));
    return out;
  }

 private:
  std::string root_;
};

class CpufreqSource final : public TelemetrySource {
 public:
  explicit CpufreqSource(std::string root) : root_(std::move(root)) {}
  std::string name() const override { return "cpufreq"; }
  std::vector<Sample> read() override {
    const std::string dir = join(root_, "/sys/devices/system/cpu");
    double freq_sum = 0;
    int n_freq = 0, n_core = 0;
    double core_sum = 0;
    std::map<std::string, double> package;  // physical_package_id -> package_throttle_count
    std::string freq_why, throttle_why;
    for (const auto& cpu : list_dir(dir, "cpu")) {
      if (cpu.size() < 4 || cpu.find_first_not_of("0123456789", 3) != std::string::npos) continue;
      const std::string c = dir + "/" + cpu;
      if (exists(c + "/cpufreq")) {
        if (auto f = read_number(c + "/cpufreq/scaling_cur_freq")) {
          freq_sum += *f, ++n_freq;
        } else {
          freq_why = f.error().message;
        }
      }
      if (exists(c + "/thermal_throttle")) {
        if (auto t = read_number(c + "/thermal_throttle/core_throttle_count")) {
          core_sum += *t, ++n_core;
        } else {
          throttle_why = t.error().message;
        }
        if (auto p = read_number(c + "/thermal_throttle/package_throttle_count")) {
          auto id = read_line(c + "/topology/physical_package_id");
          package[id ? *id : "0"] = *p;  // the same count on every CPU of a package
        }
      }
    }
    std::vector<Sample> out;
    Sample f;
    f.device = "cpu";
    f.name = "cpufreq/scaling_cur_freq (mean)";
    f.kind = Kind::kFreqMhz;
    if (n_freq > 0)
      f.value = freq_sum / n_freq / 1000.0;  // kHz
    else
      f.why = !freq_why.empty()
                  ? freq_why
                  : "no cpufreq under " + dir + " (a virtual machine usually hides it)";
    out.push_back(std::move(f));
    Sample t;
    t.device = "cpu";
    t.name = "thermal_throttle (core + package events)";
    t.kind = Kind::kThrottleCount;
    if (n_core > 0) {
      double total = core_sum;
      for (const auto& [id, count] : package) total += count;
      t.value = total;
    } else {
      t.why = !throttle_why.empty()
                  ? throttle_why
                  : "no thermal_throttle counters under " + dir + " (Intel CPUs only, not in VMs)";
    }
    out.push_back(std::move(t));
    return out;
  }

 private:
  std::string root_;
};

}  // namespace

std::unique_ptr<TelemetrySource> make_file_source(std::string name, std::vector<Sample> samples) {
  return std::make_unique<FileSource>(std::move(name), std::move(samples));
}
std::unique_ptr<TelemetrySource> make_powercap_source(std::string root) {
  return std::make_unique<PowercapSource>(std::move(root));
}
std::unique_ptr<TelemetrySource> make_hwmon_source(std::string root) {
  return std::make_unique<HwmonSource>(std::move(root));
}
std::unique_ptr<TelemetrySource> make_thermal_source(std::string root) {
  return std::make_unique<ThermalSource>(std::move(root));
}
std::unique_ptr<TelemetrySource> make_edac_source(std::string root) {
  return std::make_unique<EdacSource>(std::move(root));
}
std::unique_ptr<TelemetrySource> make_cpufreq_source(std::string root) {
  return std::make_unique<CpufreqSource>(std::move(root));
}

}  // namespace fennec::ras
