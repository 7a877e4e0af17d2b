// distro compress: the main job until the trainer lands. Simulated peers run the whole DisTrO step
// (compress, encode, merge, apply) over a model-sized synthetic gradient, check that every replica
// ends bit-identical, and report the traffic against a bf16 ring all-reduce.
#include <cstdio>

#include "args.hpp"
#include "commands.hpp"
#include "peers.hpp"

namespace distro::cli {

static const char* kHelp =
    "usage: distro compress [options]\n"
    "  --model NAME      gpt2-124m (default), llama-134m, llama-1b or params:N\n"
    "  --peers N         simulated peers (default 2)\n"
    "  --steps N         steps (default 3)\n"
    "  --chunk S         target chunk edge (default 64)\n"
    "  --topk K          coefficients per chunk (default 4)\n"
    "  --decay B         momentum decay (default 0.999)\n"
    "  --values MODE     sign (default) or int8\n"
    "  --threads N       CPU threads per peer, 0 = all cores (default)\n"
    "  --seed N          seed of the synthetic parameters and gradients (default 1)\n";

ValueMode parse_values(const std::string& s) {
  if (s == "sign" || s == "1bit") return ValueMode::sign;
  if (s == "int8") return ValueMode::int8;
  throw UsageError("--values is '" + s + "'; expected sign or int8");
}

int cmd_compress(const std::vector<std::string>& argv) {
  Args a("distro compress", argv, {"model", "peers", "steps", "chunk", "topk", "decay", "values", "threads", "seed"},
         {"help"});
  if (a.flag("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  bench::PeersConfig c;
  c.model = a.str("model", c.model);
  c.peers = unsigned(a.u64("peers", 2, 1, 64));
  c.chunk = uint32_t(a.u64("chunk", 64, 1, 256));
  c.topk = uint32_t(a.u64("topk", 4, 1, 65535));
  c.decay = float(a.real("decay", 0.999, 0.0, 0.999999));
  c.values = parse_values(a.str("values", "sign"));
  c.threads = unsigned(a.u64("threads", 0, 0, 4096));
  c.seed = a.u64("seed", 1, 0, UINT64_MAX);
  uint64_t steps = a.u64("steps", 3, 1, 1000000);

  bench::Peers peers(c);
  const Manifest& m = peers.manifest();
  std::printf("distro compress: %s, %llu parameters in %zu tensors, %llu chunks; %u peers, chunk %u, top-k %u, %s values\n",
              c.model.c_str(), (unsigned long long)m.total_params, m.tensors.size(),
              (unsigned long long)m.total_chunks, c.peers, c.chunk, c.topk,
              c.values == ValueMode::sign ? "sign" : "int8");
  bench::StepFigures last;
  for (uint64_t s = 1; s <= steps; ++s) {
    last = peers.step(s);
    bool agree = true;
    for (uint64_t h : last.hashes) agree = agree && h == last.hashes[0];
    std::printf("step %llu: payload %llu B per peer (%.5f bits/param), update %llu B (%.5f bits/param), "
                "replica hash %016llx %s, %.2f s\n",
                (unsigned long long)s, (unsigned long long)last.payload_bytes,
                8.0 * double(last.payload_bytes) / double(m.total_params), (unsigned long long)last.update_bytes,
                8.0 * double(last.update_bytes) / double(m.total_params), (unsigned long long)last.hashes[0],
                agree ? "(all peers equal)" : "(REPLICAS DIFFER)", last.seconds);
    if (!agree) {
      std::fprintf(stderr, "distro compress: replicas differ after step %llu; this is a bug\n", (unsigned long long)s);
      return 1;
    }
  }
  double n = c.peers;
  double allreduce = c.peers > 1 ? 2.0 * (n - 1) / n * 2.0 * double(m.total_params) : 4.0 * double(m.total_params);
  double ours = double(last.payload_bytes + last.update_bytes);
  std::printf("\nper peer per step: sends %llu B, receives %llu B; a bf16 ring all-reduce of the same gradient "
              "moves %.0f B (sent plus received): %.0fx less traffic\n",
              (unsigned long long)last.payload_bytes, (unsigned long long)last.update_bytes, allreduce,
              allreduce / ours);
  return 0;
}

}  // namespace distro::cli
