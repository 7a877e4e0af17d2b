// distro serve: the coordinator of a network run (libdistro/net/coordinator.hpp, docs/network.md).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>

#include "args.hpp"
#include "commands.hpp"
#include "core/error.hpp"
#include "net/coordinator.hpp"
#include "signal_watch.hpp"

namespace distro::cli {

static const char* kServeHelp =
    "usage: distro serve --config run.json [options]\n"
    "  --config FILE      the run: model, data, schedule, optimizer, tokens, ... (docs/network.md)\n"
    "  --listen HOST:PORT override the configuration's listen address (port 0 = any free port)\n"
    "  --port-file FILE   write the bound port and the certificate fingerprint there (two lines)\n"
    "  --quiet            only errors and the final line\n"
    "signals: SIGINT once = finish after the open round, twice = stop now; SIGTERM = stop now;\n"
    "         SIGHUP = re-read the tokens (also done when the file changes); SIGUSR1 = pause, SIGUSR2 = resume\n";

void print_event(const char* who, const net::NetEvent& e, bool quiet) {
  const bool err = e.kind == net::NetEvent::Kind::error;
  if (quiet && !err) return;
  auto now = std::chrono::system_clock::now();
  std::time_t secs = std::chrono::system_clock::to_time_t(now);
  int ms = int(std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  char ts[16];
  std::strftime(ts, sizeof ts, "%H:%M:%S", std::localtime(&secs));
  std::FILE* out = err ? stderr : stdout;
  std::fprintf(out, "%s.%03d %s %s: %s\n", ts, ms, who, net::event_kind_name(e.kind), e.message.c_str());
  std::fflush(out);
}

int cmd_serve(const std::vector<std::string>& argv) {
  Args a("distro serve", argv, {"config", "listen", "port-file"}, {"help", "quiet"});
  if (a.flag("help")) {
    std::fputs(kServeHelp, stdout);
    return 0;
  }
  if (!a.has("config")) throw UsageError("distro serve: --config FILE is required (see distro serve --help)");
  net::RunConfig cfg = net::load_run_config(a.str("config", ""));
  if (a.has("listen")) cfg.listen = a.str("listen", "");
  const bool quiet = a.flag("quiet");

  std::atomic<int> interrupts{0};
  std::atomic<net::Coordinator*> live{nullptr};
  SignalWatch signals([&](int sig) {
    net::Coordinator* x = live.load();
    if (!x) return;
    if (sig == SIGINT && interrupts++ == 0) {
      std::fprintf(stderr, "distro serve: finishing after the open round (interrupt again to stop now)\n");
      x->finish();
    } else if (sig == SIGINT || sig == SIGTERM) {
      x->stop();
    } else if (sig == SIGHUP) {
      x->reload_tokens();
    } else if (sig == SIGUSR1) {
      x->pause();
    } else if (sig == SIGUSR2) {
      x->resume();
    }
  });
  net::Coordinator c(cfg);
  c.set_event_handler([quiet](const net::NetEvent& e) { print_event("serve", e, quiet); });
  c.start();
  live = &c;
  if (a.has("port-file")) {
    const std::string path = a.str("port-file", ""), tmp = path + ".tmp";
    {
      std::ofstream f(tmp);
      f << c.port() << "\n" << c.fingerprint() << "\n";
      if (!f) throw Error(Code::io, "cannot write " + tmp);
    }
    std::rename(tmp.c_str(), path.c_str());  // readers never see half a file
  }
  std::printf("distro serve: listening on port %u, certificate %s\n", unsigned(c.port()), c.fingerprint().c_str());
  std::fflush(stdout);
  c.wait();
  live = nullptr;
  net::CoordinatorStatus s = c.status();
  std::printf("distro serve: %s at step %llu of %llu, hash %016llx, %llu rounds in this process, %llu B received, %llu B sent\n",
              s.state.c_str(), (unsigned long long)s.step, (unsigned long long)s.total_steps, (unsigned long long)s.param_hash,
              (unsigned long long)s.rounds_done, (unsigned long long)s.bytes_up, (unsigned long long)s.bytes_down);
  return s.state == "failed" ? 1 : 0;
}

}  // namespace distro::cli
