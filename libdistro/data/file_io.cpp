#include "data/file_io.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/error.hpp"

namespace distro::data_io {
namespace {

std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

std::string sys_reason(int err) { return std::strerror(err); }

[[noreturn]] void fail_io(const std::string& action, const std::filesystem::path& p, int err) {
  fail(Code::io, action + " " + quoted(p) + ": " + sys_reason(err));
}

}  // namespace

InputFile::InputFile(const std::filesystem::path& path, const char* what) : path_(path), what_(what) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) fail(Code::not_found, what_ + " not found: " + quoted(path));
    fail_io("cannot open " + what_, path, err);
  }
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    fail_io("cannot stat " + what_, path, err);
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd_);
    fd_ = -1;
    fail(Code::invalid_argument, what_ + " " + quoted(path) + " is a folder, expected a file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
}

InputFile::~InputFile() {
  if (fd_ >= 0) ::close(fd_);
}

size_t InputFile::read_some(void* dst, size_t n) {
  auto* p = static_cast<unsigned char*>(dst);
  size_t done = 0;
  while (done < n) {
    // Linux reads at most about 2 GiB per call; ask for at most 1 GiB at a time.
    const size_t want = std::min<size_t>(n - done, size_t(1) << 30);
    const ssize_t got = ::read(fd_, p + done, want);
    if (got < 0) {
      if (errno == EINTR) continue;
      fail_io("cannot read " + what_, path_, errno);
    }
    if (got == 0) break;
    done += static_cast<size_t>(got);
  }
  return done;
}

void InputFile::read_exact(void* dst, size_t n) {
  const size_t got = read_some(dst, n);
  if (got != n) {
    fail(Code::corrupt, what_ + " " + quoted(path_) + " ended after " + std::to_string(got) + " of " +
                            std::to_string(n) + " expected bytes (was it changed while being read?)");
  }
}

void write_file_atomically(const std::filesystem::path& path, std::span<const std::span<const std::byte>> parts,
                           unsigned mode) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  ::unlink(tmp.c_str());  // a leftover of a killed earlier attempt may have another owner or mode
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode_t(mode));
  if (fd < 0) fail_io("cannot create", tmp, errno);
  auto abandon = [&](const std::string& action, int err) {
    ::close(fd);
    ::unlink(tmp.c_str());
    fail_io(action, tmp, err);
  };
  // The umask may have removed bits, never added them; fchmod makes the mode exact either way.
  if (::fchmod(fd, mode_t(mode)) != 0) abandon("cannot set the mode of", errno);
  for (const auto& part : parts) {
    const std::byte* p = part.data();
    size_t left = part.size();
    while (left > 0) {
      const ssize_t put = ::write(fd, p, std::min<size_t>(left, size_t(1) << 30));
      if (put < 0) {
        if (errno == EINTR) continue;
        abandon("cannot write", errno);
      }
      p += put;
      left -= static_cast<size_t>(put);
    }
  }
  if (::fsync(fd) != 0) abandon("cannot fsync", errno);
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail_io("cannot close", tmp, err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail(Code::io, "cannot rename " + quoted(tmp) + " to " + quoted(path) + ": " + sys_reason(err));
  }
  // Make the rename itself durable. Some file systems refuse fsync on a folder; the file is complete
  // either way, so that is not an error.
  std::filesystem::path dir = path.parent_path();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace distro::data_io
