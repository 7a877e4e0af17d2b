// Versions, errors, memory and message inspection.
#include <cstdlib>
#include <cstring>

#include "guard.hpp"
#include "handles.hpp"
#include "wire/codec.hpp"

static_assert(int(distro::Code::internal) == DISTRO_ERR_INTERNAL, "status codes must match distro.h");
static_assert(int(distro::Code::corrupt) == DISTRO_ERR_CORRUPT, "status codes must match distro.h");

namespace distro::capi {

namespace {
thread_local std::string g_last_error;
}

void set_error(int status, const std::string& message) {
  g_last_error = std::string(distro_status_name(status)) + ": " + message;
}
void clear_error() { g_last_error.clear(); }
const char* last_error() { return g_last_error.c_str(); }

LiveHandles& live_handles() {
  static LiveHandles handles;  // addresses only; see handles.hpp
  return handles;
}

}  // namespace distro::capi

using namespace distro;
using namespace distro::capi;

extern "C" {

DISTRO_API const char* distro_version(void) { return DISTRO_VERSION_STRING; }
DISTRO_API int distro_version_number(void) { return DISTRO_VERSION_NUMBER; }
DISTRO_API int distro_abi_version(void) { return DISTRO_ABI_VERSION; }

DISTRO_API const char* distro_status_name(int status) {
  switch (status) {
    case DISTRO_OK: return "DISTRO_OK";
    case DISTRO_ERR_INVALID_ARGUMENT: return "DISTRO_ERR_INVALID_ARGUMENT";
    case DISTRO_ERR_SIZE: return "DISTRO_ERR_SIZE";
    case DISTRO_ERR_STATE: return "DISTRO_ERR_STATE";
    case DISTRO_ERR_NOT_FOUND: return "DISTRO_ERR_NOT_FOUND";
    case DISTRO_ERR_UNSUPPORTED: return "DISTRO_ERR_UNSUPPORTED";
    case DISTRO_ERR_OUT_OF_MEMORY: return "DISTRO_ERR_OUT_OF_MEMORY";
    case DISTRO_ERR_CORRUPT: return "DISTRO_ERR_CORRUPT";
    case DISTRO_ERR_MISMATCH: return "DISTRO_ERR_MISMATCH";
    case DISTRO_ERR_DEVICE: return "DISTRO_ERR_DEVICE";
    case DISTRO_ERR_IO: return "DISTRO_ERR_IO";
    case DISTRO_ERR_NUMERIC: return "DISTRO_ERR_NUMERIC";
    case DISTRO_ERR_INTERNAL: return "DISTRO_ERR_INTERNAL";
    default: return "unknown status";
  }
}

DISTRO_API const char* distro_last_error(void) { return distro::capi::last_error(); }

DISTRO_API void distro_free(void* ptr) { std::free(ptr); }

DISTRO_API int distro_message_inspect(distro_message_info* out, const uint8_t* bytes, size_t size) {
  return guard([&] {
    need(out, "out");
    need(bytes, "bytes");
    need_size(out->struct_size, sizeof(distro_message_info), "distro_message_info");
    MessageHeader h = inspect_message({bytes, size});
    distro_message_info info = DISTRO_MESSAGE_INFO_INIT;
    info.struct_size = out->struct_size;
    info.kind = int(h.kind);
    info.version = h.version;
    info.value_mode = int(h.values);
    info.run_id = h.run_id;
    info.step = h.step;
    info.peer_id = h.peer_id;
    info.manifest_hash = h.manifest_hash;
    info.prev_hash = h.prev_hash;
    info.lr = h.lr;
    info.decay_factor = h.decay_factor;
    *out = info;
  });
}

}  // extern "C"
