// The wire codec, version 2 (docs/protocol.md). Decoders check every field against the manifest,
// never size an allocation from an untrusted length, and throw Error(corrupt / mismatch) with a
// message naming what was wrong.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "wire/messages.hpp"

namespace distro {

constexpr uint16_t kWireVersion = 2;
enum class MessageKind : uint8_t { payload = 1, update = 2 };

// Header fields readable without a manifest.
struct MessageHeader {
  MessageKind kind = MessageKind::payload;
  uint16_t version = 0;
  ValueMode values = ValueMode::sign;
  uint64_t run_id = 0;
  uint64_t step = 0;
  uint32_t peer_id = 0;  // payload: sender; update: contributors
  uint64_t manifest_hash = 0;
  uint64_t prev_hash = 0;   // update only
  float lr = 0.0f;          // update only
  float decay_factor = 0.0f;  // update only
};

// A body is a table of piece lengths followed by the pieces: each tensor's chunks cut into pieces of
// at most wire::kPieceChunks chunks, each piece a byte-aligned bit stream of its own (docs/protocol.md
// section 3). So large messages (more than wire::kParallelMinCoefficients coefficients to encode, or
// wire::kParallelMinBodyBytes body bytes to decode) are encoded and decoded a piece per task on
// `threads` threads (0 = wire::default_threads()). The bytes, the decoded message and any error do
// not depend on the thread count: an encoder reports the first invalid tensor and chunk in manifest
// order, a decoder the error of the first bad piece in body order.
std::vector<uint8_t> encode_payload(const Manifest& m, const PeerPayload& p, unsigned threads = 0);
PeerPayload decode_payload(const Manifest& m, std::span<const uint8_t> bytes, unsigned threads = 0);

std::vector<uint8_t> encode_update(const Manifest& m, const MergedUpdate& u, unsigned threads = 0);
MergedUpdate decode_update(const Manifest& m, std::span<const uint8_t> bytes, unsigned threads = 0);

// Checks magic, version, kind, lengths and checksum; returns the header.
MessageHeader inspect_message(std::span<const uint8_t> bytes);

namespace wire {

// The most chunks of one tensor that one piece of a body holds (docs/protocol.md section 3).
constexpr uint64_t kPieceChunks = 2048;
// The number of pieces a body of this manifest has: the sum over tensors of ceil(chunks / kPieceChunks).
uint64_t piece_count(const Manifest& m);

// Messages with fewer coefficients than this are encoded (and merged) on the calling thread alone,
// and bodies of fewer bytes than this decoded on it: below them, starting threads costs about as
// much as it saves.
constexpr uint64_t kParallelMinCoefficients = 65536;
constexpr uint64_t kParallelMinBodyBytes = 64 * 1024;
// The default thread count: the hardware's, capped here (the host codec shares the machine).
constexpr unsigned kMaxDefaultThreads = 16;

// `requested`, or for 0 the hardware's thread count capped at kMaxDefaultThreads (at least 1).
unsigned default_threads(unsigned requested = 0);

// Runs task(i) for every i in [0, n) on up to `threads` threads (the caller's included) and waits
// for all of them. Tasks are taken in increasing order. If tasks throw, the exception of the
// lowest-numbered failing task is rethrown here (tasks after a failed one may be skipped), so the
// caller sees the error a plain loop would have met first. No exception ever leaves a worker thread;
// if a thread cannot be started, the others (at least the caller) do its share.
void run_tasks(unsigned threads, size_t n, const std::function<void(size_t)>& task);

// Large arrays that the codec and the merger fill right after allocating them: on Linux, asks the
// kernel for transparent huge pages on [p, p + bytes) before the first touch, so that touching it
// costs a page fault per 2 MiB rather than per 4 KiB (a fault costs about 2 us in a VM: 50 ms for
// the 112 MB of a 16-node 1b update). Only a hint: ignored for small blocks, where it is not
// supported, or when THP is off.
void advise_huge_pages(void* p, size_t bytes);

// v.reserve(n), with the huge-page hint on the new block.
template <class T>
void reserve_large(std::vector<T>& v, size_t n) {
  v.reserve(n);
  advise_huge_pages(v.data(), v.capacity() * sizeof(T));
}

}  // namespace wire

}  // namespace distro
