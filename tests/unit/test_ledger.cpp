// history/: the SQLite contribution ledger, on real files in a temp folder.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/error.hpp"
#include "history/ledger.hpp"

using namespace distro;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    path = fs::temp_directory_path() / ("distro_test_ledger_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(now) + "_" + std::to_string(counter++));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

std::string read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void write_all(const std::string& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(f.good());
}

// Runs SQL on a file with plain SQLite, as another program would.
void raw_sql(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  INFO((err ? err : ""));
  sqlite3_free(err);
  sqlite3_close(db);
  REQUIRE(rc == SQLITE_OK);
}

Contribution contrib(const std::string& node, uint64_t step, uint64_t up, uint64_t tokens, bool ok = true,
                     const std::string& reason = "") {
  Contribution c;
  c.node = node;
  c.step = step;
  c.bytes_up = up;
  c.bytes_down = 1000 + step;
  c.tokens = tokens;
  c.accepted = ok;
  c.reason = reason;
  c.unix_ms = int64_t(1700000000000) + int64_t(step) * 1000;
  return c;
}

RoundRecord round_of(uint64_t step, uint32_t contributors) {
  RoundRecord r;
  r.step = step;
  r.contributors = contributors;
  r.update_bytes = 1000 + step;
  r.param_hash = 0xF000000000000000ull + step;  // the top bit must survive SQLite's signed integers
  r.unix_ms = int64_t(1700000000000) + int64_t(step) * 1000;
  return r;
}

// Three rounds: alice and bob in every round, carol rejected in round 2.
void fill(Ledger& l) {
  l.commit_round(round_of(1, 2), {contrib("alice", 1, 300, 1024), contrib("bob", 1, 310, 1024)});
  l.commit_round(round_of(2, 2), {contrib("bob", 2, 320, 2048), contrib("alice", 2, 330, 2048),
                                  contrib("carol", 2, 40, 512, false, "wrong step")});
  l.commit_round(round_of(3, 2), {contrib("alice", 3, 350, 1024), contrib("bob", 3, 360, 1024)});
}

template <class F>
Error error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  FAIL("expected a distro::Error");
  return Error(Code::ok, "");
}

}  // namespace

TEST_CASE("ledger: create, commit, reopen and query", "[ledger]") {
  TempDir dir;
  const std::string path = dir / "run.ledger";
  {
    Ledger l(path);
    CHECK(l.last_round() == 0);
    CHECK(l.contributions().empty());
    CHECK(l.totals().empty());
    fill(l);
    l.set_meta("run_id", "abc123");
    l.set_meta("preset", "nano");
    l.set_meta("preset", "micro");  // replaced, not duplicated
    CHECK(l.last_round() == 3);
  }
  Ledger l(path);
  CHECK(l.last_round() == 3);
  CHECK(l.meta("run_id") == "abc123");
  CHECK(l.meta("preset") == "micro");
  CHECK(l.meta("absent") == "");

  auto all = l.contributions();
  REQUIRE(all.size() == 7);
  // Newest first, then by node name.
  CHECK(all[0].step == 3);
  CHECK(all[0].node == "alice");
  CHECK(all[1].node == "bob");
  CHECK(all[2].step == 2);
  CHECK(all[2].node == "alice");
  CHECK(all[4].node == "carol");
  CHECK_FALSE(all[4].accepted);
  CHECK(all[4].reason == "wrong step");
  CHECK(all[4].bytes_up == 40);
  CHECK(all[4].bytes_down == 1002);
  CHECK(all[4].tokens == 512);
  CHECK(all[4].unix_ms == 1700000002000);
  CHECK(all[6].step == 1);

  auto bob = l.contributions("bob", 2);
  REQUIRE(bob.size() == 2);
  CHECK(bob[0].step == 3);
  CHECK(bob[0].bytes_up == 360);
  CHECK(bob[1].step == 2);
  CHECK(l.contributions("bob").size() == 3);
  CHECK(l.contributions("nobody").empty());
  CHECK(l.contributions("", 1).size() == 1);

  auto rounds = l.rounds(2, 0);
  REQUIRE(rounds.size() == 2);
  CHECK(rounds[0].step == 2);
  CHECK(rounds[0].param_hash == 0xF000000000000002ull);
  CHECK(rounds[0].update_bytes == 1002);
  CHECK(rounds[0].contributors == 2);
  CHECK(rounds[0].unix_ms == 1700000002000);
  CHECK(rounds[1].step == 3);
  CHECK(l.rounds(1, 1).size() == 1);
  CHECK(l.rounds(4, 0).empty());
}

TEST_CASE("ledger: totals per node, sorted by name", "[ledger]") {
  TempDir dir;
  Ledger l(dir / "run.ledger");
  fill(l);
  auto t = l.totals();
  REQUIRE(t.size() == 3);
  CHECK(t[0].node == "alice");
  CHECK(t[0].rounds == 3);
  CHECK(t[0].tokens == 1024 + 2048 + 1024);
  CHECK(t[0].bytes_up == 300 + 330 + 350);
  CHECK(t[0].bytes_down == 1001 + 1002 + 1003);
  CHECK(t[0].rejected == 0);
  CHECK(t[0].first_ms == 1700000001000);
  CHECK(t[0].last_ms == 1700000003000);
  CHECK(t[1].node == "bob");
  CHECK(t[1].bytes_up == 310 + 320 + 360);
  // A refused contribution counts its traffic but neither a round nor tokens.
  CHECK(t[2].node == "carol");
  CHECK(t[2].rounds == 0);
  CHECK(t[2].rejected == 1);
  CHECK(t[2].tokens == 0);
  CHECK(t[2].bytes_up == 40);
}

TEST_CASE("ledger: timestamps of 0 mean now; long reasons are cut at a UTF-8 boundary", "[ledger]") {
  TempDir dir;
  Ledger l(dir / "run.ledger");
  RoundRecord r;
  r.step = 1;
  Contribution c;
  c.node = "n";
  c.step = 1;
  c.accepted = false;
  c.reason = std::string(kMaxLedgerReason - 1, 'x') + "\xC3\xA9" + "tail";  // "é" straddles the limit
  const int64_t before = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch()).count();
  l.commit_round(r, {c});
  auto got = l.contributions();
  REQUIRE(got.size() == 1);
  CHECK(got[0].reason == std::string(kMaxLedgerReason - 1, 'x'));
  CHECK(got[0].unix_ms >= before);
  CHECK(l.rounds(1, 0).at(0).unix_ms == got[0].unix_ms);
}

TEST_CASE("ledger: history is never rewritten; an identical re-commit is a no-op", "[ledger]") {
  TempDir dir;
  Ledger l(dir / "run.ledger");
  fill(l);
  const size_t rows = l.contributions().size();

  SECTION("identical round again, other timestamps and order: accepted, nothing added") {
    RoundRecord r = round_of(2, 2);
    r.unix_ms += 5000;
    auto again = std::vector<Contribution>{contrib("carol", 2, 40, 512, false, "wrong step"),
                                           contrib("alice", 2, 330, 2048), contrib("bob", 2, 320, 2048)};
    for (auto& c : again) c.unix_ms += 777;
    l.commit_round(r, again);
    CHECK(l.contributions().size() == rows);
    CHECK(l.last_round() == 3);
    CHECK(l.rounds(2, 1).at(0).unix_ms == 1700000002000);  // the first record stands
  }
  SECTION("the same step with another hash") {
    RoundRecord r = round_of(3, 2);
    r.param_hash ^= 1;
    Error e = error_of([&] { l.commit_round(r, {contrib("alice", 3, 350, 1024), contrib("bob", 3, 360, 1024)}); });
    CHECK(e.code() == Code::state);
    CHECK_THAT(e.what(), Catch::Contains("rewrite history"));
  }
  SECTION("the same step with a contribution missing") {
    Error e = error_of([&] { l.commit_round(round_of(3, 2), {contrib("alice", 3, 350, 1024)}); });
    CHECK(e.code() == Code::state);
  }
  SECTION("the same step with other bytes") {
    Error e = error_of(
        [&] { l.commit_round(round_of(3, 2), {contrib("alice", 3, 351, 1024), contrib("bob", 3, 360, 1024)}); });
    CHECK(e.code() == Code::state);
  }
  SECTION("a step below the last that was never recorded") {
    l.commit_round(round_of(10, 1), {contrib("alice", 10, 1, 1)});
    Error e = error_of([&] { l.commit_round(round_of(7, 1), {contrib("alice", 7, 1, 1)}); });
    CHECK(e.code() == Code::state);
    CHECK_THAT(e.what(), Catch::Contains("increasing order"));
    CHECK(l.rounds(7, 1).at(0).step == 10);
  }
  SECTION("bad records are refused before anything is written") {
    CHECK(error_of([&] { l.commit_round(round_of(0, 0), {}); }).code() == Code::invalid_argument);
    Error e = error_of([&] { l.commit_round(round_of(4, 1), {contrib("alice", 5, 1, 1)}); });
    CHECK(e.code() == Code::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("step 5"));
    e = error_of([&] { l.commit_round(round_of(4, 2), {contrib("alice", 4, 1, 1), contrib("alice", 4, 2, 2)}); });
    CHECK(e.code() == Code::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("twice"));
    CHECK(error_of([&] { l.commit_round(round_of(4, 1), {contrib("", 4, 1, 1)}); }).code() == Code::invalid_argument);
    CHECK(error_of([&] { l.commit_round(round_of(4, 1), {contrib(std::string(kMaxLedgerNodeName + 1, 'n'), 4, 1, 1)}); })
              .code() == Code::invalid_argument);
    CHECK(error_of([&] { l.commit_round(round_of(4, 1), {contrib(std::string("a\0b", 3), 4, 1, 1)}); }).code() ==
          Code::invalid_argument);
    CHECK(error_of([&] { l.commit_round(round_of(4, 1), {contrib("alice", 4, ~uint64_t(0), 1)}); }).code() ==
          Code::invalid_argument);
    CHECK(l.last_round() == 3);
    CHECK(l.contributions().size() == rows);
    // A name of exactly the longest length is fine.
    l.commit_round(round_of(4, 1), {contrib(std::string(kMaxLedgerNodeName, 'n'), 4, 1, 1)});
    CHECK(l.last_round() == 4);
  }
}

TEST_CASE("ledger: a file that is not SQLite is refused and left untouched", "[ledger]") {
  TempDir dir;
  const std::string path = dir / "garbage.ledger";
  std::string junk(8192, '\0');
  for (size_t i = 0; i < junk.size(); ++i) junk[i] = char((i * 2654435761u) >> 13);
  write_all(path, junk);
  Error e = error_of([&] { Ledger l(path); });
  CHECK(e.code() == Code::corrupt);
  CHECK_THAT(e.what(), Catch::Contains(path));
  CHECK(read_all(path) == junk);
  CHECK_FALSE(fs::exists(path + "-wal"));
  CHECK(error_of([&] { Ledger l(path, Ledger::Mode::read_only); }).code() == Code::corrupt);
}

TEST_CASE("ledger: a damaged ledger reports corrupt", "[ledger]") {
  TempDir dir;
  const std::string path = dir / "run.ledger";
  {
    Ledger l(path);
    for (uint64_t s = 1; s <= 200; ++s)
      l.commit_round(round_of(s, 1), {contrib("node-with-a-longish-name-" + std::to_string(s % 7), s, s, s)});
  }
  std::string bytes = read_all(path);
  REQUIRE(bytes.size() > 3 * 4096);
  for (size_t i = 4096; i < bytes.size(); ++i) bytes[i] = char(0xA5 ^ i);  // every page but the header's
  write_all(path, bytes);
  // Page 1 still reads, so the failure may come at open or at the first query; either way: corrupt.
  Error e = error_of([&] {
    Ledger l(path);
    (void)l.totals();
    (void)l.contributions();
  });
  CHECK(e.code() == Code::corrupt);
  CHECK_THAT(e.what(), Catch::Contains(path));
}

TEST_CASE("ledger: newer schema versions and other applications' databases are refused", "[ledger]") {
  TempDir dir;
  SECTION("future schema version") {
    const std::string path = dir / "future.ledger";
    { Ledger l(path); }
    raw_sql(path, "PRAGMA user_version = 2");
    Error e = error_of([&] { Ledger l(path); });
    CHECK(e.code() == Code::mismatch);
    CHECK_THAT(e.what(), Catch::Contains("schema version 2") && Catch::Contains("newer") && Catch::Contains(path));
    CHECK(error_of([&] { Ledger l(path, Ledger::Mode::read_only); }).code() == Code::mismatch);
  }
  SECTION("another application's SQLite file") {
    const std::string path = dir / "other.db";
    raw_sql(path, "CREATE TABLE songs(title TEXT); INSERT INTO songs VALUES ('la')");
    const std::string before = read_all(path);
    Error e = error_of([&] { Ledger l(path); });
    CHECK(e.code() == Code::mismatch);
    CHECK_THAT(e.what(), Catch::Contains("another application"));
    CHECK(read_all(path) == before);
  }
  SECTION("the ledger's id with a table missing") {
    const std::string path = dir / "broken.ledger";
    { Ledger l(path); }
    raw_sql(path, "DROP TABLE contributions");
    Error e = error_of([&] { Ledger l(path); });
    CHECK(e.code() == Code::corrupt);
    CHECK_THAT(e.what(), Catch::Contains("contributions"));
  }
}

TEST_CASE("ledger: read-only opening and missing files", "[ledger]") {
  TempDir dir;
  CHECK(error_of([&] { Ledger l(dir / "absent.ledger", Ledger::Mode::read_only); }).code() == Code::not_found);
  CHECK_FALSE(fs::exists(dir / "absent.ledger"));
  CHECK(error_of([&] { Ledger l(dir / "no-such-folder/x.ledger"); }).code() == Code::io);
  CHECK(error_of([&] { Ledger l(dir.path.string()); }).code() == Code::io);
  CHECK(error_of([&] { Ledger l(""); }).code() == Code::invalid_argument);
  write_all(dir / "empty.ledger", "");
  CHECK(error_of([&] { Ledger l(dir / "empty.ledger", Ledger::Mode::read_only); }).code() == Code::corrupt);
  { Ledger l(dir / "empty.ledger"); }  // an empty file is a new ledger when writing is allowed
  {
    Ledger w(dir / "run.ledger");
    fill(w);
  }
  Ledger r(dir / "run.ledger", Ledger::Mode::read_only);
  CHECK(r.last_round() == 3);
  CHECK(r.totals().size() == 3);
  CHECK(error_of([&] { r.commit_round(round_of(4, 0), {}); }).code() == Code::state);
  CHECK(error_of([&] { r.set_meta("k", "v"); }).code() == Code::state);
}

TEST_CASE("ledger: a concurrent reader sees whole rounds only", "[ledger]") {
  TempDir dir;
  const std::string path = dir / "run.ledger";
  Ledger writer(path);
  Ledger reader(path, Ledger::Mode::read_only);
  const uint64_t kRounds = 150;
  std::atomic<bool> started{false}, done{false};
  std::vector<uint64_t> seen;
  bool torn = false;
  std::thread t([&] {
    uint64_t last = 0;
    while (true) {
      bool finished = done.load();
      // totals() is one statement: each node's round count must be the same in every snapshot.
      auto tot = reader.totals();
      uint64_t r = tot.empty() ? 0 : tot[0].rounds;
      for (const auto& n : tot) torn = torn || n.rounds != r;
      if (r < last) torn = true;
      last = r;
      seen.push_back(r);
      started = true;
      if (finished) break;
    }
  });
  while (!started) std::this_thread::yield();
  for (uint64_t s = 1; s <= kRounds; ++s)
    writer.commit_round(round_of(s, 3), {contrib("a", s, 1, 1), contrib("b", s, 1, 1), contrib("c", s, 1, 1)});
  done = true;
  t.join();
  CHECK_FALSE(torn);
  CHECK(seen.front() == 0);
  CHECK(seen.back() == kRounds);
  CHECK(reader.last_round() == kRounds);
}

TEST_CASE("ledger: a writer killed mid-commit leaves whole rounds", "[ledger]") {
  TempDir dir;
  const std::string path = dir / "run.ledger";
  { Ledger l(path); }
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // The child commits rounds until it is killed; it never returns into the test runner.
    try {
      Ledger l(path);
      for (uint64_t s = 1;; ++s) {
        std::vector<Contribution> cs;
        for (int n = 0; n < 8; ++n) cs.push_back(contrib("node" + std::to_string(n), s, s, 64));
        l.commit_round(round_of(s, 8), cs);
      }
    } catch (...) {
    }
    ::_exit(3);
  }
  // Wait until some rounds are durable, then kill at an arbitrary instant.
  uint64_t seen = 0;
  for (int i = 0; i < 2000 && seen < 20; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    try {
      Ledger r(path, Ledger::Mode::read_only);
      seen = r.last_round();
    } catch (const Error&) {
    }
  }
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(seen >= 20);
  Ledger l(path);
  const uint64_t last = l.last_round();
  CHECK(last >= seen);
  CHECK(l.rounds(1, 0).size() == last);
  auto tot = l.totals();
  REQUIRE(tot.size() == 8);
  for (const auto& n : tot) CHECK(n.rounds == last);
  // The run goes on from where it stopped.
  l.commit_round(round_of(last + 1, 0), {});
  CHECK(l.last_round() == last + 1);
}

// tests/data/ledger-v1.sqlite is a ledger of schema version 1 holding exactly fill()'s rounds and
// meta "run_id" = "fixture"; the C API and Python tests read it. This test proves the committed file
// still reads as this library writes it, so version-1 files stay readable. To write it again:
//   DISTRO_WRITE_LEDGER_FIXTURE=tests/data/ledger-v1.sqlite build/bin/distro_tests "ledger: the schema*"
TEST_CASE("ledger: the schema version 1 fixture reads as written", "[ledger]") {
  TempDir dir;
  if (const char* out = std::getenv("DISTRO_WRITE_LEDGER_FIXTURE")) {
    std::error_code ec;
    fs::remove(out, ec);
    Ledger w(out);
    fill(w);
    w.set_meta("run_id", "fixture");
  }
  const std::string fixture = std::string(DISTRO_TEST_DATA) + "/ledger-v1.sqlite";
  REQUIRE(fs::exists(fixture));
  // Read a copy: even a read-only reader of a WAL database leaves -wal and -shm files beside it.
  const std::string copy = dir / "fixture.sqlite";
  fs::copy_file(fixture, copy);
  Ledger got(copy, Ledger::Mode::read_only);
  Ledger want(dir / "fresh.sqlite");
  fill(want);
  CHECK(got.meta("run_id") == "fixture");
  CHECK(got.last_round() == want.last_round());
  auto a = got.contributions(), b = want.contributions();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].node == b[i].node);
    CHECK(a[i].step == b[i].step);
    CHECK(a[i].bytes_up == b[i].bytes_up);
    CHECK(a[i].bytes_down == b[i].bytes_down);
    CHECK(a[i].tokens == b[i].tokens);
    CHECK(a[i].accepted == b[i].accepted);
    CHECK(a[i].reason == b[i].reason);
    CHECK(a[i].unix_ms == b[i].unix_ms);
  }
  auto ra = got.rounds(1, 0), rb = want.rounds(1, 0);
  REQUIRE(ra.size() == rb.size());
  for (size_t i = 0; i < ra.size(); ++i) {
    CHECK(ra[i].step == rb[i].step);
    CHECK(ra[i].contributors == rb[i].contributors);
    CHECK(ra[i].update_bytes == rb[i].update_bytes);
    CHECK(ra[i].param_hash == rb[i].param_hash);
    CHECK(ra[i].unix_ms == rb[i].unix_ms);
  }
}
