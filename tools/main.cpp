// distro: the command line of libdistro.
#include <cstdio>
#include <string>
#include <vector>

#include "args.hpp"
#include "commands.hpp"
#include "core/error.hpp"
#include "distro/distro.h"

namespace {

const char* kUsage =
    "usage: distro <command> [options]\n"
    "\n"
    "commands:\n"
    "  devices [--json]          list the devices libdistro can use\n"
    "  train [options]           train the built-in model with N local peers (DisTrO or AdamW)\n"
    "  compress [options]        run the DisTrO optimizer over a model-sized synthetic gradient with\n"
    "                            simulated peers and report what each peer would send and receive\n"
    "  bench optimizer [options] time each stage of the optimizer; --json FILE writes the figures\n"
    "  bench model [options]     time the built-in model's forward and backward on the CPU\n"
    "  bench network [options]   bytes per node per round, up and down, against a ring all-reduce\n"
    "  bench codec [options]     time the host-side wire codec and merge of one round\n"
    "  serve --config run.json   coordinate a network run: nodes join over TLS and train together\n"
    "  node [options]            contribute this machine to a network run\n"
    "  version                   print the version\n"
    "\n"
    "Run 'distro <command> --help' for the options of a command.\n";

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  std::string cmd = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  try {
    if (cmd == "version" || cmd == "--version") {
      std::printf("distro %s (wire format %d)\n", DISTRO_VERSION_STRING, DISTRO_WIRE_VERSION);
      return 0;
    }
    if (cmd == "devices") return distro::cli::cmd_devices(rest);
    if (cmd == "compress") return distro::cli::cmd_compress(rest);
    if (cmd == "bench") return distro::cli::cmd_bench(rest);
    if (cmd == "train") return distro::cli::cmd_train(rest);
    if (cmd == "serve") return distro::cli::cmd_serve(rest);
    if (cmd == "node") return distro::cli::cmd_node(rest);
    std::fprintf(stderr, "distro: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
    return 2;
  } catch (const distro::cli::UsageError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  } catch (const distro::Error& e) {
    std::fprintf(stderr, "distro %s: %s\n", cmd.c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "distro %s: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}
