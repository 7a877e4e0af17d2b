// distro bench: parses options and runs the benchmarks in bench/.
#include <cstdio>
#include <cstdlib>

#include "args.hpp"
#include "codec_bench.hpp"
#include "commands.hpp"
#include "model_bench.hpp"
#include "network_traffic.hpp"
#include "optimizer_bench.hpp"

namespace distro::cli {

ValueMode parse_values(const std::string& s);

static const char* kHelp =
    "usage: distro bench optimizer [options]\n"
    "  --model NAME      gpt2-124m (default), llama-134m, llama-1b or params:N\n"
    "  --peers N         peers whose payloads are merged (default 2)\n"
    "  --chunk S         target chunk edge (default 64)\n"
    "  --topk K          coefficients per chunk (default 4)\n"
    "  --values MODE     sign (default) or int8\n"
    "  --threads N       CPU threads, 0 = all cores (default)\n"
    "  --repeat N        timed repetitions per stage; the median is printed (default 3)\n"
    "  --json FILE       also write the figures as JSON\n";

static const char* kNetworkHelp =
    "usage: distro bench network [options]\n"
    "Bytes per node per round, up (payload) and down (merged update), against a bf16 ring all-reduce.\n"
    "  --preset LIST     model presets, comma-separated (default nano,1b)\n"
    "  --nodes LIST      node counts, comma-separated, 2..1024 (default 4,16,64; real payloads: up to 64)\n"
    "  --rounds R        rounds averaged (default 3)\n"
    "  --skip N          real payloads: rounds trained before the measured ones (default 0)\n"
    "  --payloads MODE   auto (default: real for nano and micro, simulated otherwise), real or simulated\n"
    "  --data FILE       text the real payloads train on (default data/kjv.txt)\n"
    "  --batch N --seq T each node's batch per round (default 8 x 128)\n"
    "  --share P         correlated simulation: chance a choice is the round's shared one (default 0.9)\n"
    "  --chunk S --topk K --values MODE   DisTrO settings (default 64, 4, sign)\n"
    "  --threads N       CPU threads, 0 = all cores (default)\n"
    "  --json FILE       also write the table as JSON\n";

static const char* kCodecHelp =
    "usage: distro bench codec [options]\n"
    "Times the host-side wire codec and merge of one round on simulated payloads at a preset's shapes:\n"
    "encode payload, decode payload, Merger::add of N payloads, Merger::finish, encode and decode update.\n"
    "  --preset NAME     model preset (default 1b)\n"
    "  --nodes LIST      payloads merged, comma-separated, 1..1024 (default 1,4,16)\n"
    "  --threads N       codec and merge threads, 0 = the library default (default 0)\n"
    "  --repeat N        timed repetitions per stage; the median is printed (default 5)\n"
    "  --share P         0 = independent payloads (default), else correlated with probability P\n"
    "  --chunk S --topk K --values MODE   DisTrO settings (default 64, 4, sign)\n"
    "  --json FILE       also write the figures as JSON\n";

// Splits "a,b,c"; an empty entry is a usage error.
static std::vector<std::string> split_list(const std::string& option, const std::string& s) {
  std::vector<std::string> out;
  for (size_t at = 0;;) {
    size_t comma = s.find(',', at);
    std::string item = s.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    if (item.empty()) throw UsageError("--" + option + " '" + s + "' has an empty entry; expected a comma-separated list");
    out.push_back(item);
    if (comma == std::string::npos) return out;
    at = comma + 1;
  }
}

static int bench_network(const std::vector<std::string>& argv) {
  Args a("distro bench network", argv,
         {"preset", "nodes", "rounds", "skip", "payloads", "data", "batch", "seq", "share", "chunk", "topk", "values",
          "threads", "json"},
         {"help"});
  if (a.flag("help")) {
    std::fputs(kNetworkHelp, stdout);
    return 0;
  }
  bench::NetworkTrafficConfig c;
  c.presets = split_list("preset", a.str("preset", "nano,1b"));
  c.nodes.clear();
  for (const std::string& n : split_list("nodes", a.str("nodes", "4,16,64"))) {
    char* end = nullptr;
    unsigned long v = std::strtoul(n.c_str(), &end, 10);
    if (n[0] < '0' || n[0] > '9' || *end != '\0' || v < 2 || v > 1024)
      throw UsageError("--nodes entry '" + n + "' is not a node count; expected an integer 2..1024");
    c.nodes.push_back(unsigned(v));
  }
  c.rounds = unsigned(a.u64("rounds", 3, 1, 1000));
  c.skip = unsigned(a.u64("skip", 0, 0, 100000));
  c.payloads = a.str("payloads", "auto");
  if (c.payloads != "auto" && c.payloads != "real" && c.payloads != "simulated")
    throw UsageError("--payloads '" + c.payloads + "' is unknown; expected auto, real or simulated");
  c.data = a.str("data", c.data);
  c.batch = int(a.u64("batch", 8, 1, 4096));
  c.seq = int(a.u64("seq", 128, 1, 1 << 16));
  c.share = a.real("share", 0.9, 0.0, 1.0);
  if (c.share <= 0.0 || c.share >= 1.0) throw UsageError("--share must be strictly between 0 and 1");
  c.chunk = uint32_t(a.u64("chunk", 64, 1, 256));
  c.topk = uint32_t(a.u64("topk", 4, 1, 65535));
  c.values = parse_values(a.str("values", "sign"));
  c.threads = unsigned(a.u64("threads", 0, 0, 4096));
  c.json_path = a.str("json", "");
  auto rows = bench::run_network_traffic(c);
  bench::print_network_traffic(c, rows);
  if (!c.json_path.empty()) bench::write_network_traffic_json(c, rows, c.json_path);
  return 0;
}

static int bench_codec(const std::vector<std::string>& argv) {
  Args a("distro bench codec", argv, {"preset", "nodes", "threads", "repeat", "share", "chunk", "topk", "values", "json"},
         {"help"});
  if (a.flag("help")) {
    std::fputs(kCodecHelp, stdout);
    return 0;
  }
  bench::CodecBenchConfig c;
  c.preset = a.str("preset", c.preset);
  c.nodes.clear();
  for (const std::string& n : split_list("nodes", a.str("nodes", "1,4,16"))) {
    char* end = nullptr;
    unsigned long v = std::strtoul(n.c_str(), &end, 10);
    if (n[0] < '0' || n[0] > '9' || *end != '\0' || v < 1 || v > 1024)
      throw UsageError("--nodes entry '" + n + "' is not a node count; expected an integer 1..1024");
    c.nodes.push_back(unsigned(v));
  }
  c.threads = unsigned(a.u64("threads", 0, 0, 4096));
  c.repeat = unsigned(a.u64("repeat", 5, 1, 1000));
  c.share = a.real("share", 0.0, 0.0, 1.0);
  if (c.share >= 1.0) throw UsageError("--share must be below 1 (0 = independent payloads)");
  c.chunk = uint32_t(a.u64("chunk", 64, 1, 256));
  c.topk = uint32_t(a.u64("topk", 4, 1, 65535));
  c.values = parse_values(a.str("values", "sign"));
  c.json_path = a.str("json", "");
  auto r = bench::run_codec_bench(c);
  bench::print_codec_bench(c, r);
  if (!c.json_path.empty()) bench::write_codec_bench_json(c, r, c.json_path);
  return 0;
}

int cmd_bench(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] == "--help") {
    std::puts("usage: distro bench optimizer|model|network|codec [options]   (--help after the name for its options)");
    return argv.empty() ? 2 : 0;
  }
  if (argv[0] == "model") {
    Args a("distro bench model", {argv.begin() + 1, argv.end()}, {"preset", "batch", "seq", "threads", "repeat", "json"},
           {"help"});
    if (a.flag("help")) {
      std::puts("usage: distro bench model [--preset nano] [--batch 8] [--seq 128] [--threads 0] [--repeat 5] [--json FILE]\n"
                "Times the built-in model's forward and forward+backward on the CPU, on random tokens.");
      return 0;
    }
    bench::ModelBenchConfig c;
    c.preset = a.str("preset", c.preset);
    c.batch = int(a.u64("batch", 8, 1, 4096));
    c.seq = int(a.u64("seq", 128, 1, 1 << 16));
    c.threads = unsigned(a.u64("threads", 0, 0, 4096));
    c.repeat = unsigned(a.u64("repeat", 5, 1, 1000));
    c.json_path = a.str("json", "");
    bench::run_model_bench(c);
    return 0;
  }
  if (argv[0] == "network") return bench_network({argv.begin() + 1, argv.end()});
  if (argv[0] == "codec") return bench_codec({argv.begin() + 1, argv.end()});
  if (argv[0] != "optimizer")
    throw UsageError("distro bench: unknown benchmark '" + argv[0] + "'; expected optimizer, model, network or codec");
  Args a("distro bench optimizer", {argv.begin() + 1, argv.end()},
         {"model", "peers", "chunk", "topk", "values", "threads", "repeat", "json"}, {"help"});
  if (a.flag("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  bench::OptimizerBenchConfig c;
  c.peers.model = a.str("model", "gpt2-124m");
  c.peers.peers = unsigned(a.u64("peers", 2, 1, 64));
  c.peers.chunk = uint32_t(a.u64("chunk", 64, 1, 256));
  c.peers.topk = uint32_t(a.u64("topk", 4, 1, 65535));
  c.peers.values = parse_values(a.str("values", "sign"));
  c.peers.threads = unsigned(a.u64("threads", 0, 0, 4096));
  c.repeat = unsigned(a.u64("repeat", 3, 1, 1000));
  c.json_path = a.str("json", "");
  auto r = bench::run_optimizer_bench(c);
  bench::print_optimizer_bench(r);
  if (!c.json_path.empty()) bench::write_optimizer_bench_json(r, c.json_path);
  return 0;
}

}  // namespace distro::cli
