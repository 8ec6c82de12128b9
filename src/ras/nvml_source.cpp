// NVIDIA GPU telemetry through NVML, opened with dlopen at run time. Where there is no driver
// (this build machine) the source reports one unavailable sample with dlopen's reason.
#include <dlfcn.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>

#include "ras/nvml.h"
#include "ras/telemetry.h"

namespace fennec::ras {

namespace nvml {

bool xid_is_application_error(unsigned long long xid) {
  return xid == 13 || xid == 31 || xid == 43 || xid == 45 || xid == 68 || xid == 109;
}

std::string Api::error(Return r) const {
  if (error_string)
    if (const char* s = error_string(r)) return s;
  return "NVML error " + std::to_string(r);
}

namespace {

template <class F>
void resolve(void* lib, F& fn, const char* name) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
}

Expected<const Api*> open_library() {
  const char* env = std::getenv("FENNEC_NVML_LIBRARY");  // another path (tests, odd installs)
  const std::string path = env && *env ? env : "libnvidia-ml.so.1";
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* e = dlerror();
    return make_error("no NVIDIA driver: cannot load " + path +
                      (e ? std::string(" (") + e + ")" : ""));
  }
  static Api api;
  resolve(lib, api.init, "nvmlInit_v2");
  resolve(lib, api.shutdown, "nvmlShutdown");
  resolve(lib, api.error_string, "nvmlErrorString");
  resolve(lib, api.system_get_driver_version, "nvmlSystemGetDriverVersion");
  resolve(lib, api.device_get_count, "nvmlDeviceGetCount_v2");
  resolve(lib, api.device_get_handle_by_index, "nvmlDeviceGetHandleByIndex_v2");
  resolve(lib, api.device_get_name, "nvmlDeviceGetName");
  resolve(lib, api.device_get_total_ecc_errors, "nvmlDeviceGetTotalEccErrors");
  resolve(lib, api.device_get_memory_error_counter, "nvmlDeviceGetMemoryErrorCounter");
  resolve(lib, api.device_get_remapped_rows, "nvmlDeviceGetRemappedRows");
  resolve(lib, api.device_get_current_clocks_throttle_reasons,
          "nvmlDeviceGetCurrentClocksEventReasons");
  if (!api.device_get_current_clocks_throttle_reasons)
    resolve(lib, api.device_get_current_clocks_throttle_reasons,
            "nvmlDeviceGetCurrentClocksThrottleReasons");
  resolve(lib, api.device_get_power_usage, "nvmlDeviceGetPowerUsage");
  resolve(lib, api.device_get_total_energy_consumption, "nvmlDeviceGetTotalEnergyConsumption");
  resolve(lib, api.device_get_temperature, "nvmlDeviceGetTemperature");
  resolve(lib, api.event_set_create, "nvmlEventSetCreate");
  resolve(lib, api.device_register_events, "nvmlDeviceRegisterEvents");
  resolve(lib, api.event_set_wait, "nvmlEventSetWait_v2");
  if (!api.init || !api.device_get_count || !api.device_get_handle_by_index)
    return make_error(path + " lacks nvmlInit_v2 / nvmlDeviceGetCount_v2: the driver is too old");
  if (const Return r = api.init(); r != kSuccess)
    return make_error("nvmlInit failed: " + api.error(r));
  return &api;
}

}  // namespace

Expected<const Api*> load() {
  static std::once_flag once;
  static Expected<const Api*> result = make_error("not loaded");
  std::call_once(once, [] { result = open_library(); });
  return result;
}

}  // namespace nvml

namespace {

class NvmlSource final : public TelemetrySource {
 public:
  std::string name() const override { return "nvml"; }

  std::vector<Sample> read() override {
    std::vector<Sample> out;
    auto api = nvml::load();
    if (!api) {
      Sample s;
      s.device = "gpu";
      s.name = "nvml";
      s.why = api.error().message;
      out.push_back(std::move(s));
      return out;
    }
    const nvml::Api& a = **api;
    unsigned count = 0;
    if (const auto r = a.device_get_count(&count); r != nvml::kSuccess) {
      Sample s;
      s.device = "gpu";
      s.name = "nvml";
      s.why = "nvmlDeviceGetCount: " + a.error(r);
      out.push_back(std::move(s));
      return out;
    }
    if (a.system_get_driver_version) {
      char buf[96] = {};
      if (a.system_get_driver_version(buf, sizeof buf) == nvml::kSuccess) {
        Sample s;
        s.device = "gpu";
        s.name = "driver_version";
        s.text = buf;
        out.push_back(std::move(s));
      }
    }
    if (count == 0) {
      Sample s;
      s.device = "gpu";
      s.name = "nvml";
      s.why = "the NVIDIA driver sees no GPU";
      out.push_back(std::move(s));
    }
    for (unsigned i = 0; i < count; ++i) read_device(a, i, out);
    read_xid_events(a, count, out);
    return out;
  }

 private:
  // A sample from one NVML call; `r` decides between the value and the reason.
  static void add(std::vector<Sample>& out, const std::string& device, std::string name, Kind kind,
                  const nvml::Api& a, nvml::Return r, double value, const char* fn) {
    Sample s;
    s.device = device;
    s.name = std::move(name);
    s.kind = kind;
    if (r == nvml::kSuccess)
      s.value = value;
    else if (r == nvml::kErrorNotSupported)
      s.why = std::string(fn) + ": not supported on this GPU";
    else
      s.why = std::string(fn) + ": " + a.error(r);
    out.push_back(std::move(s));
  }
  static void missing(std::vector<Sample>& out, const std::string& device, std::string name,
                      Kind kind, const char* fn) {
    Sample s;
    s.device = device;
    s.name = std::move(name);
    s.kind = kind;
    s.why = std::string(fn) + " is not in this driver's NVML";
    out.push_back(std::move(s));
  }

  // Xid critical errors since the last reading, per GPU, as cumulative counts (health rule U3).
  void read_xid_events(const nvml::Api& a, unsigned count, std::vector<Sample>& out) {
    if (!events_tried_) {
      events_tried_ = true;
      if (a.event_set_create && a.device_register_events && a.event_set_wait &&
          a.event_set_create(&events_) == nvml::kSuccess) {
        for (unsigned i = 0; i < count; ++i) {
          nvml::Device h = nullptr;
          const bool ok = a.device_get_handle_by_index(i, &h) == nvml::kSuccess &&
                          a.device_register_events(h, nvml::kEventTypeXidCriticalError, events_) ==
                              nvml::kSuccess;
          if (ok) handles_[i] = h;
        }
      }
    }
    // Drain what is queued without waiting.
    for (int n = 0; events_ && n < 1024; ++n) {
      nvml::EventData e{};
      if (a.event_set_wait(events_, &e, 0) != nvml::kSuccess) break;
      if (e.event_type != nvml::kEventTypeXidCriticalError ||
          nvml::xid_is_application_error(e.event_data))
        continue;
      for (const auto& [i, h] : handles_)
        if (h == e.device) {
          ++xids_[i];
          last_xid_[i] = "Xid " + std::to_string(e.event_data);
        }
    }
    for (unsigned i = 0; i < count; ++i) {
      Sample s;
      s.device = "gpu:" + std::to_string(i);
      s.name = "xid_critical_errors";
      s.kind = Kind::kCriticalEvents;
      if (handles_.count(i)) {
        s.value = static_cast<double>(xids_[i]);
        s.text = last_xid_[i];
      } else {
        s.why = "NVML cannot deliver Xid events for this GPU";
      }
      out.push_back(std::move(s));
    }
  }

  nvml::EventSet events_ = nullptr;
  bool events_tried_ = false;
  std::map<unsigned, nvml::Device> handles_;
  std::map<unsigned, int64_t> xids_;
  std::map<unsigned, std::string> last_xid_;

  void read_device(const nvml::Api& a, unsigned i, std::vector<Sample>& out) {
    const std::string dev = "gpu:" + std::to_string(i);
    nvml::Device h = nullptr;
    if (const auto r = a.device_get_handle_by_index(i, &h); r != nvml::kSuccess) {
      Sample s;
      s.device = dev;
      s.name = "handle";
      s.kind = Kind::kCriticalEvents;  // a GPU that cannot be reached is itself an event
      s.why = "nvmlDeviceGetHandleByIndex: " + a.error(r);
      out.push_back(std::move(s));
      return;
    }
    if (a.device_get_name) {
      char buf[96] = {};
      if (a.device_get_name(h, buf, sizeof buf) == nvml::kSuccess) {
        Sample s;
        s.device = dev;
        s.name = "name";
        s.text = buf;
        out.push_back(std::move(s));
      }
    }
    if (a.device_get_temperature) {
      unsigned t = 0;
      const auto r = a.device_get_temperature(h, nvml::kTemperatureGpu, &t);
      add(out, dev, "temperature", Kind::kTempC, a, r, t, "nvmlDeviceGetTemperature");
    }
    if (a.device_get_power_usage) {
      unsigned mw = 0;
      const auto r = a.device_get_power_usage(h, &mw);
      add(out, dev, "power", Kind::kPowerW, a, r, mw / 1000.0, "nvmlDeviceGetPowerUsage");
    }
    if (a.device_get_total_energy_consumption) {
      unsigned long long mj = 0;
      const auto r = a.device_get_total_energy_consumption(h, &mj);
      add(out, dev, "total_energy", Kind::kEnergyUj, a, r, static_cast<double>(mj) * 1000.0,
          "nvmlDeviceGetTotalEnergyConsumption");
    }
    if (a.device_get_current_clocks_throttle_reasons) {
      unsigned long long reasons = 0;
      const auto r = a.device_get_current_clocks_throttle_reasons(h, &reasons);
      add(out, dev, "clocks_throttled_by_heat_or_power", Kind::kThrottleActive, a, r,
          (reasons & nvml::kThrottleHealthMask) ? 1.0 : 0.0,
          "nvmlDeviceGetCurrentClocksEventReasons");
    } else {
      missing(out, dev, "clocks_throttled_by_heat_or_power", Kind::kThrottleActive,
              "nvmlDeviceGetCurrentClocksEventReasons");
    }
    // ECC: totals (volatile since driver load, aggregate over the board's life), then DRAM and
    // SRAM apart. The health rules take, per device, the largest increase among these, so the
    // same error counted in several of them is not counted twice.
    struct Ecc {
      int type, counter;
      const char* name;
    };
    for (const Ecc& e :
         {Ecc{nvml::kMemoryErrorCorrected, nvml::kVolatileEcc, "ecc_corrected_volatile"},
          Ecc{nvml::kMemoryErrorCorrected, nvml::kAggregateEcc, "ecc_corrected_aggregate"},
          Ecc{nvml::kMemoryErrorUncorrected, nvml::kVolatileEcc, "ecc_uncorrected_volatile"},
          Ecc{nvml::kMemoryErrorUncorrected, nvml::kAggregateEcc, "ecc_uncorrected_aggregate"}}) {
      const Kind kind = e.type == nvml::kMemoryErrorCorrected ? Kind::kCeCount : Kind::kUeCount;
      if (a.device_get_total_ecc_errors) {
        unsigned long long n = 0;
        const auto r = a.device_get_total_ecc_errors(h, e.type, e.counter, &n);
        add(out, dev, e.name, kind, a, r, static_cast<double>(n), "nvmlDeviceGetTotalEccErrors");
      } else {
        missing(out, dev, e.name, kind, "nvmlDeviceGetTotalEccErrors");
      }
      for (const auto& [loc, loc_name] :
           {std::pair{nvml::kLocationDram, "_dram"}, std::pair{nvml::kLocationSram, "_sram"}}) {
        if (!a.device_get_memory_error_counter) break;
        unsigned long long n = 0;
        const auto r = a.device_get_memory_error_counter(h, e.type, e.counter, loc, &n);
        add(out, dev, std::string(e.name) + loc_name, kind, a, r, static_cast<double>(n),
            "nvmlDeviceGetMemoryErrorCounter");
      }
    }
    if (a.device_get_remapped_rows) {
      unsigned corr = 0, unc = 0, pending = 0, failed = 0;
      const auto r = a.device_get_remapped_rows(h, &corr, &unc, &pending, &failed);
      add(out, dev, "remapped_rows", Kind::kRemappedRows, a, r, double(corr) + double(unc),
          "nvmlDeviceGetRemappedRows");
      add(out, dev, "remap_pending", Kind::kPendingRemaps, a, r, pending ? 1.0 : 0.0,
          "nvmlDeviceGetRemappedRows");
      add(out, dev, "remap_failure", Kind::kRemapFailure, a, r, failed ? 1.0 : 0.0,
          "nvmlDeviceGetRemappedRows");
    } else {
      missing(out, dev, "remapped_rows", Kind::kRemappedRows, "nvmlDeviceGetRemappedRows");
    }
  }
};

}  // namespace

std::unique_ptr<TelemetrySource> make_nvml_source() { return std::make_unique<NvmlSource>(); }

}  // namespace fennec::ras
