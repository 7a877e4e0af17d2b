// Bit-level writer and reader for the wire codec (docs/protocol.md, "Bit order"). Bits are packed
// LSB-first: stream bit i is bit (i % 8) of byte i / 8, and an n-bit field holds its value's least
// significant bit first. That order lets both sides move whole 32/64-bit words with one shift.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace distro::wire {

// Appends bits to a byte vector that may already hold other bytes (the message header).
//
// Speed: the writer keeps the vector larger than the bytes written (spare room, zero-filled), stores
// whole 32-bit words into it, and trims it to the bytes written in finish() (or when destroyed
// unfinished). So the vector's size is only meaningful after finish(); bits_written() is.
class BitWriter {
 public:
  explicit BitWriter(std::vector<uint8_t>& out) : out_(out), len_(out.size()) {}
  ~BitWriter() {
    if (!finished_) out_.resize(len_);  // an unfinished writer leaves the flushed bytes, as before
  }
  BitWriter(const BitWriter&) = delete;
  BitWriter& operator=(const BitWriter&) = delete;

  // Writes the low `bits` bits of v (bits <= 32; v must fit in them).
  void put(uint64_t v, unsigned bits) {
    acc_ |= v << fill_;
    fill_ += bits;
    // A 4-byte flush keeps fill_ < 32 between calls, so the next put (<= 32 bits) never overflows.
    if (fill_ >= 32) flush32();
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
  // Pads the stream with zero bits up to the next byte boundary (none when it is on one), so what
  // follows starts a byte: the end of one piece of a body and the start of the next.
  void align() {
    fill_ = (fill_ + 7) & ~7u;
    if (fill_ >= 32) flush32();  // keeps fill_ < 32 between calls, as put() does
  }
  // Flushes the partial byte, padding it with zero bits. The writer must not be used afterwards.
  void finish() {
    while (fill_ > 0) {
      if (out_.size() == len_) grow(1);
      out_[len_++] = uint8_t(acc_);
      acc_ >>= 8;
      fill_ = fill_ > 8 ? fill_ - 8 : 0;
    }
    out_.resize(len_);
    finished_ = true;
  }
  // Bits written so far, counting those not yet flushed (for measurements and tests).
  uint64_t bits_written(size_t start_byte) const { return (len_ - start_byte) * 8 + fill_; }

 private:
  static void store_le(uint8_t* p, uint64_t v, int bytes) {
    if constexpr (std::endian::native == std::endian::little) {
      std::memcpy(p, &v, size_t(bytes));
    } else {
      for (int i = 0; i < bytes; ++i) p[i] = uint8_t(v >> (8 * i));
    }
  }
  // Stores the low 32 pending bits.
  void flush32() {
    if (out_.size() - len_ < 4) grow(4);
    store_le(out_.data() + len_, acc_, 4);
    len_ += 4;
    acc_ >>= 32;
    fill_ -= 32;
  }
  // Makes room for at least `need` more bytes: 1.5 times the size, so the zero fill is amortised but
  // touches (page-faults) little memory the message will not use; within the capacity the caller
  // reserved, no reallocation.
  void grow(size_t need) {
    out_.resize(std::max(len_ + need + 64, out_.size() + out_.size() / 2 + 4096));
  }

  std::vector<uint8_t>& out_;
  size_t len_;  // bytes written; out_[len_..] is spare room
  uint64_t acc_ = 0;
  unsigned fill_ = 0;
  bool finished_ = false;
};

// Reads an LSB-first bit stream. Every read is bounds-checked; running past the end throws
// Error(corrupt, "truncated ...") so no caller can act on bits that are not there.
//
// Speed: the next bits are held in a 64-bit register (buf_), refilled from memory only when fewer
// than a read needs remain in it, so most reads are a mask and a shift rather than a memory load.
class BitReader {
 public:
  BitReader(const uint8_t* data, size_t bytes) : data_(data), bytes_(bytes), total_(uint64_t(bytes) * 8) {}

  uint64_t position() const { return pos_; }
  uint64_t remaining() const { return total_ - pos_; }
  size_t size_bytes() const { return bytes_; }

  // Reads a field of `bits` bits (bits <= 32).
  uint32_t get(unsigned bits) {
    if (bits > remaining()) throw_truncated(bits, pos_, bytes_);
    if (avail_ < bits) refill();
    uint32_t v = uint32_t(buf_ & ((uint64_t(1) << bits) - 1));
    consume(bits);
    return v;
  }
  // Reads a field of up to 64 bits.
  uint64_t get_wide(unsigned bits) {
    if (bits <= 32) return get(bits);
    uint64_t lo = get(32);
    return lo | (uint64_t(get(bits - 32)) << 32);
  }
  // The next 57+ bits without consuming them; bits past the end read as zero.
  uint64_t peek_word() {
    if (avail_ < 57) refill();
    return buf_;
  }
  void skip(uint64_t bits) {
    if (bits > remaining()) throw_truncated(bits, pos_, bytes_);
    if (bits < avail_) {
      consume(unsigned(bits));
    } else {
      pos_ += bits;
      buf_ = 0;
      avail_ = 0;
    }
  }
  // Consumes `bits` (<= 57) bits that a peek_word() just returned, unchecked: the caller has checked
  // that bits <= remaining().
  void consume_peeked(unsigned bits) { consume(bits); }

 private:
  // Static, taking values: the reader's address never escapes, so a local copy of it can live in
  // registers through a decoding loop.
  [[noreturn]] static void throw_truncated(uint64_t wanted, uint64_t pos, size_t bytes);
  // Drops `bits` (< 64, <= avail_) bits from the register.
  void consume(unsigned bits) {
    buf_ >>= bits;
    avail_ -= bits;
    pos_ += bits;
  }
  // Loads the 57 to 64 bits from pos_ on into the register.
  void refill() {
    size_t byte = size_t(pos_ >> 3);
    uint64_t w = 0;
    if (byte + 8 <= bytes_) {
      if constexpr (std::endian::native == std::endian::little) {
        std::memcpy(&w, data_ + byte, 8);  // one unaligned load
      } else {
        for (int i = 0; i < 8; ++i) w |= uint64_t(data_[byte + i]) << (8 * i);
      }
    } else {
      for (size_t i = 0; byte + i < bytes_; ++i) w |= uint64_t(data_[byte + i]) << (8 * i);
    }
    const unsigned off = unsigned(pos_ & 7);
    buf_ = w >> off;
    avail_ = 64 - off;
  }

  const uint8_t* data_;
  size_t bytes_;
  uint64_t total_;
  uint64_t pos_ = 0;
  uint64_t buf_ = 0;    // stream bits pos_ .. pos_ + avail_ - 1, LSB first; zeros above them
  unsigned avail_ = 0;  // (past the end of the stream, the register holds zeros, counted as bits)
};

}  // namespace distro::wire
