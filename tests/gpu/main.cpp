// Main of the GPU tests: exits 77 (ctest's SKIP_RETURN_CODE for "gpu: all") when this machine has
// no GPU device that the library can use, else runs the Catch2 session. Catch2's runner is compiled
// here, once, like tests/main.cpp for the unit tests.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstdio>

#include "backend/registry.hpp"

int main(int argc, char** argv) {
  size_t gpus = 0;
#if defined(DISTRO_HAVE_CUDA)
  for (const auto& dev : distro::scan_cuda_devices()) {
    std::printf("GPU tests on %s: %s\n", dev->info().name.c_str(), dev->info().description.c_str());
    ++gpus;
  }
#endif
  if (gpus == 0) {
    std::printf("no CUDA device: skipping GPU tests\n");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
