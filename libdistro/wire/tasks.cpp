#include "wire/tasks.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include <pthread.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace distro::wire {

namespace {

// One call of run_tasks: its tasks, handed out in increasing order to the caller and to the pool's
// threads that join it.
struct Job {
  Job(const std::function<void(size_t)>& t, size_t count) : task(t), n(count), errors(count) {}

  // Takes tasks until none are left. Never throws: a task's exception is kept for the caller.
  void work() noexcept {
    for (;;) {
      const size_t i = next.fetch_add(1);
      if (i >= n) return;
      if (i > failed.load()) continue;  // an earlier task failed; its error is the one to report
      try {
        task(i);
      } catch (...) {
        errors[i] = std::current_exception();  // written by the one thread that ran task i
        size_t seen = failed.load();
        while (i < seen && !failed.compare_exchange_weak(seen, i)) {
        }
      }
    }
  }

  const std::function<void(size_t)>& task;
  const size_t n;
  std::atomic<size_t> next{0};
  std::atomic<size_t> failed{SIZE_MAX};  // the lowest failing task so far
  std::vector<std::exception_ptr> errors;
  // Guarded by the pool's mutex:
  unsigned wanted = 0;  // helpers still wanted; the job is queued while > 0
  unsigned active = 0;  // helpers inside work()
  std::condition_variable idle;  // active fell to 0
};

// Threads that sleep until a job wants helpers: started on first need, grown to the most helpers any
// call has asked for, stopped and joined when the process exits (or the library is unloaded).
//
// fork(): only the forking thread exists in the child, so the child must not use the parent's pool
// (its threads are gone; joining them at exit would wait forever). The atfork handlers hold the
// pool's locks across fork(), and in the child drop the pool, which is left unused and never freed
// there, so the child's first call starts a pool of its own.
class Pool {
 public:
  static Pool& instance() {
    static const bool handlers = [] {
      (void)pthread_atfork(&before_fork, &after_fork_parent, &after_fork_child);
      return true;
    }();
    (void)handlers;
    std::lock_guard lock(create_mu_);
    if (!current_) current_ = new Pool;  // stopped by the reaper below, never freed (a late call may come)
    return *current_;
  }

  // Lends up to `helpers` threads to the job, runs it on the calling thread too, and returns once
  // every thread that joined it has left it (its tasks are then all done or skipped).
  void run(Job& job, unsigned helpers) {
    std::unique_lock lock(mu_);
    if (!stop_) grow(helpers);
    job.wanted = stop_ ? 0 : std::min<unsigned>(helpers, unsigned(workers_.size()));
    if (job.wanted > 0) {
      queue_.push_back(&job);
      lock.unlock();
      if (job.wanted == 1) wake_.notify_one();
      else wake_.notify_all();
      job.work();
      lock.lock();
      // No thread may join the job after this point, so it can end once its helpers have left.
      if (job.wanted > 0) queue_.erase(std::find(queue_.begin(), queue_.end(), &job));
      job.idle.wait(lock, [&] { return job.active == 0; });
    } else {
      lock.unlock();
      job.work();
    }
  }

  // At exit: wakes and joins the threads (a thread inside a task finishes it first). Calls after this
  // run on the calling thread alone.
  static void reap() {
    Pool* p = nullptr;
    {
      std::lock_guard lock(create_mu_);
      p = current_;
    }
    if (!p) return;
    {
      std::lock_guard lock(p->mu_);
      p->stop_ = true;
    }
    p->wake_.notify_all();
    for (std::thread& t : p->workers_) t.join();
  }

 private:
  Pool() = default;

  // fork() with the locks held, so that the child's copies of them are not caught mid-use.
  static void before_fork() {
    create_mu_.lock();
    if (current_) current_->mu_.lock();
  }
  static void after_fork_parent() {
    if (current_) current_->mu_.unlock();
    create_mu_.unlock();
  }
  static void after_fork_child() {
    current_ = nullptr;  // the parent's pool: its threads are not in this process
    create_mu_.unlock();
  }

  // Starts threads until there are `n` (called with mu_ held). A thread that cannot be started is
  // not an error: the job runs on the threads there are.
  void grow(unsigned n) {
    while (workers_.size() < n) {
      try {
        workers_.emplace_back([this] { loop(); });
      } catch (...) {
        return;
      }
    }
  }

  void loop() {
    std::unique_lock lock(mu_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      Job* job = queue_.front();
      if (--job->wanted == 0) queue_.pop_front();
      ++job->active;
      lock.unlock();
      job->work();
      lock.lock();
      if (--job->active == 0) job->idle.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<Job*> queue_;  // jobs that want more helpers, oldest first
  std::vector<std::thread> workers_;
  bool stop_ = false;

  static inline std::mutex create_mu_;
  static inline Pool* current_ = nullptr;
};

// Joins the pool's threads when the process exits or the library is unloaded (static destructor).
struct Reaper {
  ~Reaper() { Pool::reap(); }
} reaper;

}  // namespace

unsigned default_threads(unsigned requested) {
  if (requested > 0) return requested;
  return std::clamp(std::thread::hardware_concurrency(), 1u, kMaxDefaultThreads);
}

void run_tasks(unsigned threads, size_t n, const std::function<void(size_t)>& task) {
  if (n == 0) return;
  threads = unsigned(std::min<size_t>(std::max(threads, 1u), n));
  if (threads == 1) {
    for (size_t i = 0; i < n; ++i) task(i);
    return;
  }
  Job job(task, n);
  Pool::instance().run(job, threads - 1);
  const size_t f = job.failed.load();
  if (f != SIZE_MAX) std::rethrow_exception(job.errors[f]);
}

void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (p == nullptr || bytes < 2 * kHuge) return;
  // The whole huge pages inside the block: madvise wants an aligned start, and the partial pages at
  // either end may be shared with other allocations.
  const uintptr_t begin = (uintptr_t(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (uintptr_t(p) + bytes) & ~(kHuge - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace distro::wire
