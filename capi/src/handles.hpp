// Live-handle bookkeeping, so that a destroyed or made-up handle is answered with a status code
// instead of undefined behaviour (DESIGN.md section 7: no input crashes the host). A handle is
// checked against this set on every call; the set is the library's only process-wide state and holds
// nothing but addresses.
#pragma once

#include <mutex>
#include <sstream>
#include <string>
#include <unordered_set>

#include "core/error.hpp"

namespace distro::capi {

class LiveHandles {
 public:
  void add(const void* p) {
    std::lock_guard<std::mutex> l(mu_);
    live_.insert(p);
  }
  // Removes p; false if it was not live.
  bool remove(const void* p) {
    std::lock_guard<std::mutex> l(mu_);
    return live_.erase(p) != 0;
  }
  bool contains(const void* p) {
    std::lock_guard<std::mutex> l(mu_);
    return live_.count(p) != 0;
  }

 private:
  std::mutex mu_;
  std::unordered_set<const void*> live_;
};

LiveHandles& live_handles();

// Throws Error(invalid_argument) unless h is a live handle of the named kind.
template <class H>
H* check_handle(H* h, const char* kind) {
  if (!h) fail(Code::invalid_argument, std::string(kind) + " is NULL; expected a handle from distro_" + kind + "_create");
  if (!live_handles().contains(h)) {
    std::ostringstream os;
    os << kind << " handle " << static_cast<const void*>(h)
       << " is not live (destroyed already, or never created by libdistro)";
    fail(Code::invalid_argument, os.str());
  }
  return h;
}

}  // namespace distro::capi
