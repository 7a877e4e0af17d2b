#include "net/tls.hpp"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <asio/ip/address.hpp>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "core/error.hpp"
#include "data/file_io.hpp"

namespace distro::net {

namespace {

// The OpenSSL error queue as one line, emptied (so a later failure does not report this one).
std::string openssl_errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no OpenSSL detail" : out;
}

[[noreturn]] void tls_fail(const std::string& what) { fail(Code::internal, what + " (" + openssl_errors() + ")"); }

template <class T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using X509Ptr = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using BioPtr = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;
using BnPtr = std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_free>>;
using ExtPtr = std::unique_ptr<X509_EXTENSION, Deleter<X509_EXTENSION, X509_EXTENSION_free>>;
struct GeneralNamesDeleter {
  void operator()(GENERAL_NAMES* p) const { GENERAL_NAMES_free(p); }
};

std::string bio_text(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  return n > 0 ? std::string(data, static_cast<size_t>(n)) : std::string();
}

X509Ptr parse_certificate(const std::string& pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) tls_fail("cannot allocate a memory BIO");
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    ERR_clear_error();
    fail(Code::invalid_argument, "text is not a PEM certificate (expected \"-----BEGIN CERTIFICATE-----\" ...)");
  }
  return cert;
}

PkeyPtr parse_private_key(const std::string& pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) tls_fail("cannot allocate a memory BIO");
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    ERR_clear_error();
    fail(Code::invalid_argument, "text is not an unencrypted PEM private key");
  }
  return key;
}

// A DNS name we may put into subjectAltName: letters, digits, '-' and '.', 1..253 characters.
bool is_dns_name(const std::string& s) {
  if (s.empty() || s.size() > 253) return false;
  for (char c : s) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.')) return false;
  }
  return true;
}

bool is_ip_address(const std::string& s) {
  asio::error_code ec;
  (void)asio::ip::make_address(s, ec);
  return !ec;
}

void add_general_name(GENERAL_NAMES* names, int type, const std::string& value) {
  GENERAL_NAME* g = a2i_GENERAL_NAME(nullptr, nullptr, nullptr, type, value.c_str(), 0);
  if (!g || !sk_GENERAL_NAME_push(names, g)) {
    GENERAL_NAME_free(g);
    tls_fail("cannot add \"" + value + "\" to the certificate's subjectAltName");
  }
}

void add_extension(X509* cert, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  ExtPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) tls_fail(std::string("cannot add certificate extension ") + value);
}

std::string read_text_file(const std::filesystem::path& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(Code::io, std::string("cannot read the ") + what + " " + path.string() + ": " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Writes text to path atomically with the given mode (data/file_io.hpp), so a kill at any instant
// leaves no half-written key.
void write_text_atomically(const std::filesystem::path& path, const std::string& text, mode_t mode) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(text.data()), text.size());
  const std::span<const std::byte> parts[] = {bytes};
  data_io::write_file_atomically(path, parts, unsigned(mode));
}

bool is_fingerprint(const std::string& s) {
  if (s.size() != 7 + 64 || s.compare(0, 7, "sha256:") != 0) return false;
  for (size_t i = 7; i < s.size(); ++i) {
    const char c = s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::string fingerprint_of(X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(cert, EVP_sha256(), md, &len) != 1 || len != 32) tls_fail("cannot hash the certificate");
  static const char* hex = "0123456789abcdef";
  std::string out = "sha256:";
  for (unsigned i = 0; i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

int verify_note_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

// TLS 1.3 only, and no session tickets: nodes never resume, so the tickets would be wasted bytes.
void restrict_to_tls13(asio::ssl::context& ctx) {
  SSL_CTX* c = ctx.native_handle();
  if (SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION) != 1) tls_fail("cannot require TLS 1.3");
  SSL_CTX_set_num_tickets(c, 0);
  ctx.set_options(asio::ssl::context::no_compression);
}

}  // namespace

TlsIdentity generate_self_signed(const std::string& common_name, int days) {
  if (common_name.empty() || common_name.size() > 64) {
    fail(Code::invalid_argument, "certificate common name must have 1 to 64 characters, got " +
                                     std::to_string(common_name.size()));
  }
  if (days < 1 || days > 36500) {
    fail(Code::invalid_argument, "certificate validity must be 1 to 36500 days, got " + std::to_string(days));
  }
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) tls_fail("cannot generate an EC P-256 key");
  X509Ptr cert(X509_new());
  if (!cert) tls_fail("cannot allocate a certificate");
  if (X509_set_version(cert.get(), X509_VERSION_3) != 1) tls_fail("cannot set the certificate version");
  // A random 127-bit serial: positive, and unique enough that two generated certificates never share one.
  BnPtr serial(BN_new());
  if (!serial || BN_rand(serial.get(), 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
      !BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get()))) {
    tls_fail("cannot set the certificate serial number");
  }
  // Valid from five minutes ago, so a peer whose clock is slightly behind still accepts it.
  if (!X509_gmtime_adj(X509_getm_notBefore(cert.get()), -300) ||
      !X509_time_adj_ex(X509_getm_notAfter(cert.get()), days, 0, nullptr)) {
    tls_fail("cannot set the certificate validity");
  }
  X509_NAME* name = X509_get_subject_name(cert.get());
  if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(common_name.c_str()),
                                 -1, -1, 0) != 1 ||
      X509_set_issuer_name(cert.get(), name) != 1) {
    tls_fail("cannot set the certificate name \"" + common_name + "\"");
  }
  if (X509_set_pubkey(cert.get(), key.get()) != 1) tls_fail("cannot put the public key into the certificate");

  std::unique_ptr<GENERAL_NAMES, GeneralNamesDeleter> names(sk_GENERAL_NAME_new_null());
  if (!names) tls_fail("cannot allocate subjectAltName");
  if (is_ip_address(common_name)) {
    if (common_name != "127.0.0.1") add_general_name(names.get(), GEN_IPADD, common_name);
  } else if (is_dns_name(common_name) && common_name != "localhost") {
    add_general_name(names.get(), GEN_DNS, common_name);
  }
  add_general_name(names.get(), GEN_DNS, "localhost");
  add_general_name(names.get(), GEN_IPADD, "127.0.0.1");
  if (X509_add1_ext_i2d(cert.get(), NID_subject_alt_name, names.get(), 0, X509V3_ADD_DEFAULT) != 1) {
    tls_fail("cannot add subjectAltName");
  }
  add_extension(cert.get(), NID_basic_constraints, "critical,CA:FALSE");
  add_extension(cert.get(), NID_key_usage, "critical,digitalSignature");
  add_extension(cert.get(), NID_ext_key_usage, "serverAuth");
  add_extension(cert.get(), NID_subject_key_identifier, "hash");
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) <= 0) tls_fail("cannot sign the certificate");

  BioPtr cert_bio(BIO_new(BIO_s_mem())), key_bio(BIO_new(BIO_s_mem()));
  if (!cert_bio || !key_bio || PEM_write_bio_X509(cert_bio.get(), cert.get()) != 1 ||
      PEM_write_bio_PrivateKey(key_bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    tls_fail("cannot write the certificate or key as PEM");
  }
  return TlsIdentity{bio_text(cert_bio.get()), bio_text(key_bio.get())};
}

TlsIdentity load_or_create_identity(const std::string& cert_path, const std::string& key_path, const std::string& cn) {
  namespace fs = std::filesystem;
  if (cert_path.empty() || key_path.empty()) fail(Code::invalid_argument, "certificate and key paths must not be empty");
  if (fs::path(cert_path) == fs::path(key_path)) {
    fail(Code::invalid_argument, "certificate and key need two different files, both are " + cert_path);
  }
  std::error_code ec;
  const bool have_cert = fs::exists(cert_path, ec), have_key = fs::exists(key_path, ec);
  if (have_cert != have_key) {
    fail(Code::not_found, std::string("found the ") + (have_cert ? "certificate " + cert_path : "key " + key_path) +
                              " but not the " + (have_cert ? "key " + key_path : "certificate " + cert_path) +
                              "; restore it, or remove the other to generate a new pair (nodes that pinned the old "
                              "fingerprint will then refuse the new one)");
  }
  if (have_cert) {
    TlsIdentity id{read_text_file(cert_path, "certificate"), read_text_file(key_path, "private key")};
    X509Ptr cert;
    PkeyPtr key;
    try {
      cert = parse_certificate(id.cert_pem);
    } catch (const Error& e) {
      fail(Code::corrupt, "certificate " + cert_path + ": " + e.what());
    }
    try {
      key = parse_private_key(id.key_pem);
    } catch (const Error& e) {
      fail(Code::corrupt, "private key " + key_path + ": " + e.what());
    }
    if (X509_check_private_key(cert.get(), key.get()) != 1) {
      ERR_clear_error();
      fail(Code::mismatch, "private key " + key_path + " does not belong to certificate " + cert_path);
    }
    return id;
  }
  for (const std::string& p : {cert_path, key_path}) {
    const fs::path dir = fs::path(p).parent_path();
    if (!dir.empty()) {
      fs::create_directories(dir, ec);
      if (ec) fail(Code::io, "cannot create the folder " + dir.string() + ": " + ec.message());
    }
  }
  TlsIdentity id = generate_self_signed(cn);
  // Key first: a kill between the two writes leaves a key without a certificate, which the next start
  // reports instead of silently replacing.
  write_text_atomically(key_path, id.key_pem, 0600);
  write_text_atomically(cert_path, id.cert_pem, 0644);
  return id;
}

std::string certificate_fingerprint(const std::string& cert_pem) {
  X509Ptr cert = parse_certificate(cert_pem);
  return fingerprint_of(cert.get());
}

std::shared_ptr<asio::ssl::context> server_tls_context(const TlsIdentity& id) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  restrict_to_tls13(*ctx);
  asio::error_code ec;
  ctx->use_certificate_chain(asio::buffer(id.cert_pem), ec);
  if (ec) fail(Code::invalid_argument, "server certificate is not usable: " + ec.message());
  ctx->use_private_key(asio::buffer(id.key_pem), asio::ssl::context::pem, ec);
  if (ec) fail(Code::invalid_argument, "server private key is not usable: " + ec.message());
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
    ERR_clear_error();
    fail(Code::mismatch, "server private key does not belong to its certificate");
  }
  ctx->set_verify_mode(asio::ssl::verify_none);
  return ctx;
}

std::shared_ptr<asio::ssl::context> client_tls_context(const std::string& pin) {
  if (!pin.empty() && !is_fingerprint(pin)) {
    fail(Code::invalid_argument, "certificate pin \"" + pin + "\" is not of the form sha256: followed by 64 lowercase hex digits");
  }
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  restrict_to_tls13(*ctx);
  // verify_peer so that OpenSSL calls us for each certificate; we decide on the leaf by its fingerprint
  // (a self-signed certificate never passes CA verification, and we load no CA store).
  ctx->set_verify_mode(asio::ssl::verify_peer);
  ctx->set_verify_callback([pin](bool, asio::ssl::verify_context& vc) {
    X509_STORE_CTX* store = vc.native_handle();
    if (X509_STORE_CTX_get_error_depth(store) != 0) return true;  // only the leaf is pinned
    X509* cert = X509_STORE_CTX_get_current_cert(store);
    auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
    auto* note = ssl ? static_cast<TlsVerifyNote*>(SSL_get_ex_data(ssl, verify_note_index())) : nullptr;
    if (!cert) {
      if (note) note->failure = "the server sent no certificate";
      return false;
    }
    std::string seen;
    try {
      seen = fingerprint_of(cert);
    } catch (const Error& e) {
      if (note) note->failure = e.what();
      return false;
    }
    if (note) note->seen_fingerprint = seen;
    if (pin.empty() || seen == pin) return true;
    if (note) note->failure = "server certificate " + seen + " does not match the pinned fingerprint " + pin;
    return false;
  });
  return ctx;
}

void attach_verify_note(SSL* ssl, TlsVerifyNote* note) { SSL_set_ex_data(ssl, verify_note_index(), note); }

std::string peer_certificate_fingerprint(SSL* ssl) {
  X509* cert = SSL_get0_peer_certificate(ssl);
  return cert ? fingerprint_of(cert) : std::string();
}

}  // namespace distro::net
