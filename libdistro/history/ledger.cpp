#include "history/ledger.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <limits>
#include <set>
#include <unordered_map>

#include "core/error.hpp"

namespace distro {

namespace {

// PRAGMA application_id of a ledger: "DsTr". Tells our files from other applications' SQLite files.
constexpr int32_t kApplicationId = 0x44735472;

const char* const kSchema[] = {
    "CREATE TABLE meta(key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE rounds(step INTEGER PRIMARY KEY NOT NULL CHECK(step > 0), contributors INTEGER NOT NULL,"
    " update_bytes INTEGER NOT NULL, param_hash INTEGER NOT NULL, unix_ms INTEGER NOT NULL)",
    "CREATE TABLE contributions(step INTEGER NOT NULL REFERENCES rounds(step), node TEXT NOT NULL,"
    " bytes_up INTEGER NOT NULL, bytes_down INTEGER NOT NULL, tokens INTEGER NOT NULL,"
    " accepted INTEGER NOT NULL CHECK(accepted IN (0, 1)), reason TEXT NOT NULL, unix_ms INTEGER NOT NULL,"
    " PRIMARY KEY(step, node)) WITHOUT ROWID",
    "CREATE INDEX contributions_by_node ON contributions(node, step)",
};
const char* const kTables[] = {"meta", "rounds", "contributions"};

constexpr const char* kContributionColumns =
    "SELECT node, step, bytes_up, bytes_down, tokens, accepted, reason, unix_ms FROM contributions ";

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// SQLite stores signed 64-bit integers; hashes use all 64 bits, so they are stored bit for bit.
int64_t as_sql(uint64_t v) { return static_cast<int64_t>(v); }
uint64_t from_sql(int64_t v) { return static_cast<uint64_t>(v); }

// Cuts s to at most n bytes without splitting a UTF-8 sequence.
std::string cut_utf8(const std::string& s, size_t n) {
  if (s.size() <= n) return s;
  size_t end = n;
  while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
  return s.substr(0, end);
}

}  // namespace

struct Ledger::Db {
  std::string path;
  sqlite3* conn = nullptr;
  bool read_only = false;
  std::unordered_map<std::string, sqlite3_stmt*> cache;

  ~Db() {
    for (auto& [sql, st] : cache) sqlite3_finalize(st);
    sqlite3_close_v2(conn);
  }

  std::string where() const { return "ledger " + path + ": "; }

  // Turns a SQLite failure into an Error naming the file, what was being done and what is wrong.
  [[noreturn]] void raise(int rc, const std::string& doing) const {
    std::string msg = where() + doing + ": " + (conn ? sqlite3_errmsg(conn) : sqlite3_errstr(rc));
    switch (rc & 0xFF) {
      case SQLITE_CORRUPT:
      case SQLITE_NOTADB:
        fail(Code::corrupt, msg + " (the file is damaged or is not a SQLite database; expected a libdistro ledger)");
      case SQLITE_NOMEM:
        fail(Code::out_of_memory, msg);
      case SQLITE_BUSY:
      case SQLITE_LOCKED:
        fail(Code::io, msg + " (another connection held the ledger locked for over " +
                           std::to_string(kLedgerBusyTimeoutMs) + " ms)");
      case SQLITE_ERROR:
        // A statement of this library failed to prepare or run: a table or column is missing.
        fail(Code::corrupt, msg + " (the ledger's schema is damaged)");
      default:
        fail(Code::io, msg);
    }
  }

  // A prepared statement, compiled once per connection and reset after every use.
  class Stmt {
   public:
    Stmt(const Db& db, sqlite3_stmt* st) : db_(db), st_(st) {}
    Stmt(const Stmt&) = delete;
    Stmt& operator=(const Stmt&) = delete;
    ~Stmt() {
      sqlite3_reset(st_);
      sqlite3_clear_bindings(st_);
    }
    Stmt& bind(int i, int64_t v) { return check(sqlite3_bind_int64(st_, i, v)); }
    Stmt& bind(int i, const std::string& v) {
      return check(sqlite3_bind_text(st_, i, v.data(), int(v.size()), SQLITE_TRANSIENT));
    }
    // True while a row is available.
    bool step() {
      int rc = sqlite3_step(st_);
      if (rc == SQLITE_ROW) return true;
      if (rc == SQLITE_DONE) return false;
      db_.raise(rc, "running \"" + std::string(sqlite3_sql(st_)) + "\"");
    }
    void run() {
      while (step()) {
      }
    }
    int64_t i64(int col) const { return sqlite3_column_int64(st_, col); }
    std::string text(int col) const {
      const unsigned char* p = sqlite3_column_text(st_, col);
      return p ? std::string(reinterpret_cast<const char*>(p), size_t(sqlite3_column_bytes(st_, col))) : std::string();
    }

   private:
    Stmt& check(int rc) {
      if (rc != SQLITE_OK) db_.raise(rc, "binding a value");
      return *this;
    }
    const Db& db_;
    sqlite3_stmt* st_;
  };

  Stmt prepare(const std::string& sql) {
    auto it = cache.find(sql);
    if (it == cache.end()) {
      sqlite3_stmt* st = nullptr;
      int rc = sqlite3_prepare_v3(conn, sql.c_str(), int(sql.size()), SQLITE_PREPARE_PERSISTENT, &st, nullptr);
      if (rc != SQLITE_OK) raise(rc, "preparing \"" + sql + "\"");
      it = cache.emplace(sql, st).first;
    }
    return Stmt(*this, it->second);
  }

  void exec(const std::string& sql) { prepare(sql).run(); }

  int64_t scalar(const std::string& sql) {
    Stmt s = prepare(sql);
    return s.step() ? s.i64(0) : 0;
  }

  // Rolls back on scope exit unless committed; BEGIN IMMEDIATE takes the write lock at once, so the
  // checks made inside see what the write will be made against.
  class Transaction {
   public:
    explicit Transaction(Db& db) : db_(db) { db_.exec("BEGIN IMMEDIATE"); }
    ~Transaction() {
      if (!done_) sqlite3_exec(db_.conn, "ROLLBACK", nullptr, nullptr, nullptr);
    }
    void commit() {
      db_.exec("COMMIT");
      done_ = true;
    }

   private:
    Db& db_;
    bool done_ = false;
  };

  void open(Mode mode) {
    namespace fs = std::filesystem;
    read_only = mode == Mode::read_only;
    std::error_code ec;
    if (read_only && !fs::exists(path, ec))
      fail(Code::not_found, where() + "no such file; expected a ledger written by a libdistro coordinator or node");
    if (fs::is_directory(path, ec)) fail(Code::io, where() + "is a directory; expected a ledger file");
    int flags = (read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) | SQLITE_OPEN_FULLMUTEX;
    int rc = sqlite3_open_v2(path.c_str(), &conn, flags, nullptr);
    if (rc != SQLITE_OK) raise(rc, read_only ? "cannot open it" : "cannot open or create it");
    sqlite3_extended_result_codes(conn, 1);
    sqlite3_busy_timeout(conn, kLedgerBusyTimeoutMs);
    // Identify the file before anything is written to it, so a foreign file is left as it was.
    if (!identify()) {
      if (read_only) fail(Code::corrupt, where() + "is an empty database; expected a libdistro ledger");
      create_schema();
    }
    if (!read_only) {
      Stmt wal = prepare("PRAGMA journal_mode=WAL");
      if (!wal.step() || wal.text(0) != "wal")
        fail(Code::io, where() + "cannot switch to the WAL journal (the file system lacks shared memory?)");
    }
    exec("PRAGMA synchronous=FULL");
    exec("PRAGMA foreign_keys=ON");
  }

  // False for an empty database (a new file); true for a ledger this library reads; throws otherwise.
  bool identify() {
    int64_t app = scalar("PRAGMA application_id");
    int64_t version = scalar("PRAGMA user_version");
    int64_t objects = scalar("SELECT count(*) FROM sqlite_master");
    if (app == 0 && version == 0 && objects == 0) return false;
    if (app != kApplicationId)
      fail(Code::mismatch, where() + "is a SQLite database of another application (application_id " +
                               std::to_string(app) + ", " + std::to_string(objects) +
                               " schema objects); expected a libdistro ledger");
    if (version > kLedgerSchemaVersion)
      fail(Code::mismatch, where() + "has schema version " + std::to_string(version) +
                               ", written by a newer libdistro; this library reads versions up to " +
                               std::to_string(kLedgerSchemaVersion));
    if (version < 1)
      fail(Code::corrupt, where() + "carries the ledger id but schema version " + std::to_string(version) +
                              "; expected 1.." + std::to_string(kLedgerSchemaVersion));
    for (const char* table : kTables) {
      Stmt s = prepare("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1");
      s.bind(1, std::string(table));
      if (!s.step() || s.i64(0) != 1)
        fail(Code::corrupt, where() + "lacks its table '" + table + "' (the schema is damaged)");
    }
    return true;
  }

  void create_schema() {
    Transaction t(*this);
    // Another process may have created it between our look and our lock.
    if (scalar("SELECT count(*) FROM sqlite_master") != 0) {
      t.commit();
      if (!identify()) fail(Code::internal, where() + "schema vanished while opening");
      return;
    }
    for (const char* sql : kSchema) exec(sql);
    exec("PRAGMA application_id=" + std::to_string(kApplicationId));
    exec("PRAGMA user_version=" + std::to_string(kLedgerSchemaVersion));
    t.commit();
  }

  static Contribution read_contribution(const Stmt& s) {
    Contribution c;
    c.node = s.text(0);
    c.step = from_sql(s.i64(1));
    c.bytes_up = from_sql(s.i64(2));
    c.bytes_down = from_sql(s.i64(3));
    c.tokens = from_sql(s.i64(4));
    c.accepted = s.i64(5) != 0;
    c.reason = s.text(6);
    c.unix_ms = s.i64(7);
    return c;
  }

  void writable(const char* what) const {
    if (read_only) fail(Code::state, where() + "opened read-only; cannot " + what);
  }
};

namespace {

uint64_t checked_count(uint64_t v, const char* what, const std::string& node) {
  if (v > uint64_t(std::numeric_limits<int64_t>::max()))
    fail(Code::invalid_argument, std::string(what) + " of node '" + node + "' is " + std::to_string(v) +
                                     "; expected at most 2^63-1");
  return v;
}

void check_node_name(const std::string& node) {
  if (node.empty() || node.size() > kMaxLedgerNodeName || node.find('\0') != std::string::npos)
    fail(Code::invalid_argument, "node name '" + cut_utf8(node, 64) + "' (" + std::to_string(node.size()) +
                                     " bytes) is not valid; expected 1.." + std::to_string(kMaxLedgerNodeName) +
                                     " bytes without NUL");
}

// The fields that make two records of one round identical: everything but the timestamps.
bool same_round(const RoundRecord& a, const RoundRecord& b) {
  return a.step == b.step && a.contributors == b.contributors && a.update_bytes == b.update_bytes &&
         a.param_hash == b.param_hash;
}
bool same_contribution(const Contribution& a, const Contribution& b) {
  return a.node == b.node && a.step == b.step && a.bytes_up == b.bytes_up && a.bytes_down == b.bytes_down &&
         a.tokens == b.tokens && a.accepted == b.accepted && a.reason == b.reason;
}

}  // namespace

Ledger::Ledger(const std::string& path, Mode mode) : path_(path), db_(std::make_unique<Db>()) {
  if (path.empty()) fail(Code::invalid_argument, "ledger path is empty; expected a file path");
  db_->path = path;
  db_->open(mode);
}

Ledger::~Ledger() = default;

void Ledger::commit_round(const RoundRecord& round_in, const std::vector<Contribution>& contributions_in) {
  db_->writable("commit a round");
  const std::string at = "round " + std::to_string(round_in.step) + ": ";
  if (round_in.step == 0 || round_in.step > uint64_t(std::numeric_limits<int64_t>::max()))
    fail(Code::invalid_argument, at + "step must be 1..2^63-1");
  if (round_in.update_bytes > uint64_t(std::numeric_limits<int64_t>::max()))
    fail(Code::invalid_argument, at + "update_bytes exceeds 2^63-1");
  RoundRecord round = round_in;
  if (round.unix_ms == 0) round.unix_ms = now_ms();
  std::vector<Contribution> rows = contributions_in;
  std::set<std::string> seen;
  for (Contribution& c : rows) {
    check_node_name(c.node);
    if (c.step != round.step)
      fail(Code::invalid_argument, at + "the contribution of node '" + c.node + "' is for step " +
                                       std::to_string(c.step) + "; expected the round's step");
    if (!seen.insert(c.node).second)
      fail(Code::invalid_argument, at + "node '" + c.node + "' appears twice; expected one contribution per node");
    checked_count(c.bytes_up, "bytes_up", c.node);
    checked_count(c.bytes_down, "bytes_down", c.node);
    checked_count(c.tokens, "tokens", c.node);
    c.reason = cut_utf8(c.reason, kMaxLedgerReason);
    if (c.unix_ms == 0) c.unix_ms = round.unix_ms;
  }
  std::sort(rows.begin(), rows.end(), [](const Contribution& a, const Contribution& b) { return a.node < b.node; });

  Db::Transaction t(*db_);
  uint64_t last = from_sql(db_->scalar("SELECT coalesce(max(step), 0) FROM rounds"));
  if (round.step <= last) {
    auto recorded = rounds(round.step, 1);
    if (recorded.empty() || recorded[0].step != round.step)
      fail(Code::state, db_->where() + at + "is at or below the last committed round " + std::to_string(last) +
                            " and was never recorded; rounds are committed in increasing order");
    std::vector<Contribution> had;
    {
      Db::Stmt s = db_->prepare(std::string(kContributionColumns) + "WHERE step = ?1 ORDER BY node");
      s.bind(1, as_sql(round.step));
      while (s.step()) had.push_back(Db::read_contribution(s));
    }
    bool same = same_round(recorded[0], round) && had.size() == rows.size() &&
                std::equal(had.begin(), had.end(), rows.begin(), same_contribution);
    if (!same)
      fail(Code::state, db_->where() + at + "is already recorded with other contents; committing it again "
                                            "would rewrite history (only an identical re-commit is accepted)");
    return;  // identical: nothing to write; the transaction rolls back
  }
  {
    Db::Stmt s = db_->prepare(
        "INSERT INTO rounds(step, contributors, update_bytes, param_hash, unix_ms) VALUES (?1, ?2, ?3, ?4, ?5)");
    s.bind(1, as_sql(round.step)).bind(2, int64_t(round.contributors)).bind(3, as_sql(round.update_bytes));
    s.bind(4, as_sql(round.param_hash)).bind(5, round.unix_ms).run();
  }
  for (const Contribution& c : rows) {
    Db::Stmt s = db_->prepare(
        "INSERT INTO contributions(step, node, bytes_up, bytes_down, tokens, accepted, reason, unix_ms)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");
    s.bind(1, as_sql(c.step)).bind(2, c.node).bind(3, as_sql(c.bytes_up)).bind(4, as_sql(c.bytes_down));
    s.bind(5, as_sql(c.tokens)).bind(6, int64_t(c.accepted ? 1 : 0)).bind(7, c.reason).bind(8, c.unix_ms).run();
  }
  t.commit();
}

uint64_t Ledger::last_round() const { return from_sql(db_->scalar("SELECT coalesce(max(step), 0) FROM rounds")); }

std::vector<Contribution> Ledger::contributions(const std::string& node, uint64_t limit) const {
  // LIMIT -1 is SQLite's "no limit".
  const int64_t lim = limit == 0 || limit > uint64_t(std::numeric_limits<int64_t>::max()) ? -1 : int64_t(limit);
  std::vector<Contribution> out;
  if (node.empty()) {
    Db::Stmt s = db_->prepare(std::string(kContributionColumns) + "ORDER BY step DESC, node ASC LIMIT ?1");
    s.bind(1, lim);
    while (s.step()) out.push_back(Db::read_contribution(s));
  } else {
    Db::Stmt s = db_->prepare(std::string(kContributionColumns) + "WHERE node = ?1 ORDER BY step DESC LIMIT ?2");
    s.bind(1, node).bind(2, lim);
    while (s.step()) out.push_back(Db::read_contribution(s));
  }
  return out;
}

std::vector<NodeTotals> Ledger::totals() const {
  // One statement, so a concurrent commit is seen whole or not at all.
  Db::Stmt s = db_->prepare(
      "SELECT node, sum(accepted), sum(CASE WHEN accepted THEN tokens ELSE 0 END), sum(bytes_up), sum(bytes_down),"
      " sum(1 - accepted), min(unix_ms), max(unix_ms) FROM contributions GROUP BY node ORDER BY node");
  std::vector<NodeTotals> out;
  while (s.step()) {
    NodeTotals t;
    t.node = s.text(0);
    t.rounds = from_sql(s.i64(1));
    t.tokens = from_sql(s.i64(2));
    t.bytes_up = from_sql(s.i64(3));
    t.bytes_down = from_sql(s.i64(4));
    t.rejected = from_sql(s.i64(5));
    t.first_ms = s.i64(6);
    t.last_ms = s.i64(7);
    out.push_back(std::move(t));
  }
  return out;
}

std::vector<RoundRecord> Ledger::rounds(uint64_t from_step, uint64_t limit) const {
  const int64_t lim = limit == 0 || limit > uint64_t(std::numeric_limits<int64_t>::max()) ? -1 : int64_t(limit);
  if (from_step > uint64_t(std::numeric_limits<int64_t>::max())) return {};
  Db::Stmt s = db_->prepare(
      "SELECT step, contributors, update_bytes, param_hash, unix_ms FROM rounds WHERE step >= ?1 ORDER BY step"
      " LIMIT ?2");
  s.bind(1, int64_t(from_step)).bind(2, lim);
  std::vector<RoundRecord> out;
  while (s.step()) {
    RoundRecord r;
    r.step = from_sql(s.i64(0));
    r.contributors = uint32_t(s.i64(1));
    r.update_bytes = from_sql(s.i64(2));
    r.param_hash = from_sql(s.i64(3));
    r.unix_ms = s.i64(4);
    out.push_back(r);
  }
  return out;
}

void Ledger::set_meta(const std::string& key, const std::string& value) {
  db_->writable("set metadata");
  if (key.empty() || key.size() > 255) fail(Code::invalid_argument, "metadata key must be 1..255 bytes");
  if (value.size() > 65536)
    fail(Code::invalid_argument, "metadata value of '" + key + "' is " + std::to_string(value.size()) +
                                     " bytes; expected at most 65536");
  Db::Stmt s = db_->prepare("INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2");
  s.bind(1, key).bind(2, value).run();
}

std::string Ledger::meta(const std::string& key) const {
  Db::Stmt s = db_->prepare("SELECT value FROM meta WHERE key = ?1");
  s.bind(1, key);
  return s.step() ? s.text(0) : std::string();
}

}  // namespace distro
