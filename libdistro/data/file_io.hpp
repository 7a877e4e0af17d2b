// Small POSIX file helpers for data/: reading with errors that name the file, and atomic writes
// (write PATH.tmp, fsync, rename, fsync the folder) so a kill at any instant leaves either the old
// file or the complete new one (DESIGN.md section 8). Internal to data/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

namespace distro::data_io {

// A file opened for reading. The constructor throws Error(not_found) when the path does not exist,
// Error(invalid_argument) when it is a folder, Error(io) for any other failure; `what` names the kind
// of file in the messages ("token shard", "text file").
class InputFile {
 public:
  InputFile(const std::filesystem::path& path, const char* what);
  ~InputFile();
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  uint64_t size() const { return size_; }
  // Reads up to n bytes at the current position; returns how many were read (less only at the end).
  size_t read_some(void* dst, size_t n);
  // Reads exactly n bytes or throws Error(corrupt) saying the file is shorter than its size said
  // (it changed while being read).
  void read_exact(void* dst, size_t n);

 private:
  std::filesystem::path path_;
  std::string what_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// Writes the concatenation of parts to path atomically (PATH.tmp, fsync, rename, fsync of the
// folder), so a kill at any instant leaves the old file or the new one. The new file gets exactly
// `mode` (the umask does not apply; e.g. 0600 for a private key). Throws Error(io) naming the path
// and the system's reason; the temporary file is removed on failure.
void write_file_atomically(const std::filesystem::path& path, std::span<const std::span<const std::byte>> parts,
                           unsigned mode = 0644);

}  // namespace distro::data_io
