#include "data/tokenizer.hpp"

#include "core/error.hpp"

namespace distro {

std::vector<uint16_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<uint16_t> out(text.size());
  for (size_t i = 0; i < text.size(); ++i) out[i] = static_cast<unsigned char>(text[i]);
  return out;
}

std::string ByteTokenizer::decode(std::span<const uint16_t> tokens) const {
  std::string out(tokens.size(), '\0');
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] >= kVocab) {
      fail(Code::invalid_argument, "byte tokenizer: token " + std::to_string(tokens[i]) + " at position " +
                                       std::to_string(i) + " is outside the vocabulary of 256 bytes");
    }
    out[i] = static_cast<char>(static_cast<unsigned char>(tokens[i]));
  }
  return out;
}

}  // namespace distro
