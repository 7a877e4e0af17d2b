#include "net/byte_io.hpp"

#include "core/error.hpp"

namespace distro::net {

void ByteWriter::str(const std::string& s) {
  if (s.size() > 0xFFFF) fail(Code::size, "a protocol string of " + std::to_string(s.size()) + " bytes exceeds 65535");
  u16(uint16_t(s.size()));
  out_.insert(out_.end(), s.begin(), s.end());
}

const uint8_t* ByteReader::need(size_t n, const char* field) {
  if (n > left())
    fail(Code::corrupt, std::string(msg_) + " message is truncated: field '" + field + "' needs " + std::to_string(n) +
                            " bytes, " + std::to_string(left()) + " are left");
  const uint8_t* p = b_.data() + pos_;
  pos_ += n;
  return p;
}

static uint64_t le(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

uint8_t ByteReader::u8(const char* field) { return *need(1, field); }
uint16_t ByteReader::u16(const char* field) { return uint16_t(le(need(2, field), 2)); }
uint32_t ByteReader::u32(const char* field) { return uint32_t(le(need(4, field), 4)); }
uint64_t ByteReader::u64(const char* field) { return le(need(8, field), 8); }

float ByteReader::f32(const char* field) {
  uint32_t bits = u32(field);
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

std::string ByteReader::str(const char* field, size_t max_len, size_t min_len) {
  uint16_t n = u16(field);
  if (n > max_len || n < min_len)
    fail(Code::corrupt, std::string(msg_) + " message: field '" + field + "' is " + std::to_string(n) +
                            " bytes long; expected " + std::to_string(min_len) + ".." + std::to_string(max_len));
  const uint8_t* p = need(n, field);
  for (uint16_t i = 0; i < n; ++i)
    if (p[i] < 0x20 || p[i] > 0x7e)
      fail(Code::corrupt, std::string(msg_) + " message: field '" + field + "' holds byte " + std::to_string(p[i]) +
                              " at position " + std::to_string(i) + "; expected printable ASCII");
  return std::string(reinterpret_cast<const char*>(p), n);
}

std::span<const uint8_t> ByteReader::bytes(size_t n, const char* field) { return {need(n, field), n}; }

void ByteReader::finish() const {
  if (pos_ != b_.size())
    fail(Code::corrupt, std::string(msg_) + " message has " + std::to_string(b_.size() - pos_) +
                            " bytes after its last field; expected exactly " + std::to_string(pos_));
}

}  // namespace distro::net
