// Device listing over the registry.
#include <algorithm>
#include <cstring>

#include "backend/registry.hpp"
#include "guard.hpp"
#include "handles.hpp"

struct distro_devices {
  distro::Registry registry;
};

using namespace distro;
using namespace distro::capi;

namespace {
void copy_text(char* dst, size_t cap, const std::string& s) {
  size_t n = std::min(cap - 1, s.size());
  std::memcpy(dst, s.data(), n);
  dst[n] = '\0';
}
}  // namespace

extern "C" {

DISTRO_API int distro_devices_scan(distro_devices** out) {
  return guard([&] {
    need(out, "out");
    auto* d = new distro_devices{Registry()};
    live_handles().add(d);
    *out = d;
  });
}

DISTRO_API int distro_devices_destroy(distro_devices* devices) {
  return guard([&] {
    if (!devices) return;
    check_handle(devices, "devices");
    live_handles().remove(devices);
    delete devices;
  });
}

DISTRO_API int distro_devices_count(size_t* out_count, const distro_devices* devices) {
  return guard([&] {
    need(out_count, "out_count");
    check_handle(devices, "devices");
    *out_count = devices->registry.devices().size();
  });
}

DISTRO_API int distro_devices_get(distro_device_info* out, const distro_devices* devices, size_t index) {
  return guard([&] {
    need(out, "out");
    check_handle(devices, "devices");
    need_size(out->struct_size, sizeof(distro_device_info), "distro_device_info");
    const auto& list = devices->registry.devices();
    if (index >= list.size())
      fail(Code::not_found, "device index " + std::to_string(index) + " is out of range; " +
                                std::to_string(list.size()) + " devices are present");
    const DeviceInfo& d = list[index]->info();
    distro_device_info info = DISTRO_DEVICE_INFO_INIT;
    info.struct_size = out->struct_size;
    copy_text(info.name, sizeof info.name, d.name);
    copy_text(info.description, sizeof info.description, d.description);
    info.kind = int(d.kind);
    info.flags = d.flags;
    info.memory_total = d.memory_total;
    info.memory_free = d.memory_free;
    info.compute_units = d.compute_units;
    info.subgroup_size = d.subgroup_size;
    *out = info;
  });
}

}  // extern "C"
