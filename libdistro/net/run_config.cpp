#include "net/run_config.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.hpp"
#include "net/protocol.hpp"

namespace distro::net {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::set<std::string> kKeys = {
    "preset", "data", "vocab", "val_fraction", "steps", "batch", "micro_batch", "seq", "lr", "warmup",
    "min_lr_ratio", "weight_decay", "clip", "topk", "chunk", "decay", "values", "seed", "threads",
    "nodes_per_round", "min_nodes", "fill_wait_s", "round_deadline_s", "listen", "state_dir",
    "checkpoint_every", "update_history", "max_nodes", "node_up_limit", "node_down_limit", "tokens", "overlap"};

struct Reader {
  const json& j;
  std::string file;
  [[noreturn]] void bad(const std::string& key, const std::string& expected) const {
    std::string got = j.contains(key) ? j.at(key).dump() : "missing";
    if (got.size() > 60) got = got.substr(0, 57) + "...";
    fail(Code::invalid_argument, file + ": key '" + key + "' is " + got + "; expected " + expected);
  }
  template <class T>
  void whole(const char* key, T& out, uint64_t lo, uint64_t hi) const {
    if (!j.contains(key)) return;
    const json& v = j.at(key);
    std::string range = "a whole number " + std::to_string(lo) + ".." + std::to_string(hi);
    if (!v.is_number_integer()) bad(key, range);
    if (v.is_number_unsigned()) {
      uint64_t x = v.get<uint64_t>();
      if (x < lo || x > hi) bad(key, range);
      out = T(x);
    } else {
      int64_t x = v.get<int64_t>();
      if (x < 0 || uint64_t(x) < lo || uint64_t(x) > hi) bad(key, range);
      out = T(x);
    }
  }
  template <class T>
  void real(const char* key, T& out, double lo, double hi, bool hi_open = false) const {
    if (!j.contains(key)) return;
    const json& v = j.at(key);
    std::string range = "a number from " + std::to_string(lo) + (hi_open ? " up to (not including) " : " to ") + std::to_string(hi);
    if (!v.is_number()) bad(key, range);
    double x = v.get<double>();
    if (!std::isfinite(x) || x < lo || x > hi || (hi_open && x >= hi)) bad(key, range);
    out = T(x);
  }
  void text(const char* key, std::string& out, const std::string& expected) const {
    if (!j.contains(key)) return;
    if (!j.at(key).is_string() || j.at(key).get<std::string>().empty()) bad(key, expected);
    out = j.at(key).get<std::string>();
  }
};

std::string anchored(const std::string& p, const std::string& config_path) {
  if (p.empty() || fs::path(p).is_absolute() || config_path.empty()) return p;
  return (fs::path(config_path).parent_path() / p).lexically_normal().string();
}

bool printable_no_space(const std::string& s) {
  for (unsigned char c : s)
    if (c <= 0x20 || c > 0x7e) return false;
  return true;
}

std::map<std::string, std::string> parse_tokens(const json& j, const std::string& file) {
  if (!j.contains("tokens"))
    fail(Code::invalid_argument, file + ": key 'tokens' is missing; expected an object {\"node-name\": \"token\", ...}");
  const json& t = j.at("tokens");
  if (!t.is_object())
    fail(Code::invalid_argument, file + ": key 'tokens' must be an object {\"node-name\": \"token\", ...}");
  std::map<std::string, std::string> out;
  std::map<std::string, std::string> by_token;
  for (auto it = t.begin(); it != t.end(); ++it) {
    const std::string& name = it.key();
    if (name.empty() || name.size() > kMaxNodeName || !printable_no_space(name))
      fail(Code::invalid_argument, file + ": node name '" + name + "' in 'tokens' must be 1.." +
                                       std::to_string(kMaxNodeName) + " printable ASCII characters without spaces");
    if (!it.value().is_string())
      fail(Code::invalid_argument, file + ": the token of node '" + name + "' must be a string");
    std::string tok = it.value().get<std::string>();
    if (tok.size() < kMinTokenLength || tok.size() > kMaxToken || !printable_no_space(tok))
      fail(Code::invalid_argument, file + ": the token of node '" + name + "' must be " + std::to_string(kMinTokenLength) +
                                       ".." + std::to_string(kMaxToken) + " printable ASCII characters without spaces");
    if (by_token.count(tok))
      fail(Code::invalid_argument, file + ": nodes '" + by_token[tok] + "' and '" + name +
                                       "' share a token; each node needs its own (so that it can be revoked alone)");
    by_token[tok] = name;
    out[name] = tok;
  }
  return out;
}

json parse_object(const std::string& text, const std::string& file) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    fail(Code::invalid_argument, file + " is not valid JSON: " + e.what());
  }
  if (!j.is_object()) fail(Code::invalid_argument, file + ": expected one JSON object {...} at the top");
  return j;
}

std::string read_text(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail(Code::not_found, "no run configuration at " + path);
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(Code::io, "cannot read " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  if (ss.str().size() > (16u << 20)) fail(Code::invalid_argument, path + " is larger than 16 MiB; it cannot be a run configuration");
  return ss.str();
}

}  // namespace

RunConfig parse_run_config(const std::string& text, const std::string& path) {
  const std::string file = path.empty() ? "run configuration" : path;
  json j = parse_object(text, file);
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!kKeys.count(it.key())) {
      std::string all;
      for (const auto& k : kKeys) all += (all.empty() ? "" : ", ") + k;
      fail(Code::invalid_argument, file + ": unknown key '" + it.key() + "'; expected one of: " + all);
    }
  Reader r{j, file};
  RunConfig c;
  TrainConfig& t = c.train;
  t.optimizer = "distro";
  r.text("preset", t.preset, "a model preset name: nano, micro, small or 1b");
  if (!j.contains("data")) r.bad("data", "the training data: a text file or a token shard");
  r.text("data", t.data, "the training data: a text file or a token shard");
  t.data = anchored(t.data, path);
  r.whole("vocab", t.vocab, 0, 1 << 20);
  r.real("val_fraction", t.val_fraction, 0.0, 1.0, true);
  r.whole("steps", t.steps, 1, uint64_t(1) << 40);
  r.whole("batch", t.batch, 1, 65536);
  r.whole("micro_batch", t.micro_batch, 0, 65536);
  r.whole("seq", t.seq, 1, 1 << 20);
  r.real("lr", t.lr, 0.0, 10.0);
  r.whole("warmup", t.warmup, 0, uint64_t(1) << 40);
  r.real("min_lr_ratio", t.min_lr_ratio, 0.0, 1.0);
  r.real("weight_decay", t.weight_decay, 0.0, 10.0, true);
  r.real("clip", t.clip, 0.0, 1e9);
  r.whole("topk", t.topk, 1, 65535);
  r.whole("chunk", t.chunk, 1, kMaxChunk);
  r.real("decay", t.decay, 0.0, 1.0, true);
  if (j.contains("values")) {
    const json& v = j.at("values");
    if (!v.is_string() || (v.get<std::string>() != "sign" && v.get<std::string>() != "int8")) r.bad("values", "\"sign\" or \"int8\"");
    t.values = v.get<std::string>() == "sign" ? ValueMode::sign : ValueMode::int8;
  }
  r.whole("seed", t.seed, 0, UINT64_MAX);
  t.threads = 1;  // the coordinator only applies updates; one thread is plenty
  r.whole("threads", t.threads, 0, 4096);
  r.whole("nodes_per_round", c.nodes_per_round, 1, 4096);
  c.min_nodes = 1;
  r.whole("min_nodes", c.min_nodes, 1, 4096);
  r.real("fill_wait_s", c.fill_wait_s, 0.0, 86400.0);
  r.real("round_deadline_s", c.round_deadline_s, 0.1, 86400.0);
  r.text("listen", c.listen, "host:port, e.g. \"0.0.0.0:7600\" (port 0 = any free port)");
  c.state_dir = path.empty() ? "state" : (fs::path(path).parent_path() / "state").string();
  r.text("state_dir", c.state_dir, "a folder for the checkpoint, the ledger and the TLS identity");
  c.state_dir = anchored(c.state_dir, path);
  r.whole("checkpoint_every", c.checkpoint_every, 1, uint64_t(1) << 40);
  r.whole("update_history", c.update_history, 1, 100000);
  r.whole("max_nodes", c.max_nodes, 1, 1000000);
  r.real("node_up_limit", c.node_up_limit, 0.0, 1e12);
  r.real("node_down_limit", c.node_down_limit, 0.0, 1e12);
  if (j.contains("overlap")) {
    if (!j.at("overlap").is_boolean()) r.bad("overlap", "true or false");
    t.overlap = j.at("overlap").get<bool>();
  }
  c.tokens = parse_tokens(j, file);
  t.devices.assign(c.nodes_per_round, "cpu");
  c.path = path;
  validate(c);
  return c;
}

RunConfig load_run_config(const std::string& path) { return parse_run_config(read_text(path), path); }

std::map<std::string, std::string> load_tokens(const std::string& path) {
  return parse_tokens(parse_object(read_text(path), path), path);
}

void validate(const RunConfig& c) {
  const std::string file = c.path.empty() ? "run configuration" : c.path;
  if (c.train.optimizer != "distro")
    fail(Code::invalid_argument, file + ": a network run trains with the DisTrO optimizer; '" + c.train.optimizer + "' is not supported");
  if (c.train.devices.size() != c.nodes_per_round)
    fail(Code::invalid_argument, file + ": the sampler's peer count must equal nodes_per_round");
  if (c.nodes_per_round < 1 || c.nodes_per_round > 4096)
    fail(Code::invalid_argument, file + ": nodes_per_round must be 1..4096");
  if (c.min_nodes < 1 || c.min_nodes > c.nodes_per_round)
    fail(Code::invalid_argument, file + ": min_nodes is " + std::to_string(c.min_nodes) + "; expected 1..nodes_per_round (" +
                                     std::to_string(c.nodes_per_round) + ")");
  if (uint64_t(c.train.batch) * uint64_t(c.train.seq) > kMaxBatchTokens)
    fail(Code::invalid_argument, file + ": batch * seq is " + std::to_string(uint64_t(c.train.batch) * c.train.seq) +
                                     "; the protocol carries at most " + std::to_string(kMaxBatchTokens) + " tokens per batch");
  if (c.state_dir.empty()) fail(Code::invalid_argument, file + ": state_dir is empty");
  if (c.tokens.empty())
    fail(Code::invalid_argument, file + ": 'tokens' is empty; at least one node needs a token to join");
  try {
    validate(c.train);
  } catch (const Error& e) {
    fail(Code::invalid_argument, file + ": " + e.what());
  }
}

}  // namespace distro::net
