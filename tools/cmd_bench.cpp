// distro bench: parses options and runs the benchmarks in bench/.
#include <cstdio>

#include "args.hpp"
#include "commands.hpp"
#include "model_bench.hpp"
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

int cmd_bench(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] == "--help") {
    std::puts("usage: distro bench optimizer|model [options]   (--help after the name for its options)");
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
  if (argv[0] != "optimizer")
    throw UsageError("distro bench: unknown benchmark '" + argv[0] + "'; expected optimizer or model");
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
