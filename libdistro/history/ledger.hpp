// The contribution history: a SQLite ledger of committed rounds and of each node's contribution to
// them (DESIGN.md sections 6 and 8). The coordinator writes it, one transaction per round; the node,
// the desktop app and `distro` read it. history/README.md describes the schema and its versions.
//
// Durability: WAL journal with synchronous=FULL, so a committed round survives a kill or a power
// cut; a kill mid-commit leaves the previous round as the last one.
// Thread rules: a Ledger is one SQLite connection and is not locked. Use one Ledger per thread, or
// lock around every call. Several Ledgers (threads or processes) may open the same file: readers see
// whole rounds only, and a writer waits up to the busy timeout for another writer.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace distro {

struct RoundRecord {
  uint64_t step = 0;          // from 1
  uint32_t contributors = 0;  // payloads merged into the round's update
  uint64_t update_bytes = 0;  // size of the encoded merged update
  uint64_t param_hash = 0;    // parameter hash after the update
  int64_t unix_ms = 0;        // when it was committed (ms since 1970, UTC); 0 = now
};

struct Contribution {
  std::string node;  // 1..kMaxLedgerNodeName bytes, no NUL
  uint64_t step = 0;  // must equal the round's step
  uint64_t bytes_up = 0, bytes_down = 0, tokens = 0;
  bool accepted = true;
  std::string reason;  // why it was rejected (empty when accepted); kept up to kMaxLedgerReason bytes
  int64_t unix_ms = 0;  // 0 = the round's time
};

struct NodeTotals {
  std::string node;
  uint64_t rounds = 0;    // rounds with an accepted contribution
  uint64_t tokens = 0;    // trained in its accepted contributions
  uint64_t bytes_up = 0, bytes_down = 0;  // over all its contributions, refused ones too
  uint64_t rejected = 0;  // contributions refused
  int64_t first_ms = 0, last_ms = 0;  // times of its first and last contribution
};

constexpr size_t kMaxLedgerNodeName = 127;  // fits the C API's char[128]
constexpr size_t kMaxLedgerReason = 255;    // longer reasons are cut at a UTF-8 boundary
constexpr int kLedgerSchemaVersion = 1;     // PRAGMA user_version of the files this library writes
constexpr int kLedgerBusyTimeoutMs = 5000;

class Ledger {
 public:
  enum class Mode {
    create,     // open or create, read and write
    read_only,  // the file must exist and be a ledger; nothing is written
  };

  // Opens the ledger at path. Errors name the file and say what is wrong: io (cannot open or create
  // it), not_found (read_only and no such file), corrupt (not a SQLite file, or a damaged ledger),
  // mismatch (a SQLite file of something else, or a newer schema version than this library reads).
  // A file that is not a ledger is never modified.
  explicit Ledger(const std::string& path, Mode mode = Mode::create);
  ~Ledger();
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  const std::string& path() const { return path_; }

  // Records one round and its contributions in one durable transaction. round.step must be above
  // last_round(); committing a step that is already recorded is accepted, as a no-op, only when it is
  // the identical round (same contributors, update_bytes, param_hash and the same set of
  // contributions, timestamps aside): the coordinator may commit a round again after a crash between
  // the ledger commit and its checkpoint. Anything else at or below last_round() would rewrite
  // history: Error(state). Bad records (step 0, a contribution for another step, an empty, long or
  // repeated node name): Error(invalid_argument), nothing written.
  void commit_round(const RoundRecord& round, const std::vector<Contribution>& contributions);

  uint64_t last_round() const;  // highest committed step, 0 when none
  // Newest first (by step, then node name); node "" = every node; limit 0 = all.
  std::vector<Contribution> contributions(const std::string& node = "", uint64_t limit = 0) const;
  std::vector<NodeTotals> totals() const;  // one entry per node, sorted by name (bytewise)
  // Committed rounds with step >= from_step, oldest first; limit 0 = all.
  std::vector<RoundRecord> rounds(uint64_t from_step, uint64_t limit) const;

  // Run metadata (run id, preset, coordinator address): keys 1..255 bytes; values up to 64 KiB.
  void set_meta(const std::string& key, const std::string& value);
  std::string meta(const std::string& key) const;  // "" when the key is absent

 private:
  struct Db;
  std::string path_;
  std::unique_ptr<Db> db_;
};

}  // namespace distro
