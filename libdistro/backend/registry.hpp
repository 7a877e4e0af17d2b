// The device registry: every device present at run time. The CPU is always there; CUDA and Vulkan
// devices appear when their driver loads. A missing driver means no such device, never a failure.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/device.hpp"

namespace distro {

class Registry {
 public:
  // Scans for devices now. cpu_threads sets the CPU device's worker count (0 = one per core).
  explicit Registry(unsigned cpu_threads = 0);
  const std::vector<std::unique_ptr<Device>>& devices() const { return devices_; }
  // The device called name ("cpu", "cuda:0"); throws Error(not_found) listing what exists.
  Device& get(const std::string& name) const;

 private:
  std::vector<std::unique_ptr<Device>> devices_;
};

// Found by each backend's scan (empty when the backend is not built or no driver loads).
std::vector<std::unique_ptr<Device>> scan_cuda_devices();

}  // namespace distro

namespace distro {
// Opens one device by name without keeping the others: "cpu" never scans GPU drivers. Throws
// Error(not_found) naming the devices present when there is no such device.
std::unique_ptr<Device> open_device(const std::string& name, unsigned cpu_threads = 0);
// The name of the fastest device present that runs the whole training step: the first CUDA device
// when there is one, else "cpu".
std::string best_device_name();
}  // namespace distro
