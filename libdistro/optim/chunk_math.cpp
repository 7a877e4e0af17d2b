#include "optim/chunk_math.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace distro {

uint32_t select_topk(const float* y, uint32_t e, uint32_t k, uint16_t* idx) {
  if (k <= 64) {
    // Insertion into a small list kept in (|y| descending, index ascending) order. Scanning indices
    // in ascending order, an equal magnitude never displaces an earlier index: ties go low.
    float mag[64];
    uint16_t pos[64];
    uint32_t have = 0;
    for (uint32_t i = 0; i < e; ++i) {
      float a = std::fabs(y[i]);
      if (!(a > 0.0f)) continue;
      if (have == k && !(a > mag[k - 1])) continue;
      uint32_t j = have < k ? have++ : k - 1;
      while (j > 0 && a > mag[j - 1]) {
        mag[j] = mag[j - 1];
        pos[j] = pos[j - 1];
        --j;
      }
      mag[j] = a;
      pos[j] = uint16_t(i);
    }
    std::copy(pos, pos + have, idx);
    std::sort(idx, idx + have);
    return have;
  }
  thread_local std::vector<uint16_t> cand;
  cand.clear();
  for (uint32_t i = 0; i < e; ++i)
    if (std::fabs(y[i]) > 0.0f) cand.push_back(uint16_t(i));
  uint32_t have = std::min<uint32_t>(k, uint32_t(cand.size()));
  auto better = [y](uint16_t a, uint16_t b) {
    float fa = std::fabs(y[a]), fb = std::fabs(y[b]);
    return fa != fb ? fa > fb : a < b;
  };
  std::nth_element(cand.begin(), cand.begin() + have, cand.end(), better);
  std::copy(cand.begin(), cand.begin() + have, idx);
  std::sort(idx, idx + have);
  return have;
}

void quantize_values(const float* ys, uint32_t count, ValueMode mode, int8_t* out) {
  if (mode == ValueMode::sign) {
    for (uint32_t i = 0; i < count; ++i) out[i] = ys[i] < 0.0f ? -1 : 1;
    return;
  }
  float mx = 0.0f;
  for (uint32_t i = 0; i < count; ++i) mx = std::max(mx, std::fabs(ys[i]));
  for (uint32_t i = 0; i < count; ++i) {
    double q = mx > 0.0f ? 127.0 * double(ys[i]) / double(mx) : 0.0;
    out[i] = int8_t(std::clamp<long>(std::lround(q), -127, 127));
  }
}

void merged_signs(const DctBasis& b1, const DctBasis& b2, const uint16_t* idx, const int32_t* val,
                  uint32_t u, int8_t* out, int64_t* scratch) {
  const uint32_t n1 = b1.n, n2 = b2.n;
  if (u == 0) {
    std::memset(out, 0, size_t(n1) * n2);
    return;
  }
  int64_t* acc = scratch;         // n1 * n2: U
  int64_t* partial = scratch + size_t(n1) * n2;  // n2: one frequency row through B2
  std::fill(acc, acc + size_t(n1) * n2, 0);
  // Indices are ascending, so entries of one frequency row f1 are contiguous.
  for (uint32_t a = 0; a < u;) {
    uint32_t f1 = idx[a] / n2, b = a;
    std::fill(partial, partial + n2, 0);
    for (; b < u && idx[b] / n2 == f1; ++b) {
      uint32_t f2 = idx[b] % n2;
      int64_t v = val[b];
      for (uint32_t j = 0; j < n2; ++j) partial[j] += v * b2.i14[size_t(j) * n2 + f2];
    }
    for (uint32_t i = 0; i < n1; ++i) {
      int64_t t = b1.i14[size_t(i) * n1 + f1];
      int64_t* row = acc + size_t(i) * n2;
      for (uint32_t j = 0; j < n2; ++j) row[j] += t * partial[j];
    }
    a = b;
  }
  for (size_t e = 0; e < size_t(n1) * n2; ++e) out[e] = int8_t((acc[e] > 0) - (acc[e] < 0));
}

}  // namespace distro
