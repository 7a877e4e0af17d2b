// A training corpus as one token array, split into a training part and a validation part: the last
// val_fraction of the tokens (rounded to the nearest token) are for validation, the rest for
// training. The split does not depend on the sequence length; Sampler checks that each part holds at
// least T + 1 tokens (check_sequence_length).
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

namespace distro {

constexpr double kDefaultValFraction = 0.05;

class Dataset {
 public:
  // Takes the tokens. val_fraction must be in [0, 1) (0: no validation part). Every token must be
  // < vocab. Throws Error(invalid_argument) for no tokens, a bad fraction or a token >= vocab.
  Dataset(std::vector<uint16_t> tokens, double val_fraction = kDefaultValFraction, uint32_t vocab = 256);

  // The file's bytes as byte tokens (vocabulary 256). Throws Error(not_found) / Error(io) naming the
  // path, Error(invalid_argument) for an empty file.
  static Dataset from_text_file(const std::filesystem::path& path, double val_fraction = kDefaultValFraction);
  // An llm.c-style token shard (shards.hpp); every token must be < vocab. Throws what
  // read_token_shard throws, and Error(invalid_argument) for a shard without tokens.
  static Dataset from_shard(const std::filesystem::path& path, double val_fraction = kDefaultValFraction,
                            uint32_t vocab = 256);

  std::span<const uint16_t> tokens() const { return tokens_; }
  std::span<const uint16_t> train() const { return std::span<const uint16_t>(tokens_).first(train_size_); }
  std::span<const uint16_t> val() const { return std::span<const uint16_t>(tokens_).subspan(train_size_); }
  uint64_t size() const { return tokens_.size(); }
  uint64_t train_size() const { return train_size_; }
  uint64_t val_size() const { return tokens_.size() - train_size_; }
  // Index in tokens() of the first validation token (== train_size()).
  uint64_t val_begin() const { return train_size_; }
  double val_fraction() const { return val_fraction_; }
  uint32_t vocab() const { return vocab_; }

  // Throws Error(invalid_argument) unless T >= 1, the training part holds at least T + 1 tokens and
  // the validation part (when val_fraction > 0) does too; the message says how many tokens in all the
  // sequence length needs at this fraction.
  void check_sequence_length(int T) const;

  // Tokens in the validation part for n tokens in all (the split rule, exposed for messages/tests).
  static uint64_t val_tokens_for(uint64_t n, double val_fraction);
  // Fewest tokens in all for which both parts hold at least T + 1 tokens at this fraction.
  static uint64_t min_tokens_for(int T, double val_fraction);

 private:
  std::vector<uint16_t> tokens_;
  uint64_t train_size_ = 0;
  double val_fraction_ = kDefaultValFraction;
  uint32_t vocab_ = 256;
};

// Loads a shard or a text file: a file that starts with a shard magic is read as a token shard (any
// extension); a ".bin" file without the magic is refused with Error(corrupt) rather than trained on
// as text (it is most likely a shard of another format, e.g. nanoGPT's headerless uint16 files);
// anything else is text, byte-tokenized.
Dataset load_dataset(const std::filesystem::path& path, double val_fraction = kDefaultValFraction);

}  // namespace distro
