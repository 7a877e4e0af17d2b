// Accepts TCP connections, runs the TLS handshake on each (with a deadline), and hands each
// successful one to on_accept, not yet started. Failed handshakes (plain TCP, wrong protocol, timeout)
// and accept errors go to on_reject with the reason; the listener keeps accepting.
#pragma once

#include <asio/io_context.hpp>
#include <asio/ssl.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "net/connection.hpp"
#include "net/frame.hpp"

namespace distro::net {

class Listener {
 public:
  // Binds and listens at once (throws Error(io) naming host:port and the system's reason when it
  // cannot); host is an IP address or a name ("0.0.0.0", "::", "127.0.0.1", "localhost").
  // on_accept and on_reject run on the io_context's threads.
  Listener(asio::io_context& io, const std::string& host, uint16_t port /*0 = any free*/,
           std::shared_ptr<asio::ssl::context> tls, FrameLimits limits,
           std::function<void(std::shared_ptr<Connection>)> on_accept,
           std::function<void(const std::string& why)> on_reject = {});
  ~Listener();  // close()
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  uint16_t port() const;
  // Stops accepting and aborts handshakes in progress; accepted connections are not touched.
  // Thread-safe, idempotent.
  void close();

  // Defaults: 10 s per handshake, at most 4096 handshakes at once (more are refused at once, so a
  // flood of idle TCP connections cannot hold unbounded memory). Thread-safe; applies to new ones.
  void set_handshake_timeout(std::chrono::milliseconds t);
  void set_max_pending_handshakes(size_t n);
  size_t pending_handshakes() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
  uint16_t port_ = 0;
};

}  // namespace distro::net
