#include "core/thread_pool.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace fennec {

namespace {

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t) &&
                  std::atomic<uint32_t>::is_always_lock_free,
              "the futex calls below treat std::atomic<uint32_t> as a plain 32-bit word");

// How long a waiting thread polls before it sleeps: longer than the gaps inside one decode step
// (norms, rope, a one-sequence attention on one thread: up to a couple of hundred
// microseconds), short enough that an idle pool leaves the cores alone. Sleeping costs more
// than the futex calls: on a virtual machine an idle vCPU halts, and waking it took up to
// milliseconds. Each waiting thread adapts its own budget between the bounds (wait_ended):
// halved after a wait longer than the longest spin, doubled after a shorter one. On a machine
// shared with other busy processes a spinning thread only keeps the one it waits for off the
// CPU; check_contention() turns the spins off there. (1.2B Q4_0 decode, 2 threads, quiet: 62-66
// tok/s with a 50 us ceiling, 65-68 with 250 us.)
constexpr int64_t kSpinMaxNs = ThreadPool::kSpinMaxNs;
constexpr int64_t kSpinMinNs = 1'000;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Polls done() for up to *budget_ns: true if it held, false if the budget ran out (the caller
// then sleeps, and reports the whole wait to wait_ended).
template <class Pred>
bool spin_until(Pred done, int64_t budget_ns, std::chrono::steady_clock::time_point start) {
  const auto deadline = start + std::chrono::nanoseconds(budget_ns);
  for (unsigned i = 1;; ++i) {
    if (done()) return true;
    cpu_relax();
    if (i % 64 == 0 && std::chrono::steady_clock::now() >= deadline) return false;
  }
}

// Adapts a spin budget to the wait that just ended (spun or slept): a wait that a full-length
// spin would have caught doubles the budget (up to kSpinMaxNs), a longer one halves it. The
// budget so follows the waits themselves, not the spins' outcomes: judged by outcome alone, a
// budget that has shrunk below the usual gap fails every time and never grows back, and each
// wait then costs a sleep, a wake-up call and the wake-up latency (a 2-thread decode step of a
// 1.2B model slept 80 times per token that way, 10% of its time).
void wait_ended(bool spun, std::chrono::steady_clock::time_point start, int64_t* budget_ns) {
  const int64_t waited =
      spun ? 0 : std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
  if (waited <= kSpinMaxNs)
    *budget_ns = std::min(kSpinMaxNs, std::max(*budget_ns * 2, waited * 2));
  else
    *budget_ns = std::max(kSpinMinNs, *budget_ns / 2);
}

// Sleeps while *word == expected (the kernel checks it atomically with going to sleep, so a
// change made just before cannot be missed). May return spuriously: callers loop.
void futex_wait(std::atomic<uint32_t>& word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
}

void futex_wake_all(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}

// The calling thread's /proc schedstat file ("cpu time, run-queue delay, timeslices" in ns),
// or -1 where the kernel has none.
int open_schedstat() { return open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC); }

// Nanoseconds the thread has spent runnable but waiting for a CPU, or -1.
int64_t read_run_delay(int fd) {
  char buf[96];
  const ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
  if (n <= 0) return -1;
  buf[n] = 0;
  char* end = nullptr;
  std::strtoll(buf, &end, 10);
  if (end == buf) return -1;
  const char* second = end;
  const long long delay = std::strtoll(second, &end, 10);
  return end == second ? -1 : delay;
}

}  // namespace

ThreadPool::ThreadPool(int n_threads, bool pin)
    : n_threads_(std::max(1, n_threads)), stat_fds_(static_cast<size_t>(n_threads_)) {
  if (pin) cpus_ = pin_cpus();
  for (auto& fd : stat_fds_) fd.store(-1, std::memory_order_relaxed);
  for (int i = 1; i < n_threads_; ++i)
    threads_.emplace_back([this, i] {
      if (!cpus_.empty()) pin_this_thread(cpus_[static_cast<size_t>(i) % cpus_.size()]);
      stat_fds_[static_cast<size_t>(i)].store(open_schedstat(), std::memory_order_release);
      worker(i);
    });
}

ThreadPool::~ThreadPool() {
  stop_ = true;
  generation_.fetch_add(1, std::memory_order_seq_cst);
  futex_wake_all(generation_);
  for (auto& t : threads_) t.join();
  for (auto& fd : stat_fds_)
    if (fd.load() >= 0) close(fd.load());
}

// Spinning is only worth it while every pool thread has a CPU. When other processes want the
// same CPUs, the thread being waited for is often queued behind them, and a spinning waiter
// keeps it queued longer: SmolLM2's 2-thread decode beside one busy process ran at 86 tok/s
// with spins sized for a quiet machine and at 131 when every wait slept at once, while alone
// the spins give +10-30% (a 1.2B model: 48 -> 53-63 tok/s). So the caller checks every few
// milliseconds how long the pool's threads have waited in the run queue (the kernel's
// schedstat), and above a tenth of the interval the waits sleep at once until a later check
// finds the CPUs free again.
void ThreadPool::check_contention() {
  constexpr auto kInterval = std::chrono::milliseconds(4);
  const auto now = std::chrono::steady_clock::now();
  if (last_delay_ns_ >= 0 && now - last_check_ < kInterval) return;
  if (stat_caller_ != std::this_thread::get_id()) {  // slot 0 follows the calling thread
    if (stat_fds_[0].load() >= 0) close(stat_fds_[0].load());
    stat_fds_[0].store(open_schedstat());
    stat_caller_ = std::this_thread::get_id();
    last_delay_ns_ = -1;
  }
  int64_t delay = 0;
  for (auto& fd : stat_fds_) {
    const int f = fd.load(std::memory_order_acquire);
    const int64_t d = f >= 0 ? read_run_delay(f) : -1;
    if (d < 0) return;  // not readable (yet): leave the spins as they are
    delay += d;
  }
  if (last_delay_ns_ >= 0) {
    const int64_t elapsed = std::chrono::duration_cast<std::chrono::nanoseconds>(now - last_check_).count();
    contended_.store((delay - last_delay_ns_) * 10 > elapsed, std::memory_order_relaxed);
  }
  last_delay_ns_ = delay;
  last_check_ = now;
}

// The sleep protocol on both words is Dekker's: the sleeper announces itself (seq_cst) and then
// re-reads the word; the waker changes the word (seq_cst) and then reads the announcement. In
// the single order of seq_cst operations one of the two sees the other, so a sleeper is either
// woken or never sleeps, and a waker with nobody asleep makes no system call.
void ThreadPool::worker(int index) {
  uint32_t seen = 0;
  int64_t spin_ns = kSpinMaxNs;
  for (;;) {
    uint32_t g = seen;
    const auto start = std::chrono::steady_clock::now();
    const bool spun = spin_until([&] { return (g = generation_.load(std::memory_order_acquire)) != seen; },
                                 contended_.load(std::memory_order_relaxed) ? 0 : spin_ns, start);
    if (!spun) {
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      while ((g = generation_.load(std::memory_order_seq_cst)) == seen)
        futex_wait(generation_, seen);
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
    }
    wait_ended(spun, start, &spin_ns);
    seen = g;
    if (stop_) return;
    (*job_)(index, n_threads_);
    if (pending_.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
        caller_sleeping_.load(std::memory_order_seq_cst) != 0)
      futex_wake_all(pending_);
  }
}

void ThreadPool::run_on_all(FunctionRef<void(int, int)> fn) {
  if (!cpus_.empty() && pinned_caller_ != std::this_thread::get_id()) {
    pin_this_thread(cpus_[0]);
    pinned_caller_ = std::this_thread::get_id();
  }
  if (n_threads_ == 1) {
    fn(0, 1);
    return;
  }
  check_contention();
  // All workers finished the previous job (pending_ reached 0), so nobody reads job_ now.
  job_ = &fn;
  pending_.store(static_cast<uint32_t>(n_threads_ - 1), std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_seq_cst);  // publishes job_ and pending_
  if (sleepers_.load(std::memory_order_seq_cst) != 0) futex_wake_all(generation_);
  fn(0, n_threads_);
  const auto start = std::chrono::steady_clock::now();
  const bool spun = spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; },
                               contended_.load(std::memory_order_relaxed) ? 0 : caller_spin_ns_, start);
  if (!spun) {
    caller_sleeping_.store(1, std::memory_order_seq_cst);
    for (uint32_t p; (p = pending_.load(std::memory_order_seq_cst)) != 0;) futex_wait(pending_, p);
    caller_sleeping_.store(0, std::memory_order_relaxed);
  }
  wait_ended(spun, start, &caller_spin_ns_);
}

void ThreadPool::parallel_for(int64_t n, FunctionRef<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  if (n_threads_ == 1 || n == 1) {
    fn(0, n);
    return;
  }
  run_on_all([&](int t, int nt) {
    const int64_t chunk = (n + nt - 1) / nt;
    const int64_t b = std::min<int64_t>(n, chunk * t);
    const int64_t e = std::min<int64_t>(n, b + chunk);
    if (b < e) fn(b, e);
  });
}

void ThreadPool::parallel_for_guided(int64_t n, int64_t grain, FunctionRef<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  if (n_threads_ == 1 || n == 1) {
    fn(0, n);
    return;
  }
  int64_t first = n / (2 * n_threads_);  // each thread's first chunk, claimed in order
  if (first < grain) first = 0;
  std::atomic<int64_t> next{first * n_threads_};
  run_on_all([&](int t, int nt) {
    if (first > 0) fn(first * t, first * (t + 1));
    for (;;) {
      int64_t b = next.load(std::memory_order_relaxed), e;
      do {
        if (b >= n) return;
        e = std::min(n, b + std::max(grain, (n - b) / (2 * nt)));
      } while (!next.compare_exchange_weak(b, e, std::memory_order_relaxed));
      fn(b, e);
    }
  });
}

bool pin_this_thread(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof(set), &set) == 0;
}

bool pin_requested_by_env() {
  const char* v = std::getenv("FENNEC_PIN");
  return v && std::string(v) == "1";
}

std::vector<int> pin_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> allowed;
  if (sched_getaffinity(0, sizeof(set), &set) == 0)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) allowed.push_back(c);
  if (allowed.empty()) allowed.push_back(0);
  auto read_id = [](int cpu, const char* what) {
    const std::string path = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/" + what;
    std::ifstream in(path);
    long v = -1;
    return in >> v ? v : -1;
  };
  std::vector<int> first, rest;
  std::set<std::pair<long, long>> cores;
  for (int c : allowed) {
    const long pkg = read_id(c, "physical_package_id"), core = read_id(c, "core_id");
    if (pkg < 0 || core < 0 || cores.insert({pkg, core}).second)
      first.push_back(c);
    else
      rest.push_back(c);
  }
  first.insert(first.end(), rest.begin(), rest.end());
  return first;
}

int default_thread_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  int n = 0;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) n = CPU_COUNT(&set);
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  return std::max(1, n);
}

}  // namespace fennec
