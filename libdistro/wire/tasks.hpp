// How the host codec and the merger spread work over threads, and how they ask for large arrays.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace distro::wire {

// The default thread count: the hardware's, capped here (the host codec shares the machine).
constexpr unsigned kMaxDefaultThreads = 16;

// `requested`, or for 0 the hardware's thread count capped at kMaxDefaultThreads (at least 1).
unsigned default_threads(unsigned requested = 0);

// Runs task(i) for every i in [0, n) on up to `threads` threads (the caller's included) and waits
// for all of them. Tasks are taken in increasing order. If tasks throw, the exception of the
// lowest-numbered failing task is rethrown here (tasks after a failed one may be skipped), so the
// caller sees the error a plain loop would have met first. No exception ever leaves a worker thread.
//
// The helpers come from one process-wide pool of threads, started on first need and kept (asleep)
// until the process exits, when they are joined: starting 15 threads costs about 0.3-0.5 ms, which a
// 1b step paid about ten times. Any thread may call this, also from inside a task; a call whose
// helpers are all busy with other calls runs its tasks on the calling thread. A forked child starts
// a pool of its own. If a thread cannot be started, the others (at least the caller) do its share.
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

}  // namespace distro::wire
