// `distro bench codec`: the host-side wire codec and merge of one DisTrO round at a preset's shapes,
// stage by stage, on simulated payloads (network_traffic.hpp's generator): a node encodes its
// payload and decodes the merged update; the coordinator decodes N payloads (Merger::add), merges
// them (Merger::finish) and encodes the update. These are the host parts of a GPU step
// (docs/benchmarks.md), each run on `threads` threads, so they are timed on their own, at the real
// 1b sizes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "optim/manifest.hpp"

namespace distro::bench {

struct CodecBenchConfig {
  std::string preset = "1b";
  std::vector<unsigned> nodes = {1, 4, 16};
  unsigned threads = 0;   // codec and merge threads (0 = the library's default)
  unsigned repeat = 5;    // timed repetitions per stage; the median is reported
  uint32_t chunk = 64, topk = 4;
  ValueMode values = ValueMode::sign;
  double share = 0.0;     // 0: independent payloads (the union's worst case); (0, 1): correlated
  uint64_t seed = 1;
  std::string json_path;
};

struct CodecBenchRow {
  unsigned nodes = 0;
  uint64_t payload_bytes = 0, update_bytes = 0;  // payload: node 0's
  uint64_t coefficients = 0, union_size = 0;     // node 0's payload; the merged update
  // Medians in seconds. decode_payload: one payload; merger_add: Merger::add(bytes) of all N
  // payloads (their decode and checks).
  double encode_payload = 0, decode_payload = 0, merger_add = 0, finish = 0, encode_update = 0, decode_update = 0;
  double coordinator() const { return merger_add + finish + encode_update; }
  double node() const { return encode_payload + decode_update; }
};

struct CodecBenchResult {
  std::string preset;
  uint64_t params = 0, chunks = 0, pieces = 0;  // pieces: of a message body (wire v2)
  size_t tensors = 0;
  unsigned threads = 0;  // as requested (0 = library default)
  unsigned hardware_threads = 0;
  std::vector<CodecBenchRow> rows;
};

CodecBenchResult run_codec_bench(const CodecBenchConfig& c);
void print_codec_bench(const CodecBenchConfig& c, const CodecBenchResult& r);
void write_codec_bench_json(const CodecBenchConfig& c, const CodecBenchResult& r, const std::string& path);

}  // namespace distro::bench
