// A small fixed pool of worker threads for the CPU backend. parallel_for splits [0, n) into one
// contiguous range per thread; every op in the CPU backend computes each chunk independently, so
// results never depend on the thread count.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace distro {

class ThreadPool {
 public:
  explicit ThreadPool(unsigned threads);  // 0 = one per core
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  unsigned size() const { return unsigned(workers_.size()) + 1; }
  // Runs fn(begin, end, worker) over disjoint ranges covering [0, n) and waits. The first exception
  // thrown by any range is rethrown here after all ranges finish.
  void parallel_for(uint64_t n, const std::function<void(uint64_t, uint64_t, unsigned)>& fn);

 private:
  void worker_loop(unsigned id);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  const std::function<void(uint64_t, uint64_t, unsigned)>* job_ = nullptr;
  uint64_t job_n_ = 0;
  uint64_t generation_ = 0;
  unsigned pending_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace distro
