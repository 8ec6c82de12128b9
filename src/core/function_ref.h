// A non-owning reference to a callable: what ThreadPool's calls take instead of
// std::function, whose construction from a lambda that captures more than two references
// allocates on the heap. A decode step makes 80-150 parallel calls, and the caller's share of
// each std::function (and of matmul_group's vectors) ran while the workers waited: in a
// two-thread SmolLM2 Q8_0 decode, malloc and free were 3% of the calling thread's samples
// (perf, Zen 4 VM, nineteenth session), and after this change 0.1%.
// The callable must outlive the reference: pass a lambda straight to the call that runs it.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

namespace fennec {

template <class Sig>
class FunctionRef;

template <class R, class... Args>
class FunctionRef<R(Args...)> {
 public:
  template <class F,
            class = std::enable_if_t<!std::is_same_v<std::remove_cvref_t<F>, FunctionRef> &&
                                     std::is_invocable_r_v<R, F&, Args...>>>
  FunctionRef(F&& f) noexcept  // NOLINT(google-explicit-constructor): stands in for a callable
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* o, Args... args) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(o))(std::forward<Args>(args)...);
        }) {}

  R operator()(Args... args) const { return call_(obj_, std::forward<Args>(args)...); }

 private:
  void* obj_;
  R (*call_)(void*, Args...);
};

}  // namespace fennec
