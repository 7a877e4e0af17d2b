// Bit-level writer and reader for the wire codec (docs/protocol.md, "Bit order"). Bits are packed
// LSB-first: stream bit i is bit (i % 8) of byte i / 8, and an n-bit field holds its value's least
// significant bit first. That order lets both sides move whole 32/64-bit words with one shift.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace distro::wire {

// Appends bits to a byte vector that may already hold other bytes (the message header).
class BitWriter {
 public:
  explicit BitWriter(std::vector<uint8_t>& out) : out_(out) {}

  // Writes the low `bits` bits of v (bits <= 32; v must fit in them).
  void put(uint64_t v, unsigned bits) {
    acc_ |= v << fill_;
    fill_ += bits;
    if (fill_ >= 32) {
      // A 4-byte flush keeps fill_ < 32 between calls, so the next put (<= 32 bits) never overflows.
      for (int i = 0; i < 4; ++i) out_.push_back(uint8_t(acc_ >> (8 * i)));
      acc_ >>= 32;
      fill_ -= 32;
    }
  }
  // Writes a field of up to 64 bits.
  void put_wide(uint64_t v, unsigned bits) {
    if (bits > 32) {
      put(v & 0xFFFFFFFFu, 32);
      put(v >> 32, bits - 32);
    } else {
      put(v, bits);
    }
  }
  // Flushes the partial byte, padding it with zero bits. The writer must not be used afterwards.
  void finish() {
    while (fill_ > 0) {
      out_.push_back(uint8_t(acc_));
      acc_ >>= 8;
      fill_ = fill_ > 8 ? fill_ - 8 : 0;
    }
  }
  // Bits written so far, counting those not yet flushed (for measurements and tests).
  uint64_t bits_written(size_t start_byte) const { return (out_.size() - start_byte) * 8 + fill_; }

 private:
  std::vector<uint8_t>& out_;
  uint64_t acc_ = 0;
  unsigned fill_ = 0;
};

// Reads an LSB-first bit stream. Every read is bounds-checked; running past the end throws
// Error(corrupt, "truncated ...") so no caller can act on bits that are not there.
class BitReader {
 public:
  BitReader(const uint8_t* data, size_t bytes) : data_(data), bytes_(bytes), total_(uint64_t(bytes) * 8) {}

  uint64_t position() const { return pos_; }
  uint64_t remaining() const { return total_ - pos_; }
  size_t size_bytes() const { return bytes_; }

  // Reads a field of `bits` bits (bits <= 32).
  uint32_t get(unsigned bits) {
    if (bits > remaining()) throw_truncated(bits);
    uint32_t v = uint32_t(peek_word() & ((uint64_t(1) << bits) - 1));
    pos_ += bits;
    return v;
  }
  // Reads a field of up to 64 bits.
  uint64_t get_wide(unsigned bits) {
    if (bits <= 32) return get(bits);
    uint64_t lo = get(32);
    return lo | (uint64_t(get(bits - 32)) << 32);
  }
  // The next 57+ bits without consuming them; bits past the end read as zero.
  uint64_t peek_word() const {
    size_t byte = size_t(pos_ >> 3);
    uint64_t w = 0;
    if (byte + 8 <= bytes_) {
      if constexpr (std::endian::native == std::endian::little) {
        std::memcpy(&w, data_ + byte, 8);  // one unaligned load on the hot path
      } else {
        for (int i = 0; i < 8; ++i) w |= uint64_t(data_[byte + i]) << (8 * i);
      }
    } else {
      for (size_t i = 0; byte + i < bytes_; ++i) w |= uint64_t(data_[byte + i]) << (8 * i);
    }
    return w >> (pos_ & 7);
  }
  void skip(uint64_t bits) {
    if (bits > remaining()) throw_truncated(bits);
    pos_ += bits;
  }

 private:
  [[noreturn]] void throw_truncated(uint64_t wanted) const;

  const uint8_t* data_;
  size_t bytes_;
  uint64_t total_;
  uint64_t pos_ = 0;
};

}  // namespace distro::wire
