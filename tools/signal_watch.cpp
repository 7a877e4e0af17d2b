#include "signal_watch.hpp"

#include <pthread.h>

namespace distro::cli {

SignalWatch::SignalWatch(std::function<void(int)> on_signal) : fn_(std::move(on_signal)) {
  sigemptyset(&set_);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2}) sigaddset(&set_, s);
  pthread_sigmask(SIG_BLOCK, &set_, nullptr);
  thread_ = std::thread([this] {
    for (;;) {
      int sig = 0;
      if (sigwait(&set_, &sig) != 0) continue;
      if (quit_) return;
      fn_(sig);
    }
  });
}

SignalWatch::~SignalWatch() {
  quit_ = true;
  pthread_kill(thread_.native_handle(), SIGHUP);
  thread_.join();
}

}  // namespace distro::cli
