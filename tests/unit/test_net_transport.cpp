// The network transport over real TLS on 127.0.0.1 (net/: frame, tls, connection, listener, dial):
// handshake and frames both ways, pinning, TLS 1.3 only, per-kind frame limits, garbage and silent
// peers, every failure path ending in exactly one on_close, and the rate caps' accuracy.
#include <catch2/catch.hpp>

#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <asio/connect.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/write.hpp>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/error.hpp"
#include "net/connection.hpp"
#include "net/dial.hpp"
#include "net/frame.hpp"
#include "net/listener.hpp"
#include "net/tls.hpp"

using namespace distro;
using namespace distro::net;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// An io_context running on `threads` threads until the end of the scope.
struct IoLoop {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard{io.get_executor()};
  std::vector<std::thread> threads;
  explicit IoLoop(int n = 1) {
    for (int i = 0; i < n; ++i) threads.emplace_back([this] { io.run(); });
  }
  // Joins the threads; after this no handler runs, so the objects they report to may go.
  void stop() {
    guard.reset();
    io.stop();
    for (auto& t : threads) {
      if (t.joinable()) t.join();
    }
  }
  ~IoLoop() { stop(); }
};

// Declared after the objects that handlers report to (Side, Server), it stops the loop before they
// are destroyed, also when a REQUIRE leaves the test early.
struct StopFirst {
  IoLoop& loop;
  ~StopFirst() { loop.stop(); }
};

const TlsIdentity& server_identity() {
  static const TlsIdentity id = generate_self_signed("127.0.0.1");
  return id;
}

// Records what one side of a connection sees.
struct Side {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Frame> frames;
  std::vector<Clock::time_point> times;
  std::vector<std::string> closes;
  uint64_t body_bytes = 0;
  std::function<void(const Frame&, size_t index)> on_each;  // runs on the io thread, outside the lock
  bool throw_on_frame = false;

  Connection::Handlers handlers() {
    Connection::Handlers h;
    h.on_frame = [this](Frame&& f) {
      if (throw_on_frame) throw std::runtime_error("handler refuses this frame");
      size_t index;
      {
        std::lock_guard lock(mu);
        times.push_back(Clock::now());
        body_bytes += f.body.size();
        frames.push_back(std::move(f));
        index = frames.size() - 1;
      }
      if (on_each) on_each(frames[index], index);
      cv.notify_all();
    };
    h.on_close = [this](const std::string& reason) {
      {
        std::lock_guard lock(mu);
        closes.push_back(reason);
      }
      cv.notify_all();
    };
    return h;
  }
  template <class Pred>
  bool wait(Pred pred, std::chrono::milliseconds limit = 10s) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, limit, pred);
  }
  bool wait_frames(size_t n, std::chrono::milliseconds limit = 10s) {
    return wait([&] { return frames.size() >= n; }, limit);
  }
  bool wait_closed(std::chrono::milliseconds limit = 10s) {
    return wait([&] { return !closes.empty(); }, limit);
  }
  std::vector<std::string> close_reasons() {
    std::lock_guard lock(mu);
    return closes;
  }
};

FrameLimits default_limits() {
  FrameLimits l;
  l.allow(1, 65536).allow(2, 4u << 20).allow(3, 1);  // kind 3: empty or one byte
  return l;
}

struct DialResult {
  std::string error;
  std::shared_ptr<Connection> conn;
};

DialResult dial_and_wait(IoLoop& loop, uint16_t port, std::shared_ptr<asio::ssl::context> ctx,
                         FrameLimits limits = default_limits(), std::chrono::milliseconds timeout = 5s,
                         const std::string& host = "127.0.0.1") {
  std::promise<DialResult> p;
  auto f = p.get_future();
  dial(loop.io, host, port, std::move(ctx), limits, timeout,
       [&p](const std::string& e, std::shared_ptr<Connection> c) { p.set_value({e, std::move(c)}); });
  REQUIRE(f.wait_for(timeout + 5s) == std::future_status::ready);
  return f.get();
}

// A listener that records accepted connections and rejections.
struct Server {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::shared_ptr<Connection>> accepted;
  std::vector<std::string> rejects;
  std::unique_ptr<Listener> listener;

  IoLoop& loop;
  Server(IoLoop& loop_, FrameLimits limits = default_limits(), const TlsIdentity& id = server_identity()) : loop(loop_) {
    listener = std::make_unique<Listener>(
        loop.io, "127.0.0.1", 0, server_tls_context(id), limits,
        [this](std::shared_ptr<Connection> c) {
          {
            std::lock_guard lock(mu);
            accepted.push_back(std::move(c));
          }
          cv.notify_all();
        },
        [this](const std::string& why) {
          {
            std::lock_guard lock(mu);
            rejects.push_back(why);
          }
          cv.notify_all();
        });
  }
  ~Server() { loop.stop(); }  // no handler may report to this object once it is gone
  uint16_t port() const { return listener->port(); }
  std::shared_ptr<Connection> wait_accepted(size_t index = 0) {
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, 10s, [&] { return accepted.size() > index; })) return nullptr;
    return accepted[index];
  }
  std::string wait_reject(size_t index = 0, std::chrono::milliseconds limit = 10s) {
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, limit, [&] { return rejects.size() > index; })) return "";
    return rejects[index];
  }
};

// A started client/server pair over real TLS.
struct Pair {
  Server server;
  Side server_side, client_side;
  std::shared_ptr<Connection> sconn, cconn;
  StopFirst stop_first;  // destroyed first: the loop stops before the sides go
  Pair(IoLoop& loop, FrameLimits server_limits = default_limits(), FrameLimits client_limits = default_limits(),
       bool start = true)
      : server(loop, server_limits), stop_first{loop} {
    auto r = dial_and_wait(loop, server.port(), client_tls_context(certificate_fingerprint(server_identity().cert_pem)),
                           client_limits);
    REQUIRE(r.error == "");
    REQUIRE(r.conn);
    cconn = r.conn;
    sconn = server.wait_accepted();
    REQUIRE(sconn);
    if (start) {
      sconn->start(server_side.handlers());
      cconn->start(client_side.handlers());
    }
  }
};

std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>((i * 131 + seed * 7 + (i >> 8)) & 0xff);
  return v;
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// For conditions no callback announces (stats, counters): polls every millisecond.
template <class Pred>
bool poll_until(Pred pred, std::chrono::milliseconds limit = 10s) {
  const auto end = Clock::now() + limit;
  while (!pred()) {
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() /
           ("distro_net_test_" + std::to_string(::getpid()) + "_" + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

}  // namespace

// ---- frames and addresses ------------------------------------------------------------------------

TEST_CASE("net: frame header layout and per-kind limits", "[net][transport]") {
  const auto f = encode_frame(7, {1, 2, 3});
  REQUIRE(f.size() == kFrameHeaderBytes + 3);
  CHECK(f == std::vector<uint8_t>{3, 0, 0, 0, 7, 1, 2, 3});
  const auto big = encode_frame(9, std::vector<uint8_t>(0x010203, 0));
  CHECK(std::vector<uint8_t>(big.begin(), big.begin() + 5) == std::vector<uint8_t>{0x03, 0x02, 0x01, 0x00, 9});
  const FrameHeader h = decode_frame_header(big.data());
  CHECK(h.body_bytes == 0x010203);
  CHECK(h.kind == 9);

  FrameLimits l;
  l.allow(7, 65536).allow(3, 1);
  CHECK(check_frame_header({0, 3}, l) == "");       // empty body where the kind is allowed
  CHECK(check_frame_header({65536, 7}, l) == "");   // exactly the limit
  CHECK(check_frame_header({9000000, 7}, l) == "frame kind 7 of 9000000 bytes exceeds its limit of 65536");
  CHECK(check_frame_header({0, 8}, l) == "frame kind 8 (0 bytes) is not allowed on this connection");
  const std::vector<uint8_t> header{0xff, 0xff, 0xff, 0xff, 7};
  CHECK(check_frame_header(decode_frame_header(header.data()), l) ==
        "frame kind 7 of 4294967295 bytes exceeds its limit of 65536");
}

TEST_CASE("net: host:port parsing", "[net][transport]") {
  CHECK(parse_host_port("127.0.0.1:7000") == std::pair<std::string, uint16_t>{"127.0.0.1", 7000});
  CHECK(parse_host_port("example.org:1") == std::pair<std::string, uint16_t>{"example.org", 1});
  CHECK(parse_host_port("[::1]:65535") == std::pair<std::string, uint16_t>{"::1", 65535});
  CHECK(parse_host_port("localhost:0") == std::pair<std::string, uint16_t>{"localhost", 0});
  auto bad = [](const std::string& s, const std::string& fragment) {
    INFO(s);
    CHECK_THROWS_WITH(parse_host_port(s), Catch::Contains(fragment));
  };
  bad("", "empty address");
  bad("127.0.0.1", "has no port");
  bad(":7000", "has no host");
  bad("host:", "expected a number 0 to 65535");
  bad("host:70000", "expected 0 to 65535");
  bad("host:12a", "expected a number");
  bad("host:-1", "expected a number");
  bad("::1:7000", "IPv6 address without brackets");
  bad("[::1:7000", "without ']'");
  bad("[::1]7000", "no port after ']'");
  bad("[]:7000", "has no host");
}

// ---- TLS identity ----------------------------------------------------------------------------------

TEST_CASE("net: self-signed identity is EC P-256, X509 v3, with the expected subjectAltName", "[net][transport][tls]") {
  const TlsIdentity id = generate_self_signed("coordinator.example");
  BIO* bio = BIO_new_mem_buf(id.cert_pem.data(), static_cast<int>(id.cert_pem.size()));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  REQUIRE(cert);
  CHECK(X509_get_version(cert) == X509_VERSION_3);
  EVP_PKEY* pub = X509_get0_pubkey(cert);
  REQUIRE(pub);
  CHECK(EVP_PKEY_is_a(pub, "EC") == 1);
  char group[64] = {};
  size_t glen = 0;
  REQUIRE(EVP_PKEY_get_group_name(pub, group, sizeof group, &glen) == 1);
  CHECK(std::string(group) == "prime256v1");
  std::set<std::string> dns, ips;
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  REQUIRE(names);
  for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(names, i);
    if (g->type == GEN_DNS) {
      dns.insert(reinterpret_cast<const char*>(ASN1_STRING_get0_data(g->d.dNSName)));
    } else if (g->type == GEN_IPADD && ASN1_STRING_length(g->d.iPAddress) == 4) {
      const unsigned char* a = ASN1_STRING_get0_data(g->d.iPAddress);
      ips.insert(std::to_string(a[0]) + "." + std::to_string(a[1]) + "." + std::to_string(a[2]) + "." + std::to_string(a[3]));
    }
  }
  GENERAL_NAMES_free(names);
  CHECK(dns == std::set<std::string>{"coordinator.example", "localhost"});
  CHECK(ips == std::set<std::string>{"127.0.0.1"});
  // The key in the identity belongs to the certificate.
  bio = BIO_new_mem_buf(id.key_pem.data(), static_cast<int>(id.key_pem.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  REQUIRE(key);
  CHECK(X509_check_private_key(cert, key) == 1);
  EVP_PKEY_free(key);
  X509_free(cert);

  const std::string fp = certificate_fingerprint(id.cert_pem);
  CHECK(fp.size() == 71);
  CHECK(fp.rfind("sha256:", 0) == 0);
  CHECK(fp.find_first_not_of("0123456789abcdef", 7) == std::string::npos);
  CHECK(certificate_fingerprint(id.cert_pem) == fp);
  CHECK(certificate_fingerprint(generate_self_signed("coordinator.example").cert_pem) != fp);  // fresh key each time
  CHECK_THROWS_WITH(certificate_fingerprint("not a certificate"), Catch::Contains("not a PEM certificate"));
  CHECK_THROWS_WITH(generate_self_signed(""), Catch::Contains("common name"));
  CHECK_THROWS_WITH(generate_self_signed("x", 0), Catch::Contains("1 to 36500 days"));
  CHECK_THROWS_WITH(client_tls_context("sha256:abc"), Catch::Contains("not of the form"));
}

TEST_CASE("net: load_or_create_identity writes a 0600 key, reloads it, and refuses half pairs", "[net][transport][tls]") {
  TempDir dir;
  const std::string cert = (dir.path / "sub" / "cert.pem").string(), key = (dir.path / "sub" / "key.pem").string();
  const TlsIdentity a = load_or_create_identity(cert, key, "localhost");
  struct stat st {};
  REQUIRE(::stat(key.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(!std::filesystem::exists(key + ".tmp"));
  CHECK(!std::filesystem::exists(cert + ".tmp"));
  const TlsIdentity b = load_or_create_identity(cert, key, "localhost");
  CHECK(b.cert_pem == a.cert_pem);
  CHECK(b.key_pem == a.key_pem);

  // A key that is not the certificate's.
  const TlsIdentity other = generate_self_signed("localhost");
  {
    std::ofstream(key, std::ios::trunc) << other.key_pem;
  }
  CHECK_THROWS_WITH(load_or_create_identity(cert, key, "localhost"), Catch::Contains("does not belong to certificate"));
  // A corrupt certificate.
  {
    std::ofstream(cert, std::ios::trunc) << "garbage";
  }
  CHECK_THROWS_WITH(load_or_create_identity(cert, key, "localhost"), Catch::Contains("not a PEM certificate"));
  // Only the key present: never silently replaced.
  std::filesystem::remove(cert);
  CHECK_THROWS_WITH(load_or_create_identity(cert, key, "localhost"), Catch::Contains("but not the certificate"));
  {
    std::ifstream in(key);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(text == other.key_pem);
  }
}

// ---- connections -----------------------------------------------------------------------------------

TEST_CASE("net: TLS handshake, frames both ways, pinned fingerprint and stats", "[net][transport]") {
  IoLoop loop(2);
  Pair p(loop);
  CHECK(p.cconn->peer_fingerprint() == certificate_fingerprint(server_identity().cert_pem));
  CHECK(p.sconn->peer_fingerprint() == "");
  CHECK(p.cconn->peer() == "127.0.0.1:" + std::to_string(p.server.port()));
  CHECK(p.sconn->peer().rfind("127.0.0.1:", 0) == 0);

  p.cconn->send(1, pattern(1000, 1));
  p.cconn->send(3, {});                 // an empty body where the kind allows it
  p.cconn->send(2, pattern(3 << 20, 2));  // several TLS records and pacing chunks
  p.sconn->send(1, pattern(65536, 3));
  REQUIRE(p.server_side.wait_frames(3));
  REQUIRE(p.client_side.wait_frames(1));
  CHECK(p.server_side.frames[0].kind == 1);
  CHECK(p.server_side.frames[0].body == pattern(1000, 1));
  CHECK(p.server_side.frames[1].kind == 3);
  CHECK(p.server_side.frames[1].body.empty());
  CHECK(p.server_side.frames[2].kind == 2);
  CHECK(p.server_side.frames[2].body == pattern(3 << 20, 2));
  CHECK(p.client_side.frames[0].body == pattern(65536, 3));

  const uint64_t up = 3 * kFrameHeaderBytes + 1000 + (3 << 20);
  REQUIRE(poll_until([&] { return p.cconn->stats().frames_sent == 3; }));
  const auto cs = p.cconn->stats();
  const auto ss = p.sconn->stats();
  CHECK(cs.bytes_sent == up);
  CHECK(ss.bytes_received == up);
  CHECK(ss.frames_received == 3);
  CHECK(cs.frames_received == 1);
  CHECK(cs.bytes_received == kFrameHeaderBytes + 65536);
  CHECK(cs.seconds_throttled == 0);
  CHECK(p.cconn->queued_bytes() == 0);
  CHECK(p.server_side.close_reasons().empty());
}

TEST_CASE("net: frames arrive in send order from several threads on a multi-threaded io_context", "[net][transport]") {
  IoLoop loop(2);
  Pair p(loop);
  const int per_thread = 300;
  std::vector<std::thread> senders;
  for (uint8_t t = 0; t < 3; ++t) {
    senders.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        std::vector<uint8_t> body{t, static_cast<uint8_t>(i), static_cast<uint8_t>(i >> 8)};
        body.resize(3 + static_cast<size_t>((i * 37) % 2000));  // sizes vary, so records interleave differently
        p.cconn->send(1, std::move(body));
      }
    });
  }
  for (auto& s : senders) s.join();
  REQUIRE(p.server_side.wait_frames(3 * per_thread));
  std::vector<int> next(3, 0);
  bool in_order = true;
  for (const Frame& f : p.server_side.frames) {
    const int t = f.body[0], i = f.body[1] | (f.body[2] << 8);
    if (i != next[t]) in_order = false;
    next[t] = i + 1;
    if (f.body.size() != 3 + static_cast<size_t>((i * 37) % 2000)) in_order = false;
  }
  CHECK(in_order);
  CHECK(next == std::vector<int>{per_thread, per_thread, per_thread});
}

TEST_CASE("net: a client pinning another certificate fails the handshake naming both fingerprints", "[net][transport][tls]") {
  IoLoop loop;
  Server server(loop);
  const std::string real = certificate_fingerprint(server_identity().cert_pem);
  const std::string other = certificate_fingerprint(generate_self_signed("127.0.0.1").cert_pem);
  const auto r = dial_and_wait(loop, server.port(), client_tls_context(other));
  CHECK(r.conn == nullptr);
  CHECK_THAT(r.error, Catch::Contains("TLS handshake with 127.0.0.1:" + std::to_string(server.port()) + " failed"));
  CHECK_THAT(r.error, Catch::Contains("server certificate " + real + " does not match the pinned fingerprint " + other));
  CHECK(server.wait_reject() != "");  // the server saw the client abort its handshake
  std::lock_guard lock(server.mu);
  CHECK(server.accepted.empty());
}

TEST_CASE("net: an unpinned client accepts the self-signed certificate and records its fingerprint", "[net][transport][tls]") {
  IoLoop loop;
  Server server(loop);
  const auto r = dial_and_wait(loop, server.port(), client_tls_context(""));
  REQUIRE(r.error == "");
  REQUIRE(r.conn);
  CHECK(r.conn->peer_fingerprint() == certificate_fingerprint(server_identity().cert_pem));
}

TEST_CASE("net: a TLS 1.2 client is refused", "[net][transport][tls]") {
  IoLoop loop;
  Server server(loop);
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  REQUIRE(SSL_CTX_set_max_proto_version(ctx->native_handle(), TLS1_2_VERSION) == 1);
  ctx->set_verify_mode(asio::ssl::verify_none);
  const auto r = dial_and_wait(loop, server.port(), ctx);
  CHECK(r.conn == nullptr);
  CHECK_THAT(r.error, Catch::Contains("TLS handshake") && Catch::Contains("failed"));
  CHECK_THAT(server.wait_reject(), Catch::Contains("TLS handshake") && Catch::Contains("failed"));
}

TEST_CASE("net: a frame of a kind not allowed closes the connection with its reason", "[net][transport]") {
  IoLoop loop;
  Pair p(loop);
  p.cconn->send(9, {1, 2, 3});
  REQUIRE(p.server_side.wait_closed());
  REQUIRE(p.client_side.wait_closed());
  CHECK(p.server_side.close_reasons() == std::vector<std::string>{"frame kind 9 (3 bytes) is not allowed on this connection"});
  CHECK(p.server_side.frames.empty());
  CHECK(p.client_side.close_reasons().size() == 1);
}

TEST_CASE("net: an oversized frame closes the connection before its body is read", "[net][transport]") {
  IoLoop loop;
  Pair p(loop);
  p.cconn->send(1, std::vector<uint8_t>(200000, 0xab));  // kind 1 allows 65536
  REQUIRE(p.server_side.wait_closed());
  CHECK(p.server_side.close_reasons() == std::vector<std::string>{"frame kind 1 of 200000 bytes exceeds its limit of 65536"});
  CHECK(p.sconn->stats().bytes_received == kFrameHeaderBytes);  // the header only
  CHECK(p.server_side.frames.empty());
  REQUIRE(p.client_side.wait_closed());
  CHECK(p.client_side.close_reasons().size() == 1);
}

TEST_CASE("net: garbage from a plain TCP client fails its handshake and the listener keeps serving", "[net][transport]") {
  IoLoop loop;
  Server server(loop);
  const std::vector<std::string> garbage{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", std::string(1000, '\0'),
                                         std::string("\x16\x03\x01\xff\xff", 5) + std::string(64, 'z')};
  for (size_t i = 0; i < garbage.size(); ++i) {
    asio::ip::tcp::socket raw(loop.io);
    raw.connect({asio::ip::make_address("127.0.0.1"), server.port()});
    asio::write(raw, asio::buffer(garbage[i]));
    const std::string why = server.wait_reject(i);
    INFO("garbage " << i);
    CHECK_THAT(why, Catch::StartsWith("TLS handshake with 127.0.0.1:") && Catch::Contains("failed: "));
    asio::error_code ec;
    raw.close(ec);
  }
  const auto r = dial_and_wait(loop, server.port(), client_tls_context(""));
  CHECK(r.error == "");
  CHECK(r.conn != nullptr);
}

TEST_CASE("net: a silent TCP client is dropped at the handshake deadline", "[net][transport]") {
  IoLoop loop;
  Server server(loop);
  server.listener->set_handshake_timeout(200ms);
  asio::ip::tcp::socket raw(loop.io);
  raw.connect({asio::ip::make_address("127.0.0.1"), server.port()});
  const auto t0 = Clock::now();
  const std::string why = server.wait_reject(0, 5s);
  CHECK_THAT(why, Catch::StartsWith("TLS handshake with 127.0.0.1:") && Catch::EndsWith("timed out after 200 ms"));
  CHECK(seconds(Clock::now() - t0) < 3.0);
  CHECK(server.listener->pending_handshakes() == 0);
}

TEST_CASE("net: dial reports refused connections, silent servers and bad arguments", "[net][transport]") {
  IoLoop loop;
  uint16_t closed_port;
  {
    asio::ip::tcp::acceptor a(loop.io, {asio::ip::make_address("127.0.0.1"), 0});
    closed_port = a.local_endpoint().port();
  }
  auto r = dial_and_wait(loop, closed_port, client_tls_context(""));
  CHECK(r.conn == nullptr);
  CHECK_THAT(r.error, Catch::StartsWith("cannot connect to 127.0.0.1:" + std::to_string(closed_port)) &&
                          Catch::Contains("refused"));

  // A server that accepts TCP but never speaks TLS.
  asio::ip::tcp::acceptor silent(loop.io, {asio::ip::make_address("127.0.0.1"), 0});
  r = dial_and_wait(loop, silent.local_endpoint().port(), client_tls_context(""), default_limits(), 300ms);
  CHECK(r.conn == nullptr);
  CHECK_THAT(r.error, Catch::Contains("timed out after") && Catch::Contains("TLS handshake"));

  r = dial_and_wait(loop, 0, client_tls_context(""));
  CHECK_THAT(r.error, Catch::Contains("port 0 cannot be dialled"));
  r = dial_and_wait(loop, 7000, client_tls_context(""), default_limits(), 5s, "no-such-host.invalid");
  CHECK_THAT(r.error, Catch::StartsWith("cannot resolve \"no-such-host.invalid\""));
  CHECK_THROWS_AS(dial(loop.io, "127.0.0.1", 1, nullptr, {}, 1s, [](const std::string&, std::shared_ptr<Connection>) {}),
                  Error);
}

TEST_CASE("net: close() flushes queued frames, both sides get exactly one on_close with its reason", "[net][transport]") {
  IoLoop loop(2);
  Pair p(loop);
  for (int i = 0; i < 5; ++i) p.cconn->send(1, pattern(20000, static_cast<uint32_t>(i)));
  p.cconn->close("bye");
  p.cconn->close("again");  // idempotent
  REQUIRE(p.client_side.wait_closed());
  REQUIRE(p.server_side.wait_closed());
  CHECK(p.server_side.wait_frames(5));
  for (int i = 0; i < 5; ++i) CHECK(p.server_side.frames[i].body == pattern(20000, static_cast<uint32_t>(i)));
  std::this_thread::sleep_for(100ms);  // room for a wrong second on_close
  CHECK(p.client_side.close_reasons() == std::vector<std::string>{"bye"});
  CHECK(p.server_side.close_reasons() == std::vector<std::string>{"peer closed the connection"});
  p.cconn->send(1, {1});  // after close: dropped, not queued
  std::this_thread::sleep_for(50ms);
  CHECK(p.cconn->queued_bytes() == 0);
  CHECK(p.cconn->stats().frames_sent == 5);
}

TEST_CASE("net: a peer reset ends in on_close on both sides", "[net][transport]") {
  IoLoop loop;
  Pair p(loop);
  p.sconn->abort("test reset");
  REQUIRE(p.server_side.wait_closed());
  REQUIRE(p.client_side.wait_closed());
  std::this_thread::sleep_for(100ms);
  CHECK(p.server_side.close_reasons() == std::vector<std::string>{"test reset"});
  const auto reasons = p.client_side.close_reasons();
  REQUIRE(reasons.size() == 1);
  CHECK_THAT(reasons[0], Catch::Contains("reset") || Catch::Contains("peer closed"));
}

TEST_CASE("net: a throwing frame handler closes that connection, not the process", "[net][transport]") {
  IoLoop loop;
  Pair p(loop);
  p.server_side.throw_on_frame = true;
  p.cconn->send(1, {1, 2});
  REQUIRE(p.server_side.wait_closed());
  CHECK(p.server_side.close_reasons() == std::vector<std::string>{"frame handler failed: handler refuses this frame"});
  REQUIRE(p.client_side.wait_closed());
}

TEST_CASE("net: close before start is reported once start is called", "[net][transport]") {
  IoLoop loop;
  Pair p(loop, default_limits(), default_limits(), /*start=*/false);
  p.cconn->close("changed my mind");
  std::this_thread::sleep_for(50ms);
  Side late;
  StopFirst stop_first{loop};
  p.cconn->start(late.handlers());
  REQUIRE(late.wait_closed());
  CHECK(late.close_reasons() == std::vector<std::string>{"changed my mind"});
}

TEST_CASE("net: a closed listener refuses new connections", "[net][transport]") {
  IoLoop loop;
  Server server(loop);
  const uint16_t port = server.port();
  server.listener->close();
  std::this_thread::sleep_for(50ms);
  const auto r = dial_and_wait(loop, port, client_tls_context(""));
  CHECK(r.conn == nullptr);
  CHECK_THAT(r.error, Catch::Contains("refused"));
}

// ---- rate caps -------------------------------------------------------------------------------------

namespace {

// Frames of 64 KiB; returns the measured rate in bytes (headers included) per second, from the first
// send to the last frame's arrival.
double measured_rate(Side& receiver, size_t frames, size_t body, Clock::time_point t0) {
  REQUIRE(receiver.wait_frames(frames, 20s));
  const double bytes = static_cast<double>(frames * (body + kFrameHeaderBytes));
  return bytes / seconds(receiver.times.back() - t0);
}

}  // namespace

TEST_CASE("net: an upload cap of 1 MB/s holds within 5% over 3 MB", "[net][transport][rate]") {
  IoLoop loop;
  Pair p(loop);
  const double cap = 1e6;
  p.cconn->set_rates(cap, 0);
  CHECK(p.cconn->up_rate() == cap);
  const size_t frames = 48, body = 65536;  // 3 MiB
  const auto t0 = Clock::now();
  for (size_t i = 0; i < frames; ++i) p.cconn->send(2, pattern(body, static_cast<uint32_t>(i)));
  const double rate = measured_rate(p.server_side, frames, body, t0);
  INFO("measured " << rate << " B/s against a cap of " << cap);
  CHECK(rate == Approx(cap).epsilon(0.05));
  CHECK(p.cconn->stats().seconds_throttled_up > 2.5);
  CHECK(p.cconn->stats().seconds_throttled_down == 0);
}

TEST_CASE("net: a download cap of 1 MB/s holds within 5% over 3 MB", "[net][transport][rate]") {
  IoLoop loop;
  Pair p(loop, default_limits(), default_limits(), /*start=*/false);
  const double cap = 1e6;
  p.cconn->set_rates(0, cap);
  p.sconn->start(p.server_side.handlers());
  p.cconn->start(p.client_side.handlers());
  const size_t frames = 48, body = 65536;
  const auto t0 = Clock::now();
  for (size_t i = 0; i < frames; ++i) p.sconn->send(2, pattern(body, static_cast<uint32_t>(i)));
  const double rate = measured_rate(p.client_side, frames, body, t0);
  INFO("measured " << rate << " B/s against a cap of " << cap);
  CHECK(rate == Approx(cap).epsilon(0.05));
  CHECK(p.cconn->stats().seconds_throttled_down > 2.5);
  CHECK(p.client_side.frames.back().body == pattern(body, frames - 1));
}

TEST_CASE("net: an upload cap changed mid-transfer applies at once: 2 MB/s, then 0.5 MB/s, then unlimited", "[net][transport][rate]") {
  IoLoop loop;
  Pair p(loop);
  const size_t body = 32768, wire = body + kFrameHeaderBytes;
  const size_t to_slow = 32, to_free = 48, frames = 80;  // switch after 1 MiB, then after another 0.5 MiB
  p.server_side.on_each = [&](const Frame&, size_t index) {
    if (index + 1 == to_slow) p.cconn->set_rates(0.5e6, 0);
    if (index + 1 == to_free) p.cconn->set_rates(0, 0);
  };
  p.cconn->set_rates(2e6, 0);
  for (size_t i = 0; i < frames; ++i) p.cconn->send(2, pattern(body, static_cast<uint32_t>(i)));
  REQUIRE(p.server_side.wait_frames(frames, 20s));
  const auto& t = p.server_side.times;
  // Each rate is measured over whole frames away from the switches.
  auto rate_between = [&](size_t a, size_t b) { return static_cast<double>((b - a) * wire) / seconds(t[b] - t[a]); };
  const double fast = rate_between(3, to_slow - 1), slow = rate_between(to_slow + 3, to_free - 1);
  INFO("2 MB/s phase measured " << fast << " B/s, 0.5 MB/s phase measured " << slow << " B/s");
  CHECK(fast == Approx(2e6).epsilon(0.05));
  CHECK(slow == Approx(0.5e6).epsilon(0.05));
  // The last 1 MiB, uncapped, takes far less than the 2 s it would take at 0.5 MB/s.
  CHECK(seconds(t[frames - 1] - t[to_free - 1]) < 0.5);
}
