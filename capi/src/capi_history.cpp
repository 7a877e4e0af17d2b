// The contribution history handle: a read-only Ledger and the snapshots of its last queries.
#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "guard.hpp"
#include "handles.hpp"
#include "history/ledger.hpp"

struct distro_history {
  std::unique_ptr<distro::Ledger> ledger;
  std::vector<distro::NodeTotals> totals;
  std::vector<distro::Contribution> contributions;
};

using namespace distro;
using namespace distro::capi;

namespace {

// Node names fit (the ledger keeps them to 127 bytes); a file written by other software could hold
// longer text, which is cut rather than overrun.
void copy_text(char* dst, size_t cap, const std::string& s) {
  size_t n = std::min(cap - 1, s.size());
  std::memcpy(dst, s.data(), n);
  dst[n] = '\0';
}

distro_history& impl(const distro_history* h) { return *check_handle(const_cast<distro_history*>(h), "history"); }

void check_index(size_t index, size_t count, const char* query) {
  if (index >= count)
    fail(Code::not_found, "index " + std::to_string(index) + " is out of range; the last " + query + " holds " +
                              std::to_string(count) + " entries");
}

}  // namespace

extern "C" {

DISTRO_API int distro_history_open(distro_history** out, const char* path) {
  return guard([&] {
    need(out, "out");
    need(path, "path");
    auto h = std::make_unique<distro_history>();
    h->ledger = std::make_unique<Ledger>(path, Ledger::Mode::read_only);
    live_handles().add(h.get());
    *out = h.release();
  });
}

DISTRO_API int distro_history_destroy(distro_history* history) {
  return guard([&] {
    if (!history) return;
    check_handle(history, "history");
    live_handles().remove(history);
    delete history;
  });
}

DISTRO_API int distro_history_last_round(uint64_t* out_step, const distro_history* history) {
  return guard([&] {
    need(out_step, "out_step");
    *out_step = impl(history).ledger->last_round();
  });
}

DISTRO_API int distro_history_query_totals(size_t* out_count, distro_history* history) {
  return guard([&] {
    need(out_count, "out_count");
    distro_history& h = impl(history);
    h.totals = h.ledger->totals();
    *out_count = h.totals.size();
  });
}

DISTRO_API int distro_history_get_totals(distro_node_totals* out, const distro_history* history, size_t index) {
  return guard([&] {
    need(out, "out");
    const distro_history& h = impl(history);
    need_size(out->struct_size, sizeof(distro_node_totals), "distro_node_totals");
    check_index(index, h.totals.size(), "distro_history_query_totals");
    const NodeTotals& t = h.totals[index];
    distro_node_totals r = DISTRO_NODE_TOTALS_INIT;
    r.struct_size = out->struct_size;
    copy_text(r.node, sizeof r.node, t.node);
    r.rounds = t.rounds;
    r.tokens = t.tokens;
    r.bytes_up = t.bytes_up;
    r.bytes_down = t.bytes_down;
    r.rejected = t.rejected;
    r.first_ms = t.first_ms;
    r.last_ms = t.last_ms;
    *out = r;
  });
}

DISTRO_API int distro_history_query_contributions(size_t* out_count, distro_history* history, const char* node,
                                                  uint64_t limit) {
  return guard([&] {
    need(out_count, "out_count");
    distro_history& h = impl(history);
    h.contributions = h.ledger->contributions(node ? node : "", limit);
    *out_count = h.contributions.size();
  });
}

DISTRO_API int distro_history_get_contribution(distro_contribution* out, const distro_history* history,
                                               size_t index) {
  return guard([&] {
    need(out, "out");
    const distro_history& h = impl(history);
    need_size(out->struct_size, sizeof(distro_contribution), "distro_contribution");
    check_index(index, h.contributions.size(), "distro_history_query_contributions");
    const Contribution& c = h.contributions[index];
    distro_contribution r = DISTRO_CONTRIBUTION_INIT;
    r.struct_size = out->struct_size;
    copy_text(r.node, sizeof r.node, c.node);
    r.step = c.step;
    r.bytes_up = c.bytes_up;
    r.bytes_down = c.bytes_down;
    r.tokens = c.tokens;
    r.accepted = c.accepted ? 1 : 0;
    copy_text(r.reason, sizeof r.reason, c.reason);
    r.unix_ms = c.unix_ms;
    *out = r;
  });
}

}  // extern "C"
