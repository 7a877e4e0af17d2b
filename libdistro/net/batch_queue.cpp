#include "net/batch_queue.hpp"

#include "core/error.hpp"

namespace distro::net {

BatchQueue::BatchQueue(uint32_t slots) : slots_(slots) {
  if (slots == 0) fail(Code::invalid_argument, "a round needs at least 1 batch slot; 0 given");
}

BatchQueue::BatchQueue(uint32_t slots, uint64_t next_fresh, const std::vector<uint64_t>& owed)
    : BatchQueue(slots) {
  next_fresh_ = next_fresh;
  for (uint64_t id : owed) {
    if (id >= next_fresh)
      fail(Code::corrupt, "owed batch " + std::to_string(id) + " was never handed out (the next fresh batch is " +
                              std::to_string(next_fresh) + ")");
    if (!owed_.insert(id).second) fail(Code::corrupt, "owed batch " + std::to_string(id) + " is listed twice");
  }
}

std::vector<uint64_t> BatchQueue::take(size_t n) {
  std::vector<uint64_t> out;
  while (out.size() < n && !owed_.empty()) {
    out.push_back(*owed_.begin());
    owed_.erase(owed_.begin());
  }
  while (out.size() < n) out.push_back(next_fresh_++);
  return out;
}

void BatchQueue::give_back(const std::vector<uint64_t>& ids) {
  for (uint64_t id : ids) {
    if (id >= next_fresh_)
      fail(Code::invalid_argument, "batch " + std::to_string(id) + " was never handed out; it cannot be given back");
    if (!owed_.insert(id).second) fail(Code::invalid_argument, "batch " + std::to_string(id) + " is owed already");
  }
}

BatchCoords BatchQueue::coords(uint64_t batch_id) const {
  return {batch_id / slots_ + 1, uint32_t(batch_id % slots_), slots_};
}

}  // namespace distro::net
