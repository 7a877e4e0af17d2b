#include "codec_bench.hpp"

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "backend/thread_pool.hpp"
#include "core/error.hpp"
#include "network_traffic.hpp"
#include "optim/merger.hpp"
#include "synthetic.hpp"
#include "wire/codec.hpp"

namespace distro::bench {

namespace {

const char* values_name(ValueMode v) { return v == ValueMode::sign ? "sign" : "int8"; }

CodecBenchRow run_row(const CodecBenchConfig& c, const Manifest& m, unsigned nodes, ThreadPool& pool) {
  const uint64_t run_id = c.seed, round = 1;
  CodecBenchRow row;
  row.nodes = nodes;
  // The nodes' payloads of one round, drawn in parallel (each is deterministic in its node).
  std::vector<PeerPayload> payloads(nodes);
  pool.parallel_for(nodes, [&](uint64_t b, uint64_t e, unsigned) {
    for (uint64_t n = b; n < e; ++n) payloads[n] = simulated_payload(m, run_id, round, uint32_t(n), c.share, c.seed);
  });
  std::vector<std::vector<uint8_t>> wire(nodes);
  for (unsigned n = 1; n < nodes; ++n) wire[n] = encode_payload(m, payloads[n], c.threads);
  row.encode_payload = median_seconds(c.repeat, 0, [&] { wire[0] = encode_payload(m, payloads[0], c.threads); });
  row.payload_bytes = wire[0].size();
  row.coefficients = payloads[0].index.size();
  std::vector<PeerPayload>().swap(payloads);  // 1b payloads are megabytes each

  row.decode_payload = median_seconds(c.repeat, 0, [&] { (void)decode_payload(m, wire[0], c.threads); });

  // The coordinator: a fresh merger per repetition, as per round.
  std::vector<double> add_s, finish_s;
  MergedUpdate u;
  for (unsigned r = 0; r < c.repeat; ++r) {
    Merger merger(m, run_id, round);
    const double t0 = now_seconds();
    for (unsigned n = 0; n < nodes; ++n) merger.add(wire[n], c.threads);
    const double t1 = now_seconds();
    u = merger.finish(1e-3f, 0.1f, 0, c.threads);
    const double t2 = now_seconds();
    add_s.push_back(t1 - t0);
    finish_s.push_back(t2 - t1);
  }
  row.merger_add = median(add_s);
  row.finish = median(finish_s);
  row.union_size = u.index.size();

  std::vector<uint8_t> update;
  row.encode_update = median_seconds(c.repeat, 0, [&] { update = encode_update(m, u, c.threads); });
  row.update_bytes = update.size();
  MergedUpdate back;
  row.decode_update = median_seconds(c.repeat, 0, [&] { back = decode_update(m, update, c.threads); });
  // Checks that the timed code did the real work, and that threads do not change the bytes.
  if (back.index != u.index || back.value != u.value || back.offset != u.offset)
    fail(Code::internal, "bench codec: the decoded update differs from the merged one");
  if (c.threads != 1) {
    const MergedUpdate one = decode_update(m, update, 1);
    if (encode_update(m, u, 1) != update || encode_payload(m, decode_payload(m, wire[0], 1), 1) != wire[0])
      fail(Code::internal, "bench codec: the encoding with one thread differs");
    if (one.index != back.index || one.value != back.value || one.offset != back.offset)
      fail(Code::internal, "bench codec: the update decoded on one thread differs");
  }
  return row;
}

}  // namespace

CodecBenchResult run_codec_bench(const CodecBenchConfig& c) {
  if (c.nodes.empty()) fail(Code::invalid_argument, "no node counts given");
  if (c.repeat < 1) fail(Code::invalid_argument, "repeat is 0; expected at least 1");
  if (!(c.share >= 0.0 && c.share < 1.0)) fail(Code::invalid_argument, "share must be in [0, 1)");
  for (unsigned n : c.nodes)
    if (n < 1 || n > 1024) fail(Code::invalid_argument, "node count " + std::to_string(n) + " is outside 1..1024");
  const Manifest m = preset_manifest(c.preset, c.chunk, c.topk, c.values);
  ThreadPool pool(0);  // drawing the payloads only; the timed stages use c.threads
  CodecBenchResult r;
  r.preset = c.preset;
  r.params = m.total_params;
  r.chunks = m.total_chunks;
  r.pieces = wire::piece_count(m);
  r.tensors = m.tensors.size();
  r.threads = c.threads;
  r.hardware_threads = std::thread::hardware_concurrency();
  for (unsigned n : c.nodes) r.rows.push_back(run_row(c, m, n, pool));
  return r;
}

void print_codec_bench(const CodecBenchConfig& c, const CodecBenchResult& r) {
  std::printf("distro bench codec: preset %s (%llu params, %zu tensors, %llu chunks, %llu pieces), chunk %u, top-k %u,\n"
              "%s values, %s payloads, threads %u (0 = library default; %u hardware threads); medians of %u, ms\n",
              r.preset.c_str(), (unsigned long long)r.params, r.tensors, (unsigned long long)r.chunks,
              (unsigned long long)r.pieces, c.chunk, c.topk,
              values_name(c.values), c.share > 0.0 ? "correlated" : "independent", r.threads, r.hardware_threads,
              c.repeat);
  std::printf("%5s %10s %10s %9s %9s %9s %9s %9s %9s %9s | %11s %8s\n", "nodes", "payload B", "update B", "enc pay",
              "dec pay", "add x N", "finish", "enc upd", "dec upd", "union", "coordinator", "node");
  for (const CodecBenchRow& w : r.rows)
    std::printf("%5u %10llu %10llu %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %9llu | %11.2f %8.2f\n", w.nodes,
                (unsigned long long)w.payload_bytes, (unsigned long long)w.update_bytes, w.encode_payload * 1e3,
                w.decode_payload * 1e3, w.merger_add * 1e3, w.finish * 1e3, w.encode_update * 1e3,
                w.decode_update * 1e3, (unsigned long long)w.union_size, w.coordinator() * 1e3, w.node() * 1e3);
  std::printf("coordinator = add x N (N payload decodes) + finish + encode update; node = encode payload + decode update\n");
}

void write_codec_bench_json(const CodecBenchConfig& c, const CodecBenchResult& r, const std::string& path) {
  nlohmann::json j = {{"preset", r.preset}, {"params", r.params}, {"tensors", r.tensors}, {"chunks", r.chunks}, {"pieces", r.pieces},
                      {"chunk", c.chunk}, {"topk", c.topk}, {"values", values_name(c.values)}, {"share", c.share},
                      {"threads", r.threads}, {"hardware_threads", r.hardware_threads}, {"repeat", c.repeat},
                      {"seed", c.seed}};
  for (const CodecBenchRow& w : r.rows)
    j["rows"].push_back({{"nodes", w.nodes}, {"payload_bytes", w.payload_bytes}, {"update_bytes", w.update_bytes},
                         {"coefficients_per_payload", w.coefficients}, {"union_coefficients", w.union_size},
                         {"encode_payload_ms", w.encode_payload * 1e3}, {"decode_payload_ms", w.decode_payload * 1e3},
                         {"merger_add_all_ms", w.merger_add * 1e3}, {"merger_finish_ms", w.finish * 1e3},
                         {"encode_update_ms", w.encode_update * 1e3}, {"decode_update_ms", w.decode_update * 1e3},
                         {"coordinator_ms", w.coordinator() * 1e3}, {"node_ms", w.node() * 1e3}});
  std::ofstream f(path);
  if (!f) fail(Code::io, "cannot write " + path);
  f << j.dump(2) << "\n";
  if (!f) fail(Code::io, "cannot write " + path);
}

}  // namespace distro::bench
