// distro devices: what the registry found.
#include <cstdio>

#include "args.hpp"
#include "backend/registry.hpp"
#include "commands.hpp"
#include <nlohmann/json.hpp>

namespace distro::cli {

static const char* kind_name(DeviceKind k) {
  switch (k) {
    case DeviceKind::cpu: return "cpu";
    case DeviceKind::cuda: return "cuda";
    case DeviceKind::vulkan: return "vulkan";
  }
  return "unknown";
}

int cmd_devices(const std::vector<std::string>& argv) {
  Args a("distro devices", argv, {}, {"json", "help"});
  if (a.flag("help")) {
    std::puts("usage: distro devices [--json]\nLists the CPU and every CUDA or Vulkan device whose driver loads.");
    return 0;
  }
  Registry reg;
  if (a.flag("json")) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& d : reg.devices()) {
      const DeviceInfo& i = d->info();
      list.push_back({{"name", i.name},
                      {"kind", kind_name(i.kind)},
                      {"description", i.description},
                      {"memory_total", i.memory_total},
                      {"memory_free", i.memory_free},
                      {"compute_units", i.compute_units},
                      {"subgroup_size", i.subgroup_size},
                      {"fp16", bool(i.flags & kDeviceFp16)},
                      {"bf16", bool(i.flags & kDeviceBf16)},
                      {"int64", bool(i.flags & kDeviceInt64)},
                      {"optimizer", bool(i.flags & kDeviceOptimizer)}});
    }
    std::puts(list.dump(2).c_str());
    return 0;
  }
  std::printf("%-10s %-7s %10s %6s  %s\n", "NAME", "KIND", "MEMORY", "UNITS", "DESCRIPTION");
  for (const auto& d : reg.devices()) {
    const DeviceInfo& i = d->info();
    std::printf("%-10s %-7s %7.1f GB %6u  %s%s\n", i.name.c_str(), kind_name(i.kind),
                double(i.memory_total) / 1e9, i.compute_units, i.description.c_str(),
                (i.flags & kDeviceOptimizer) ? "" : "  [no optimizer ops yet]");
  }
  return 0;
}

}  // namespace distro::cli
