// Frames: every message on a connection is [u32 little-endian body length][u8 kind][body bytes].
// The receiver checks the length against a per-kind limit from the header alone, before it reads or
// allocates any of the body, so a peer cannot make us hold more than the limit says.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace distro::net {

inline constexpr size_t kFrameHeaderBytes = 5;

struct Frame {
  uint8_t kind = 0;
  std::vector<uint8_t> body;
};

// Per-kind upper bound of the body; 0 = this kind is not allowed on this connection. A kind that may
// carry an empty body needs a limit of at least 1 (the limit says "allowed, up to N bytes").
struct FrameLimits {
  std::array<uint32_t, 256> max_body{};
  // Convenience for building limits: allow(kind, bytes) returns *this.
  FrameLimits& allow(uint8_t kind, uint32_t max_body_bytes) {
    max_body[kind] = max_body_bytes;
    return *this;
  }
};

// Header + body. Throws Error(size) when the body does not fit the u32 length field.
std::vector<uint8_t> encode_frame(uint8_t kind, const std::vector<uint8_t>& body);

struct FrameHeader {
  uint32_t body_bytes = 0;
  uint8_t kind = 0;
};

// Parses the 5 header bytes. Returns an empty string when the frame is acceptable under limits,
// otherwise the reason it is not ("frame kind 7 of 9000000 bytes exceeds its limit of 65536").
FrameHeader decode_frame_header(const uint8_t* header);
std::string check_frame_header(const FrameHeader& h, const FrameLimits& limits);

}  // namespace distro::net
