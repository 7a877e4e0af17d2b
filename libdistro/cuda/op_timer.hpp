// GPU time per op of one CUDA device, for finding where a training step goes. Off unless the
// environment sets DISTRO_CUDA_OP_TIMES=1; then every op of the device records a pair of CUDA
// events around the work it queues, and when the device is destroyed a table (op, calls, total ms,
// share) goes to stderr. Events are read back in batches, so timing adds no synchronisation to the
// step beyond one wait per few thousand ops. Off, a scope costs one branch.
//
// Thread rules: the device's ops may be called from several threads; the timer has its own lock.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

struct CUstream_st;
struct CUevent_st;

namespace distro::cuda {

class OpTimer {
 public:
  // Enabled by DISTRO_CUDA_OP_TIMES (set and not "0"), or when `force` is true (tests).
  explicit OpTimer(CUstream_st* stream, bool force = false);
  ~OpTimer();  // prints the table to stderr when enabled and something was timed
  OpTimer(const OpTimer&) = delete;
  OpTimer& operator=(const OpTimer&) = delete;

  bool enabled() const { return enabled_; }

  struct Row {
    std::string op;
    uint64_t calls = 0;
    double ms = 0.0;
  };
  // Waits for the timed work and returns one row per op name, the most GPU time first.
  std::vector<Row> rows();

  // Times the work queued between its construction and its destruction under `name`.
  class Scope {
   public:
    Scope(OpTimer& t, const char* name) : t_(t.enabled_ ? &t : nullptr) {
      if (t_) index_ = t_->begin(name);
    }
    Scope(OpTimer& t, const std::string& name) : t_(t.enabled_ ? &t : nullptr) {
      if (t_) index_ = t_->begin(name);
    }
    ~Scope() {
      if (t_) t_->end(index_);
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    OpTimer* t_;
    uint64_t index_ = 0;
  };

 private:
  struct Pending {
    std::string name;
    CUevent_st* start = nullptr;
    CUevent_st* stop = nullptr;
    bool ended = false;
  };
  struct Total {
    uint64_t calls = 0;
    double ms = 0.0;
  };

  uint64_t begin(const std::string& name);
  void end(uint64_t id);
  void drain();  // waits for the ended scopes' events and folds them into totals_ (lock held)

  bool enabled_ = false;
  CUstream_st* stream_ = nullptr;
  std::mutex mu_;
  uint64_t next_id_ = 0;
  std::map<uint64_t, Pending> pending_;  // by scope id; open scopes stay across a drain
  std::vector<CUevent_st*> free_events_;
  std::map<std::string, Total> totals_;
};

}  // namespace distro::cuda
