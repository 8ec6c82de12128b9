// The small part of NVIDIA's NVML API fennec uses, declared here because the CUDA toolkit ships
// no nvml.h. Values and signatures follow NVIDIA's public NVML reference (nvml.h of driver
// R450+). The library is opened with dlopen("libnvidia-ml.so.1") at run time, so fennec builds
// and runs where no NVIDIA driver is installed.
#pragma once

#include <memory>
#include <string>

#include "core/expected.h"

namespace fennec::ras::nvml {

using Return = int;  // nvmlReturn_t
constexpr Return kSuccess = 0;
constexpr Return kErrorNotSupported = 3;
constexpr Return kErrorNoPermission = 4;
constexpr Return kErrorInsufficientSize = 7;
constexpr Return kErrorTimeout = 10;
constexpr Return kErrorGpuIsLost = 15;

using Device = struct nvmlDevice_st*;      // nvmlDevice_t
using EventSet = struct nvmlEventSet_st*;  // nvmlEventSet_t

// nvmlEventData_t
struct EventData {
  Device device;
  unsigned long long event_type;
  unsigned long long event_data;  // the Xid for kEventTypeXidCriticalError
  unsigned gpu_instance_id;
  unsigned compute_instance_id;
};
constexpr unsigned long long kEventTypeXidCriticalError = 0x8;
// Xids an application causes (its own faults, not the GPU's): not counted against the device,
// as NVIDIA's Kubernetes device plugin skips them. 13 graphics engine exception, 31 MMU fault,
// 43 GPU stopped processing, 45 preemptive cleanup, 68 video decoder exception, 109 context
// switch timeout.
bool xid_is_application_error(unsigned long long xid);

// nvmlMemoryErrorType_t
constexpr int kMemoryErrorCorrected = 0;
constexpr int kMemoryErrorUncorrected = 1;
// nvmlEccCounterType_t
constexpr int kVolatileEcc = 0;   // since the last driver load
constexpr int kAggregateEcc = 1;  // over the board's life
// nvmlMemoryLocation_t
constexpr int kLocationDram = 2;  // device memory (DRAM on Turing+)
constexpr int kLocationSram = 7;  // on-chip SRAM (Turing+)
// nvmlTemperatureSensors_t
constexpr int kTemperatureGpu = 0;

// nvmlClocksThrottleReason* / nvmlClocksEventReason* bits
constexpr unsigned long long kThrottleGpuIdle = 0x1;
constexpr unsigned long long kThrottleApplicationsClocksSetting = 0x2;
constexpr unsigned long long kThrottleSwPowerCap = 0x4;
constexpr unsigned long long kThrottleHwSlowdown = 0x8;
constexpr unsigned long long kThrottleSyncBoost = 0x10;
constexpr unsigned long long kThrottleSwThermalSlowdown = 0x20;
constexpr unsigned long long kThrottleHwThermalSlowdown = 0x40;
constexpr unsigned long long kThrottleHwPowerBrakeSlowdown = 0x80;
// The reasons that mean the GPU is held down by heat or power (not idle, not a user setting).
constexpr unsigned long long kThrottleHealthMask =
    kThrottleSwPowerCap | kThrottleHwSlowdown | kThrottleSwThermalSlowdown |
    kThrottleHwThermalSlowdown | kThrottleHwPowerBrakeSlowdown;

// Function pointers resolved from the library; a symbol the installed driver lacks stays null
// (older drivers have no remapped rows; newer ones renamed the throttle-reason call).
struct Api {
  Return (*init)() = nullptr;      // nvmlInit_v2
  Return (*shutdown)() = nullptr;  // nvmlShutdown
  const char* (*error_string)(Return) = nullptr;
  Return (*system_get_driver_version)(char*, unsigned) = nullptr;
  Return (*device_get_count)(unsigned*) = nullptr;                    // _v2
  Return (*device_get_handle_by_index)(unsigned, Device*) = nullptr;  // _v2
  Return (*device_get_name)(Device, char*, unsigned) = nullptr;
  Return (*device_get_total_ecc_errors)(Device, int, int, unsigned long long*) = nullptr;
  Return (*device_get_memory_error_counter)(Device, int, int, int, unsigned long long*) = nullptr;
  Return (*device_get_remapped_rows)(Device, unsigned*, unsigned*, unsigned*, unsigned*) = nullptr;
  Return (*device_get_current_clocks_throttle_reasons)(Device, unsigned long long*) = nullptr;
  Return (*device_get_power_usage)(Device, unsigned*) = nullptr;  // milliwatts
  Return (*device_get_total_energy_consumption)(Device, unsigned long long*) = nullptr;  // mJ
  Return (*device_get_temperature)(Device, int, unsigned*) = nullptr;
  Return (*event_set_create)(EventSet*) = nullptr;
  Return (*device_register_events)(Device, unsigned long long, EventSet) = nullptr;
  Return (*event_set_wait)(EventSet, EventData*, unsigned) = nullptr;  // _v2, timeout in ms

  std::string error(Return r) const;  // NVML's words for r, or the number
};

// Opens the library (once per process) and calls nvmlInit. The error says why not: no driver
// library, a missing core symbol, or nvmlInit's own error (no GPU, driver/library mismatch).
Expected<const Api*> load();

}  // namespace fennec::ras::nvml
