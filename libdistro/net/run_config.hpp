// The settings of one network run: `distro serve --config run.json` (docs/network.md, "config").
// JSON, one object; every key is optional except "data" and "tokens". An unknown key or a value of
// the wrong type or out of range is an Error(invalid_argument) naming the file, the key and what is
// expected. Relative paths ("data", "state_dir") are relative to the config file's folder.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "train/trainer.hpp"

namespace distro::net {

struct RunConfig {
  // Model, data, schedule and optimizer, as `distro train` takes them. train.devices holds
  // nodes_per_round entries (the sampler's peer count); train.optimizer is "distro"; train.overlap
  // ("overlap" in the file) makes the rounds overlapped (docs/network.md, "Overlapped rounds").
  TrainConfig train;
  uint32_t nodes_per_round = 4;   // batches (slots) per round
  uint32_t min_nodes = 1;         // in-sync nodes needed before a round starts
  double fill_wait_s = 5.0;       // how long a round waits for all slots to fill before starting with fewer
  double round_deadline_s = 60.0;  // after the round start, payloads later than this are left out
  std::string listen = "0.0.0.0:7600";  // host:port; port 0 = any free port
  std::string state_dir;          // checkpoint.bin, ledger.sqlite, tls/; default: <config folder>/state
  uint64_t checkpoint_every = 1;  // rounds between durable checkpoints
  uint32_t update_history = 64;   // merged updates kept in memory for nodes that catch up
  uint32_t max_nodes = 1024;      // connections at once
  double node_up_limit = 0.0;     // default cap of each node's upload to us, bytes/s (0 = none)
  double node_down_limit = 0.0;   // default cap of our sending to each node, bytes/s (0 = none)
  std::map<std::string, std::string> tokens;  // node name -> its secret token
  std::string path;               // the file it came from ("" when built in code)
};

// Parses the JSON text; `path` names the file in errors and anchors relative paths.
RunConfig parse_run_config(const std::string& text, const std::string& path);
// Reads and parses a file. Error(not_found / io) when it cannot be read.
RunConfig load_run_config(const std::string& path);
// Checks every field (also the ones parse filled in); Error(invalid_argument) naming the field.
void validate(const RunConfig& c);
// Only the "tokens" object of a config file, checked the same way (for live revocation).
std::map<std::string, std::string> load_tokens(const std::string& path);

inline constexpr size_t kMinTokenLength = 16;

}  // namespace distro::net
