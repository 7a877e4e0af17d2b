// Tokenizers turn text into the uint16 token ids the model and the token shards use. The built-in
// model reads bytes: ByteTokenizer maps every byte to the token of the same value (vocabulary 256), so
// any file (UTF-8 or not) encodes and decodes back exactly. A BPE tokenizer can later implement the
// same Tokenizer interface and take its place.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace distro {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Number of distinct tokens; every token is < vocab(). At most 65536 (tokens are uint16).
  virtual uint32_t vocab() const = 0;
  virtual std::vector<uint16_t> encode(std::string_view text) const = 0;
  // Throws Error(invalid_argument) naming the position of a token >= vocab().
  virtual std::string decode(std::span<const uint16_t> tokens) const = 0;
};

class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr uint32_t kVocab = 256;
  uint32_t vocab() const override { return kVocab; }
  std::vector<uint16_t> encode(std::string_view text) const override;
  std::string decode(std::span<const uint16_t> tokens) const override;
};

}  // namespace distro
