// The C boundary: every exported function runs its body through guard(), which turns any exception
// into a status code and the thread's last-error message. Nothing escapes to the host.
#pragma once

#include <new>
#include <string>

#include "core/error.hpp"
#include "distro/distro.h"

namespace distro::capi {

void set_error(int status, const std::string& message);
void clear_error();
const char* last_error();

template <class F>
int guard(F&& body) noexcept {
  try {
    clear_error();
    body();
    return DISTRO_OK;
  } catch (const Error& e) {
    set_error(int(e.code()), e.what());
    return int(e.code());
  } catch (const std::bad_alloc&) {
    set_error(DISTRO_ERR_OUT_OF_MEMORY, "out of memory");
    return DISTRO_ERR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    set_error(DISTRO_ERR_INTERNAL, std::string("internal error: ") + e.what());
    return DISTRO_ERR_INTERNAL;
  } catch (...) {
    set_error(DISTRO_ERR_INTERNAL, "internal error: unknown exception");
    return DISTRO_ERR_INTERNAL;
  }
}

// Throws Error(invalid_argument) naming the argument if p is NULL.
inline void need(const void* p, const char* what) {
  if (!p) fail(Code::invalid_argument, std::string(what) + " is NULL; expected a valid pointer");
}

// Checks a caller's struct_size against the smallest layout this library accepts.
inline void need_size(size_t have, size_t min, const char* what) {
  if (have < min)
    fail(Code::size, std::string(what) + ".struct_size is " + std::to_string(have) + "; expected at least " +
                         std::to_string(min) + " (use the _INIT macro)");
}

}  // namespace distro::capi
