// TLS 1.3 only, OpenSSL 3 through asio::ssl. A local run uses a self-signed EC P-256 certificate; a
// node may pin the coordinator's certificate by its SHA-256 fingerprint instead of trusting a CA.
#pragma once

#include <asio/ssl.hpp>

#include <memory>
#include <string>

namespace distro::net {

struct TlsIdentity {
  std::string cert_pem, key_pem;
};

// A fresh EC P-256 key and a self-signed X509 v3 certificate for it, valid from now for `days` days,
// subject CN = common_name, subjectAltName = common_name (as DNS name or IP address), localhost and
// 127.0.0.1. Throws Error(invalid_argument) for an empty name or days outside 1..36500.
TlsIdentity generate_self_signed(const std::string& common_name, int days = 365);

// Reads the pair when both files exist (checking that the key belongs to the certificate); creates
// both when both are absent: the key is written mode 0600 and each file atomically (temporary file,
// fsync, rename), parent folders are created. Exactly one of the two present is an error, so an
// existing key is never overwritten.
TlsIdentity load_or_create_identity(const std::string& cert_path, const std::string& key_path, const std::string& cn);

// SHA-256 of the certificate's DER encoding: "sha256:" + 64 lowercase hex digits. Throws
// Error(invalid_argument) when the text holds no PEM certificate.
std::string certificate_fingerprint(const std::string& cert_pem);

// Server side: presents the identity, does not ask clients for certificates (they join with tokens).
std::shared_ptr<asio::ssl::context> server_tls_context(const TlsIdentity&);

// Client side. pin empty: accept any certificate (the connection still records the fingerprint it
// saw, see Connection::peer_fingerprint). Otherwise the handshake fails unless the server's leaf
// certificate has exactly this fingerprint; the error names both fingerprints. Throws
// Error(invalid_argument) when the pin is not of the form "sha256:" + 64 hex digits.
std::shared_ptr<asio::ssl::context> client_tls_context(const std::string& pinned_fingerprint);

// Fingerprint and pin-check results of one handshake, attached to its SSL object (internal to net/;
// the connection reads it to name the server's fingerprint and to explain a failed pin).
struct TlsVerifyNote {
  std::string seen_fingerprint;  // the server's leaf certificate, client side
  std::string failure;           // why the certificate was refused, when it was
};
void attach_verify_note(SSL* ssl, TlsVerifyNote* note);
// Fingerprint of the certificate the peer presented in this session, or "" when it presented none.
std::string peer_certificate_fingerprint(SSL* ssl);

}  // namespace distro::net
