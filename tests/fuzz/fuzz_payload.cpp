// libFuzzer target: peer payload decoding (wire v3) against a fixed small manifest.
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return distro::fuzz::run_input(
      data, size, [](const distro::Manifest& m, std::span<const uint8_t> b) { return distro::decode_payload(m, b); },
      [](const distro::Manifest& m, const distro::PeerPayload& p) { return distro::encode_payload(m, p); });
}
