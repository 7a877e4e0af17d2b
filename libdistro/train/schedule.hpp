// Learning-rate schedule: linear warmup from 0, then cosine decay to min_ratio * peak at the last
// step. Steps count from 1. Computed in double and rounded once, so every peer gets the same float.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>

namespace distro {

inline float scheduled_lr(uint64_t step, uint64_t total, uint64_t warmup, float peak, float min_ratio) {
  if (warmup > 0 && step <= warmup) return float(double(peak) * double(step) / double(warmup));
  if (total <= warmup) return peak;
  double progress = double(step - warmup) / double(total - warmup);
  if (progress > 1.0) progress = 1.0;
  double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  return float(double(peak) * (min_ratio + (1.0 - min_ratio) * cosine));
}

}  // namespace distro
