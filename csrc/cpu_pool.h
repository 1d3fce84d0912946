// The persistent helper threads of the CPU twins and the split of flat work over them.
//
// Helpers start on first use, grow to the largest thread count asked for and then wait for work
// (no thread is created per call). The pool runs one job at a time: a caller that finds it busy
// (another Python thread released the GIL into a twin) runs its pieces itself. Every job is
// element-wise over disjoint pieces, so which thread runs a piece never changes a result.
// A forked child (e.g. a DataLoader worker) does not inherit the parent's helpers; it starts a
// pool of its own on first use.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dil_fast {

class ThreadPool {
 public:
  // The pool of this process, created on first use.
  static ThreadPool& instance() {
    static std::atomic<ThreadPool*> current{nullptr};
    ThreadPool* pool = current.load(std::memory_order_acquire);
    // A pool created before a fork belongs to the parent: its helpers do not run here. It is
    // left allocated because its mutexes may have been held at the fork.
    while (pool == nullptr || pool->owner_ != getpid()) {
      ThreadPool* fresh = new ThreadPool();
      if (current.compare_exchange_strong(pool, fresh, std::memory_order_acq_rel)) {
        pool = fresh;
      } else {
        delete fresh;  // another thread installed one first; `pool` now holds it
      }
    }
    return *pool;
  }

  // Calls piece(w) for every w in [0, pieces) and returns when all have finished; piece 0 runs on
  // the calling thread, the others on helpers (or on the caller too when the pool is busy).
  void run(int pieces, const std::function<void(int)>& piece) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (pieces <= 1 || !busy.owns_lock()) {
      for (int w = 0; w < pieces; ++w) piece(w);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (helpers_ < pieces - 1) {
        std::thread(&ThreadPool::serve, this, helpers_ + 1, generation_).detach();
        ++helpers_;
      }
      job_ = &piece;
      pieces_ = pieces;
      pending_ = pieces - 1;
      ++generation_;
    }
    wake_.notify_all();
    piece(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  ThreadPool() : owner_(getpid()) {}

  // Helper `index` (>= 1): waits for each new job and runs its piece of it when it has one.
  void serve(int index, int64_t seen) {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (index >= pieces_) continue;
      const std::function<void(int)>* job = job_;
      lock.unlock();
      (*job)(index);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  const pid_t owner_;
  std::mutex busy_;   // held by the caller whose job is running
  std::mutex mutex_;  // guards everything below
  std::condition_variable wake_, done_;
  int helpers_ = 0;
  int64_t generation_ = 0;  // bumped once per job
  const std::function<void(int)>* job_ = nullptr;
  int pieces_ = 0;
  int pending_ = 0;  // helpers still running the current job
};

// Splits [0, n) into up to `threads` contiguous pieces of whole cache lines and runs
// fn(begin, end) on each; problems under kMinPiece elements per thread stay on the calling thread.
template <typename F>
void parallel_for(int64_t n, int threads, F&& fn) {
  constexpr int64_t kMinPiece = int64_t(1) << 15;
  constexpr int64_t kAlign = 16;  // elements: a 64-byte line of float32 is never split over threads
  const int64_t pieces = std::max<int64_t>(1, std::min<int64_t>(threads, n / kMinPiece));
  if (pieces <= 1) {
    if (n > 0) fn(int64_t(0), n);
    return;
  }
  const int64_t per_piece = ((n + pieces - 1) / pieces + kAlign - 1) / kAlign * kAlign;
  ThreadPool::instance().run(static_cast<int>(pieces), [&](int w) {
    const int64_t begin = std::min(n, w * per_piece), end = std::min(n, begin + per_piece);
    if (begin < end) fn(begin, end);
  });
}

}  // namespace dil_fast
