// One TLS connection carrying frames (frame.hpp), paced by a token bucket per direction.
//
// Threading: the connection's socket, timers and handlers all run on one strand (the socket's
// executor, made by Listener and dial with asio::make_strand), so the io_context may run on any
// number of threads. The public calls below are thread-safe; they post onto that strand. Callbacks
// run on the strand, never inside a public call. The io_context must outlive its connections.
//
// Errors: nothing is thrown into asio; every failure (peer closed or reset, oversized or unknown frame,
// a handler that throws, close(), abort()) ends in exactly one on_close(reason).
#pragma once

#include <asio/ip/tcp.hpp>
#include <asio/ssl.hpp>
#include <asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "net/frame.hpp"
#include "net/tls.hpp"
#include "net/token_bucket.hpp"

namespace distro::net {

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  struct Handlers {
    std::function<void(Frame&&)> on_frame;                    // one complete, size-checked frame
    std::function<void(const std::string& reason)> on_close;  // exactly once, with why (peer closed, limit, error, close())
  };
  struct Stats {
    uint64_t bytes_sent = 0, bytes_received = 0, frames_sent = 0, frames_received = 0;
    double seconds_throttled = 0;  // time spent waiting on either bucket (sum of up and down below)
    double seconds_throttled_up = 0, seconds_throttled_down = 0;
  };

  // Used by Listener and dial. The socket must be connected and its executor a strand.
  Connection(asio::ip::tcp::socket socket, std::shared_ptr<asio::ssl::context> tls, FrameLimits limits);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Used by Listener and dial: the TLS handshake with a deadline; done("") on success, else the reason.
  void handshake(asio::ssl::stream_base::handshake_type type, std::chrono::milliseconds timeout,
                 std::function<void(const std::string& error)> done);

  void start(Handlers h);                                    // begins reading
  void send(uint8_t kind, std::vector<uint8_t> body);        // thread-safe, queued in order, paced by the upload bucket
  // Thread-safe, idempotent; on_close(reason). Frames queued before the call are still sent (for at most
  // kLinger), then the TLS session is shut down; nothing more is read or delivered.
  void close(const std::string& reason);
  // Like close, but drops the queue and resets the TCP connection at once (fault tests, shutdown).
  void abort(const std::string& reason);
  void set_rates(double up_bytes_per_s, double down_bytes_per_s);  // 0 = unlimited; live, thread-safe
  double up_rate() const { return up_.rate(); }
  double down_rate() const { return down_.rate(); }
  Stats stats() const;                                       // thread-safe
  size_t queued_bytes() const;                               // send backlog (bytes accepted by send, not yet written)
  const std::string& peer() const;                           // "ip:port" label for logs
  const std::string& peer_fingerprint() const;               // client side: the server's certificate fingerprint

  static constexpr std::chrono::milliseconds kLinger{5000};       // flushing the queue after close()
  static constexpr std::chrono::milliseconds kTlsShutdown{1000};  // waiting for the peer's close_notify

 private:
  using Stream = asio::ssl::stream<asio::ip::tcp::socket>;

  // All below run on the strand.
  void do_start(Handlers h);
  void do_send(std::vector<uint8_t> frame);
  enum class CloseMode { graceful, immediate, reset };
  void do_close(const std::string& reason, CloseMode mode);
  void deliver_close();
  void pump_write();
  void wait_then_write(std::chrono::nanoseconds wait, size_t chunk);
  void write_chunk(size_t chunk);
  void on_written(const asio::error_code& ec, size_t n);
  void read_header();
  void on_header(const asio::error_code& ec);
  void read_body();
  void on_body(const asio::error_code& ec, size_t n);
  void deliver_frame();
  void paced_read(size_t n, std::function<void()> then);
  void shutdown_tls();
  void teardown(bool reset);
  std::string io_reason(const char* direction, const asio::error_code& ec) const;
  template <class F>
  void guarded(F&& f);  // runs f, turning any exception into do_close

  asio::any_io_executor ex_;
  std::shared_ptr<asio::ssl::context> tls_;  // keeps the verify callback alive
  Stream stream_;
  FrameLimits limits_;
  asio::steady_timer write_timer_, read_timer_, close_timer_;
  TokenBucket up_, down_;
  std::string peer_, peer_fingerprint_;
  TlsVerifyNote verify_note_;

  Handlers handlers_;
  bool started_ = false, closed_ = false, close_delivered_ = false, torn_down_ = false;
  std::string close_reason_;

  std::deque<std::vector<uint8_t>> queue_;
  size_t write_offset_ = 0;
  bool writing_ = false;

  uint8_t header_[kFrameHeaderBytes] = {};
  FrameHeader current_{};
  std::vector<uint8_t> body_;
  size_t body_got_ = 0;

  std::atomic<uint64_t> bytes_sent_{0}, bytes_received_{0}, frames_sent_{0}, frames_received_{0};
  std::atomic<uint64_t> throttled_up_ns_{0}, throttled_down_ns_{0};
  std::atomic<size_t> queued_bytes_{0};
};

}  // namespace distro::net
