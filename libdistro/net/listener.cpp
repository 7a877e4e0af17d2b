#include "net/listener.hpp"

#include <asio/dispatch.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>
#include <asio/strand.hpp>

#include <atomic>
#include <list>

#include "core/error.hpp"

namespace distro::net {

struct Listener::State : std::enable_shared_from_this<Listener::State> {
  State(asio::io_context& io_, std::shared_ptr<asio::ssl::context> tls_, FrameLimits limits_)
      : io(io_), strand(asio::make_strand(io_)), acceptor(strand), retry_timer(strand), tls(std::move(tls_)),
        limits(limits_) {}

  asio::io_context& io;
  asio::strand<asio::io_context::executor_type> strand;  // acceptor, timer, pending list
  asio::ip::tcp::acceptor acceptor;
  asio::steady_timer retry_timer;
  std::shared_ptr<asio::ssl::context> tls;
  FrameLimits limits;
  std::function<void(std::shared_ptr<Connection>)> on_accept;
  std::function<void(const std::string&)> on_reject;
  std::atomic<int64_t> handshake_ms{10000};
  std::atomic<size_t> max_pending{4096};
  std::atomic<size_t> pending{0};
  std::list<std::weak_ptr<Connection>> handshaking;  // to abort them on close()
  bool closed = false;

  void reject(const std::string& why) {
    if (!on_reject) return;
    try {
      on_reject(why);
    } catch (...) {
      // A throwing reject handler must not stop the listener.
    }
  }

  void accept_next() {
    if (closed) return;
    acceptor.async_accept(asio::make_strand(io), [self = shared_from_this()](const asio::error_code& ec,
                                                                              asio::ip::tcp::socket socket) {
      self->on_accepted(ec, std::move(socket));
    });
  }

  void on_accepted(const asio::error_code& ec, asio::ip::tcp::socket socket) {
    if (closed || ec == asio::error::operation_aborted) return;
    if (ec) {
      // Typically out of file descriptors: report, then try again shortly instead of spinning.
      reject("accept failed: " + ec.message());
      retry_timer.expires_after(std::chrono::milliseconds(100));
      retry_timer.async_wait([self = shared_from_this()](const asio::error_code& e) {
        if (!e) self->accept_next();
      });
      return;
    }
    accept_next();
    if (pending >= max_pending) {
      asio::error_code ignored;
      const auto ep = socket.remote_endpoint(ignored);
      socket.close(ignored);
      reject("refused a connection from " + ep.address().to_string() + ":" + std::to_string(ep.port()) + ": " +
             std::to_string(max_pending.load()) + " TLS handshakes already in progress");
      return;
    }
    std::shared_ptr<Connection> conn;
    try {
      conn = std::make_shared<Connection>(std::move(socket), tls, limits);
    } catch (const std::exception& e) {
      reject(std::string("cannot set up an accepted connection: ") + e.what());
      return;
    }
    ++pending;
    auto it = handshaking.insert(handshaking.end(), conn);
    conn->handshake(asio::ssl::stream_base::server, std::chrono::milliseconds(handshake_ms.load()),
                    [self = shared_from_this(), conn, it](const std::string& error) {
                      // Runs on the connection's strand; the list belongs to the listener's strand.
                      asio::dispatch(self->strand, [self, conn, it, error] { self->handshake_done(conn, it, error); });
                    });
  }

  void handshake_done(const std::shared_ptr<Connection>& conn, std::list<std::weak_ptr<Connection>>::iterator it,
                      const std::string& error) {
    handshaking.erase(it);
    --pending;
    if (!error.empty()) {
      reject(error);
      return;
    }
    if (closed) {
      conn->abort("listener closed during the TLS handshake");
      return;
    }
    try {
      if (on_accept) on_accept(conn);
      else conn->close("nobody accepts connections on this listener");
    } catch (const std::exception& e) {
      conn->abort(std::string("accept handler failed: ") + e.what());
      reject(std::string("accept handler failed for ") + conn->peer() + ": " + e.what());
    } catch (...) {
      conn->abort("accept handler failed");
      reject("accept handler failed for " + conn->peer());
    }
  }

  void do_close() {
    if (closed) return;
    closed = true;
    asio::error_code ignored;
    acceptor.close(ignored);
    retry_timer.cancel();
    for (auto& w : handshaking) {
      if (auto c = w.lock()) c->abort("listener closed");
    }
  }
};

Listener::Listener(asio::io_context& io, const std::string& host, uint16_t port, std::shared_ptr<asio::ssl::context> tls,
                   FrameLimits limits, std::function<void(std::shared_ptr<Connection>)> on_accept,
                   std::function<void(const std::string& why)> on_reject) {
  if (!tls) fail(Code::invalid_argument, "listener needs a TLS context (server_tls_context), got none");
  state_ = std::make_shared<State>(io, std::move(tls), limits);
  state_->on_accept = std::move(on_accept);
  state_->on_reject = std::move(on_reject);
  const std::string where = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
  asio::error_code ec;
  asio::ip::tcp::endpoint ep;
  const auto addr = asio::ip::make_address(host, ec);
  if (!ec) {
    ep = asio::ip::tcp::endpoint(addr, port);
  } else {
    asio::ip::tcp::resolver resolver(io);
    const auto results = resolver.resolve(host, std::to_string(port), asio::ip::tcp::resolver::passive, ec);
    if (ec || results.empty()) {
      fail(Code::invalid_argument, "cannot listen on " + where + ": cannot resolve \"" + host + "\"" +
                                       (ec ? ": " + ec.message() : std::string()));
    }
    ep = results.begin()->endpoint();
  }
  auto& a = state_->acceptor;
  auto check = [&](const char* step) {
    if (ec) fail(Code::io, "cannot listen on " + where + " (" + step + "): " + ec.message());
  };
  a.open(ep.protocol(), ec);
  check("open");
  // A restarted coordinator can bind its port again while old connections sit in TIME_WAIT.
  a.set_option(asio::socket_base::reuse_address(true), ec);
  check("reuse address");
  a.bind(ep, ec);
  check("bind");
  a.listen(asio::socket_base::max_listen_connections, ec);
  check("listen");
  port_ = a.local_endpoint(ec).port();
  check("local endpoint");
  asio::dispatch(state_->strand, [s = state_] { s->accept_next(); });
}

Listener::~Listener() { close(); }

uint16_t Listener::port() const { return port_; }

void Listener::close() {
  if (state_) asio::dispatch(state_->strand, [s = state_] { s->do_close(); });
}

void Listener::set_handshake_timeout(std::chrono::milliseconds t) { state_->handshake_ms = std::max<int64_t>(1, t.count()); }
void Listener::set_max_pending_handshakes(size_t n) { state_->max_pending = std::max<size_t>(1, n); }
size_t Listener::pending_handshakes() const { return state_->pending; }

}  // namespace distro::net
