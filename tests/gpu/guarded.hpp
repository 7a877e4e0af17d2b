// A device buffer with guard bytes on either side, shared by the GPU tests: an op that writes past
// its output (or before it) changes the pattern, and guards_intact() says so.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "backend/device.hpp"

namespace distro::test {

inline constexpr size_t kGuard = 64;  // guard bytes before and after every device output
inline constexpr uint8_t kPattern = 0xA5;

// `bytes` of payload with kGuard pattern bytes on either side; data() points past the front guard
// (kGuard keeps 16-byte alignment). Without init the payload holds the pattern too (as float: about
// -2.9e-16, so an op that should overwrite it and does not shows up).
struct Guarded {
  Device* dev;
  DeviceMemory mem;
  size_t bytes;
  Guarded(Device& d, size_t n, const void* init = nullptr) : dev(&d), bytes(n) {
    mem = d.alloc(n + 2 * kGuard);
    std::vector<uint8_t> host(n + 2 * kGuard, kPattern);
    if (init) std::memcpy(host.data() + kGuard, init, n);
    d.upload(mem.data(), host.data(), host.size());
  }
  template <class T> static Guarded of(Device& d, const std::vector<T>& v) {
    return Guarded(d, v.size() * sizeof(T), v.data());
  }
  template <class T> T* data() const { return reinterpret_cast<T*>(mem.as<uint8_t>() + kGuard); }
  float* f() const { return data<float>(); }
  template <class T = float> std::vector<T> get() const {
    std::vector<T> out(bytes / sizeof(T));
    dev->download(out.data(), mem.as<uint8_t>() + kGuard, bytes);
    return out;
  }
  bool guards_intact() const {
    std::vector<uint8_t> host(bytes + 2 * kGuard);
    dev->download(host.data(), mem.data(), host.size());
    for (size_t i = 0; i < kGuard; ++i)
      if (host[i] != kPattern || host[kGuard + bytes + i] != kPattern) return false;
    return true;
  }
};

}  // namespace distro::test
