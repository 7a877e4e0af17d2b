#include "backend/registry.hpp"

#include "backend/cpu_device.hpp"

namespace distro {

#ifndef DISTRO_HAVE_CUDA
std::vector<std::unique_ptr<Device>> scan_cuda_devices() { return {}; }
#endif

Registry::Registry(unsigned cpu_threads) {
  devices_.push_back(std::make_unique<CpuDevice>(cpu_threads));
  for (auto& d : scan_cuda_devices()) devices_.push_back(std::move(d));
}

Device& Registry::get(const std::string& name) const {
  std::string known;
  for (const auto& d : devices_) {
    if (d->info().name == name) return *d;
    known += (known.empty() ? "" : ", ") + d->info().name;
  }
  fail(Code::not_found, "no device named '" + name + "'; devices present: " + known);
}

}  // namespace distro

namespace distro {

std::unique_ptr<Device> open_device(const std::string& name, unsigned cpu_threads) {
  if (name == "cpu") return std::make_unique<CpuDevice>(cpu_threads);
  auto found = scan_cuda_devices();
  std::string known = "cpu";
  for (auto& d : found) {
    if (d->info().name == name) return std::move(d);
    known += ", " + d->info().name;
  }
  fail(Code::not_found, "no device named '" + name + "'; devices present: " + known);
}

}  // namespace distro

namespace distro {

std::string best_device_name() {
  auto cuda = scan_cuda_devices();
  return cuda.empty() ? "cpu" : cuda.front()->info().name;
}

}  // namespace distro
