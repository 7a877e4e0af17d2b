// Strict little-endian reading and writing of protocol message bodies (docs/network.md). The reader
// checks every length against the bytes that are left before it copies or allocates anything, and
// finish() refuses trailing bytes, so each message has exactly one accepted length.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

namespace distro::net {

class ByteWriter {
 public:
  void u8(uint8_t v) { out_.push_back(v); }
  void u16(uint16_t v) { put(v, 2); }
  void u32(uint32_t v) { put(v, 4); }
  void u64(uint64_t v) { put(v, 8); }
  void i32(int32_t v) { put(uint32_t(v), 4); }
  void f32(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    put(bits, 4);
  }
  // u16 length, then the bytes; the caller keeps strings within their field's bound.
  void str(const std::string& s);
  void bytes(std::span<const uint8_t> b) { out_.insert(out_.end(), b.begin(), b.end()); }
  std::vector<uint8_t> take() { return std::move(out_); }
  size_t size() const { return out_.size(); }

 private:
  void put(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(uint8_t(v >> (8 * i)));
  }
  std::vector<uint8_t> out_;
};

// Every failure throws Error(corrupt) naming the message and the field.
class ByteReader {
 public:
  ByteReader(std::span<const uint8_t> body, const char* message) : b_(body), msg_(message) {}
  uint8_t u8(const char* field);
  uint16_t u16(const char* field);
  uint32_t u32(const char* field);
  uint64_t u64(const char* field);
  int32_t i32(const char* field) { return int32_t(u32(field)); }
  float f32(const char* field);  // any bit pattern; callers check finiteness where it matters
  // A u16-length string of at most max_len bytes, each a printable ASCII character (0x20..0x7e).
  std::string str(const char* field, size_t max_len, size_t min_len = 0);
  // n bytes, checked against what is left first.
  std::span<const uint8_t> bytes(size_t n, const char* field);
  std::span<const uint8_t> rest() {
    auto r = b_.subspan(pos_);
    pos_ = b_.size();
    return r;
  }
  size_t left() const { return b_.size() - pos_; }
  // Throws unless every byte was read.
  void finish() const;

 private:
  const uint8_t* need(size_t n, const char* field);
  std::span<const uint8_t> b_;
  size_t pos_ = 0;
  const char* msg_;
};

}  // namespace distro::net
