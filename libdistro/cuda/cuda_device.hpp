// The CUDA device (DESIGN.md section 3): memory and ops on one NVIDIA GPU through the CUDA runtime
// (static cudart, so the library loads on machines without the runtime or a driver).
//
// Ordering: every operation runs on the device's own non-blocking stream. upload, download, hash
// and first_nonfinite_momentum return when their work is complete; zero, compress and apply are
// queued and ordered on the stream; synchronize() waits for everything queued. Every CUDA failure becomes distro::Error
// naming the call and cudaGetErrorString (Code::out_of_memory for allocation failures, Code::device
// otherwise); nothing aborts.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "backend/device.hpp"

// The CUDA runtime's types stay out of this header, so that code including it needs no CUDA
// headers.
struct CUstream_st;

namespace distro {
namespace cuda {
class LtGemm;
class OpTimer;
}

class CudaDevice final : public Device {
 public:
  // Opens CUDA device `ordinal` (its runtime index): reads its properties and creates its stream.
  // Throws Error(device) when the device cannot be used.
  explicit CudaDevice(int ordinal);
  ~CudaDevice() override;
  CudaDevice(const CudaDevice&) = delete;
  CudaDevice& operator=(const CudaDevice&) = delete;

  // memory_free is read again on each call (cudaMemGetInfo); the rest is fixed.
  const DeviceInfo& info() const override;
  int ordinal() const { return ordinal_; }

  DeviceMemory alloc(size_t bytes) override;
  void release(void* ptr) noexcept override;
  void upload(void* dst, const void* src, size_t bytes) override;
  void download(void* dst, const void* src, size_t bytes) override;
  void zero(void* dst, size_t bytes) override;
  void synchronize() override;

  // data must be device memory of this device, 4-byte aligned, holding n floats.
  uint64_t hash(const float* data, uint64_t n, uint64_t salt) override;
  // Deterministic for this device (kernels/reduce.cu); waits for its answer. cuda_reduce.cpp.
  double sum_squares(const float* x, uint64_t n) override;
  // Queued pass by pass, one copy of the results and one wait.
  void hash_many(const float* const* data, const uint64_t* n, const uint64_t* salt, size_t count,
                 uint64_t* out) override;
  void sum_squares_many(const float* const* x, const uint64_t* n, size_t count, double* out) override;
  void first_nonfinite_momentum_many(const float* const* delta, const float* const* grad, const uint64_t* n,
                                     float beta, float lr, size_t count, uint64_t* out) override;

  // The DisTrO optimizer ops (kernels/distro_compress.cu, kernels/distro_apply.cu). Every pointer
  // is device memory of this device; a buffer allocated through this object is also checked for
  // its size. compress and apply are queued; first_nonfinite_momentum waits for its answer. The
  // _many forms check every tensor first, then launch tensors of the same chunk edges and scalars
  // together, up to cuda::kMaxRuns per launch; the single ops are the _many ones with one tensor.
  void compress(const CompressArgs& a) override;
  void apply(const ApplyArgs& a) override;
  void compress_many(const CompressArgs* args, size_t count) override;
  void apply_many(const ApplyArgs* args, size_t count) override;
  uint64_t first_nonfinite_momentum(const float* delta, const float* grad, float beta, float lr,
                                    uint64_t n) override;

  // AdamW and the model ops (cuda_model_ops.cpp; kernels in kernels/*.cu, docs/cuda.md). Arguments
  // are checked as on the CPU, and every pointer as for compress; the work is queued on the
  // stream. matmul and attention run on the tensor cores in bf16 with float32 accumulation and
  // float32 results (cuBLASLt); the other ops are float32. The ops that take ids or targets
  // (embedding, cross_entropy) copy them to the host to check them (and, for the embedding
  // backward, to group them), so they wait for the work queued before them.
  void adamw(const AdamWArgs& a) override;
  void matmul(float* C, const float* A, const float* B, int64_t M, int64_t N, int64_t K, bool transA,
              bool transB, float alpha, float beta) override;
  void embedding_forward(float* out, const float* table, const int32_t* ids, int64_t n, int64_t vocab,
                         int64_t dim) override;
  void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t n, int64_t vocab,
                          int64_t dim) override;
  void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t rows, int64_t dim,
                       float eps) override;
  void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                        int64_t rows, int64_t dim) override;
  void rope_forward(float* x, const float* cos, const float* sin, const HeadShape& s) override;
  void rope_backward(float* dx, const float* cos, const float* sin, const HeadShape& s) override;
  void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                         const HeadShape& s) override;
  void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                          const float* v, const float* out, const float* lse, const HeadShape& s) override;
  void swiglu_forward(float* h, const float* g, const float* u, int64_t n) override;
  void swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n) override;
  void cross_entropy(float* loss, float* dlogits, const float* logits, const int32_t* targets, int64_t rows,
                     int64_t vocab, float scale) override;
  void add(float* out, const float* a, const float* b, int64_t n) override;
  void axpy(float* y, const float* x, float alpha, int64_t n) override;
  void scale(float* x, float alpha, int64_t n) override;

 private:
  // Device copies of one edge's DCT tables (optim/dct.hpp), row-major and transposed.
  struct Basis {
    DeviceMemory f32, f32t, i14, i14t;
  };

  void activate() const;  // cudaSetDevice(ordinal_)
  void check_device_pointer(const void* p, const char* op) const;
  // Checks that [p, p + bytes) is memory of this device: within one allocation of this object when
  // it made it (size checked), else by a driver query (any device allocation, size unchecked).
  void check_range(const void* p, uint64_t bytes, const char* what, const char* op) const;
  const Basis& basis(uint32_t n);
  float* workspace(uint64_t floats);

  int ordinal_ = -1;
  unsigned max_blocks_ = 1;  // grid bound for grid-stride kernels: SMs * blocks per SM
  CUstream_st* stream_ = nullptr;
  mutable DeviceInfo info_;
  mutable std::mutex mutex_;  // guards info_.memory_free and the reductions' scratch
  unsigned sm_count_ = 1;
  std::unique_ptr<cuda::OpTimer> timer_;  // DISTRO_CUDA_OP_TIMES=1: GPU time per op (op_timer.hpp)

  mutable std::mutex alloc_mu_;
  std::map<uintptr_t, size_t> allocs_;  // live allocations made by alloc(): base -> bytes
  // Every DeviceMemory member comes after allocs_ and alloc_mu_: members are destroyed in reverse
  // order, and a DeviceMemory's destructor calls release(), which erases from allocs_.
  DeviceMemory reduce_scratch_;  // sum_squares_many: one partial per unit of a launch (guarded by mutex_)
  DeviceMemory results_;         // the *_many ops' per-buffer results, grown on demand (guarded by mutex_)
  // results_ with room for `words` 8-byte results (mutex_ held).
  unsigned long long* results(size_t words);

  std::mutex basis_mu_;
  std::map<uint32_t, std::unique_ptr<Basis>> bases_;  // by chunk edge, built on first use

  std::mutex workspace_mu_;
  DeviceMemory workspace_;  // global scratch of the generic compress kernel, grown on demand

  // Model ops (cuda_model_ops.cpp). model_mu_ guards everything below; an op holds it while it
  // queues work that uses the scratch.
  uint8_t* model_scratch(uint64_t bytes);  // at least `bytes`, 256-byte aligned, grown on demand
  cuda::LtGemm& gemm();                    // created on first use
  // Copies ids (device, n int32) into host_ids_ and checks each lies in [0, vocab).
  void model_ids(const int32_t* ids, int64_t n, int64_t vocab, const char* what, const char* op);
  std::mutex model_mu_;
  DeviceMemory model_scratch_;
  std::unique_ptr<cuda::LtGemm> gemm_;
  std::vector<int32_t> host_ids_;  // ids or targets copied back for checking and grouping
  std::vector<int32_t> groups_;    // the embedding backward's grouping, uploaded to the scratch
};

}  // namespace distro
