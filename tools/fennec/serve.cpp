// fennec serve: the OpenAI-compatible server. Every flag can also come from a FENNEC_* variable.
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include "core/thread_pool.h"
#include "engine/loaded_model.h"
#include "engine/scheduler.h"
#include "metering/meter.h"
#include "ras/abft.h"
#include "ras/abft_observer.h"
#include "ras/canary.h"
#include "ras/fault_injection.h"
#include "ras/recovery.h"
#include "ras/scrubber.h"
#include "ras/service.h"
#include "ras/weight_regions.h"
#include "server/api_server.h"
#include "tools/fennec/commands.h"

namespace fennec::cli {
namespace {

std::atomic<int> g_signal{0};
extern "C" void on_signal(int sig) { g_signal.store(sig); }

// "512M", "2G", "1.5GiB", "1048576" -> bytes; -1 if malformed.
int64_t parse_size(const std::string& s) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (...) {
    return -1;
  }
  std::string unit = s.substr(pos);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double mul = 1;
  if (unit == "" || unit == "B") {
    mul = 1;
  } else if (unit == "K" || unit == "KB" || unit == "KIB") {
    mul = 1024.0;
  } else if (unit == "M" || unit == "MB" || unit == "MIB") {
    mul = 1024.0 * 1024;
  } else if (unit == "G" || unit == "GB" || unit == "GIB") {
    mul = 1024.0 * 1024 * 1024;
  } else {
    return -1;
  }
  if (!(v > 0)) return -1;
  return static_cast<int64_t>(v * mul);
}

struct ServeFlags {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string api_key;
  std::string served_name;
  int max_seqs = 64;
  std::string kv_mem = "1G";
  int ctx = 0;
  int threads = 0;
  double drain_timeout = 30;
  int max_batch_tokens = 512;
  int max_queue = 4096;
  std::string max_body = "8M";
  int io_threads = 1;
  bool no_prefix_caching = false;
  bool quiet = false;
  double device_watts = 0;  // metering (docs/ras.md); 0: default
  double price_kwh = 0.15;
  double price_hour = 0;
  double ras_interval = 10;
  std::string ras_trace;
  std::string sysfs_root = "/";
  std::string scrub_mb = "auto";
  double canary_interval = 600;
  double ras_recovery_timeout = 60;
  bool enable_fault_injection = false;
  bool abft = false;
  KvTypeFlags kv;
};

int serve(const ServeFlags& f) {
  const int64_t kv_bytes = parse_size(f.kv_mem);
  if (kv_bytes <= 0) {
    std::fprintf(stderr, "fennec: --kv-mem '%s' is not a size (examples: 512M, 2G)\n", f.kv_mem.c_str());
    return 2;
  }
  const int64_t max_body = parse_size(f.max_body);
  if (max_body <= 0) {
    std::fprintf(stderr, "fennec: --max-body '%s' is not a size\n", f.max_body.c_str());
    return 2;
  }
  if (f.max_seqs < 1 || f.max_batch_tokens < 1 || f.max_queue < 1 || f.drain_timeout < 0) {
    std::fprintf(stderr, "fennec: --max-seqs, --max-batch-tokens and --max-queue must be positive\n");
    return 2;
  }
  server::ApiServerOptions so;
  so.http.host = f.host;
  so.http.port = f.port;
  so.http.io_threads = std::max(1, f.io_threads);
  so.http.max_body_bytes = max_body;
  so.api_key = f.api_key;
  so.served_model_name = f.served_name.empty() ? std::filesystem::path(f.model).stem().string() : f.served_name;
  so.log_requests = !f.quiet;
  int64_t scrub_mb = -1;  // -1: auto
  if (f.scrub_mb != "auto") {
    try {
      size_t pos = 0;
      scrub_mb = std::stoll(f.scrub_mb, &pos);
      if (pos != f.scrub_mb.size() || scrub_mb < 0) scrub_mb = -2;
    } catch (...) {
      scrub_mb = -2;
    }
    if (scrub_mb == -2) {
      std::fprintf(stderr, "fennec: --scrub-mb '%s' is not 'auto' or a number of MiB (0: off)\n",
                   f.scrub_mb.c_str());
      return 2;
    }
  }
  if (f.device_watts < 0 || f.price_kwh < 0 || f.price_hour < 0) {
    std::fprintf(stderr, "fennec: --device-watts, --price-kwh and --price-hour must not be negative\n");
    return 2;
  }
  // Telemetry and health: a failure here is reported, never fatal (except a bad --ras-trace).
  ras::RasOptions ro;
  ro.interval_s = f.ras_interval;
  ro.trace = f.ras_trace;
  ro.sysfs_root = f.sysfs_root;
  auto ras_service = ras::RasService::create(ro);
  if (!ras_service) {
    std::fprintf(stderr, "fennec: %s\n", ras_service.error().message.c_str());
    return 2;
  }
  (*ras_service)->start();
  so.ras = ras_service->get();
  // POST /admin/inject, only when asked for (docs/ras.md).
  std::unique_ptr<ras::FaultInjector> injector;
  if (f.enable_fault_injection) {
    injector = std::make_unique<ras::FaultInjector>(nullptr, ras_service->get());
    so.fault_injector = injector.get();
    std::fprintf(stderr, "fennec: fault injection is ON (POST /admin/inject): for tests and drills only\n");
  }
  auto srv = server::ApiServer::create(so);
  if (!srv) {
    std::fprintf(stderr, "fennec: %s\n", srv.error().message.c_str());
    return 1;
  }
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);
  std::signal(SIGPIPE, SIG_IGN);
  (*srv)->start();
  std::fprintf(stderr, "fennec: listening on http://%s:%d (live now, ready once the model has loaded)\n",
               f.host.c_str(), (*srv)->port());

  engine::LoadOptions lo;
  lo.n_threads = f.threads;
  lo.n_ctx = f.ctx;
  lo.kv_bytes = kv_bytes;
  f.kv.apply(lo);
  const auto t0 = std::chrono::steady_clock::now();
  auto lm = engine::LoadedModel::load(f.model, lo);
  if (!lm) {
    std::fprintf(stderr, "fennec: %s\n", lm.error().message.c_str());
    return 1;
  }
  engine::SchedulerOptions sched_opts;
  sched_opts.max_seqs = f.max_seqs;
  sched_opts.max_batch_tokens = f.max_batch_tokens;
  sched_opts.max_waiting = f.max_queue;
  sched_opts.prefix_caching = !f.no_prefix_caching;
  std::string no_counter;
  metering::MeterOptions mo{f.device_watts, f.price_kwh, f.price_hour};
  metering::StepMeter meter(mo, metering::EnergyCounter::find(f.sysfs_root, &no_counter));
  if (meter.source() == metering::EnergySource::kMeasured)
    std::fprintf(stderr, "fennec: energy: measured (CPU package energy counters)\n");
  else
    std::fprintf(stderr, "fennec: energy: estimated at --device-watts %.0f W (%s)\n", meter.options().device_watts,
                 no_counter.c_str());
  sched_opts.meter = &meter;
  ras::WeightScrubber* scrubber = nullptr;  // owned by the RAS service
  if (scrub_mb != 0) {  // re-verify the weights the kernels read, a slice per telemetry reading
    auto regions = ras::weight_scrub_regions((*lm)->model());
    size_t total = 0;
    for (const auto& r : regions) total += r.size;
    const size_t per_read = scrub_mb > 0 ? static_cast<size_t>(scrub_mb) << 20
                                         : ras::scrub_bytes_per_read(total, f.ras_interval);
    auto sc = std::make_unique<ras::WeightScrubber>(std::move(regions), per_read);
    const double reads = std::ceil(static_cast<double>(total) / static_cast<double>(per_read));
    std::fprintf(stderr,
                 "fennec: scrub: %.0f MiB of weights (what the kernels read), %zu MiB per reading "
                 "every %g s: a "
                 "changed bit is found within about %.0f s\n",
                 static_cast<double>(total) / (1 << 20), per_read >> 20, f.ras_interval,
                 std::max(1.0, reads) * f.ras_interval);
    scrubber = sc.get();
    (*ras_service)->add_source(std::move(sc));
  }
  std::unique_ptr<ras::AbftObserver> abft_observer;
  if (f.abft) {  // column checksums of every matrix, then a check after every product
    auto checker = std::make_unique<ras::AbftChecker>();
    Status prepared = {};
    (*lm)->model().for_each_matrix([&](const std::string& name, const kernels::WeightView& w) {
      if (prepared && w.data) prepared = checker->prepare(name, w);
    });
    if (!prepared) {
      std::fprintf(stderr, "fennec: --abft: %s\n", prepared.error().message.c_str());
      return 1;
    }
    std::fprintf(stderr, "fennec: abft: checksums of every weight matrix (%.1f MiB)\n",
                 static_cast<double>(checker->prepared_bytes()) / (1 << 20));
    abft_observer = std::make_unique<ras::AbftObserver>(*checker);
    sched_opts.matmul_observer = abft_observer.get();
    // A failed check makes the step untrusted: recomputed, or failed if it fails again.
    sched_opts.step_failed = [obs = abft_observer.get()] { return obs->take_failed(); };
    (*ras_service)->add_source(std::move(checker));
  }
  if (injector) {
    injector->set_model(&(*lm)->gguf(), ras::packed_copies((*lm)->model()));
    sched_opts.logits_fault = [inj = injector.get()](std::vector<float>& logits, int attempt) {
      inj->on_logits(logits, attempt);
    };
  }
  engine::Scheduler scheduler(**lm, sched_opts);
  scheduler.start();
  // An unhealthy "weights" or "engine" device holds every request until it recovers, or fails
  // them cleanly after --ras-recovery-timeout (docs/ras.md, src/ras/recovery.h).
  ras::RecoveryHooks hooks;
  hooks.hold = [&scheduler](bool on) { scheduler.hold(on); };
  hooks.fail_all = [&scheduler](const std::string& why) { scheduler.fail_all(why); };
  if (scrubber) hooks.reverify_weights = [scrubber] { return scrubber->reverify(); };
  ras::RecoveryController recovery(**ras_service, std::move(hooks), f.ras_recovery_timeout);
  (*ras_service)->set_after_poll([&recovery] { recovery.after_poll(); });
  // The NaN guard's counts as RAS telemetry: a step fixed by recomputing is a corrected error,
  // one that failed twice an uncorrected one (docs/ras.md).
  (*ras_service)->add_source(ras::make_callback_source("engine", [&scheduler] {
    const auto s = scheduler.stats();
    ras::Sample fixed, failed;
    fixed.device = failed.device = "engine";
    fixed.name = "nan_guard/recomputed_steps";
    fixed.kind = ras::Kind::kCeCount;
    fixed.value = static_cast<double>(s.numeric_recomputed);
    failed.name = "nan_guard/failed_steps";
    failed.kind = ras::Kind::kUeCount;
    failed.value = static_cast<double>(s.numeric_failed);
    return std::vector<ras::Sample>{fixed, failed};
  }));
  if (f.canary_interval > 0) {  // a fixed greedy prompt whose answer must never change
    auto p = (*lm)->tokenize_chat(
        nlohmann::json::array({{{"role", "user"}, {"content", "Count from one to ten."}}}), true);
    if (p) {
      auto canary = std::make_unique<ras::Canary>(ras::scheduler_canary(scheduler, std::move(*p), 16),
                                                  f.canary_interval);
      (void)canary->read();  // the reference answer, before the server turns ready
      (*ras_service)->add_source(std::move(canary));
    } else {
      std::fprintf(stderr, "fennec: no canary: %s\n", p.error().message.c_str());
    }
  }
  (*srv)->attach(**lm, scheduler);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr,
               "fennec: ready: model '%s' (%s), context %d, KV cache %lld tokens (%.0f MiB, K %s, V %s), %d "
               "threads, loaded in %.2f s\n",
               so.served_model_name.c_str(), f.model.c_str(), (*lm)->n_ctx(),
               static_cast<long long>((*lm)->kv().n_blocks() * (*lm)->kv().shape().block_size),
               static_cast<double>((*lm)->kv().bytes()) / (1 << 20), engine::kv_type_name((*lm)->kv().shape().k_type),
               engine::kv_type_name((*lm)->kv().shape().v_type), (*lm)->pool().size(), load_s);

  while (g_signal.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::fprintf(stderr, "fennec: signal %d: draining (%lld requests in flight, up to %.0f s)\n", g_signal.load(),
               static_cast<long long>((*srv)->in_flight()), f.drain_timeout);
  const int64_t left = (*srv)->drain(f.drain_timeout);
  scheduler.stop();  // anything left ends as aborted
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  (*srv)->stop();
  (*ras_service)->stop();  // before the model (the scrubber reads its mapping) goes away
  (*ras_service)->set_after_poll(nullptr);
  std::fprintf(stderr, "fennec: stopped (%lld requests cut off by the drain timeout)\n", static_cast<long long>(left));
  return 0;
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto f = std::make_shared<ServeFlags>();
  CLI::App* cmd = app.add_subcommand("serve", "serve the OpenAI API (flags also from FENNEC_* variables)");
  cmd->add_option("-m,--model", f->model, "GGUF model file")->envname("FENNEC_MODEL")->required();
  cmd->add_option("--host", f->host, "address to listen on (default 127.0.0.1)")->envname("FENNEC_HOST");
  cmd->add_option("--port", f->port, "port (default 8000; 0 picks a free one)")->envname("FENNEC_PORT");
  cmd->add_option("--api-key", f->api_key, "require 'Authorization: Bearer KEY'")->envname("FENNEC_API_KEY");
  cmd->add_option("--served-model-name", f->served_name, "model id in the API (default: file name)")
      ->envname("FENNEC_SERVED_MODEL_NAME");
  cmd->add_option("--max-seqs", f->max_seqs, "sequences decoded together (default 64)")->envname("FENNEC_MAX_SEQS");
  cmd->add_option("--kv-mem", f->kv_mem, "KV cache memory, e.g. 512M, 2G (default 1G)")->envname("FENNEC_KV_MEM");
  cmd->add_option("-c,--ctx", f->ctx, "context length per sequence (default: min(train, 4096))")
      ->envname("FENNEC_CTX");
  add_kv_type_options(cmd, f->kv, "FENNEC_");
  cmd->add_option("-t,--threads", f->threads, "compute threads (default: all cores)")->envname("FENNEC_THREADS");
  cmd->add_option("--drain-timeout", f->drain_timeout, "seconds to finish requests after SIGTERM (default 30)")
      ->envname("FENNEC_DRAIN_TIMEOUT");
  cmd->add_option("--max-batch-tokens", f->max_batch_tokens, "tokens per engine step (default 512)")
      ->envname("FENNEC_MAX_BATCH_TOKENS");
  cmd->add_option("--max-queue", f->max_queue, "queued sequences before 429 (default 4096)")
      ->envname("FENNEC_MAX_QUEUE");
  cmd->add_option("--max-body", f->max_body, "largest request body (default 8M)")->envname("FENNEC_MAX_BODY");
  cmd->add_option("--io-threads", f->io_threads, "HTTP I/O threads (default 1)")->envname("FENNEC_IO_THREADS");
  cmd->add_flag("--no-prefix-caching", f->no_prefix_caching, "do not share prompt pages")
      ->envname("FENNEC_NO_PREFIX_CACHING");
  cmd->add_flag("-q,--quiet", f->quiet, "no per-request log lines")->envname("FENNEC_QUIET");
  cmd->add_option("--device-watts", f->device_watts,
                  "power for estimated energy where no counter exists (default 5 W per CPU, >= 10 W)")
      ->envname("FENNEC_DEVICE_WATTS");
  cmd->add_option("--price-kwh", f->price_kwh, "electricity price in USD per kWh (default 0.15)")
      ->envname("FENNEC_PRICE_KWH");
  cmd->add_option("--price-hour", f->price_hour, "machine price in USD per hour, split by busy time (default 0)")
      ->envname("FENNEC_PRICE_HOUR");
  cmd->add_option("--ras-interval", f->ras_interval, "seconds between telemetry readings (default 10)")
      ->envname("FENNEC_RAS_INTERVAL");
  cmd->add_option("--ras-trace", f->ras_trace, "replay this telemetry trace instead of the machine (tests)")
      ->envname("FENNEC_RAS_TRACE");
  cmd->add_option("--canary-interval", f->canary_interval,
                  "seconds between canary runs, a fixed prompt whose answer must not change (default 600; 0: off)")
      ->envname("FENNEC_CANARY_INTERVAL");
  cmd->add_option("--ras-recovery-timeout", f->ras_recovery_timeout,
                  "seconds an unhealthy weights/engine device may take to recover before held requests fail "
                  "(default 60)")
      ->envname("FENNEC_RAS_RECOVERY_TIMEOUT");
  cmd->add_flag("--enable-fault-injection", f->enable_fault_injection,
                "open POST /admin/inject (weight bit flips, NaN logits, telemetry traces): tests only")
      ->envname("FENNEC_ENABLE_FAULT_INJECTION");
  cmd->add_flag(
         "--abft", f->abft,
         "check every weight product against the matrix's column checksums (src/ras/abft.h); "
         "a failed check recomputes the step (corrected error of device 'engine'), a second "
         "failure ends the step's requests with an error")
      ->envname("FENNEC_ABFT");
  cmd->add_option("--scrub-mb", f->scrub_mb,
                  "MiB of weights re-verified per telemetry reading (default auto: a full pass "
                  "within 50 s, at least "
                  "16 MiB per reading; 0: off)")
      ->envname("FENNEC_SCRUB_MB");
  cmd->add_option("--sysfs-root", f->sysfs_root, "read /sys under this directory (tests; default /)")
      ->envname("FENNEC_SYSFS_ROOT");
  cmd->callback([f] { set_exit_code(serve(*f)); });
}

}  // namespace fennec::cli
