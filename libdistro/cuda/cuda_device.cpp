#include "cuda/cuda_device.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "backend/registry.hpp"
#include "cuda/cublaslt_gemm.hpp"
#include "cuda/kernels.hpp"
#include "cuda/op_timer.hpp"
#include "optim/dct.hpp"

namespace distro {
namespace {

// "cuda:0: cudaMalloc(1073741824 bytes) failed: cudaErrorMemoryAllocation (out of memory)".
// Clears the runtime's last-error slot so a recoverable error does not resurface in a later call.
[[noreturn]] void raise(int ordinal, const std::string& call, cudaError_t err) {
  (void)cudaGetLastError();
  const Code code = err == cudaErrorMemoryAllocation ? Code::out_of_memory : Code::device;
  fail(code, "cuda:" + std::to_string(ordinal) + ": " + call + " failed: " + cudaGetErrorName(err) +
                 " (" + cudaGetErrorString(err) + ")");
}

inline void check(int ordinal, const char* call, cudaError_t err) {
  if (err != cudaSuccess) raise(ordinal, call, err);
}

#define DISTRO_CUDA_CHECK(expr) check(ordinal_, #expr, (expr))

// Resident 256-thread blocks per SM worth launching for a memory-bound grid-stride kernel.
constexpr unsigned kBlocksPerSm = 8;

}  // namespace

CudaDevice::CudaDevice(int ordinal) : ordinal_(ordinal) {
  cudaDeviceProp prop{};
  DISTRO_CUDA_CHECK(cudaGetDeviceProperties(&prop, ordinal_));
  activate();
  // Our kernels are built for sm_75 and newer; an older GPU (or a build without its architecture)
  // cannot run them, so it is not a usable device.
  DISTRO_CUDA_CHECK(cuda::kernels_loadable());

  cudaStream_t stream = nullptr;
  DISTRO_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  stream_ = stream;

  size_t free_bytes = 0, total_bytes = 0;
  if (cudaError_t err = cudaMemGetInfo(&free_bytes, &total_bytes); err != cudaSuccess) {
    cudaStreamDestroy(stream);
    stream_ = nullptr;
    raise(ordinal_, "cudaMemGetInfo", err);
  }

  info_.name = "cuda:" + std::to_string(ordinal_);
  info_.description = std::string(prop.name) + " (compute " + std::to_string(prop.major) + "." +
                      std::to_string(prop.minor) + ", " + std::to_string(prop.multiProcessorCount) +
                      " SMs)";
  info_.kind = DeviceKind::cuda;
  const int cc = prop.major * 10 + prop.minor;
  // fp16 arithmetic from compute 5.3, bf16 from 8.0; 64-bit integers everywhere; the DisTrO
  // optimizer ops (compress, apply, the gradient check) on every GPU this build runs on.
  info_.flags = kDeviceInt64 | kDeviceOptimizer | (cc >= 53 ? kDeviceFp16 : 0u) |
                (cc >= 80 ? kDeviceBf16 : 0u);
  info_.memory_total = total_bytes;
  info_.memory_free = free_bytes;
  info_.compute_units = uint32_t(prop.multiProcessorCount);
  info_.subgroup_size = uint32_t(prop.warpSize);
  sm_count_ = unsigned(prop.multiProcessorCount > 0 ? prop.multiProcessorCount : 1);
  max_blocks_ = sm_count_ * kBlocksPerSm;
  timer_ = std::make_unique<cuda::OpTimer>(stream_);
}

CudaDevice::~CudaDevice() {
  // Errors are ignored here: at process exit the runtime may already be unloading
  // (cudaErrorCudartUnloading), and a destructor must not throw.
  if (cudaSetDevice(ordinal_) == cudaSuccess) {
    timer_.reset();  // reads its events (and prints) while the stream exists
    if (stream_) cudaStreamDestroy(stream_);
  }
  (void)cudaGetLastError();
}

void CudaDevice::activate() const { DISTRO_CUDA_CHECK(cudaSetDevice(ordinal_)); }

const DeviceInfo& CudaDevice::info() const {
  std::lock_guard<std::mutex> lock(mutex_);
  size_t free_bytes = 0, total_bytes = 0;
  // info() must not throw (error messages call it); a failed query keeps the last value.
  if (cudaSetDevice(ordinal_) == cudaSuccess &&
      cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess)
    info_.memory_free = free_bytes;
  else
    (void)cudaGetLastError();
  return info_;
}

DeviceMemory CudaDevice::alloc(size_t bytes) {
  activate();
  void* ptr = nullptr;
  if (cudaError_t err = cudaMalloc(&ptr, bytes); err != cudaSuccess)
    raise(ordinal_, "cudaMalloc(" + std::to_string(bytes) + " bytes)", err);
  {
    std::lock_guard<std::mutex> lock(alloc_mu_);
    allocs_[reinterpret_cast<uintptr_t>(ptr)] = bytes;
  }
  return DeviceMemory(this, ptr, bytes);
}

void CudaDevice::release(void* ptr) noexcept {
  if (!ptr) return;
  {
    std::lock_guard<std::mutex> lock(alloc_mu_);
    allocs_.erase(reinterpret_cast<uintptr_t>(ptr));
  }
  // cudaFree waits for work still using the memory. A failure here (runtime unloading, a context
  // already broken by an earlier fault) leaves nothing to do but clear the error.
  if (cudaSetDevice(ordinal_) != cudaSuccess || cudaFree(ptr) != cudaSuccess)
    (void)cudaGetLastError();
}

void CudaDevice::upload(void* dst, const void* src, size_t bytes) {
  cuda::OpTimer::Scope timed(*timer_, "upload");
  if (bytes == 0) return;
  if (!dst || !src) fail(Code::invalid_argument, info_.name + ": upload with a null pointer");
  activate();
  DISTRO_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  DISTRO_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaDevice::download(void* dst, const void* src, size_t bytes) {
  cuda::OpTimer::Scope timed(*timer_, "download");
  if (bytes == 0) return;
  if (!dst || !src) fail(Code::invalid_argument, info_.name + ": download with a null pointer");
  activate();
  DISTRO_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  DISTRO_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaDevice::zero(void* dst, size_t bytes) {
  cuda::OpTimer::Scope timed(*timer_, "zero");
  if (bytes == 0) return;
  if (!dst) fail(Code::invalid_argument, info_.name + ": zero with a null pointer");
  activate();
  DISTRO_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream_));
}

void CudaDevice::synchronize() {
  activate();
  DISTRO_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

// A host pointer or another GPU's memory handed to a kernel would fault and break this device's
// context for the rest of the process, so kernel inputs are checked first (one driver query).
void CudaDevice::check_device_pointer(const void* p, const char* op) const {
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, p);
  if (err != cudaSuccess)
    raise(ordinal_, std::string("cudaPointerGetAttributes (") + op + ")", err);
  const bool on_device = attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
  if (!on_device || attr.device != ordinal_)
    fail(Code::invalid_argument,
         info_.name + ": " + op +
             ": the pointer is not memory of this device (allocate it with alloc)");
}

// The single reductions are the batched ones with one buffer: one code path, one set of checks.
uint64_t CudaDevice::hash(const float* data, uint64_t n, uint64_t salt) {
  uint64_t sum = 0;
  hash_many(&data, &n, &salt, 1, &sum);
  return sum;
}

void CudaDevice::check_range(const void* p, uint64_t bytes, const char* what, const char* op) const {
  if (!p) fail(Code::invalid_argument, info_.name + ": " + op + ": " + what + " is a null pointer");
  const auto addr = reinterpret_cast<uintptr_t>(p);
  {
    std::lock_guard<std::mutex> lock(alloc_mu_);
    auto it = allocs_.upper_bound(addr);
    if (it != allocs_.begin()) {
      --it;
      if (addr < it->first + it->second) {
        if (bytes > it->first + it->second - addr)
          fail(Code::size, info_.name + ": " + op + ": " + what + " needs " + std::to_string(bytes) +
                               " bytes but its allocation holds " + std::to_string(it->first + it->second - addr) +
                               " from there");
        return;
      }
    }
  }
  check_device_pointer(p, op);
}

const CudaDevice::Basis& CudaDevice::basis(uint32_t n) {
  std::lock_guard<std::mutex> lock(basis_mu_);
  auto& slot = bases_[n];
  if (slot) return *slot;
  const DctBasis b = make_dct_basis(n);
  const size_t nn = size_t(n) * n;
  std::vector<float> ft(nn);
  std::vector<int32_t> it(nn);
  for (uint32_t i = 0; i < n; ++i)
    for (uint32_t f = 0; f < n; ++f) {
      ft[size_t(f) * n + i] = b.f32[size_t(i) * n + f];
      it[size_t(f) * n + i] = b.i14[size_t(i) * n + f];
    }
  auto out = std::make_unique<Basis>();
  out->f32 = alloc(nn * 4);
  out->f32t = alloc(nn * 4);
  out->i14 = alloc(nn * 4);
  out->i14t = alloc(nn * 4);
  upload(out->f32.data(), b.f32.data(), nn * 4);
  upload(out->f32t.data(), ft.data(), nn * 4);
  upload(out->i14.data(), b.i14.data(), nn * 4);
  upload(out->i14t.data(), it.data(), nn * 4);
  slot = std::move(out);
  return *slot;
}

float* CudaDevice::workspace(uint64_t floats) {
  // Called with workspace_mu_ held. Work already queued may still use the old buffer: wait first.
  if (workspace_.bytes() < floats * sizeof(float)) {
    synchronize();
    workspace_ = DeviceMemory();
    workspace_ = alloc(floats * sizeof(float));
  }
  return workspace_.as<float>();
}

namespace {

// The chunk plan of a tensor, checked: a kernel trusts these numbers for every address it forms.
cuda::ChunkRun checked_run(const TensorPlan* p, const std::string& dev, const char* op) {
  if (!p) fail(Code::invalid_argument, dev + ": " + op + " without a tensor plan");
  const std::string where = dev + ": " + op + " of tensor '" + p->name + "': ";
  if (p->n1 < 1 || p->n1 > kMaxChunk || p->n2 < 1 || p->n2 > kMaxChunk)
    fail(Code::invalid_argument, where + "chunk " + std::to_string(p->n1) + "x" + std::to_string(p->n2) +
                                     " is outside 1.." + std::to_string(kMaxChunk));
  if (p->rows % p->n1 != 0 || p->cols % p->n2 != 0 || p->batch * p->rows * p->cols != p->numel ||
      p->chunks != p->batch * (p->rows / p->n1) * (p->cols / p->n2))
    fail(Code::invalid_argument, where + "the chunk plan does not tile its shape");
  if (p->chunks > INT32_MAX)
    fail(Code::unsupported, where + std::to_string(p->chunks) + " chunks; this device takes at most 2^31 - 1 per tensor");
  cuda::ChunkRun r;
  r.cols = p->cols;
  r.chunks = uint32_t(p->chunks);
  r.col_blocks = uint32_t(p->cols / p->n2);
  cuda::fast_division(r.col_blocks, r.div_mul, r.div_shift);
  return r;
}

// A misaligned kernel access is a sticky fault that breaks the device for the process: refuse first.
void check_aligned(const std::string& dev, const char* op,
                   std::initializer_list<std::pair<const void*, uintptr_t>> ptrs) {
  for (const auto& [ptr, align] : ptrs)
    if (reinterpret_cast<uintptr_t>(ptr) % align != 0)
      fail(Code::invalid_argument, dev + ": " + op + ": a buffer is not aligned to " + std::to_string(align) +
                                       " bytes");
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

uint32_t bits_of(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

// Launches being filled, one per kind of tensor that may share a launch (Key: what every run of a
// launch must have in common). add() appends a run and hands a full launch to `go` first.
template <class Key, class Launch, class Run>
class Batcher {
 public:
  template <class Init, class Go>
  void add(const Key& key, const Run& run, Init init, Go go) {
    auto it = std::find_if(open_.begin(), open_.end(), [&](const auto& o) { return o.first == key; });
    if (it == open_.end()) {
      open_.emplace_back(key, std::make_unique<Launch>());
      it = open_.end() - 1;
      init(*it->second);
    } else if (it->second->runs == cuda::kMaxRuns) {
      go(*it->second);
      it->second->runs = 0;
      it->second->chunks = 0;
    }
    Launch& L = *it->second;
    L.run[L.runs] = run;
    L.run[L.runs].at.begin = L.chunks;
    L.chunks += run.at.chunks;
    ++L.runs;
  }
  template <class Go>
  void finish(Go go) {
    for (auto& o : open_)
      if (o.second->runs) go(*o.second);
    open_.clear();
  }

 private:
  std::vector<std::pair<Key, std::unique_ptr<Launch>>> open_;
};

}  // namespace

void CudaDevice::compress(const CompressArgs& a) { compress_many(&a, 1); }
void CudaDevice::apply(const ApplyArgs& a) { apply_many(&a, 1); }

void CudaDevice::compress_many(const CompressArgs* args, size_t count) {
  cuda::OpTimer::Scope timed(*timer_, "compress");
  activate();
  // Every tensor is checked before anything is queued.
  std::vector<cuda::CompressRun> runs(count);
  for (size_t i = 0; i < count; ++i) {
    const CompressArgs& a = args[i];
    runs[i].at = checked_run(a.plan, info_.name, "compress");
    const TensorPlan& p = *a.plan;
    const uint32_t E = p.n1 * p.n2;
    if (p.k < 1 || p.k > std::min<uint32_t>(E, 65535))
      fail(Code::invalid_argument, info_.name + ": compress of tensor '" + p.name + "': k is " +
                                       std::to_string(p.k) + "; expected 1.." + std::to_string(std::min<uint32_t>(E, 65535)));
    if (a.values != ValueMode::sign && a.values != ValueMode::int8)
      fail(Code::invalid_argument, info_.name + ": compress: value mode " + std::to_string(int(a.values)) +
                                       " is neither sign (1) nor int8 (2)");
    if (p.chunks == 0) continue;
    check_range(a.grad, p.numel * 4, "grad", "compress");
    check_range(a.delta, p.numel * 4, "delta", "compress");
    check_range(a.count, p.chunks * 2, "count", "compress");
    check_range(a.index, p.chunks * p.k * 2, "index", "compress");
    check_range(a.value, p.chunks * p.k, "value", "compress");
    check_aligned(info_.name, "compress", {{a.grad, 4}, {a.delta, 4}, {a.count, 2}, {a.index, 2}});
    runs[i].grad = a.grad;
    runs[i].delta = a.delta;
    runs[i].count = a.count;
    runs[i].index = a.index;
    runs[i].value = a.value;
  }

  // Edges, k, scalars, value mode and whether the 64x64 kernels may run (16-byte aligned inputs).
  using Key = std::tuple<uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, int, bool>;
  const auto go = [&](cuda::CompressLaunch& L) {
    cuda::CompressPlan plan;
    DISTRO_CUDA_CHECK(cuda::plan_compress(L, sm_count_, &plan));
    std::lock_guard<std::mutex> lock(workspace_mu_);
    L.workspace = plan.workspace_floats > 0 ? workspace(plan.workspace_floats) : nullptr;
    DISTRO_CUDA_CHECK(cuda::launch_compress(L, plan, stream_));
  };
  Batcher<Key, cuda::CompressLaunch, cuda::CompressRun> batches;
  for (size_t i = 0; i < count; ++i) {
    const CompressArgs& a = args[i];
    const TensorPlan& p = *a.plan;
    if (p.chunks == 0) continue;
    const Key key{p.n1, p.n2, p.k, bits_of(a.beta), bits_of(a.lr), int(a.values),
                  aligned16(a.grad) && aligned16(a.delta)};
    batches.add(key, runs[i], [&](cuda::CompressLaunch& L) {
      const Basis& b1 = basis(p.n1);
      const Basis& b2 = basis(p.n2);
      L.n1 = p.n1;
      L.n2 = p.n2;
      L.k = p.k;
      L.beta = a.beta;
      L.lr = a.lr;
      L.value_mode = int(a.values);
      L.b1 = b1.f32.as<float>();
      L.b1t = b1.f32t.as<float>();
      L.b2 = b2.f32.as<float>();
      L.b2t = b2.f32t.as<float>();
    }, go);
  }
  batches.finish(go);
}

void CudaDevice::apply_many(const ApplyArgs* args, size_t count) {
  cuda::OpTimer::Scope timed(*timer_, "apply");
  activate();
  std::vector<cuda::ApplyRun> runs(count);
  for (size_t i = 0; i < count; ++i) {
    const ApplyArgs& a = args[i];
    runs[i].at = checked_run(a.plan, info_.name, "apply");
    const TensorPlan& p = *a.plan;
    if (p.chunks == 0) continue;
    check_range(a.offset, (p.chunks + 1) * 4, "offset", "apply");
    check_range(a.params, p.numel * 4, "params", "apply");
    // The entry arrays' lengths live in device memory (offset[chunks]); only their start is checked.
    check_range(a.index, 2, "index", "apply");
    check_range(a.value, 4, "value", "apply");
    check_aligned(info_.name, "apply", {{a.offset, 4}, {a.params, 4}, {a.index, 2}, {a.value, 4}});
    runs[i].offset = a.offset;
    runs[i].index = a.index;
    runs[i].value = a.value;
    runs[i].params = a.params;
  }

  using Key = std::tuple<uint32_t, uint32_t, uint32_t, uint32_t, bool>;  // edges, lr, decay, aligned
  const auto go = [&](cuda::ApplyLaunch& L) { DISTRO_CUDA_CHECK(cuda::launch_apply(L, sm_count_, stream_)); };
  Batcher<Key, cuda::ApplyLaunch, cuda::ApplyRun> batches;
  for (size_t i = 0; i < count; ++i) {
    const ApplyArgs& a = args[i];
    const TensorPlan& p = *a.plan;
    if (p.chunks == 0) continue;
    const Key key{p.n1, p.n2, bits_of(a.lr), bits_of(a.decay_factor), aligned16(a.params)};
    batches.add(key, runs[i], [&](cuda::ApplyLaunch& L) {
      const Basis& b1 = basis(p.n1);
      const Basis& b2 = basis(p.n2);
      L.n1 = p.n1;
      L.n2 = p.n2;
      L.lr = a.lr;
      L.decay = a.decay_factor;
      L.bi1 = b1.i14.as<int32_t>();
      L.bi1t = b1.i14t.as<int32_t>();
      L.bi2 = b2.i14.as<int32_t>();
      L.bi2t = b2.i14t.as<int32_t>();
    }, go);
  }
  batches.finish(go);
}

uint64_t CudaDevice::first_nonfinite_momentum(const float* delta, const float* grad, float beta, float lr,
                                              uint64_t n) {
  uint64_t first = UINT64_MAX;
  first_nonfinite_momentum_many(&delta, &grad, &n, beta, lr, 1, &first);
  return first;
}

unsigned long long* CudaDevice::results(size_t words) {
  const size_t bytes = std::max<size_t>(words, 1) * sizeof(unsigned long long);
  if (results_.bytes() < bytes) {
    synchronize();  // queued work may still write the old buffer
    results_ = DeviceMemory();
    results_ = alloc(std::max(bytes, size_t(4096)));
  }
  return results_.as<unsigned long long>();
}

void CudaDevice::first_nonfinite_momentum_many(const float* const* delta, const float* const* grad,
                                               const uint64_t* n, float beta, float lr, size_t count,
                                               uint64_t* out) {
  cuda::OpTimer::Scope timed(*timer_, "first_nonfinite_momentum_many");
  if (count == 0) return;
  activate();
  for (size_t i = 0; i < count; ++i) {
    if (n[i] == 0) continue;
    check_range(delta[i], n[i] * 4, "delta", "first_nonfinite_momentum");
    check_range(grad[i], n[i] * 4, "grad", "first_nonfinite_momentum");
    if (reinterpret_cast<uintptr_t>(delta[i]) % 4 != 0 || reinterpret_cast<uintptr_t>(grad[i]) % 4 != 0)
      fail(Code::invalid_argument, info_.name + ": first_nonfinite_momentum: buffers are not aligned to 4 bytes");
  }
  std::lock_guard<std::mutex> lock(mutex_);
  unsigned long long* first = results(count);
  DISTRO_CUDA_CHECK(cudaMemsetAsync(first, 0xFF, count * sizeof(unsigned long long), stream_));
  for (size_t i = 0; i < count; ++i)
    if (n[i])
      DISTRO_CUDA_CHECK(cuda::launch_first_nonfinite(delta[i], grad[i], beta, lr, n[i], first + i, max_blocks_, stream_));
  DISTRO_CUDA_CHECK(cudaMemcpyAsync(out, first, count * sizeof(uint64_t), cudaMemcpyDeviceToHost, stream_));
  DISTRO_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

std::vector<std::unique_ptr<Device>> scan_cuda_devices() {
  std::vector<std::unique_ptr<Device>> out;
  int count = 0;
  // No driver (cudaErrorInsufficientDriver, 35), no device (cudaErrorNoDevice, 100) or any other
  // failure: no CUDA devices, never an error.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return out;
  }
  for (int i = 0; i < count; ++i) {
    try {
      out.push_back(std::make_unique<CudaDevice>(i));
    } catch (const Error&) {
      // A device that cannot be opened (too old for our kernels, prohibited compute mode, out of
      // memory) is left out; the others are still usable.
    }
  }
  return out;
}

}  // namespace distro
