#include "train/checkpoint.hpp"

#include <fcntl.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/sha256.hpp"

namespace distro {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char kMagic[8] = {'D', 'S', 'T', 'R', 'C', 'K', 'P', 'T'};

json config_to_json(const TrainConfig& c) {
  return json{{"preset", c.preset},   {"vocab", c.vocab},         {"devices", c.devices},
              {"optimizer", c.optimizer}, {"data", c.data},       {"val_fraction", c.val_fraction},
              {"steps", c.steps},     {"batch", c.batch},         {"micro_batch", c.micro_batch},
              {"seq", c.seq},         {"lr", c.lr},               {"warmup", c.warmup},
              {"min_lr_ratio", c.min_lr_ratio}, {"weight_decay", c.weight_decay}, {"clip", c.clip},
              {"chunk", c.chunk},     {"topk", c.topk},           {"decay", c.decay},
              {"values", c.values == ValueMode::sign ? "sign" : "int8"},
              {"beta1", c.beta1},     {"beta2", c.beta2},         {"eps", c.eps},
              {"seed", c.seed},       {"threads", c.threads},     {"eval_batches", c.eval_batches},
              {"overlap", c.overlap}};
}

template <class T>
void take(const json& j, const char* key, T& out, const std::string& path) {
  if (!j.contains(key))
    fail(Code::corrupt, "checkpoint " + path + ": its configuration lacks '" + key + "'");
  try {
    out = j.at(key).get<T>();
  } catch (const std::exception&) {
    fail(Code::corrupt, "checkpoint " + path + ": configuration field '" + key + "' has the wrong type");
  }
}

TrainConfig config_from_json(const json& j, const std::string& path) {
  TrainConfig c;
  take(j, "preset", c.preset, path);
  take(j, "vocab", c.vocab, path);
  take(j, "devices", c.devices, path);
  take(j, "optimizer", c.optimizer, path);
  take(j, "data", c.data, path);
  take(j, "val_fraction", c.val_fraction, path);
  take(j, "steps", c.steps, path);
  take(j, "batch", c.batch, path);
  take(j, "micro_batch", c.micro_batch, path);
  take(j, "seq", c.seq, path);
  take(j, "lr", c.lr, path);
  take(j, "warmup", c.warmup, path);
  take(j, "min_lr_ratio", c.min_lr_ratio, path);
  take(j, "weight_decay", c.weight_decay, path);
  take(j, "clip", c.clip, path);
  take(j, "chunk", c.chunk, path);
  take(j, "topk", c.topk, path);
  take(j, "decay", c.decay, path);
  std::string values;
  take(j, "values", values, path);
  if (values != "sign" && values != "int8") fail(Code::corrupt, "checkpoint " + path + ": unknown value mode");
  c.values = values == "sign" ? ValueMode::sign : ValueMode::int8;
  take(j, "beta1", c.beta1, path);
  take(j, "beta2", c.beta2, path);
  take(j, "eps", c.eps, path);
  take(j, "seed", c.seed, path);
  take(j, "threads", c.threads, path);
  take(j, "eval_batches", c.eval_batches, path);
  if (j.contains("overlap")) take(j, "overlap", c.overlap, path);  // absent in older checkpoints: off
  return c;
}

void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(uint8_t(v >> (8 * i)));
}
uint32_t get_u32(const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }

[[noreturn]] void io_error(const std::string& what, const std::string& path) {
  fail(Code::io, what + " " + path + ": " + std::strerror(errno));
}

void write_all(int fd, const uint8_t* p, size_t n, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      io_error("cannot write", path);
    }
    p += w, n -= size_t(w);
  }
}

}  // namespace

void CheckpointWriter::write(const std::string& dir) const {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(Code::io, "cannot create checkpoint folder " + dir + ": " + ec.message());
  json meta = {{"config", config_to_json(config)}, {"step", step}};
  json sizes = json::array();
  for (const auto& b : blocks_) sizes.push_back(b.size());
  meta["blocks"] = sizes;
  if (!pending_update.empty()) meta["pending_update_bytes"] = pending_update.size();
  std::string text = meta.dump();

  std::vector<uint8_t> head(kMagic, kMagic + 8);
  put_u32(head, kCheckpointVersion);
  put_u32(head, uint32_t(text.size()));
  head.insert(head.end(), text.begin(), text.end());

  Sha256 sha;
  sha.update(head.data(), head.size());
  const std::string path = (fs::path(dir) / "checkpoint.bin").string(), tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) io_error("cannot create", tmp);
  try {
    write_all(fd, head.data(), head.size(), tmp);
    for (const auto& b : blocks_) {
      // float32 little-endian: the host order on every platform libdistro builds for.
      const auto* p = reinterpret_cast<const uint8_t*>(b.data());
      sha.update(p, b.size() * 4);
      write_all(fd, p, b.size() * 4, tmp);
    }
    sha.update(pending_update.data(), pending_update.size());
    write_all(fd, pending_update.data(), pending_update.size(), tmp);
    auto digest = sha.finish();
    write_all(fd, digest.data(), 32, tmp);
    if (::fsync(fd) != 0) io_error("cannot flush", tmp);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) io_error("cannot rename to", path);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

CheckpointReader::CheckpointReader(const std::string& dir_or_file) {
  fs::path p(dir_or_file);
  if (fs::is_directory(p)) p /= "checkpoint.bin";
  path_ = p.string();
  std::ifstream f(p, std::ios::binary);
  if (!f) fail(Code::not_found, "no checkpoint at " + path_ + " (expected a folder holding checkpoint.bin)");
  bytes_.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  const size_t n = bytes_.size();
  if (n < 16 + 32) fail(Code::corrupt, "checkpoint " + path_ + " is " + std::to_string(n) + " bytes: truncated, shorter than any checkpoint");
  if (std::memcmp(bytes_.data(), kMagic, 8) != 0)
    fail(Code::corrupt, path_ + " is not a libdistro checkpoint (expected it to start with DSTRCKPT)");
  uint32_t version = get_u32(bytes_.data() + 8);
  if (version != kCheckpointVersion)
    fail(Code::mismatch, "checkpoint " + path_ + " has version " + std::to_string(version) +
                             "; this library reads version " + std::to_string(kCheckpointVersion));
  uint32_t jlen = get_u32(bytes_.data() + 12);
  if (uint64_t(16) + jlen + 32 > n)
    fail(Code::corrupt, "checkpoint " + path_ + " is truncated: its header needs " + std::to_string(16 + jlen + 32) +
                            " bytes, the file has " + std::to_string(n));
  uint8_t digest[32];
  SHA256(bytes_.data(), n - 32, digest);
  json meta;
  try {
    meta = json::parse(bytes_.begin() + 16, bytes_.begin() + 16 + jlen);
    sizes_ = meta.at("blocks").get<std::vector<uint64_t>>();
    step_ = meta.at("step").get<uint64_t>();
    pending_bytes_ = meta.value("pending_update_bytes", uint64_t(0));
  } catch (const std::exception&) {
    fail(Code::corrupt, "checkpoint " + path_ + " has an unreadable header");
  }
  if (pending_bytes_ > n) fail(Code::corrupt, "checkpoint " + path_ + " declares a pending update larger than the file");
  uint64_t want = 16 + uint64_t(jlen) + 32 + pending_bytes_;
  for (uint64_t s : sizes_) {
    if (s > n) fail(Code::corrupt, "checkpoint " + path_ + " declares a block larger than the file");
    want += s * 4;
  }
  if (want != n)
    fail(Code::corrupt, "checkpoint " + path_ + " is " + std::to_string(n) + " bytes; its header describes " +
                            std::to_string(want) + (n < want ? " (the file is truncated)" : " (extra bytes at the end)"));
  if (std::memcmp(digest, bytes_.data() + n - 32, 32) != 0)
    fail(Code::corrupt, "checkpoint " + path_ + " fails its checksum: the file is damaged");
  config_ = config_from_json(meta.at("config"), path_);
  offset_ = 16 + jlen;
}

std::vector<float> CheckpointReader::next_block(uint64_t n, const std::string& what) {
  if (next_ >= sizes_.size())
    fail(Code::mismatch, "checkpoint " + path_ + " holds fewer blocks than the model needs (missing " + what + ")");
  if (sizes_[next_] != n)
    fail(Code::mismatch, "checkpoint " + path_ + ": " + what + " has " + std::to_string(sizes_[next_]) +
                             " elements; the model needs " + std::to_string(n));
  std::vector<float> out(n);
  std::memcpy(out.data(), bytes_.data() + offset_, n * 4);
  offset_ += n * 4;
  ++next_;
  return out;
}

std::vector<uint8_t> CheckpointReader::pending_update() {
  if (next_ != sizes_.size())
    fail(Code::mismatch, "checkpoint " + path_ + " holds " + std::to_string(sizes_.size() - next_) +
                             " more blocks than the model has");
  if (pending_read_) fail(Code::state, "checkpoint " + path_ + ": the pending update was already read");
  pending_read_ = true;
  std::vector<uint8_t> out(bytes_.begin() + offset_, bytes_.begin() + offset_ + pending_bytes_);
  offset_ += pending_bytes_;
  return out;
}

void CheckpointReader::finish() const {
  if (next_ != sizes_.size())
    fail(Code::mismatch, "checkpoint " + path_ + " holds " + std::to_string(sizes_.size() - next_) +
                             " more blocks than the model has");
}

}  // namespace distro
