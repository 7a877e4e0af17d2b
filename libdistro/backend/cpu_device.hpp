// The CPU backend: the reference every other backend is tested against. Plain C++ over host memory,
// split across a thread pool by chunk, so results do not depend on the number of threads.
#pragma once

#include <memory>

#include "backend/device.hpp"
#include "backend/thread_pool.hpp"
#include "optim/dct.hpp"

namespace distro {

class CpuDevice final : public Device {
 public:
  explicit CpuDevice(unsigned threads = 0);
  const DeviceInfo& info() const override { return info_; }

  DeviceMemory alloc(size_t bytes) override;
  void release(void* ptr) noexcept override;
  void upload(void* dst, const void* src, size_t bytes) override;
  void download(void* dst, const void* src, size_t bytes) override;
  void zero(void* dst, size_t bytes) override;

  void compress(const CompressArgs& a) override;
  void apply(const ApplyArgs& a) override;
  void adamw(const AdamWArgs& a) override;
  uint64_t hash(const float* data, uint64_t n, uint64_t salt) override;
  // Serial, in index order, so the result does not depend on the thread count.
  double sum_squares(const float* x, uint64_t n) override;
  uint64_t first_nonfinite_momentum(const float* delta, const float* grad, float beta, float lr,
                                    uint64_t n) override;

  // Model ops (cpu_model_ops.cpp); the kernels are in cpu_kernels.hpp.
  void matmul(float* C, const float* A, const float* B, int64_t M, int64_t N, int64_t K, bool transA,
              bool transB, float alpha, float beta) override;
  void embedding_forward(float* out, const float* table, const int32_t* ids, int64_t n, int64_t vocab,
                         int64_t dim) override;
  void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t n, int64_t vocab,
                          int64_t dim) override;
  void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t rows, int64_t dim,
                       float eps) override;
  void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                        const float* rstd, int64_t rows, int64_t dim) override;
  void rope_forward(float* x, const float* cos, const float* sin, const HeadShape& s) override;
  void rope_backward(float* dx, const float* cos, const float* sin, const HeadShape& s) override;
  void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                         const HeadShape& s) override;
  void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                          const float* k, const float* v, const float* out, const float* lse,
                          const HeadShape& s) override;
  void swiglu_forward(float* h, const float* g, const float* u, int64_t n) override;
  void swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u,
                       int64_t n) override;
  void cross_entropy(float* loss, float* dlogits, const float* logits, const int32_t* targets,
                     int64_t rows, int64_t vocab, float scale) override;
  void add(float* out, const float* a, const float* b, int64_t n) override;
  void axpy(float* y, const float* x, float alpha, int64_t n) override;
  void scale(float* x, float alpha, int64_t n) override;

  unsigned threads() const { return pool_.size(); }

 private:
  const DctBasis& basis(uint32_t n);

  DeviceInfo info_;
  ThreadPool pool_;
  std::mutex bases_mu_;
  std::map<uint32_t, std::unique_ptr<DctBasis>> bases_;
};

}  // namespace distro
