#include "network_traffic.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <utility>

#include "backend/thread_pool.hpp"
#include "core/error.hpp"
#include "model/llama.hpp"
#include "model/shapes.hpp"
#include "net/frame.hpp"
#include "net/protocol.hpp"
#include "optim/hash_mix.hpp"
#include "optim/merger.hpp"
#include "train/trainer.hpp"
#include "wire/codec.hpp"

namespace distro::bench {

namespace {

// splitmix64 from a seed: one stream per (round, node, chunk), so a payload does not depend on the
// thread that draws it.
struct Rng {
  uint64_t s;
  uint64_t next() { return mix64(s += kGolden); }
  double unit() { return double(next() >> 11) * 0x1.0p-53; }
  uint32_t below(uint32_t n) { return uint32_t(((next() >> 32) * uint64_t(n)) >> 32); }
};

using Pick = std::pair<uint16_t, int8_t>;  // in-chunk index, value

bool has_index(const std::vector<Pick>& v, uint16_t i) {
  return std::any_of(v.begin(), v.end(), [&](const Pick& p) { return p.first == i; });
}

int8_t draw_value(Rng& r, ValueMode mode) {
  int8_t mag = mode == ValueMode::sign ? 1 : int8_t(1 + r.below(127));
  return (r.next() & 1) ? mag : int8_t(-mag);
}

// k distinct coefficients of an E-coefficient chunk.
void draw_set(Rng& r, uint32_t k, uint32_t elems, ValueMode mode, std::vector<Pick>& out) {
  out.clear();
  while (out.size() < k) {
    uint16_t i = uint16_t(r.below(elems));
    if (!has_index(out, i)) out.push_back({i, draw_value(r, mode)});
  }
}

}  // namespace

// Declared in the header: `distro bench codec` draws the same payloads.
PeerPayload simulated_payload(const Manifest& m, uint64_t run_id, uint64_t round, uint32_t node, double share,
                              uint64_t seed) {
  PeerPayload p;
  p.run_id = run_id;
  p.step = round;
  p.peer_id = node;
  p.manifest_hash = m.hash;
  p.values = m.values;
  p.count.resize(m.total_chunks);
  p.index.reserve(m.total_slots);
  p.value.reserve(m.total_slots);
  std::vector<Pick> shared, pick;
  for (const TensorPlan& t : m.tensors) {
    const uint32_t elems = t.elems();
    for (uint64_t ch = 0; ch < t.chunks; ++ch) {
      const uint64_t g = t.chunk_base + ch;
      Rng own{mix64(seed ^ mix64((round << 32) + node + 1) ^ (g * kGolden))};
      pick.clear();
      if (share > 0.0) {
        Rng common{mix64(seed ^ mix64(round + 0x5EED) ^ (g * kGolden))};
        draw_set(common, t.k, elems, m.values, shared);
        for (uint32_t j = 0; j < t.k; ++j) {
          if (own.unit() < share && !has_index(pick, shared[j].first)) {
            pick.push_back(shared[j]);
            continue;
          }
          uint16_t i;
          do i = uint16_t(own.below(elems));
          while (has_index(pick, i));
          pick.push_back({i, draw_value(own, m.values)});
        }
      } else {
        draw_set(own, t.k, elems, m.values, pick);
      }
      std::sort(pick.begin(), pick.end());
      p.count[g] = uint16_t(pick.size());
      for (const Pick& q : pick) {
        p.index.push_back(q.first);
        p.value.push_back(q.second);
      }
    }
  }
  return p;
}

Manifest preset_manifest(const std::string& preset, uint32_t chunk, uint32_t topk, ValueMode values) {
  LlamaConfig lc = llama_preset(preset);
  return make_manifest(llama_tensors({lc.layers, lc.d_model, lc.ffn, lc.heads, lc.vocab}), chunk, topk, values);
}

namespace {

TrafficRow simulated_row(const NetworkTrafficConfig& c, const std::string& preset, const Manifest& m, unsigned nodes,
                         double share, ThreadPool& pool) {
  TrafficRow row;
  row.preset = preset;
  row.source = share > 0.0 ? "correlated" : "independent";
  row.nodes = nodes;
  row.rounds = c.rounds;
  row.params = m.total_params;
  const uint64_t run_id = c.seed;
  for (uint64_t round = 1; round <= c.rounds; ++round) {
    std::vector<std::vector<uint8_t>> wire(nodes);
    std::vector<uint64_t> coeffs(nodes);
    pool.parallel_for(nodes, [&](uint64_t b, uint64_t e, unsigned) {
      for (uint64_t n = b; n < e; ++n) {
        PeerPayload p = simulated_payload(m, run_id, round, uint32_t(n), share, c.seed);
        coeffs[n] = p.index.size();
        wire[n] = encode_payload(m, p);
      }
    });
    Merger merger(m, run_id, round);
    for (unsigned n = 0; n < nodes; ++n) {
      row.payload += double(wire[n].size()) / nodes;
      row.coefficients += double(coeffs[n]) / nodes;
      merger.add(wire[n]);
      std::vector<uint8_t>().swap(wire[n]);  // 1b payloads are megabytes each
    }
    MergedUpdate u = merger.finish(1e-3f, 0.0f, 0);
    row.union_size += double(u.index.size());
    row.update += double(encode_update(m, u).size());
  }
  row.payload /= c.rounds;
  row.update /= c.rounds;
  row.coefficients /= c.rounds;
  row.union_size /= c.rounds;
  return row;
}

// N peers of the in-process trainer: real gradients of the preset on text, real payloads, the real
// merged update.
TrafficRow real_row(const NetworkTrafficConfig& c, const std::string& preset, unsigned nodes) {
  TrainConfig t;
  t.preset = preset;
  t.data = c.data;
  t.devices.assign(nodes, "cpu");
  t.steps = std::max<uint64_t>(c.steps, uint64_t(c.skip) + c.rounds);
  t.batch = c.batch;
  t.seq = c.seq;
  t.chunk = c.chunk;
  t.topk = c.topk;
  t.values = c.values;
  t.seed = c.seed;
  t.threads = c.threads;
  Trainer trainer(t);
  TrafficRow row;
  row.preset = preset;
  row.source = "real";
  row.nodes = nodes;
  row.rounds = c.rounds;
  row.params = trainer.params();
  for (unsigned r = 0; r < c.skip; ++r) (void)trainer.step();
  for (unsigned r = 0; r < c.rounds; ++r) {
    StepStats s = trainer.step();
    row.payload += double(s.bytes_up_per_peer);
    row.update += double(s.bytes_down_per_peer);
  }
  row.payload /= c.rounds;
  row.update /= c.rounds;
  return row;
}

// Adds the frame and the protocol messages (sizes from net/protocol.hpp's own encoders) of one round.
void add_protocol(TrafficRow& r, const NetworkTrafficConfig& c) {
  const double frame = double(net::kFrameHeaderBytes);
  r.up = r.payload + frame;
  r.down = r.update + frame;
  net::UpdateMsg update;
  for (unsigned n = 0; n < r.nodes; ++n) update.contributors.push_back(n + 1);
  net::RoundStart start;
  start.batch = uint32_t(c.batch);
  start.seq = uint32_t(c.seq);
  start.tokens.assign(size_t(c.batch) * size_t(c.seq), 0);
  start.targets = start.tokens;
  const double payload_msg = double(net::encode(net::PayloadMsg{}).size());  // header fields, empty wire
  const double update_msg = double(net::encode(update).size());
  const double hash_report = double(net::encode(net::HashReport{}).size());
  const double round_start = double(net::encode(start).size());
  r.protocol_up = r.payload + payload_msg + frame + hash_report + frame;
  r.protocol_down = r.update + update_msg + frame + round_start + frame;
  r.allreduce = ring_allreduce_bytes(r.params, r.nodes);
}

const char* values_name(ValueMode v) { return v == ValueMode::sign ? "sign" : "int8"; }

}  // namespace

double ring_allreduce_bytes(uint64_t params, unsigned nodes) {
  return nodes < 2 ? 0.0 : 2.0 * double(nodes - 1) / double(nodes) * 2.0 * double(params);
}

std::vector<TrafficRow> run_network_traffic(const NetworkTrafficConfig& c) {
  if (c.presets.empty() || c.nodes.empty()) fail(Code::invalid_argument, "no presets or node counts given");
  if (c.rounds < 1) fail(Code::invalid_argument, "rounds is 0; expected at least 1");
  if (!(c.share > 0.0 && c.share < 1.0)) fail(Code::invalid_argument, "share must be in (0, 1)");
  if (c.payloads != "auto" && c.payloads != "real" && c.payloads != "simulated")
    fail(Code::invalid_argument, "payloads '" + c.payloads + "' is unknown; expected auto, real or simulated");
  for (unsigned n : c.nodes)
    if (n < 2 || n > 1024) fail(Code::invalid_argument, "node count " + std::to_string(n) + " is outside 2..1024");
  ThreadPool pool(c.threads);
  std::vector<TrafficRow> rows;
  for (const std::string& preset : c.presets) {
    const bool real = c.payloads == "real" || (c.payloads == "auto" && (preset == "nano" || preset == "micro"));
    if (real) {
      // Real payloads need N whole replicas in this process: small presets only.
      if (preset != "nano" && preset != "micro")
        fail(Code::invalid_argument, "real payloads train N replicas in this process: preset '" + preset +
                                         "' is too large; use nano or micro, or --payloads simulated");
      std::error_code ec;
      if (!std::filesystem::is_regular_file(c.data, ec))
        fail(Code::not_found, "no text file '" + c.data + "' for real payloads; run from the repository root "
                              "(data/kjv.txt) or pass --data FILE");
      for (unsigned n : c.nodes) {
        if (n > 64) fail(Code::invalid_argument, "real payloads come from the in-process trainer: at most 64 nodes");
        rows.push_back(real_row(c, preset, n));
        add_protocol(rows.back(), c);
      }
    } else {
      Manifest m = preset_manifest(preset, c.chunk, c.topk, c.values);
      for (double share : {0.0, c.share})
        for (unsigned n : c.nodes) {
          rows.push_back(simulated_row(c, preset, m, n, share, pool));
          add_protocol(rows.back(), c);
        }
    }
  }
  return rows;
}

void print_network_traffic(const NetworkTrafficConfig& c, const std::vector<TrafficRow>& rows) {
  std::printf("distro bench network: chunk %u, top-k %u, %s values, %u rounds (real: after %u); bytes per node per round;\n"
              "correlated = each choice is the round's shared one with probability %.2f; all-reduce = bf16 ring,\n"
              "bytes each node sends (and receives); protocol = every message of a round, served batch %d x %d\n",
              c.chunk, c.topk, values_name(c.values), c.rounds, c.skip, c.share, c.batch, c.seq);
  std::printf("%-6s %11s %-12s %5s %12s %12s %13s %8s %8s %12s %12s\n", "preset", "params", "payloads", "nodes",
              "up", "down", "all-reduce", "up x", "down x", "protocol up", "protocol dn");
  for (const TrafficRow& r : rows)
    std::printf("%-6s %11llu %-12s %5u %12.0f %12.0f %13.0f %8.0f %8.0f %12.0f %12.0f\n", r.preset.c_str(),
                (unsigned long long)r.params, r.source.c_str(), r.nodes, r.up, r.down, r.allreduce,
                r.allreduce / r.up, r.allreduce / r.down, r.protocol_up, r.protocol_down);
  bool sim = std::any_of(rows.begin(), rows.end(), [](const TrafficRow& r) { return r.source != "real"; });
  if (!sim) return;
  std::printf("\n%-6s %-12s %5s %14s %14s %10s\n", "preset", "payloads", "nodes", "sent per node", "union", "union/sent");
  for (const TrafficRow& r : rows)
    if (r.source != "real")
      std::printf("%-6s %-12s %5u %14.0f %14.0f %10.2f\n", r.preset.c_str(), r.source.c_str(), r.nodes,
                  r.coefficients, r.union_size, r.union_size / r.coefficients);
}

void write_network_traffic_json(const NetworkTrafficConfig& c, const std::vector<TrafficRow>& rows,
                                const std::string& path) {
  nlohmann::json j = {{"chunk", c.chunk}, {"topk", c.topk}, {"values", values_name(c.values)},
                      {"rounds", c.rounds}, {"skip", c.skip}, {"share", c.share}, {"batch", c.batch}, {"seq", c.seq},
                      {"seed", c.seed}, {"frame_header_bytes", net::kFrameHeaderBytes}};
  for (const TrafficRow& r : rows)
    j["rows"].push_back({{"preset", r.preset}, {"payloads", r.source}, {"nodes", r.nodes}, {"params", r.params},
                         {"payload_bytes", r.payload}, {"update_bytes", r.update}, {"up_bytes", r.up},
                         {"down_bytes", r.down}, {"protocol_up_bytes", r.protocol_up},
                         {"protocol_down_bytes", r.protocol_down}, {"allreduce_bytes_each_way", r.allreduce},
                         // Counted for simulated payloads only; null for real ones.
                         {"coefficients_per_node", r.source == "real" ? nlohmann::json() : nlohmann::json(r.coefficients)},
                         {"union_coefficients", r.source == "real" ? nlohmann::json() : nlohmann::json(r.union_size)}});
  std::ofstream f(path);
  if (!f) fail(Code::io, "cannot write " + path);
  f << j.dump(2) << "\n";
  if (!f) fail(Code::io, "cannot write " + path);
}

}  // namespace distro::bench
