// Incremental SHA-256 over OpenSSL's EVP interface (the low-level SHA256_* calls are deprecated).
#pragma once

#include <openssl/evp.h>

#include <array>
#include <cstdint>

#include "core/error.hpp"

namespace distro {

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) {
      EVP_MD_CTX_free(ctx_);
      fail(Code::internal, "cannot start SHA-256");
    }
  }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* p, size_t n) {
    if (EVP_DigestUpdate(ctx_, p, n) != 1) fail(Code::internal, "SHA-256 update failed");
  }
  std::array<uint8_t, 32> finish() {
    std::array<uint8_t, 32> d{};
    unsigned len = 0;
    if (EVP_DigestFinal_ex(ctx_, d.data(), &len) != 1 || len != 32) fail(Code::internal, "SHA-256 finish failed");
    return d;
  }

 private:
  EVP_MD_CTX* ctx_;
};

}  // namespace distro
