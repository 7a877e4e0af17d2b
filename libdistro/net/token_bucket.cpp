#include "net/token_bucket.hpp"

#include <algorithm>
#include <cmath>

namespace distro::net {

namespace {
double sane(double v) { return std::isfinite(v) && v > 0 ? v : 0.0; }
}  // namespace

double TokenBucket::default_burst(double bytes_per_second) {
  // Small enough that a 1 MB/s cap measured over a few seconds is within 1% of the cap, large enough
  // that pacing works in chunks of a few TLS records rather than byte by byte.
  return std::max(16.0 * 1024.0, 0.02 * bytes_per_second);
}

TokenBucket::TokenBucket(double bytes_per_second, double burst_bytes) { set_rate(bytes_per_second, burst_bytes); }

void TokenBucket::refill(std::chrono::steady_clock::time_point now) {
  if (!started_) {
    started_ = true;
    last_ = now;
    return;
  }
  if (now > last_) {
    const double dt = std::chrono::duration<double>(now - last_).count();
    tokens_ = std::min(burst_, tokens_ + dt * rate_);
    last_ = now;
  }
}

void TokenBucket::set_rate(double bytes_per_second, double burst_bytes) {
  std::lock_guard lock(mu_);
  const double rate = sane(bytes_per_second);
  const double burst = sane(burst_bytes) > 0 ? sane(burst_bytes) : default_burst(rate);
  // Bring the bucket up to now at the old rate, then switch.
  if (rate_ > 0) refill(std::chrono::steady_clock::now());
  const bool was_unlimited = rate_ == 0;
  rate_ = rate;
  burst_ = burst;
  if (was_unlimited) {
    // A fresh cap starts with a full bucket, from now.
    tokens_ = burst_;
    started_ = true;
    last_ = std::chrono::steady_clock::now();
  } else {
    tokens_ = std::min(tokens_, burst_);
  }
}

double TokenBucket::rate() const {
  std::lock_guard lock(mu_);
  return rate_;
}

double TokenBucket::burst() const {
  std::lock_guard lock(mu_);
  return burst_;
}

std::chrono::nanoseconds TokenBucket::take(size_t n, std::chrono::steady_clock::time_point now) {
  std::lock_guard lock(mu_);
  if (rate_ <= 0) return std::chrono::nanoseconds(0);
  refill(now);
  tokens_ -= static_cast<double>(n);
  if (tokens_ >= 0) return std::chrono::nanoseconds(0);
  const double wait_s = -tokens_ / rate_;
  return std::chrono::nanoseconds(static_cast<int64_t>(std::ceil(wait_s * 1e9)));
}

}  // namespace distro::net
