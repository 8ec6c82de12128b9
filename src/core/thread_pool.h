// fennec's own compute thread pool: persistent workers that run one parallel_for at a time.
// The caller thread takes part as worker 0. Not reentrant: call from one thread at a time.
//
// A decode step issues hundreds of parallel_for calls a few microseconds apart, so waiting
// threads (workers for the next job, the caller for the last worker) first spin on an atomic
// word for a short while and only then sleep on a futex: back-to-back calls cost no system call
// and no wake-up latency, while an idle pool still sleeps.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "core/function_ref.h"

namespace fennec {

class ThreadPool {
 public:
  // pin: thread i (the caller being thread 0) runs only on CPU pin_cpus()[i % size], set when
  // the worker starts and, for the caller, on its first job from each calling thread.
  explicit ThreadPool(int n_threads, bool pin = false);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }
  // The longest a waiting thread polls before it sleeps (why: thread_pool.cpp); every thread's
  // spin budget starts there and adapts below it.
  static constexpr int64_t kSpinMaxNs = 250'000;
  // True while the last check found the pool's threads waiting for CPUs held by other work (then
  // every wait sleeps at once instead of spinning; see thread_pool.cpp).
  bool contended() const { return contended_.load(std::memory_order_relaxed); }

  // Runs fn(begin, end) over [0, n) split into contiguous chunks, one or more per thread,
  // and waits for all of them.
  void parallel_for(int64_t n, FunctionRef<void(int64_t, int64_t)> fn);
  // The same with guided chunks: each thread first takes half of an equal share, then the
  // threads claim what is left in chunks of half the remainder per thread (at least `grain`),
  // so that a thread that runs slower (another process on its core, a slower path to memory)
  // leaves its tail to the others instead of holding them at the end.
  void parallel_for_guided(int64_t n, int64_t grain, FunctionRef<void(int64_t, int64_t)> fn);

  // Runs fn(thread_index, n_threads) once on every thread and waits.
  void run_on_all(FunctionRef<void(int, int)> fn);

 private:
  void worker(int index);

  int n_threads_;
  std::vector<std::thread> threads_;
  // Written by the caller before it bumps generation_; read by workers after they see the bump.
  const FunctionRef<void(int, int)>* job_ = nullptr;
  bool stop_ = false;
  // Each word sits on its own cache line: workers poll generation_ while others write pending_.
  alignas(64) std::atomic<uint32_t> generation_{0};  // bumped once per job (and to stop)
  alignas(64) std::atomic<uint32_t> pending_{0};     // workers still running the current job
  alignas(64) std::atomic<uint32_t> sleepers_{0};    // workers asleep (or about to) on generation_
  std::atomic<uint32_t> caller_sleeping_{0};         // the caller asleep (or about to) on pending_
  int64_t caller_spin_ns_ = kSpinMaxNs;              // the caller's spin budget (see the .cpp)
  // Oversubscription watch (see the .cpp): each thread's /proc schedstat file (slot 0: the
  // calling thread's, reopened when another thread calls), the run-queue delay summed over them
  // at the last check, and its time.
  std::vector<std::atomic<int>> stat_fds_;
  std::thread::id stat_caller_;
  int64_t last_delay_ns_ = -1;
  std::chrono::steady_clock::time_point last_check_;
  // Set while the threads wait for CPUs that other processes hold: waits then sleep at once.
  std::atomic<bool> contended_{false};
  void check_contention();
  std::vector<int> cpus_;                            // pin: the CPUs, thread i on cpus_[i % size]
  std::thread::id pinned_caller_;                    // the calling thread pinned last
};

// The CPUs to pin threads to: those the process may run on, one per physical core first (the
// lowest-numbered logical CPU of each core, by sysfs topology), then their other SMT siblings.
std::vector<int> pin_cpus();
// Binds the calling thread to one CPU; false if the system refuses.
bool pin_this_thread(int cpu);
// FENNEC_PIN=1 in the environment: the pools of the engine and of `fennec bench` pin.
bool pin_requested_by_env();

// Threads to use when the user gives none: the physical cores the process may run on.
int default_thread_count();

}  // namespace fennec
