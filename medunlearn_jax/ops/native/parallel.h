// Work sharing for the native kernels: items claimed from an atomic counter by the calling thread and by
// helpers scheduled on XLA's intra-op pool.
#ifndef MEDUNLEARN_JAX_OPS_NATIVE_PARALLEL_H_
#define MEDUNLEARN_JAX_OPS_NATIVE_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace medunlearn {

// Runs body(item) for item in [0, items) on up to `threads` threads (the caller and threads - 1 helpers).
// The caller claims items too and then waits only for items already claimed, so it never waits on a helper
// that has not started (the pool may be busy); a helper starting late finds nothing left and returns. The
// shared state outlives the call for such helpers; `body` is only ever called before this returns.
inline void ParallelFor(xla::ffi::ThreadPool& pool, int64_t items, int64_t threads,
                        std::function<void(int64_t)> body) {
  struct State {
    std::function<void(int64_t)> body;
    int64_t items;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    void Run() {
      for (int64_t it; (it = next.fetch_add(1)) < items;) {
        body(it);
        done.fetch_add(1);
      }
    }
  };
  auto state = std::make_shared<State>();
  state->body = std::move(body);
  state->items = items;
  const int64_t helpers = std::min(threads, items) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([state] { state->Run(); });
  state->Run();
  while (state->done.load() < items) std::this_thread::yield();
}

// Threads of XLA's intra-op pool (at least 1).
inline int64_t PoolThreads(xla::ffi::ThreadPool& pool) { return std::max<int64_t>(1, pool.num_threads()); }

}  // namespace medunlearn

#endif  // MEDUNLEARN_JAX_OPS_NATIVE_PARALLEL_H_
