// Signals for the long-running commands (serve, node): blocked in every thread and delivered to one
// helper thread that calls on_signal(sig), so a handler may take locks and call into the library
// (which a real signal handler may not). Create it before starting any other thread.
#pragma once

#include <csignal>
#include <atomic>
#include <functional>
#include <thread>

namespace distro::cli {

class SignalWatch {
 public:
  // Watches SIGINT, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2.
  explicit SignalWatch(std::function<void(int)> on_signal);
  ~SignalWatch();  // stops watching (the signals stay blocked)
  SignalWatch(const SignalWatch&) = delete;
  SignalWatch& operator=(const SignalWatch&) = delete;

 private:
  std::function<void(int)> fn_;
  sigset_t set_{};
  std::atomic<bool> quit_{false};
  std::thread thread_;
};

}  // namespace distro::cli
