#include "net/frame.hpp"

#include "core/error.hpp"

namespace distro::net {

std::vector<uint8_t> encode_frame(uint8_t kind, const std::vector<uint8_t>& body) {
  if (body.size() > UINT32_MAX) {
    fail(Code::size, "frame body of " + std::to_string(body.size()) + " bytes does not fit the u32 length field (at most " +
                         std::to_string(UINT32_MAX) + ")");
  }
  const uint32_t n = static_cast<uint32_t>(body.size());
  std::vector<uint8_t> out;
  out.reserve(kFrameHeaderBytes + body.size());
  out.push_back(static_cast<uint8_t>(n));
  out.push_back(static_cast<uint8_t>(n >> 8));
  out.push_back(static_cast<uint8_t>(n >> 16));
  out.push_back(static_cast<uint8_t>(n >> 24));
  out.push_back(kind);
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

FrameHeader decode_frame_header(const uint8_t* p) {
  FrameHeader h;
  h.body_bytes = static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
                 (static_cast<uint32_t>(p[3]) << 24);
  h.kind = p[4];
  return h;
}

std::string check_frame_header(const FrameHeader& h, const FrameLimits& limits) {
  const uint32_t limit = limits.max_body[h.kind];
  if (limit == 0) {
    return "frame kind " + std::to_string(h.kind) + " (" + std::to_string(h.body_bytes) +
           " bytes) is not allowed on this connection";
  }
  if (h.body_bytes > limit) {
    return "frame kind " + std::to_string(h.kind) + " of " + std::to_string(h.body_bytes) + " bytes exceeds its limit of " +
           std::to_string(limit);
  }
  return {};
}

}  // namespace distro::net
