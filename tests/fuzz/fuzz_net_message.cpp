// libFuzzer target: the network protocol's message decoders (libdistro/net/protocol.hpp). The first
// input byte picks the message kind, the rest is the frame body. Oracle: a decoder either refuses
// with Error(corrupt / mismatch), or accepts a message whose encoding is exactly the input (every
// message has one encoding); nothing else (no other exception, no crash, no sanitizer report).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>

#include "core/error.hpp"
#include "fuzz_net_message.hpp"

using namespace distro;
using namespace distro::net;

namespace {

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "fuzz oracle violated: %s\n", what);
  std::abort();
}

template <class Decode>
void check(std::span<const uint8_t> body, Decode decode) {
  std::vector<uint8_t> again;
  try {
    auto msg = decode(body);
    again = encode(msg);
  } catch (const Error& e) {
    if (e.code() != Code::corrupt && e.code() != Code::mismatch) die(e.what());
    return;
  }
  if (again.size() != body.size() || std::memcmp(again.data(), body.data(), body.size()) != 0)
    die("decode then encode changed the message");
}

const RunInfo run = fuzz::net_run();
const CheckpointInfo ckpt = fuzz::net_checkpoint();

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::span<const uint8_t> b(data + 1, size - 1);
  switch (Kind(data[0] % kKindCount)) {
    case Kind::hello: check(b, [](auto x) { return decode_hello(x); }); break;
    case Kind::welcome: check(b, [](auto x) { return decode_welcome(x); }); break;
    case Kind::sync: check(b, [](auto x) { return decode_sync(x); }); break;
    case Kind::checkpoint_request: check(b, [](auto x) { return decode_checkpoint_request(x); }); break;
    case Kind::checkpoint_info: check(b, [](auto x) { return decode_checkpoint_info(x, fuzz::kNetCheckpointMax); }); break;
    case Kind::checkpoint_chunk: check(b, [](auto x) { return decode_checkpoint_chunk(x, ckpt); }); break;
    case Kind::round_start: check(b, [](auto x) { return decode_round_start(x, run); }); break;
    case Kind::payload: check(b, [](auto x) { return decode_payload_msg(x, fuzz::kNetWireMax); }); break;
    case Kind::update:
      check(b, [](auto x) { return decode_update_msg(x, fuzz::kNetWireMax, fuzz::kNetMaxContributors); });
      break;
    case Kind::hash_report: check(b, [](auto x) { return decode_hash_report(x); }); break;
    case Kind::resync: check(b, [](auto x) { return decode_resync(x); }); break;
    case Kind::notice: check(b, [](auto x) { return decode_notice(x); }); break;
    case Kind::error: check(b, [](auto x) { return decode_error(x); }); break;
    case Kind::ping:
    case Kind::pong: check(b, [](auto x) { return decode_ping(x); }); break;
    default: break;  // kind 0 is no message
  }
  return 0;
}
