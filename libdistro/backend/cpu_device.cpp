#include "backend/cpu_device.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <fstream>
#include <new>
#include <vector>

#include "optim/chunk_math.hpp"
#include "optim/hash_mix.hpp"

namespace distro {

namespace {

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto p = line.find(':');
      if (p != std::string::npos) return line.substr(p + 2);
    }
  }
  return "CPU";
}

}  // namespace

CpuDevice::CpuDevice(unsigned threads) : pool_(threads) {
  info_.name = "cpu";
  info_.kind = DeviceKind::cpu;
  info_.flags = kDeviceInt64 | kDeviceOptimizer;
  long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  info_.memory_total = pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : 0;
  info_.memory_free = avail > 0 && page > 0 ? uint64_t(avail) * uint64_t(page) : 0;
  info_.compute_units = pool_.size();
  info_.subgroup_size = 1;
  info_.description = cpu_model_name() + " (" + std::to_string(pool_.size()) + " threads)";
}

DeviceMemory CpuDevice::alloc(size_t bytes) {
  void* p = std::malloc(bytes ? bytes : 1);
  if (!p) fail(Code::out_of_memory, "cannot allocate " + std::to_string(bytes) + " bytes of host memory");
  return DeviceMemory(this, p, bytes);
}
void CpuDevice::release(void* ptr) noexcept { std::free(ptr); }
void CpuDevice::upload(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void CpuDevice::download(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void CpuDevice::zero(void* dst, size_t bytes) { std::memset(dst, 0, bytes); }

const DctBasis& CpuDevice::basis(uint32_t n) {
  std::lock_guard<std::mutex> lock(bases_mu_);
  auto& slot = bases_[n];
  if (!slot) slot = std::make_unique<DctBasis>(make_dct_basis(n));
  return *slot;
}

void CpuDevice::compress(const CompressArgs& a) {
  const TensorPlan& p = *a.plan;
  const DctBasis& b1 = basis(p.n1);
  const DctBasis& b2 = basis(p.n2);
  const uint32_t E = p.elems(), k = p.k;
  pool_.parallel_for(p.chunks, [&](uint64_t cb, uint64_t ce, unsigned) {
    std::vector<float> y(E), ysel(k);
    for (uint64_t c = cb; c < ce; ++c) {
      float* x = a.delta + chunk_origin(p, c);
      const float* g = a.grad + chunk_origin(p, c);
      for (uint32_t i = 0; i < p.n1; ++i)
        for (uint32_t j = 0; j < p.n2; ++j) {
          uint64_t o = uint64_t(i) * p.cols + j;
          x[o] = a.beta * x[o] + a.lr * g[o];
        }
      dct_chunk_forward(x, p.cols, b1, b2, y.data());
      uint16_t* idx = a.index + c * k;
      uint32_t cnt = select_topk(y.data(), E, k, idx);
      a.count[c] = uint16_t(cnt);
      for (uint32_t s = 0; s < cnt; ++s) ysel[s] = y[idx[s]];
      quantize_values(ysel.data(), cnt, a.values, a.value + c * k);
      // Error feedback: subtract the sent coefficients' basis functions, at full precision.
      for (uint32_t i = 0; i < p.n1; ++i)
        for (uint32_t j = 0; j < p.n2; ++j) {
          double acc = 0.0;
          for (uint32_t s = 0; s < cnt; ++s) {
            uint32_t f1 = idx[s] / p.n2, f2 = idx[s] % p.n2;
            acc += double(ysel[s]) * b1.f64[size_t(i) * p.n1 + f1] * b2.f64[size_t(j) * p.n2 + f2];
          }
          uint64_t o = uint64_t(i) * p.cols + j;
          x[o] = float(double(x[o]) - acc);
        }
    }
  });
}

double CpuDevice::sum_squares(const float* x, uint64_t n) {
  double ss = 0.0;
  for (uint64_t i = 0; i < n; ++i) ss += double(x[i]) * double(x[i]);
  return ss;
}

void CpuDevice::apply(const ApplyArgs& a) {
  const TensorPlan& p = *a.plan;
  const DctBasis& b1 = basis(p.n1);
  const DctBasis& b2 = basis(p.n2);
  const uint32_t E = p.elems();
  pool_.parallel_for(p.chunks, [&](uint64_t cb, uint64_t ce, unsigned) {
    std::vector<int8_t> sign(E);
    std::vector<int64_t> scratch(size_t(E) + p.n2);
    for (uint64_t c = cb; c < ce; ++c) {
      uint32_t o = a.offset[c], u = a.offset[c + 1] - o;
      merged_signs(b1, b2, a.index + o, a.value + o, u, sign.data(), scratch.data());
      float* t = a.params + chunk_origin(p, c);
      for (uint32_t i = 0; i < p.n1; ++i)
        for (uint32_t j = 0; j < p.n2; ++j) {
          float& v = t[uint64_t(i) * p.cols + j];
          v = apply_element(v, a.decay_factor, a.lr, sign[size_t(i) * p.n2 + j]);
        }
    }
  });
}

void CpuDevice::adamw(const AdamWArgs& a) {
  const float bc1 = 1.0f - std::pow(a.beta1, float(a.t));
  const float bc2 = 1.0f - std::pow(a.beta2, float(a.t));
  pool_.parallel_for(a.n, [&](uint64_t b, uint64_t e, unsigned) {
    for (uint64_t i = b; i < e; ++i) {
      float g = a.grad[i];
      a.m[i] = a.beta1 * a.m[i] + (1.0f - a.beta1) * g;
      a.v[i] = a.beta2 * a.v[i] + (1.0f - a.beta2) * g * g;
      float mhat = a.m[i] / bc1, vhat = a.v[i] / bc2;
      a.params[i] -= a.lr * (mhat / (std::sqrt(vhat) + a.eps) + a.weight_decay * a.params[i]);
    }
  });
}

uint64_t CpuDevice::first_nonfinite_momentum(const float* delta, const float* grad, float beta, float lr,
                                             uint64_t n) {
  std::vector<uint64_t> first(pool_.size(), UINT64_MAX);
  pool_.parallel_for(n, [&](uint64_t b, uint64_t e, unsigned w) {
    for (uint64_t i = b; i < e; ++i)
      if (!std::isfinite(grad[i]) || !std::isfinite(beta * delta[i] + lr * grad[i])) {
        first[w] = i;
        return;
      }
  });
  return *std::min_element(first.begin(), first.end());
}

uint64_t CpuDevice::hash(const float* data, uint64_t n, uint64_t salt) {
  std::vector<uint64_t> part(pool_.size(), 0);
  pool_.parallel_for(n, [&](uint64_t b, uint64_t e, unsigned w) {
    uint64_t s = 0;
    for (uint64_t i = b; i < e; ++i) {
      uint32_t bits;
      std::memcpy(&bits, &data[i], 4);
      s += hash_term(bits, i, salt);
    }
    part[w] = s;
  });
  uint64_t s = 0;
  for (uint64_t v : part) s += v;
  return s;
}

}  // namespace distro
