// The rate cap of one direction of one connection: a token bucket that may go into debt. take(n)
// always grants the n bytes and returns how long the caller must wait before moving them, so the
// long-run rate equals the set rate exactly (a chunk larger than the burst is simply paid off over
// time) while short idle periods refill up to the burst.
#pragma once

#include <chrono>
#include <cstddef>
#include <mutex>

namespace distro::net {

class TokenBucket {
 public:
  // rate 0 = unlimited. burst 0 = the default: the larger of 16 KiB and 20 ms of the rate.
  explicit TokenBucket(double bytes_per_second = 0, double burst_bytes = 0);
  // Thread-safe and live: saved tokens are kept (clipped to the new burst) and any debt is paid off at
  // the new rate. Negative or non-finite values are treated as 0 (unlimited).
  void set_rate(double bytes_per_second, double burst_bytes = 0);
  double rate() const;
  double burst() const;
  // Takes n bytes; returns how long the caller must wait before sending/reading them (0 when within
  // budget). Thread-safe; several callers share the budget.
  std::chrono::nanoseconds take(size_t n, std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now());

  static double default_burst(double bytes_per_second);

 private:
  void refill(std::chrono::steady_clock::time_point now);

  mutable std::mutex mu_;
  double rate_ = 0;
  double burst_ = 0;
  double tokens_ = 0;  // may be negative: bytes already granted but not yet paid for
  std::chrono::steady_clock::time_point last_{};
  bool started_ = false;
};

}  // namespace distro::net
