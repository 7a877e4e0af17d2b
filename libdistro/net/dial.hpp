// Client side: resolve, connect and handshake within one deadline; and "host:port" parsing.
#pragma once

#include <asio/io_context.hpp>
#include <asio/ssl.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "net/connection.hpp"
#include "net/frame.hpp"

namespace distro::net {

// Resolves, connects, handshakes, then calls done(error_message_or_empty, connection_or_null) exactly
// once, on an io_context thread. The timeout covers all three steps. On success the connection is not
// started. Errors name host:port and the step ("cannot connect to 127.0.0.1:9 (connection refused)").
void dial(asio::io_context& io, const std::string& host, uint16_t port, std::shared_ptr<asio::ssl::context> tls,
          FrameLimits limits, std::chrono::milliseconds timeout,
          std::function<void(const std::string& error, std::shared_ptr<Connection>)> done);

// "host:port" with a clear error (IPv6 as [::1]:port). Port 0..65535 (0 means "any free" to a
// listener). Throws Error(invalid_argument) saying what was wrong and what was expected.
std::pair<std::string, uint16_t> parse_host_port(const std::string& s);

}  // namespace distro::net
