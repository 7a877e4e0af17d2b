#include "net/dial.hpp"

#include <asio/connect.hpp>
#include <asio/dispatch.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/strand.hpp>

#include "core/error.hpp"

namespace distro::net {

namespace {

struct DialOp : std::enable_shared_from_this<DialOp> {
  using Done = std::function<void(const std::string&, std::shared_ptr<Connection>)>;

  DialOp(asio::io_context& io, std::string host_, uint16_t port_, std::shared_ptr<asio::ssl::context> tls_,
         FrameLimits limits_, std::chrono::milliseconds timeout_, Done done_)
      : strand(asio::make_strand(io)), resolver(strand), socket(strand), timer(strand), host(std::move(host_)),
        port(port_), tls(std::move(tls_)), limits(limits_), timeout(timeout_), done(std::move(done_)),
        started(std::chrono::steady_clock::now()) {
    where = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
  }

  asio::any_io_executor strand;
  asio::ip::tcp::resolver resolver;
  asio::ip::tcp::socket socket;
  asio::steady_timer timer;
  std::string host, where;
  uint16_t port;
  std::shared_ptr<asio::ssl::context> tls;
  FrameLimits limits;
  std::chrono::milliseconds timeout;
  Done done;
  std::chrono::steady_clock::time_point started;
  bool finished = false, timed_out = false, handed_over = false;
  const char* step = "resolving";

  void finish(const std::string& error, std::shared_ptr<Connection> conn) {
    if (finished) return;
    finished = true;
    timer.cancel();
    Done d = std::move(done);
    done = nullptr;
    try {
      d(error, error.empty() ? std::move(conn) : nullptr);
    } catch (const std::exception& e) {
      if (conn) conn->abort(std::string("dial handler failed: ") + e.what());
    } catch (...) {
      if (conn) conn->abort("dial handler failed");
    }
  }

  std::string timeout_message() const {
    return "connecting to " + where + " timed out after " + std::to_string(timeout.count()) + " ms (while " + step + ")";
  }

  void run() {
    auto self = shared_from_this();
    timer.expires_after(timeout);
    timer.async_wait([self](const asio::error_code& ec) {
      if (ec || self->finished || self->handed_over) return;
      self->timed_out = true;
      asio::error_code ignored;
      self->resolver.cancel();
      self->socket.close(ignored);
    });
    resolver.async_resolve(host, std::to_string(port), [self](const asio::error_code& ec,
                                                               asio::ip::tcp::resolver::results_type results) {
      if (self->finished) return;
      if (self->timed_out) return self->finish(self->timeout_message(), nullptr);
      if (ec) return self->finish("cannot resolve \"" + self->host + "\": " + ec.message(), nullptr);
      self->step = "connecting";
      asio::async_connect(self->socket, results, [self](const asio::error_code& ec2, const asio::ip::tcp::endpoint&) {
        if (self->finished) return;
        if (self->timed_out) return self->finish(self->timeout_message(), nullptr);
        if (ec2) return self->finish("cannot connect to " + self->where + " (" + ec2.message() + ")", nullptr);
        self->handshake();
      });
    });
  }

  void handshake() {
    step = "handshaking";
    // The connection owns the socket from here; it enforces what is left of the deadline itself.
    handed_over = true;
    timer.cancel();
    const auto spent = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
    const auto left = std::max(std::chrono::milliseconds(1), timeout - spent);
    std::shared_ptr<Connection> conn;
    try {
      conn = std::make_shared<Connection>(std::move(socket), tls, limits);
    } catch (const std::exception& e) {
      return finish(std::string("cannot set up the connection to ") + where + ": " + e.what(), nullptr);
    }
    auto self = shared_from_this();
    conn->handshake(asio::ssl::stream_base::client, left, [self, conn](const std::string& error) {
      asio::dispatch(self->strand, [self, conn, error] { self->finish(error, conn); });
    });
  }
};

}  // namespace

void dial(asio::io_context& io, const std::string& host, uint16_t port, std::shared_ptr<asio::ssl::context> tls,
          FrameLimits limits, std::chrono::milliseconds timeout,
          std::function<void(const std::string& error, std::shared_ptr<Connection>)> done) {
  if (!done) fail(Code::invalid_argument, "dial needs a completion handler");
  if (!tls) fail(Code::invalid_argument, "dial needs a TLS context (client_tls_context), got none");
  if (timeout.count() <= 0) fail(Code::invalid_argument, "dial timeout must be positive, got " + std::to_string(timeout.count()) + " ms");
  auto op = std::make_shared<DialOp>(io, host, port, std::move(tls), limits, timeout, std::move(done));
  if (host.empty() || port == 0) {
    const std::string why = host.empty() ? "no host given" : "port 0 cannot be dialled";
    asio::post(op->strand, [op, why] { op->finish("cannot connect to " + op->where + ": " + why, nullptr); });
    return;
  }
  asio::dispatch(op->strand, [op] { op->run(); });
}

std::pair<std::string, uint16_t> parse_host_port(const std::string& s) {
  const std::string expected = "expected HOST:PORT, e.g. 127.0.0.1:7000, example.org:7000 or [::1]:7000";
  if (s.empty()) fail(Code::invalid_argument, "empty address; " + expected);
  std::string host, port_text;
  if (s.front() == '[') {
    const size_t close = s.find(']');
    if (close == std::string::npos) fail(Code::invalid_argument, "address \"" + s + "\" has '[' without ']'; " + expected);
    host = s.substr(1, close - 1);
    if (close + 1 >= s.size() || s[close + 1] != ':') {
      fail(Code::invalid_argument, "address \"" + s + "\" has no port after ']'; " + expected);
    }
    port_text = s.substr(close + 2);
  } else {
    const size_t colon = s.rfind(':');
    if (colon == std::string::npos) fail(Code::invalid_argument, "address \"" + s + "\" has no port; " + expected);
    host = s.substr(0, colon);
    port_text = s.substr(colon + 1);
    if (host.find(':') != std::string::npos) {
      fail(Code::invalid_argument, "address \"" + s + "\" looks like an IPv6 address without brackets; " + expected);
    }
  }
  if (host.empty()) fail(Code::invalid_argument, "address \"" + s + "\" has no host; " + expected);
  if (port_text.empty() || port_text.size() > 5 || port_text.find_first_not_of("0123456789") != std::string::npos) {
    fail(Code::invalid_argument, "address \"" + s + "\" has port \"" + port_text + "\", expected a number 0 to 65535");
  }
  const unsigned long port = std::stoul(port_text);
  if (port > 65535) fail(Code::invalid_argument, "address \"" + s + "\" has port " + port_text + ", expected 0 to 65535");
  return {host, static_cast<uint16_t>(port)};
}

}  // namespace distro::net
