// Writes (or checks) the seed corpus of the network-message fuzz target: one valid message of each
// kind against the target's fixed context, and a few malformed ones.
//   distro_fuzz_net_corpus write tests/fuzz/corpus/net_message
//   distro_fuzz_net_corpus check tests/fuzz/corpus/net_message   (ctest)
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>

#include "fuzz_net_message.hpp"

using namespace distro;
using namespace distro::net;
using distro::fuzz::net_input;

int main(int argc, char** argv) {
  if (argc != 3 || (std::string(argv[1]) != "write" && std::string(argv[1]) != "check")) {
    std::fprintf(stderr, "usage: %s write|check DIR\n", argv[0]);
    return 2;
  }
  const RunInfo run = fuzz::net_run();
  std::vector<std::pair<std::string, std::vector<uint8_t>>> seeds;
  seeds.push_back({"valid-hello.bin", net_input(Kind::hello, encode(Hello{kProtocolVersion, "seed-token-0123456789", "fuzz"}))});
  Welcome w;
  w.node_id = 2;
  w.node_name = "seed";
  w.run_id = 11;
  w.manifest_hash = 12;
  w.step = 3;
  w.param_hash = 13;
  w.deadline_ms = 1000;
  w.run = run;
  seeds.push_back({"valid-welcome.bin", net_input(Kind::welcome, encode(w))});
  seeds.push_back({"valid-sync.bin", net_input(Kind::sync, encode(Sync{3, 99}))});
  seeds.push_back({"valid-checkpoint-request.bin", net_input(Kind::checkpoint_request, encode(CheckpointRequest{3}))});
  CheckpointInfo ci = fuzz::net_checkpoint();
  seeds.push_back({"valid-checkpoint-info.bin", net_input(Kind::checkpoint_info, encode(ci))});
  seeds.push_back({"valid-checkpoint-chunk.bin",
                   net_input(Kind::checkpoint_chunk, encode(CheckpointChunk{4, 3, std::vector<uint8_t>(100, 0x5A)}))});
  RoundStart r;
  r.step = 4;
  r.lr = 0.001f;
  r.batch_id = 12;
  r.slot = 3;
  r.deadline_ms = 500;
  r.batch = run.batch;
  r.seq = run.seq;
  for (int i = 0; i < 8; ++i) {
    r.tokens.push_back(i * 31);
    r.targets.push_back(i * 31 + 1);
  }
  seeds.push_back({"valid-round-start.bin", net_input(Kind::round_start, encode(r))});
  seeds.push_back({"valid-payload.bin", net_input(Kind::payload, encode(PayloadMsg{4, 5, 1, 12, std::vector<uint8_t>(60, 7)}))});
  seeds.push_back({"valid-update.bin", net_input(Kind::update, encode(UpdateMsg{4, {1, 3}, std::vector<uint8_t>(70, 8)}))});
  seeds.push_back({"valid-hash-report.bin", net_input(Kind::hash_report, encode(HashReport{4, 77}))});
  seeds.push_back({"valid-resync.bin", net_input(Kind::resync, encode(Resync{4, 77, "hash differs"}))});
  seeds.push_back({"valid-notice.bin", net_input(Kind::notice, encode(Notice{NoticeCode::run_complete, 100}))});
  seeds.push_back({"valid-error.bin", net_input(Kind::error, encode(ErrorMsg{ErrorCode::auth, "unknown token"}))});
  seeds.push_back({"valid-ping.bin", net_input(Kind::ping, encode(Ping{0x0123456789ABCDEFull}))});
  auto hello = encode(Hello{kProtocolVersion, "seed-token-0123456789", "fuzz"});
  hello.push_back(0);
  seeds.push_back({"bad-hello-trailing.bin", net_input(Kind::hello, hello)});
  auto rs = encode(r);
  rs.resize(rs.size() - 3);
  seeds.push_back({"bad-round-start-truncated.bin", net_input(Kind::round_start, rs)});
  seeds.push_back({"bad-update-unsorted.bin", net_input(Kind::update, encode(UpdateMsg{4, {3, 1}, std::vector<uint8_t>(70, 8)}))});

  namespace fs = std::filesystem;
  const fs::path dir(argv[2]);
  const bool write = std::string(argv[1]) == "write";
  int stale = 0;
  for (const auto& [name, bytes] : seeds) {
    const fs::path p = dir / name;
    if (write) {
      fs::create_directories(dir);
      std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
      continue;
    }
    std::ifstream f(p, std::ios::binary);
    std::vector<uint8_t> have((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (!f.is_open() || have != bytes) {
      std::fprintf(stderr, "%s is missing or stale; regenerate with: %s write %s\n", p.string().c_str(), argv[0], argv[2]);
      ++stale;
    }
  }
  if (!write) std::printf("%zu seeds checked, %d stale\n", seeds.size(), stale);
  return stale ? 1 : 0;
}
