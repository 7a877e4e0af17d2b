#include "net/connection.hpp"

#include <asio/dispatch.hpp>
#include <asio/post.hpp>
#include <asio/read.hpp>
#include <asio/write.hpp>

#include <algorithm>

namespace distro::net {

namespace {

using Clock = std::chrono::steady_clock;

// How many bytes to move per paced step: about 20 ms of the rate (so a rate change applies within a
// few tens of milliseconds), between 1 KiB and 64 KiB. Unlimited: 1 MiB, so that a cap set while a
// large frame is in flight still applies soon, and so that a body is allocated only as it arrives.
size_t pacing_chunk(double rate, size_t left) {
  size_t cap = size_t(1) << 20;
  if (rate > 0) cap = static_cast<size_t>(std::clamp(rate / 50.0, 1024.0, 65536.0));
  return std::min(left, cap);
}

std::string endpoint_label(const asio::ip::tcp::socket& s) {
  asio::error_code ec;
  const auto ep = s.remote_endpoint(ec);
  if (ec) return "unknown peer";
  const auto a = ep.address();
  return (a.is_v6() ? "[" + a.to_string() + "]" : a.to_string()) + ":" + std::to_string(ep.port());
}

uint64_t ns_since(Clock::time_point t) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t).count());
}

}  // namespace

Connection::Connection(asio::ip::tcp::socket socket, std::shared_ptr<asio::ssl::context> tls, FrameLimits limits)
    : ex_(socket.get_executor()),
      tls_(std::move(tls)),
      stream_(std::move(socket), *tls_),
      limits_(limits),
      write_timer_(ex_),
      read_timer_(ex_),
      close_timer_(ex_) {
  peer_ = endpoint_label(stream_.next_layer());
  asio::error_code ignored;
  // Frames are messages, often small (joins, acks, heartbeats): send each without Nagle's delay.
  stream_.next_layer().set_option(asio::ip::tcp::no_delay(true), ignored);
  attach_verify_note(stream_.native_handle(), &verify_note_);
}

Connection::~Connection() {
  if (stream_.native_handle()) attach_verify_note(stream_.native_handle(), nullptr);
}

template <class F>
void Connection::guarded(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    do_close(std::string("internal error: ") + e.what(), CloseMode::immediate);
  } catch (...) {
    do_close("internal error: unknown exception", CloseMode::immediate);
  }
}

// ---- handshake ------------------------------------------------------------------------------------

void Connection::handshake(asio::ssl::stream_base::handshake_type type, std::chrono::milliseconds timeout,
                           std::function<void(const std::string&)> done) {
  struct State {
    bool finished = false, timed_out = false;
  };
  auto self = shared_from_this();
  asio::dispatch(ex_, [self, type, timeout, done = std::move(done)]() mutable {
    auto st = std::make_shared<State>();
    self->close_timer_.expires_after(timeout);
    self->close_timer_.async_wait([self, st](const asio::error_code& ec) {
      if (ec || st->finished) return;
      st->timed_out = true;
      asio::error_code ignored;
      self->stream_.lowest_layer().close(ignored);  // the handshake then completes with an error
    });
    self->stream_.async_handshake(type, [self, st, timeout, done = std::move(done)](const asio::error_code& ec) {
      st->finished = true;
      self->close_timer_.cancel();
      std::string error;
      if (st->timed_out) {
        error = "TLS handshake with " + self->peer_ + " timed out after " + std::to_string(timeout.count()) + " ms";
      } else if (ec) {
        error = "TLS handshake with " + self->peer_ + " failed: " +
                (self->verify_note_.failure.empty() ? ec.message() : self->verify_note_.failure);
      } else {
        try {
          self->peer_fingerprint_ = peer_certificate_fingerprint(self->stream_.native_handle());
        } catch (const std::exception& e) {
          error = "TLS handshake with " + self->peer_ + ": " + e.what();
        }
      }
      if (!error.empty()) {
        self->closed_ = true;
        self->close_reason_ = error;
        self->teardown(false);
      }
      try {
        done(error);
      } catch (const std::exception& e) {
        self->do_close(std::string("connection setup failed: ") + e.what(), CloseMode::immediate);
      } catch (...) {
        self->do_close("connection setup failed", CloseMode::immediate);
      }
    });
  });
}

// ---- public, thread-safe --------------------------------------------------------------------------

void Connection::start(Handlers h) {
  asio::post(ex_, [self = shared_from_this(), h = std::move(h)]() mutable { self->do_start(std::move(h)); });
}

void Connection::send(uint8_t kind, std::vector<uint8_t> body) {
  if (body.size() > UINT32_MAX) {
    close("refused to send a frame of kind " + std::to_string(kind) + " with " + std::to_string(body.size()) +
          " bytes: the frame length field holds at most " + std::to_string(UINT32_MAX));
    return;
  }
  std::vector<uint8_t> frame = encode_frame(kind, body);
  queued_bytes_ += frame.size();
  asio::post(ex_, [self = shared_from_this(), frame = std::move(frame)]() mutable {
    self->guarded([&] { self->do_send(std::move(frame)); });
  });
}

void Connection::close(const std::string& reason) {
  asio::post(ex_, [self = shared_from_this(), reason] { self->do_close(reason, CloseMode::graceful); });
}

void Connection::abort(const std::string& reason) {
  asio::post(ex_, [self = shared_from_this(), reason] { self->do_close(reason, CloseMode::reset); });
}

void Connection::set_rates(double up_bytes_per_s, double down_bytes_per_s) {
  up_.set_rate(up_bytes_per_s);
  down_.set_rate(down_bytes_per_s);
  // Wake any paced wait so that it re-checks its debt at the new rate (sooner for a higher rate).
  asio::post(ex_, [self = shared_from_this()] {
    self->write_timer_.cancel();
    self->read_timer_.cancel();
  });
}

Connection::Stats Connection::stats() const {
  Stats s;
  s.bytes_sent = bytes_sent_;
  s.bytes_received = bytes_received_;
  s.frames_sent = frames_sent_;
  s.frames_received = frames_received_;
  s.seconds_throttled_up = static_cast<double>(throttled_up_ns_.load()) * 1e-9;
  s.seconds_throttled_down = static_cast<double>(throttled_down_ns_.load()) * 1e-9;
  s.seconds_throttled = s.seconds_throttled_up + s.seconds_throttled_down;
  return s;
}

size_t Connection::queued_bytes() const { return queued_bytes_; }
const std::string& Connection::peer() const { return peer_; }
const std::string& Connection::peer_fingerprint() const { return peer_fingerprint_; }

// ---- lifecycle (strand) ---------------------------------------------------------------------------

void Connection::do_start(Handlers h) {
  if (started_) return;  // a second start would deliver frames to two owners; the first wins
  started_ = true;
  handlers_ = std::move(h);
  if (closed_) {
    deliver_close();
    return;
  }
  guarded([&] { read_header(); });
}

void Connection::deliver_close() {
  if (!started_ || close_delivered_) return;
  close_delivered_ = true;
  // Moving the handlers out breaks reference cycles through lambdas that hold this connection.
  Handlers h = std::move(handlers_);
  handlers_ = {};
  if (h.on_close) {
    try {
      h.on_close(close_reason_);
    } catch (...) {
      // The connection is closed either way; a throwing close handler has nobody left to tell.
    }
  }
}

void Connection::do_close(const std::string& reason, CloseMode mode) {
  if (closed_) {
    // Already closing gracefully: an error or abort() now cuts the flush short.
    if (mode != CloseMode::graceful) teardown(mode == CloseMode::reset);
    return;
  }
  closed_ = true;
  close_reason_ = reason;
  read_timer_.cancel();
  deliver_close();
  if (mode != CloseMode::graceful || torn_down_) {
    teardown(mode == CloseMode::reset);
  } else if (writing_) {
    // Let the writer flush what was queued before close(); it shuts TLS down when the queue is empty.
    close_timer_.expires_after(kLinger);
    close_timer_.async_wait([self = shared_from_this()](const asio::error_code& ec) {
      if (!ec) self->teardown(false);
    });
  } else {
    shutdown_tls();
  }
}

void Connection::shutdown_tls() {
  if (torn_down_) return;
  auto self = shared_from_this();
  close_timer_.expires_after(kTlsShutdown);
  close_timer_.async_wait([self](const asio::error_code& ec) {
    if (!ec) self->teardown(false);
  });
  stream_.async_shutdown([self](const asio::error_code&) { self->teardown(false); });
}

void Connection::teardown(bool reset) {
  if (torn_down_) return;
  torn_down_ = true;
  closed_ = true;
  write_timer_.cancel();
  read_timer_.cancel();
  close_timer_.cancel();
  asio::error_code ignored;
  auto& socket = stream_.lowest_layer();
  if (socket.is_open()) {
    if (reset) socket.set_option(asio::socket_base::linger(true, 0), ignored);  // RST instead of FIN
    else socket.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
    socket.close(ignored);
  }
  // A write in flight still uses the front buffer; on_written drops the queue when it completes.
  if (!writing_) {
    size_t left = 0;
    for (const auto& f : queue_) left += f.size();
    queue_.clear();
    queued_bytes_ -= left;
  }
}

std::string Connection::io_reason(const char* direction, const asio::error_code& ec) const {
  if (ec == asio::error::eof) return "peer closed the connection";
  if (ec == asio::ssl::error::stream_truncated) return "peer closed the connection without ending the TLS session";
  if (ec == asio::error::connection_reset) return "connection reset by peer";
  if (ec == asio::error::broken_pipe) return "peer closed the connection (broken pipe while sending)";
  return std::string(direction) + " failed: " + ec.message();
}

// ---- writing (strand) -----------------------------------------------------------------------------

void Connection::do_send(std::vector<uint8_t> frame) {
  if (closed_ || torn_down_) {
    queued_bytes_ -= frame.size();
    return;
  }
  queue_.push_back(std::move(frame));
  if (!writing_) {
    writing_ = true;
    pump_write();
  }
}

void Connection::pump_write() {
  if (queue_.empty()) {
    writing_ = false;
    if (closed_) shutdown_tls();  // close() was waiting for the queue to drain
    return;
  }
  const size_t n = pacing_chunk(up_.rate(), queue_.front().size() - write_offset_);
  const auto wait = up_.take(n);
  if (wait.count() > 0) wait_then_write(wait, n);
  else write_chunk(n);
}

void Connection::wait_then_write(std::chrono::nanoseconds wait, size_t n) {
  const auto since = Clock::now();
  write_timer_.expires_after(wait);
  write_timer_.async_wait([self = shared_from_this(), n, since](const asio::error_code&) {
    self->throttled_up_ns_ += ns_since(since);
    self->guarded([&] {
      if (self->torn_down_) {
        self->writing_ = false;
        size_t left = 0;
        for (const auto& f : self->queue_) left += f.size();
        self->queue_.clear();
        self->queued_bytes_ -= left - self->write_offset_;
        self->write_offset_ = 0;
        return;
      }
      // Woken early by set_rates, or on time: pay any debt left at the current rate first.
      const auto more = self->up_.take(0);
      if (more.count() > 0) self->wait_then_write(more, n);
      else self->write_chunk(n);
    });
  });
}

void Connection::write_chunk(size_t n) {
  asio::async_write(stream_, asio::buffer(queue_.front().data() + write_offset_, n),
                    [self = shared_from_this()](const asio::error_code& ec, size_t written) {
                      self->guarded([&] { self->on_written(ec, written); });
                    });
}

void Connection::on_written(const asio::error_code& ec, size_t n) {
  bytes_sent_ += n;
  queued_bytes_ -= n;
  write_offset_ += n;
  if (!queue_.empty() && write_offset_ == queue_.front().size()) {
    queue_.pop_front();
    write_offset_ = 0;
    ++frames_sent_;
  }
  if (ec || torn_down_) {
    size_t left = 0;
    for (const auto& f : queue_) left += f.size();
    queued_bytes_ -= left - write_offset_;
    queue_.clear();
    write_offset_ = 0;
    writing_ = false;
    if (ec) do_close(io_reason("send", ec), CloseMode::immediate);
    return;
  }
  pump_write();
}

// ---- reading (strand) -----------------------------------------------------------------------------

void Connection::paced_read(size_t n, std::function<void()> then) {
  const auto wait = down_.take(n);
  if (wait.count() <= 0) {
    then();
    return;
  }
  const auto since = Clock::now();
  read_timer_.expires_after(wait);
  read_timer_.async_wait([self = shared_from_this(), since, then = std::move(then)](const asio::error_code&) mutable {
    self->throttled_down_ns_ += ns_since(since);
    if (self->closed_) return;
    self->guarded([&] {
      // Woken early by set_rates, or on time: pay any debt left at the current rate first.
      self->paced_read(0, std::move(then));
    });
  });
}

void Connection::read_header() {
  if (closed_) return;
  paced_read(kFrameHeaderBytes, [this] {
    asio::async_read(stream_, asio::buffer(header_, kFrameHeaderBytes),
                     [self = shared_from_this()](const asio::error_code& ec, size_t) {
                       self->guarded([&] { self->on_header(ec); });
                     });
  });
}

void Connection::on_header(const asio::error_code& ec) {
  if (closed_) return;
  if (ec) {
    do_close(io_reason("receive", ec), CloseMode::immediate);
    return;
  }
  bytes_received_ += kFrameHeaderBytes;
  current_ = decode_frame_header(header_);
  // Checked before any of the body is read or allocated.
  const std::string refused = check_frame_header(current_, limits_);
  if (!refused.empty()) {
    do_close(refused, CloseMode::immediate);
    return;
  }
  body_.clear();
  body_got_ = 0;
  if (current_.body_bytes == 0) deliver_frame();
  else read_body();
}

void Connection::read_body() {
  if (closed_) return;
  const size_t n = pacing_chunk(down_.rate(), current_.body_bytes - body_got_);
  paced_read(n, [this, n] {
    // The body grows as it arrives, so a peer that announces a large frame and stalls holds little.
    body_.resize(body_got_ + n);
    asio::async_read(stream_, asio::buffer(body_.data() + body_got_, n),
                     [self = shared_from_this()](const asio::error_code& ec, size_t got) {
                       self->guarded([&] { self->on_body(ec, got); });
                     });
  });
}

void Connection::on_body(const asio::error_code& ec, size_t n) {
  if (closed_) return;
  if (ec) {
    do_close(io_reason("receive", ec), CloseMode::immediate);
    return;
  }
  body_got_ += n;
  bytes_received_ += n;
  if (body_got_ == current_.body_bytes) deliver_frame();
  else read_body();
}

void Connection::deliver_frame() {
  ++frames_received_;
  Frame f;
  f.kind = current_.kind;
  f.body = std::move(body_);
  body_ = {};
  if (handlers_.on_frame) {
    try {
      handlers_.on_frame(std::move(f));
    } catch (const std::exception& e) {
      do_close(std::string("frame handler failed: ") + e.what(), CloseMode::immediate);
      return;
    } catch (...) {
      do_close("frame handler failed with an unknown exception", CloseMode::immediate);
      return;
    }
  }
  read_header();
}

}  // namespace distro::net
