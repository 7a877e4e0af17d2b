// `distro bench network`: bytes per node per round, up and down, for a run of N nodes, against a bf16
// ring all-reduce of the gradient. Up is the node's encoded payload, down the encoded merged update
// of all N payloads (wire/codec), each in one frame (net/frame.hpp). The full protocol traffic of a
// round (net/protocol.hpp: the round start with the served batch, the payload and update messages,
// the hash report) is reported beside it.
//
// Payloads are real or simulated. Real: N peers of the in-process Trainer train the preset on text
// (their gradients differ by batch only, as in a run), so the union of their choices is what
// training gives. Simulated (large presets): per chunk, k distinct coefficients with random signs,
// drawn independently per node (the union's worst case), or "correlated": each of a node's k choices
// is, with probability `share`, the chunk's shared choice of that round (with its shared sign).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "optim/manifest.hpp"
#include "wire/messages.hpp"

namespace distro::bench {

struct NetworkTrafficConfig {
  std::vector<std::string> presets = {"nano", "1b"};
  std::vector<unsigned> nodes = {4, 16, 64};
  unsigned rounds = 3;
  unsigned skip = 0;              // real payloads: rounds trained before the measured ones
  std::string payloads = "auto";  // auto (real for nano and micro), real, simulated
  std::string data = "data/kjv.txt";  // text for real payloads
  int batch = 8, seq = 128;       // each node's batch per round (real training; the served batch)
  uint64_t steps = 200;           // schedule length of the real run (its warmup shapes the first rounds)
  uint32_t chunk = 64, topk = 4;
  ValueMode values = ValueMode::sign;
  double share = 0.9;             // correlated simulation: probability a choice is the shared one
  unsigned threads = 0;
  uint64_t seed = 1;
  std::string json_path;
};

struct TrafficRow {
  std::string preset, source;  // source: "real", "independent", "correlated"
  unsigned nodes = 0, rounds = 0;
  uint64_t params = 0;
  double coefficients = 0;       // sent per node per round (simulated; 0 when not known)
  double union_size = 0;         // coefficients in the merged update (simulated; 0 when not known)
  double payload = 0, update = 0;  // wire bytes, mean per round
  double up = 0, down = 0;         // payload and update, each in one frame
  double protocol_up = 0, protocol_down = 0;  // every message of a round, framed
  double allreduce = 0;            // bf16 ring all-reduce: bytes each node sends (and receives)
};

std::vector<TrafficRow> run_network_traffic(const NetworkTrafficConfig& c);
void print_network_traffic(const NetworkTrafficConfig& c, const std::vector<TrafficRow>& rows);
void write_network_traffic_json(const NetworkTrafficConfig& c, const std::vector<TrafficRow>& rows,
                                const std::string& path);

// The `preset`'s manifest (model/llama.hpp presets) with the given DisTrO settings.
Manifest preset_manifest(const std::string& preset, uint32_t chunk, uint32_t topk, ValueMode values);

// One simulated node's payload of `round` (see above): share == 0 draws every chunk's k coefficients
// independently, share in (0, 1) correlates them with the round's shared choice. Deterministic in
// (seed, round, node), whatever thread draws it. `distro bench codec` times the codec on these too.
PeerPayload simulated_payload(const Manifest& m, uint64_t run_id, uint64_t round, uint32_t node, double share,
                              uint64_t seed);

// Bytes one node sends, and equally receives, in a ring all-reduce of `params` bf16 values over
// `nodes` nodes: 2 (N - 1) / N * 2 * params (reduce-scatter, then all-gather).
double ring_allreduce_bytes(uint64_t params, unsigned nodes);

}  // namespace distro::bench
