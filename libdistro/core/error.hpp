// Errors inside the core are C++ exceptions of type distro::Error carrying a status code that matches
// enum distro_status in the public header. The C API turns them into status codes and messages, so
// nothing escapes to the host.
#pragma once

#include <stdexcept>
#include <string>

namespace distro {

enum class Code : int {
  ok = 0,
  invalid_argument = 1,
  size = 2,
  state = 3,
  not_found = 4,
  unsupported = 5,
  out_of_memory = 6,
  corrupt = 7,
  mismatch = 8,
  device = 9,
  io = 10,
  numeric = 11,
  internal = 12,
};

class Error : public std::runtime_error {
 public:
  Error(Code code, const std::string& message) : std::runtime_error(message), code_(code) {}
  Code code() const noexcept { return code_; }

 private:
  Code code_;
};

[[noreturn]] inline void fail(Code code, const std::string& message) { throw Error(code, message); }

}  // namespace distro
