// Small text helpers for the network's log lines and error messages.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace distro::net {

// A parameter hash as 16 lowercase hex digits, as the logs and docs show it.
inline std::string hex16(uint64_t h) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(h));
  return b;
}

}  // namespace distro::net
