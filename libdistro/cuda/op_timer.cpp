#include "cuda/op_timer.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace distro::cuda {

namespace {
// Pairs kept before a drain: bounds the events alive, and keeps the waits rare.
constexpr size_t kDrainAt = 4096;
}  // namespace

OpTimer::OpTimer(CUstream_st* stream, bool force) : stream_(stream) {
  const char* env = std::getenv("DISTRO_CUDA_OP_TIMES");
  enabled_ = force || (env && *env && std::strcmp(env, "0") != 0);
}

OpTimer::~OpTimer() {
  if (!enabled_) return;
  const std::vector<Row> table = rows();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (CUevent_st* e : free_events_) cudaEventDestroy(e);
    free_events_.clear();
  }
  if (table.empty()) return;
  double all = 0.0;
  for (const Row& r : table) all += r.ms;
  std::fprintf(stderr, "\nGPU time per op (DISTRO_CUDA_OP_TIMES), %.1f ms in all:\n", all);
  std::fprintf(stderr, "%-48s %8s %12s %7s\n", "op", "calls", "total ms", "share");
  for (const Row& r : table)
    std::fprintf(stderr, "%-48s %8llu %12.2f %6.1f%%\n", r.op.c_str(), (unsigned long long)r.calls, r.ms,
                 all > 0 ? 100.0 * r.ms / all : 0.0);
}

std::vector<OpTimer::Row> OpTimer::rows() {
  std::lock_guard<std::mutex> lock(mu_);
  drain();
  std::vector<Row> out;
  for (const auto& [name, t] : totals_) out.push_back(Row{name, t.calls, t.ms});
  std::sort(out.begin(), out.end(), [](const Row& a, const Row& b) { return a.ms > b.ms; });
  return out;
}

uint64_t OpTimer::begin(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  if (pending_.size() >= kDrainAt) drain();
  Pending p;
  p.name = name;
  for (CUevent_st** e : {&p.start, &p.stop}) {
    if (!free_events_.empty()) {
      *e = free_events_.back();
      free_events_.pop_back();
    } else if (cudaEventCreate(e) != cudaSuccess) {
      *e = nullptr;
    }
  }
  if (p.start) cudaEventRecord(p.start, stream_);
  const uint64_t id = next_id_++;
  pending_.emplace(id, std::move(p));
  return id;
}

void OpTimer::end(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pending_.find(id);
  if (it == pending_.end()) return;
  if (it->second.stop) cudaEventRecord(it->second.stop, stream_);
  it->second.ended = true;
}

void OpTimer::drain() {
  for (auto it = pending_.begin(); it != pending_.end();) {
    Pending& p = it->second;
    if (!p.ended) {  // a scope still open (another thread's op): keep it
      ++it;
      continue;
    }
    float ms = 0.0f;
    if (p.start && p.stop && cudaEventSynchronize(p.stop) == cudaSuccess &&
        cudaEventElapsedTime(&ms, p.start, p.stop) == cudaSuccess) {
      Total& t = totals_[p.name];
      ++t.calls;
      t.ms += double(ms);
    }
    for (CUevent_st* e : {p.start, p.stop})
      if (e) free_events_.push_back(e);
    it = pending_.erase(it);
  }
  (void)cudaGetLastError();  // a failed timing read must not surface as a later op's error
}

}  // namespace distro::cuda
