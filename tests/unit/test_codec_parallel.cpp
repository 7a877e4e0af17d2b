// The parallel wire codec and merger (docs/protocol.md section 9.1; docs/benchmarks.md, "Host codec
// and merge at 1b"): the bytes, the decoded messages and the merged update do not depend on the
// thread count, and an invalid input (or message) reports the same error with any number of threads.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#endif

#include "core/error.hpp"
#include "optim/chunk_math.hpp"
#include "optim/manifest.hpp"
#include "optim/merger.hpp"
#include "optim/optimizer.hpp"
#include "wire/bits.hpp"
#include "wire/codec.hpp"
#include "wire/messages.hpp"
#include "wire_body.hpp"

using namespace distro;

namespace {

// Many tensors of varied shapes (matrices, vectors, rank 3, 1x1 chunks, one element), with chunk 8
// and top-k 4: about 36,000 chunks and 140,000 coefficients per payload, above the size at which the
// encoders and the merger go parallel; "big" has enough chunks to be cut into several pieces.
Manifest many_tensors(ValueMode mode) {
  std::vector<TensorSpec> specs = {{"embed", {512, 256}}, {"big", {1024, 1024}}};
  for (int i = 0; i < 12; ++i) {
    const std::string l = std::string("l") + std::to_string(i) + ".";  // ("l" + ... trips a GCC 12 false -Wrestrict)
    specs.push_back({l + "norm", {256}});
    specs.push_back({l + "wq", {256, 256}});
    specs.push_back({l + "odd", {13, 17}});
    specs.push_back({l + "r3", {3, 16, 24}});
  }
  specs.push_back({"head", {256, 512}});
  specs.push_back({"tiny", {1}});
  return make_manifest(specs, 8, 4, mode);
}

std::vector<uint16_t> subset(std::mt19937_64& rng, uint32_t n, uint32_t k) {
  std::vector<uint16_t> all(n);
  for (uint32_t i = 0; i < n; ++i) all[i] = uint16_t(i);
  for (uint32_t i = 0; i < k; ++i) std::swap(all[i], all[i + rng() % (n - i)]);
  std::vector<uint16_t> out(all.begin(), all.begin() + k);
  std::sort(out.begin(), out.end());
  return out;
}

// Random payload: mostly k coefficients per chunk, some chunks fewer (exceptions) or none. int8 values
// include 0, which a merge of one payload drops.
PeerPayload random_payload(std::mt19937_64& rng, const Manifest& m, uint32_t peer) {
  PeerPayload p;
  p.run_id = 5;
  p.step = 9;
  p.peer_id = peer;
  p.manifest_hash = m.hash;
  p.values = m.values;
  for (const TensorPlan& t : m.tensors)
    for (uint64_t c = 0; c < t.chunks; ++c) {
      uint32_t cnt = rng() % 16 == 0 ? uint32_t(rng() % t.k) : t.k;
      p.count.push_back(uint16_t(cnt));
      for (uint16_t i : subset(rng, t.elems(), cnt)) {
        p.index.push_back(i);
        p.value.push_back(m.values == ValueMode::sign ? int8_t(rng() & 1 ? 1 : -1) : int8_t(int(rng() % 255) - 127));
      }
    }
  return p;
}

// Random update: per tensor either values near +-vmax (the agreement coding wins) or small values (a
// fixed width wins), and unions from empty to full. "big", which the format cuts into 8 pieces, has
// values of 1..3 except in its chunk 5 (in its first piece), whose values need a wider field: each
// piece has a width of its own.
MergedUpdate random_update(std::mt19937_64& rng, const Manifest& m) {
  MergedUpdate u;
  u.run_id = 5;
  u.step = 9;
  u.contributors = 7;
  u.manifest_hash = m.hash;
  u.values = m.values;
  u.lr = 1e-3f;
  u.decay_factor = 0.999f;
  u.prev_hash = 42;
  u.offset.push_back(0);
  const int32_t vmax = max_merged_value(m.values);
  for (const TensorPlan& t : m.tensors) {
    const bool big = t.name == "big";
    const bool agreeing = !big && rng() % 2 == 0;
    const int32_t lim = big ? 3 : 1 + int32_t(rng() % 100);
    for (uint64_t c = 0; c < t.chunks; ++c) {
      uint32_t n = rng() % 8 == 0 ? uint32_t(rng() % (t.elems() + 1)) : std::min<uint32_t>(t.elems(), uint32_t(rng() % 9));
      if (big && c == 5) n = 2;
      for (uint16_t i : subset(rng, t.elems(), n)) {
        int32_t v = 0;
        if (agreeing) v = rng() % 8 == 0 ? 1 + int32_t(rng() % uint64_t(vmax)) : vmax;
        else v = big && c == 5 ? 100 : 1 + int32_t(rng() % uint64_t(lim));
        u.index.push_back(i);
        u.value.push_back(rng() & 1 ? v : -v);
      }
      u.offset.push_back(uint32_t(u.index.size()));
    }
  }
  return u;
}

template <class F>
std::string error_of(F&& f, Code want) {
  try {
    f();
  } catch (const Error& e) {
    CHECK(e.code() == want);
    return e.what();
  }
  FAIL("no error");
  return {};
}

// The merge by its definition (docs/protocol.md section 6.1), with a map per chunk.
MergedUpdate reference_merge(const Manifest& m, const std::vector<PeerPayload>& ps) {
  MergedUpdate u;
  u.offset.push_back(0);
  std::vector<size_t> cursor(ps.size(), 0);
  for (uint64_t c = 0; c < m.total_chunks; ++c) {
    std::map<uint16_t, std::pair<int64_t, int64_t>> acc;  // index -> (sum, count)
    for (size_t i = 0; i < ps.size(); ++i)
      for (uint16_t s = 0; s < ps[i].count[c]; ++s, ++cursor[i]) {
        auto& a = acc[ps[i].index[cursor[i]]];
        a.first += ps[i].value[cursor[i]];
        a.second += 1;
      }
    for (const auto& [index, a] : acc)
      if (int32_t mean = fixed_point_mean(a.first, a.second); mean != 0) {
        u.index.push_back(index);
        u.value.push_back(mean);
      }
    u.offset.push_back(uint32_t(u.index.size()));
  }
  return u;
}

}  // namespace

TEST_CASE("run_tasks runs every task once and rethrows the lowest failing task's error", "[wire]") {
  for (unsigned threads : {1u, 2u, 7u, 64u}) {
    INFO("threads " << threads);
    std::vector<std::atomic<int>> runs(100);
    wire::run_tasks(threads, runs.size(), [&](size_t i) { ++runs[i]; });
    for (auto& r : runs) REQUIRE(r.load() == 1);

    // Task 30 fails late, after task 70 (on another thread) has failed: the order of the tasks
    // decides which error is reported, not the order in time.
    std::string msg = error_of(
        [&] {
          wire::run_tasks(threads, 100, [&](size_t i) {
            if (i == 70) fail(Code::corrupt, "task 70");
            if (i == 30) {
              std::this_thread::sleep_for(std::chrono::milliseconds(threads > 1 ? 50 : 0));
              fail(Code::invalid_argument, "task 30");
            }
          });
        },
        Code::invalid_argument);
    REQUIRE(msg == "task 30");
    // Not only distro::Error: any exception reaches the caller, none escapes a worker thread.
    REQUIRE_THROWS_AS(wire::run_tasks(threads, 10, [](size_t i) {
      if (i == 9) throw std::out_of_range("nine");
    }), std::out_of_range);
  }
  wire::run_tasks(4, 0, [](size_t) { FAIL("no tasks to run"); });
}

#if defined(__linux__)
// Kernel thread ids (not std::thread::id, which glibc may hand to a new thread again).
static std::set<long> process_threads() {
  std::set<long> ids;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ids.insert(std::stol(e.path().filename()));
  return ids;
}

TEST_CASE("run_tasks lends threads that stay between calls instead of starting new ones", "[wire]") {
  auto tids_of_call = [](unsigned threads) {
    std::mutex mu;
    std::set<long> seen;
    wire::run_tasks(threads, 64, [&](size_t) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));  // long enough for every helper to join
      std::lock_guard lock(mu);
      seen.insert(long(syscall(SYS_gettid)));
    });
    return seen;
  };
  (void)tids_of_call(8);  // starts the pool's threads if no earlier call did
  for (int call = 0; call < 5; ++call) {
    const std::set<long> before = process_threads();
    const std::set<long> seen = tids_of_call(8);
    REQUIRE(seen.size() > 1);  // the call did run on helpers
    for (long t : seen) REQUIRE(before.count(t) == 1);  // each of them existed before the call
  }
}

TEST_CASE("run_tasks works in a forked child, which then exits normally", "[wire]") {
  // The parent's pool threads do not exist in the child: the child must start its own and must not
  // wait for the parent's at exit. The child reports by its exit status; a hang fails after 30 s.
  auto count_runs = [](unsigned threads) {
    std::vector<std::atomic<int>> runs(200);
    wire::run_tasks(threads, runs.size(), [&](size_t i) { ++runs[i]; });
    for (auto& r : runs)
      if (r.load() != 1) return false;
    return true;
  };
  REQUIRE(count_runs(8));  // the parent's pool exists
  std::fflush(nullptr);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    const bool ok = count_runs(8) && count_runs(3);
    std::exit(ok ? 0 : 1);  // a normal exit: static destructors run
  }
  int status = 0;
  pid_t done = 0;
  for (int i = 0; i < 3000 && done == 0; ++i) {
    done = ::waitpid(child, &status, WNOHANG);
    if (done == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (done == 0) {
    ::kill(child, SIGKILL);
    ::waitpid(child, &status, 0);
    FAIL("the forked child did not finish within 30 s");
  }
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  REQUIRE(count_runs(8));  // and the parent's pool still works
}
#endif

TEST_CASE("run_tasks from several threads at once, and from inside a task", "[wire]") {
  // Callers compete for the pool's threads, and tasks call run_tasks themselves: every task of
  // every call still runs exactly once, and every call returns.
  constexpr size_t kOuter = 24, kInner = 40;
  std::vector<std::atomic<int>> runs(4 * kOuter * kInner);
  std::vector<std::thread> callers;
  for (size_t c = 0; c < 4; ++c)
    callers.emplace_back([&, c] {
      wire::run_tasks(6, kOuter, [&](size_t i) {
        wire::run_tasks(3, kInner, [&](size_t j) { ++runs[(c * kOuter + i) * kInner + j]; });
      });
    });
  for (std::thread& t : callers) t.join();
  for (auto& r : runs) REQUIRE(r.load() == 1);
}

TEST_CASE("parallel encode_payload and decode_payload equal the sequential ones", "[wire]") {
  std::mt19937_64 rng(2);
  for (ValueMode mode : {ValueMode::sign, ValueMode::int8}) {
    Manifest m = many_tensors(mode);
    PeerPayload p = random_payload(rng, m, 3);
    REQUIRE(p.index.size() > wire::kParallelMinCoefficients);
    const std::vector<uint8_t> one = encode_payload(m, p, 1);
    REQUIRE(one.size() - 48 >= wire::kParallelMinBodyBytes);  // large enough to decode in parallel
    for (unsigned threads : {1u, 2u, 7u, 16u, 0u}) {
      INFO("threads " << threads);
      REQUIRE(encode_payload(m, p, threads) == one);
      PeerPayload q = decode_payload(m, one, threads);
      REQUIRE(q.count == p.count);
      REQUIRE(q.index == p.index);
      REQUIRE(q.value == p.value);
    }
  }
}

TEST_CASE("parallel encode_update and decode_update equal the sequential ones", "[wire]") {
  std::mt19937_64 rng(3);
  for (ValueMode mode : {ValueMode::sign, ValueMode::int8}) {
    Manifest m = many_tensors(mode);
    MergedUpdate u = random_update(rng, m);
    REQUIRE(u.index.size() > wire::kParallelMinCoefficients);
    const std::vector<uint8_t> one = encode_update(m, u, 1);
    REQUIRE(one.size() - 64 >= wire::kParallelMinBodyBytes);
    for (unsigned threads : {1u, 2u, 7u, 16u, 0u}) {
      INFO("threads " << threads);
      REQUIRE(encode_update(m, u, threads) == one);
      MergedUpdate v = decode_update(m, one, threads);
      REQUIRE(v.offset == u.offset);
      REQUIRE(v.index == u.index);
      REQUIRE(v.value == u.value);
    }
  }
}

TEST_CASE("an invalid tensor in the middle gives the same error with any thread count", "[wire]") {
  std::mt19937_64 rng(4);
  Manifest m = many_tensors(ValueMode::sign);
  const PeerPayload good = random_payload(rng, m, 3);
  auto first_coefficient = [&](const std::string& tensor, uint64_t chunk) {
    size_t at = 0;
    for (const TensorPlan& t : m.tensors)
      for (uint64_t c = 0; c < t.chunks; ++c) {
        if (t.name == tensor && c == chunk) return at;
        at += good.count[t.chunk_base + c];
      }
    FAIL("no such chunk");
    return at;
  };
  auto chunk_of = [&](const std::string& tensor, uint64_t chunk) {
    for (const TensorPlan& t : m.tensors)
      if (t.name == tensor) return t.chunk_base + chunk;
    FAIL("no such tensor");
    return uint64_t(0);
  };
  auto same_error_for_all = [&](const PeerPayload& p, const std::string& needle) {
    const std::string one = error_of([&] { encode_payload(m, p, 1); }, Code::invalid_argument);
    INFO(one);
    CHECK_THAT(one, Catch::Contains(needle));
    for (unsigned threads : {2u, 7u, 16u}) CHECK(error_of([&] { encode_payload(m, p, threads); }, Code::invalid_argument) == one);
  };
  // Errors in a middle tensor and in later ones (in "big", split across pieces, and in the head):
  // the first in manifest order is reported.
  REQUIRE(good.count[chunk_of("l5.wq", 100)] == 4);
  REQUIRE(good.count[chunk_of("big", 9000)] == 4);
  {
    PeerPayload p = good;
    size_t at = first_coefficient("l5.wq", 100);
    std::swap(p.index[at], p.index[at + 1]);
    p.value[first_coefficient("head", 3)] = 0;
    p.index[first_coefficient("l9.wq", 7)] = 64;
    same_error_for_all(p, "encode_payload: tensor 'l5.wq' chunk 100: indices are not strictly ascending");
  }
  {
    PeerPayload p = good;
    p.value[first_coefficient("big", 9000) + 2] = 0;
    p.value[first_coefficient("head", 3)] = 0;
    same_error_for_all(p, "encode_payload: tensor 'big' chunk 9000: sign value 0 is not +1 or -1");
  }
  {
    PeerPayload p = good;  // a count over k is found in the first pass, before any index
    p.index[first_coefficient("l0.wq", 1)] = 200;
    p.count[chunk_of("l7.r3", 5)] = 5;
    same_error_for_all(p, "encode_payload: tensor 'l7.r3' chunk 5 has count 5 > k = 4");
  }

  const MergedUpdate ugood = random_update(rng, m);
  auto offset_of = [&](const std::string& tensor, uint64_t chunk) {
    uint64_t c = chunk_of(tensor, chunk);
    REQUIRE(ugood.offset[c + 1] > ugood.offset[c]);  // the chunk has a coefficient to spoil
    return ugood.offset[c];
  };
  auto same_update_error = [&](const MergedUpdate& u, const std::string& needle) {
    const std::string one = error_of([&] { encode_update(m, u, 1); }, Code::invalid_argument);
    INFO(one);
    CHECK_THAT(one, Catch::Contains(needle));
    for (unsigned threads : {2u, 7u, 16u}) CHECK(error_of([&] { encode_update(m, u, threads); }, Code::invalid_argument) == one);
  };
  uint64_t big_chunk = 12000;
  while (ugood.offset[chunk_of("big", big_chunk) + 1] == ugood.offset[chunk_of("big", big_chunk)]) ++big_chunk;
  {
    MergedUpdate u = ugood;
    u.value[offset_of("big", big_chunk)] = 0;
    u.value[u.value.size() - 1] = 0;
    same_update_error(u, "encode_update: tensor 'big' chunk " + std::to_string(big_chunk) + ": merged value 0 is outside");
  }
  {
    MergedUpdate u = ugood;
    uint64_t c = 40;
    while (ugood.offset[chunk_of("l6.wq", c) + 1] == ugood.offset[chunk_of("l6.wq", c)]) ++c;
    u.index[offset_of("l6.wq", c)] = 64;
    u.value[u.value.size() - 1] = 0;  // in a later tensor
    same_update_error(u, "encode_update: tensor 'l6.wq' chunk " + std::to_string(c) + ": index 64 is outside");
  }
}

TEST_CASE("a message with several bad pieces gives the first one's error with any thread count", "[wire]") {
  std::mt19937_64 rng(7);
  Manifest m = many_tensors(ValueMode::sign);
  // Pieces in body order: 0 embed (2048 chunks), 1..8 big (16384 chunks), then the rest.
  REQUIRE(m.tensors[0].chunks == 2048);
  REQUIRE(m.tensors[1].chunks == 16384);
  const size_t pieces = size_t(wire::piece_count(m));
  const std::vector<uint8_t> payload = encode_payload(m, random_payload(rng, m, 3), 1);
  const std::vector<uint8_t> update = encode_update(m, random_update(rng, m), 1);
  // 32 zero bits at the start of a piece: an exception count (payload) or a union size (update) far
  // beyond what the piece can hold.
  auto zero_start = [](std::vector<uint8_t>& b) { std::fill(b.begin(), b.begin() + 4, uint8_t(0)); };
  auto trailing = [](std::vector<uint8_t>& b) { b.push_back(0); };
  auto same_for_all = [&](auto decode, const std::vector<uint8_t>& msg, const std::string& needle) {
    const std::string one = error_of([&] { decode(msg, 1u); }, Code::corrupt);
    INFO(one);
    CHECK_THAT(one, Catch::Contains(needle));
    for (unsigned threads : {2u, 7u, 16u, 0u}) CHECK(error_of([&] { decode(msg, threads); }, Code::corrupt) == one);
  };
  auto dp = [&](const std::vector<uint8_t>& b, unsigned t) { decode_payload(m, b, t); };
  auto du = [&](const std::vector<uint8_t>& b, unsigned t) { decode_update(m, b, t); };
  {
    auto b = test::edit_piece(payload, 40, pieces, 4, zero_start);
    same_for_all(dp, b, "peer payload body, piece 4, tensor 'big' (#1), preamble: ");
    b = test::edit_piece(b, 40, pieces, 1, zero_start);  // now the second piece is bad too
    same_for_all(dp, b, "peer payload body, piece 1, tensor 'big' (#1), preamble: ");
    b = test::edit_piece(payload, 40, pieces, pieces - 1, zero_start);
    b = test::edit_piece(b, 40, pieces, 4, trailing);
    same_for_all(dp, b, "peer payload body, piece 4, tensor 'big' (#1): 1 trailing bytes after the last field");
  }
  {
    auto b = test::edit_piece(update, 56, pieces, 4, zero_start);
    b = test::edit_piece(b, 56, pieces, 1, zero_start);
    same_for_all(du, b, "merged update body, piece 1, tensor 'big' (#1), chunk 0: union of");
    b = test::edit_piece(update, 56, pieces, 6, zero_start);
    b = test::edit_piece(b, 56, pieces, 5, trailing);
    same_for_all(du, b, "merged update body, piece 5, tensor 'big' (#1): 1 trailing bytes after the last field");
  }
}

TEST_CASE("the parallel merge equals the merge by definition and does not depend on threads", "[merge]") {
  std::mt19937_64 rng(5);
  for (ValueMode mode : {ValueMode::sign, ValueMode::int8})
    for (size_t peers : {1u, 2u, 5u}) {
      INFO("peers " << peers << ", " << (mode == ValueMode::sign ? "sign" : "int8"));
      Manifest m = many_tensors(mode);
      std::vector<PeerPayload> ps;
      for (size_t i = 0; i < peers; ++i) ps.push_back(random_payload(rng, m, uint32_t(i)));
      const MergedUpdate want = reference_merge(m, ps);
      // Sign mode: +1 and -1 on one coefficient cancel; int8: a lone 0 does. Both leave it out.
      if (peers > 1 || mode == ValueMode::int8) {
        uint64_t sent = 0;
        for (const auto& p : ps) sent += p.index.size();
        CHECK(want.index.size() < sent);
      }
      for (unsigned threads : {1u, 2u, 7u, 0u}) {
        INFO("threads " << threads);
        Merger mg(m, 5, 9);
        for (const auto& p : ps) mg.add(p);
        MergedUpdate u = mg.finish(1e-3f, 0.1f, 42, threads);
        REQUIRE(u.offset == want.offset);
        REQUIRE(u.index == want.index);
        REQUIRE(u.value == want.value);
        REQUIRE(u.contributors == peers);
      }
    }
}

TEST_CASE("compress compacts chunks that send fewer than k coefficients", "[optimizer]") {
  // One tensor whose first two rows of chunks have a zero gradient: they send nothing.
  std::vector<float> params(64 * 48, 0.5f), grad(64 * 48);
  std::mt19937_64 rng(6);
  std::normal_distribution<float> nd;
  for (size_t i = 0; i < grad.size(); ++i) grad[i] = i < 16 * 48 ? 0.0f : nd(rng);
  OptimizerOptions o;
  o.chunk = 8;
  o.topk = 3;
  o.threads = 1;
  Optimizer opt(o);
  opt.add_tensor("w", {64, 48}, params.data(), grad.data());
  PeerPayload p = opt.compress(1, 0.01f);
  const Manifest& m = opt.manifest();
  size_t total = 0, at = 0;
  for (uint64_t c = 0; c < m.total_chunks; ++c) {
    INFO("chunk " << c);
    CHECK(p.count[c] == (c < 12 ? 0 : 3));  // 6 chunks per row of chunks
    for (uint16_t s = 0; s < p.count[c]; ++s, ++at) {
      CHECK(p.index[at] < 64);
      if (s > 0) CHECK(p.index[at] > p.index[at - 1]);
      CHECK((p.value[at] == 1 || p.value[at] == -1));
    }
    total += p.count[c];
  }
  REQUIRE(p.index.size() == total);
  REQUIRE(p.value.size() == total);
  PeerPayload q = decode_payload(m, encode_payload(m, p));
  CHECK(q.index == p.index);
  CHECK(q.value == p.value);
}
