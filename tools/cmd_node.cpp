// distro node: a contributor of a network run (libdistro/net/node.hpp, docs/network.md).
#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "args.hpp"
#include "backend/registry.hpp"
#include "commands.hpp"
#include "core/error.hpp"
#include "net/node.hpp"
#include "signal_watch.hpp"

namespace distro::cli {

void print_event(const char* who, const net::NetEvent& e, bool quiet);

static const char* kNodeHelp =
    "usage: distro node --coordinator HOST:PORT --token TOKEN [options]\n"
    "  --coordinator HOST:PORT  the coordinator (IPv6 as [::1]:7600)\n"
    "  --token TOKEN            this node's run token (or the environment variable DISTRO_TOKEN)\n"
    "  --device DEV             auto (default: the best present, a GPU, else the CPU), cpu, cuda:0, ...\n"
    "  --pin sha256:HEX         require the coordinator's certificate to have this fingerprint\n"
    "  --up-limit BYTES/S       cap what this node sends (0 = unlimited, default)\n"
    "  --down-limit BYTES/S     cap what this node receives (0 = unlimited, default)\n"
    "  --history FILE.sqlite    record this node's contributions in a local ledger\n"
    "  --threads N              CPU threads, 0 = all cores (default)\n"
    "  --retry-min S --retry-max S   reconnect backoff: first delay and cap (0.5 and 30 s)\n"
    "  --quiet                  only errors and the final line\n"
    "signals: SIGINT once = finish the round, then leave; twice = leave now; SIGTERM = leave now;\n"
    "         SIGUSR1 = pause (take no batches), SIGUSR2 = resume\n";

int cmd_node(const std::vector<std::string>& argv) {
  Args a("distro node", argv,
         {"coordinator", "token", "device", "pin", "up-limit", "down-limit", "history", "threads", "retry-min", "retry-max",
          "misbehave"},
         {"help", "quiet"});
  if (a.flag("help")) {
    std::fputs(kNodeHelp, stdout);
    return 0;
  }
  net::NodeOptions o;
  o.coordinator = a.str("coordinator", "");
  if (o.coordinator.empty()) throw UsageError("distro node: --coordinator HOST:PORT is required (see distro node --help)");
  const char* env = std::getenv("DISTRO_TOKEN");
  o.token = a.str("token", env ? env : "");
  if (o.token.empty()) throw UsageError("distro node: --token TOKEN (or DISTRO_TOKEN) is required");
  o.device = a.str("device", "auto");
  if (o.device == "auto") o.device = best_device_name();
  o.pin = a.str("pin", "");
  o.up_limit = a.real("up-limit", 0, 0, 1e12);
  o.down_limit = a.real("down-limit", 0, 0, 1e12);
  o.history = a.str("history", "");
  o.threads = unsigned(a.u64("threads", 0, 0, 4096));
  o.retry_min_s = a.real("retry-min", 0.5, 0.01, 3600);
  o.retry_max_s = a.real("retry-max", 30, 0.01, 86400);
  if (o.retry_max_s < o.retry_min_s) throw UsageError("distro node: --retry-max must be at least --retry-min");
  o.misbehave = a.str("misbehave", "");  // test switch, not in the help
  const bool quiet = a.flag("quiet");

  std::atomic<int> interrupts{0};
  std::atomic<net::Node*> live{nullptr};
  SignalWatch signals([&](int sig) {
    net::Node* x = live.load();
    if (!x) return;
    if (sig == SIGINT && interrupts++ == 0) {
      std::fprintf(stderr, "distro node: leaving after the current round (interrupt again to leave now)\n");
      x->finish();
    } else if (sig == SIGINT || sig == SIGTERM) {
      x->stop();
    } else if (sig == SIGUSR1) {
      x->pause();
    } else if (sig == SIGUSR2) {
      x->resume();
    }
  });
  net::Node n(o);
  n.set_event_handler([quiet](const net::NetEvent& e) { print_event("node", e, quiet); });
  n.start();
  live = &n;
  n.wait();
  live = nullptr;
  net::NodeStatus s = n.status();
  std::printf("distro node: %s at step %llu, hash %016llx, trained %llu batches (%llu merged), %llu B sent, %llu B received%s%s\n",
              s.state.c_str(), (unsigned long long)s.step, (unsigned long long)s.param_hash,
              (unsigned long long)s.rounds_trained, (unsigned long long)s.rounds_accepted, (unsigned long long)s.bytes_up,
              (unsigned long long)s.bytes_down, s.error.empty() ? "" : ": ", s.error.c_str());
  return s.state == "failed" ? 1 : 0;
}

}  // namespace distro::cli
