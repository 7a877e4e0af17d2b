#include "net/run_checkpoint.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.hpp"
#include "core/sha256.hpp"

namespace distro::net {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char kMagic[8] = {'D', 'S', 'T', 'R', 'N', 'E', 'T', 'C'};

void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(uint8_t(v >> (8 * i)));
}
uint32_t get_u32(const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }

[[noreturn]] void io_error(const std::string& what, const std::string& path) {
  fail(Code::io, what + " " + path + ": " + std::strerror(errno));
}

template <class T>
T field(const json& meta, const char* key, const std::string& what) {
  try {
    return meta.at(key).get<T>();
  } catch (const std::exception&) {
    fail(Code::corrupt, what + ": its header lacks a valid '" + key + "'");
  }
}

}  // namespace

std::array<uint8_t, 32> sha256_of(std::span<const uint8_t> bytes) {
  Sha256 s;
  s.update(bytes.data(), bytes.size());
  return s.finish();
}

std::string hex(std::span<const uint8_t> bytes) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (uint8_t b : bytes) {
    out.push_back(d[b >> 4]);
    out.push_back(d[b & 15]);
  }
  return out;
}

std::vector<uint8_t> encode_run_checkpoint(json meta, const std::vector<std::vector<float>>& blocks) {
  json sizes = json::array();
  uint64_t total = 0;
  for (const auto& b : blocks) {
    sizes.push_back(b.size());
    total += b.size() * 4;
  }
  meta["blocks"] = sizes;
  const std::string text = meta.dump();
  if (text.size() > kMaxRunCheckpointMeta)
    fail(Code::size, "checkpoint header of " + std::to_string(text.size()) + " bytes exceeds " + std::to_string(kMaxRunCheckpointMeta));
  std::vector<uint8_t> out(kMagic, kMagic + 8);
  out.reserve(16 + text.size() + total + 32);
  put_u32(out, kRunCheckpointVersion);
  put_u32(out, uint32_t(text.size()));
  out.insert(out.end(), text.begin(), text.end());
  for (const auto& b : blocks) {
    // float32 little-endian: the host order on every platform libdistro builds for.
    const auto* p = reinterpret_cast<const uint8_t*>(b.data());
    out.insert(out.end(), p, p + b.size() * 4);
  }
  auto d = sha256_of(out);
  out.insert(out.end(), d.begin(), d.end());
  return out;
}

RunCheckpoint decode_run_checkpoint(std::span<const uint8_t> bytes, const std::vector<uint64_t>& block_sizes,
                                    const std::string& what) {
  const size_t n = bytes.size();
  if (n < 16 + 32) fail(Code::corrupt, what + " is " + std::to_string(n) + " bytes: shorter than any checkpoint");
  if (std::memcmp(bytes.data(), kMagic, 8) != 0)
    fail(Code::corrupt, what + " is not a libdistro run checkpoint (expected it to start with DSTRNETC)");
  uint32_t version = get_u32(bytes.data() + 8);
  if (version != kRunCheckpointVersion)
    fail(Code::mismatch, what + " has version " + std::to_string(version) + "; this library reads version " +
                             std::to_string(kRunCheckpointVersion));
  uint32_t jlen = get_u32(bytes.data() + 12);
  if (jlen > kMaxRunCheckpointMeta || uint64_t(16) + jlen + 32 > n)
    fail(Code::corrupt, what + ": header length " + std::to_string(jlen) + " does not fit a file of " + std::to_string(n) + " bytes");
  uint64_t want = 16 + uint64_t(jlen) + 32;
  for (uint64_t s : block_sizes) want += 4 * s;
  if (want != n)
    fail(Code::corrupt, what + " is " + std::to_string(n) + " bytes; this model's checkpoint with that header is " +
                            std::to_string(want));
  auto digest = sha256_of(bytes.first(n - 32));
  if (std::memcmp(digest.data(), bytes.data() + n - 32, 32) != 0)
    fail(Code::corrupt, what + " fails its SHA-256 checksum: the data is damaged");
  RunCheckpoint c;
  try {
    c.meta = json::parse(bytes.begin() + 16, bytes.begin() + 16 + jlen);
  } catch (const std::exception&) {
    fail(Code::corrupt, what + " has an unreadable header");
  }
  if (!c.meta.is_object()) fail(Code::corrupt, what + ": its header is not a JSON object");
  auto sizes = field<std::vector<uint64_t>>(c.meta, "blocks", what);
  if (sizes != block_sizes)
    fail(Code::mismatch, what + " holds " + std::to_string(sizes.size()) + " blocks of other sizes than this model's " +
                             std::to_string(block_sizes.size()) + " tensors");
  c.step = field<uint64_t>(c.meta, "step", what);
  c.param_hash = field<uint64_t>(c.meta, "param_hash", what);
  c.run_id = field<uint64_t>(c.meta, "run_id", what);
  c.manifest_hash = field<uint64_t>(c.meta, "manifest_hash", what);
  size_t off = 16 + jlen;
  for (uint64_t s : sizes) {
    std::vector<float> b(s);
    std::memcpy(b.data(), bytes.data() + off, s * 4);
    off += s * 4;
    c.blocks.push_back(std::move(b));
  }
  return c;
}

void write_file_atomic(const std::string& path, std::span<const uint8_t> bytes) {
  fs::path p(path);
  std::error_code ec;
  if (p.has_parent_path()) fs::create_directories(p.parent_path(), ec);
  if (ec) fail(Code::io, "cannot create folder " + p.parent_path().string() + ": " + ec.message());
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) io_error("cannot create", tmp);
  const uint8_t* q = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t w = ::write(fd, q, left);
    if (w < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      errno = e;
      io_error("cannot write", tmp);
    }
    q += w;
    left -= size_t(w);
  }
  if (::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    errno = e;
    io_error("cannot flush", tmp);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) io_error("cannot rename to", path);
  std::string dir = p.has_parent_path() ? p.parent_path().string() : ".";
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

std::vector<uint8_t> read_file(const std::string& path, uint64_t max_bytes) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail(Code::not_found, "no file at " + path);
  auto size = fs::file_size(path, ec);
  if (ec) fail(Code::io, "cannot read the size of " + path + ": " + ec.message());
  if (size > max_bytes)
    fail(Code::corrupt, path + " is " + std::to_string(size) + " bytes; at most " + std::to_string(max_bytes) + " expected");
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(Code::io, "cannot open " + path);
  std::vector<uint8_t> out(size);
  f.read(reinterpret_cast<char*>(out.data()), std::streamsize(size));
  if (!f || uint64_t(f.gcount()) != size) fail(Code::io, "cannot read " + path);
  return out;
}

}  // namespace distro::net
