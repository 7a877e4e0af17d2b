#include "data/dataset.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "core/error.hpp"
#include "data/file_io.hpp"
#include "data/shards.hpp"
#include "data/tokenizer.hpp"

namespace distro {
namespace {

std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

std::string fraction_text(double f) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", f);
  return buf;
}

void check_fraction(double f) {
  if (!(f >= 0.0 && f < 1.0)) {  // also refuses NaN
    fail(Code::invalid_argument,
         "dataset: val_fraction " + fraction_text(f) + " is out of range, expected a value in [0, 1)");
  }
}

}  // namespace

uint64_t Dataset::val_tokens_for(uint64_t n, double val_fraction) {
  check_fraction(val_fraction);
  // One IEEE multiply and round-half-away-from-zero: the same split on every platform.
  const double v = std::round(static_cast<double>(n) * val_fraction);
  return std::min<uint64_t>(n, static_cast<uint64_t>(v));
}

uint64_t Dataset::min_tokens_for(int T, double val_fraction) {
  check_fraction(val_fraction);
  if (T < 1) fail(Code::invalid_argument, "dataset: sequence length " + std::to_string(T) + " must be >= 1");
  const uint64_t need = static_cast<uint64_t>(T) + 1;
  if (val_fraction == 0.0) return need;
  auto fits = [&](uint64_t n) {
    const uint64_t v = val_tokens_for(n, val_fraction);
    return v >= need && n - v >= need;
  };
  const double est = std::ceil(static_cast<double>(need) / std::min(val_fraction, 1.0 - val_fraction));
  if (!(est < 0x1p62)) return std::numeric_limits<uint64_t>::max();  // a fraction too small to matter
  uint64_t n = std::max<uint64_t>(2 * need, static_cast<uint64_t>(est));
  while (n > 2 * need && fits(n - 1)) --n;
  while (!fits(n)) ++n;
  return n;
}

Dataset::Dataset(std::vector<uint16_t> tokens, double val_fraction, uint32_t vocab)
    : tokens_(std::move(tokens)), val_fraction_(val_fraction), vocab_(vocab) {
  check_fraction(val_fraction);
  if (tokens_.empty()) fail(Code::invalid_argument, "dataset: no tokens");
  if (vocab == 0 || vocab > 65536) {
    fail(Code::invalid_argument,
         "dataset: vocabulary " + std::to_string(vocab) + " is out of range, expected 1 to 65536 (uint16 tokens)");
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (tokens_[i] >= vocab) {
      fail(Code::invalid_argument, "dataset: token " + std::to_string(tokens_[i]) + " at position " +
                                       std::to_string(i) + " is outside the vocabulary of " +
                                       std::to_string(vocab) + " tokens");
    }
  }
  train_size_ = tokens_.size() - val_tokens_for(tokens_.size(), val_fraction);
}

void Dataset::check_sequence_length(int T) const {
  if (T < 1) fail(Code::invalid_argument, "dataset: sequence length " + std::to_string(T) + " must be >= 1");
  const uint64_t need = static_cast<uint64_t>(T) + 1;
  const bool val_short = val_fraction_ > 0.0 && val_size() < need;
  if (train_size() >= need && !val_short) return;
  const uint64_t total = min_tokens_for(T, val_fraction_);
  std::string msg = "dataset too small for sequence length " + std::to_string(T) + ": each of the training";
  msg += val_fraction_ > 0.0 ? " and validation parts" : " part";
  msg += " needs at least " + std::to_string(need) + " tokens (T + 1), so at least " +
         (total == std::numeric_limits<uint64_t>::max() ? std::string("an impractical number of")
                                                        : std::to_string(total)) +
         " tokens in all at val_fraction " + fraction_text(val_fraction_) + "; it has " +
         std::to_string(size()) + " (training " + std::to_string(train_size()) + ", validation " +
         std::to_string(val_size()) + ")";
  fail(Code::invalid_argument, msg);
}

Dataset Dataset::from_text_file(const std::filesystem::path& path, double val_fraction) {
  check_fraction(val_fraction);
  data_io::InputFile file(path, "text file");
  if (file.size() == 0) fail(Code::invalid_argument, "text file " + quoted(path) + " is empty");
  if (file.size() > std::numeric_limits<size_t>::max() / 2) {
    fail(Code::size, "text file " + quoted(path) + " is too large for this machine");
  }
  std::vector<uint16_t> tokens;
  tokens.reserve(static_cast<size_t>(file.size()));
  const ByteTokenizer tok;
  std::string buf(size_t(1) << 20, '\0');
  for (;;) {
    const size_t got = file.read_some(buf.data(), buf.size());
    if (got == 0) break;
    const auto part = tok.encode(std::string_view(buf.data(), got));
    tokens.insert(tokens.end(), part.begin(), part.end());
  }
  if (tokens.empty()) fail(Code::invalid_argument, "text file " + quoted(path) + " is empty");
  return Dataset(std::move(tokens), val_fraction, ByteTokenizer::kVocab);
}

Dataset Dataset::from_shard(const std::filesystem::path& path, double val_fraction, uint32_t vocab) {
  check_fraction(val_fraction);
  std::vector<uint16_t> tokens = read_token_shard(path, vocab);
  if (tokens.empty()) fail(Code::invalid_argument, "token shard " + quoted(path) + " holds no tokens");
  return Dataset(std::move(tokens), val_fraction, vocab);
}

Dataset load_dataset(const std::filesystem::path& path, double val_fraction) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (st.type() == std::filesystem::file_type::not_found) {
    fail(Code::not_found, "dataset not found: " + quoted(path));
  }
  if (has_shard_magic(path)) return Dataset::from_shard(path, val_fraction);
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  if (ext == ".bin" && std::filesystem::is_regular_file(st)) {
    fail(Code::corrupt, "dataset " + quoted(path) + " is a .bin file without the token shard magic " +
                            std::to_string(kShardMagic) +
                            " (llm.c format); to train on its bytes as text, give it another extension");
  }
  return Dataset::from_text_file(path, val_fraction);
}

}  // namespace distro
