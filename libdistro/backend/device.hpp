// The device interface (DESIGN.md section 3). A Device owns memory on its hardware and runs the op set
// on it. The CPU device is the reference; other backends are checked op by op against it. An op a
// backend lacks throws Error(unsupported) rather than being faked.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/error.hpp"
#include "optim/manifest.hpp"

namespace distro {

enum class DeviceKind : int { cpu = 0, cuda = 1, vulkan = 2 };

// Capability bits; the same values as DISTRO_DEVICE_* in distro.h.
enum DeviceFlag : uint32_t {
  kDeviceFp16 = 1u << 0,
  kDeviceBf16 = 1u << 1,
  kDeviceInt64 = 1u << 2,
  kDeviceOptimizer = 1u << 3,
};

struct DeviceInfo {
  std::string name;         // "cpu", "cuda:0", "vulkan:0"
  std::string description;  // human-readable model name and properties
  DeviceKind kind = DeviceKind::cpu;
  uint32_t flags = 0;
  uint64_t memory_total = 0;
  uint64_t memory_free = 0;
  uint32_t compute_units = 0;
  uint32_t subgroup_size = 1;
};

class Device;

// Memory on a device, freed when the object dies. data() is a device pointer for the device that
// made it (a host pointer for the CPU).
class DeviceMemory {
 public:
  DeviceMemory() = default;
  DeviceMemory(Device* dev, void* ptr, size_t bytes) : dev_(dev), ptr_(ptr), bytes_(bytes) {}
  DeviceMemory(DeviceMemory&& o) noexcept { *this = std::move(o); }
  DeviceMemory& operator=(DeviceMemory&& o) noexcept;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  ~DeviceMemory();
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  template <class T> T* as() const { return static_cast<T*>(ptr_); }

 private:
  Device* dev_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// One tensor's compress step, all pointers on the device (the gradient is already known finite):
//   delta = beta * delta + lr * grad; C = blockDCT(delta); per chunk select the min(k, nonzero) largest
//   |C| (ties to the lowest index), sorted by index; quantise the selected values; remove the selected
//   full-precision coefficients from delta.
struct CompressArgs {
  const TensorPlan* plan = nullptr;
  const float* grad = nullptr;  // numel
  float* delta = nullptr;       // numel, updated in place
  float beta = 0.0f;
  float lr = 0.0f;
  ValueMode values = ValueMode::sign;
  uint16_t* count = nullptr;  // out: chunks
  uint16_t* index = nullptr;  // out: chunks * k slots; slots past count are unspecified
  int8_t* value = nullptr;    // out: chunks * k; sign mode +1/-1, int8 mode -127..127
};

// One tensor's apply step: U = integer inverse DCT of the merged values (exact, int64), then
// theta = ftz(ftz(theta) * decay_factor), theta = ftz(theta - lr * sign(U)) in float32.
struct ApplyArgs {
  const TensorPlan* plan = nullptr;
  const uint32_t* offset = nullptr;  // chunks + 1 entries, relative to index/value below
  const uint16_t* index = nullptr;
  const int32_t* value = nullptr;
  float* params = nullptr;  // numel, updated in place
  float lr = 0.0f;
  float decay_factor = 1.0f;
};

// AdamW (decoupled weight decay, bias-corrected), one tensor, float32.
struct AdamWArgs {
  float* params = nullptr;
  const float* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  uint64_t n = 0;
  float lr = 0.0f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.0f;
  uint64_t t = 1;  // step number, from 1, for bias correction
};

// Model ops (docs/model.md). float32, row-major, every pointer is device memory of the device that
// runs the op; sizes are element counts. A Linear weight is stored [out, in] as in PyTorch, so
// y = x W^T is matmul(y, x, W, rows, out, in, false, true, 1, 0), dx = dy W is
// matmul(dx, dy, W, rows, in, out, false, false, 1, 0) and dW += dy^T x is
// matmul(dW, dy, x, out, in, rows, true, false, 1, 1). Ops documented as accumulating add into their
// output; the others overwrite it. Results never depend on how many threads (or blocks) run an op:
// every output element is computed by one worker, and reductions run in a fixed order.

// Activations of attention heads: [batch, seq, heads, head_dim] row-major (= [batch*seq, d_model]).
struct HeadShape {
  int64_t batch = 0, seq = 0, heads = 0, head_dim = 0;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual const DeviceInfo& info() const = 0;

  // Memory. alloc throws Error(out_of_memory) when the device has no room.
  virtual DeviceMemory alloc(size_t bytes) = 0;
  virtual void release(void* ptr) noexcept = 0;
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  virtual void zero(void* dst, size_t bytes) = 0;
  virtual void synchronize() {}

  // Optimizer ops. Defaults report the op as unsupported on this device.
  virtual void compress(const CompressArgs&) { unsupported("compress"); }
  virtual void apply(const ApplyArgs&) { unsupported("apply"); }
  virtual void adamw(const AdamWArgs&) { unsupported("adamw"); }
  // compress (apply) of `count` tensors at once: the same results as calling compress (apply) on
  // each, in an order the device chooses (a GPU runs many tensors in one launch, so that the model
  // pays one launch tail instead of one per tensor). The tensors must not share memory. Errors as
  // for the single ops; a device that batches checks every tensor before it queues any work.
  // Defaults call the single op on each tensor in order.
  virtual void compress_many(const CompressArgs* args, size_t count) {
    for (size_t i = 0; i < count; ++i) compress(args[i]);
  }
  virtual void apply_many(const ApplyArgs* args, size_t count) {
    for (size_t i = 0; i < count; ++i) apply(args[i]);
  }
  // Index of the first element whose next momentum beta * delta + lr * grad would not be finite (a
  // NaN or infinite gradient, or an overflow), or UINT64_MAX if there is none. Reads only.
  virtual uint64_t first_nonfinite_momentum(const float* delta, const float* grad, float beta, float lr,
                                            uint64_t n) {
    (void)delta, (void)grad, (void)beta, (void)lr, (void)n;
    unsupported("first_nonfinite_momentum");
  }
  // Sum over elements of the parameter-hash mix (docs/protocol.md) of n float32 values.
  virtual uint64_t hash(const float* data, uint64_t n, uint64_t salt) {
    (void)data, (void)n, (void)salt;
    unsupported("hash");
  }

  // Sum of x[i]^2 over i < n, accumulated in double (the gradient norm for clipping). Deterministic
  // on one device; devices may round differently, which is harmless: a peer's clip scale only shapes
  // its own payload. The default copies x to the host in pieces and sums in index order.
  virtual double sum_squares(const float* x, uint64_t n);

  // The three reductions above over `count` buffers at once, out[i] equal to the single op's result
  // for buffer i. A GPU queues every pass and waits once (per-buffer waits cost more than the passes
  // on a model of many small tensors). Defaults call the single ops in order. Checks and errors as
  // for the single ops, naming no buffer index.
  virtual void hash_many(const float* const* data, const uint64_t* n, const uint64_t* salt, size_t count,
                         uint64_t* out) {
    for (size_t i = 0; i < count; ++i) out[i] = hash(data[i], n[i], salt[i]);
  }
  virtual void sum_squares_many(const float* const* x, const uint64_t* n, size_t count, double* out) {
    for (size_t i = 0; i < count; ++i) out[i] = sum_squares(x[i], n[i]);
  }
  virtual void first_nonfinite_momentum_many(const float* const* delta, const float* const* grad, const uint64_t* n,
                                             float beta, float lr, size_t count, uint64_t* out) {
    for (size_t i = 0; i < count; ++i) out[i] = first_nonfinite_momentum(delta[i], grad[i], beta, lr, n[i]);
  }

  // ---- Model ops; defaults report the op as unsupported on this device. ----
  // C[M,N] = alpha * op(A) op(B) + beta * C with op(A) [M,K] and op(B) [K,N]; A is stored [K,M] when
  // transA, B is stored [N,K] when transB. beta == 0 never reads C (it may hold garbage).
  virtual void matmul(float* C, const float* A, const float* B, int64_t M, int64_t N, int64_t K,
                      bool transA, bool transB, float alpha, float beta) {
    (void)C, (void)A, (void)B, (void)M, (void)N, (void)K, (void)transA, (void)transB, (void)alpha,
        (void)beta;
    unsupported("matmul");
  }
  // out[i, :] = table[ids[i], :] for i < n; ids (int32, device memory) must lie in [0, vocab).
  virtual void embedding_forward(float* out, const float* table, const int32_t* ids, int64_t n,
                                 int64_t vocab, int64_t dim) {
    (void)out, (void)table, (void)ids, (void)n, (void)vocab, (void)dim;
    unsupported("embedding_forward");
  }
  // Accumulates dtable[ids[i], :] += dout[i, :], summing each row's contributions in order of i.
  virtual void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t n,
                                  int64_t vocab, int64_t dim) {
    (void)dtable, (void)dout, (void)ids, (void)n, (void)vocab, (void)dim;
    unsupported("embedding_backward");
  }
  // y = x * rstd * w per row of x [rows, dim], rstd = 1 / sqrt(mean(x^2) + eps) saved per row.
  virtual void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t rows,
                               int64_t dim, float eps) {
    (void)y, (void)rstd, (void)x, (void)w, (void)rows, (void)dim, (void)eps;
    unsupported("rmsnorm_forward");
  }
  // Accumulates dx += dL/dx (so a residual stream's gradient can be updated in place) and
  // dw += dL/dw (summed over rows in row order), from dy and the forward's x, w and rstd.
  virtual void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                                const float* rstd, int64_t rows, int64_t dim) {
    (void)dx, (void)dw, (void)dy, (void)x, (void)w, (void)rstd, (void)rows, (void)dim;
    unsupported("rmsnorm_backward");
  }
  // Rotary embedding in place on x [batch, seq, heads, head_dim]: the pair (2i, 2i+1) of the head
  // vector at position t is rotated by the angle whose cos and sin are cos[t, i] and sin[t, i]
  // (tables [>= seq, head_dim / 2]; interleaved convention of the original Llama). The backward is
  // the inverse rotation, also in place on the gradient.
  virtual void rope_forward(float* x, const float* cos, const float* sin, const HeadShape& s) {
    (void)x, (void)cos, (void)sin, (void)s;
    unsupported("rope_forward");
  }
  virtual void rope_backward(float* dx, const float* cos, const float* sin, const HeadShape& s) {
    (void)dx, (void)cos, (void)sin, (void)s;
    unsupported("rope_backward");
  }
  // Causal attention per batch and head: out_t = sum_{j <= t} softmax_j(q_t . k_j / sqrt(head_dim)) v_j.
  // q, k, v, out are [batch, seq, heads, head_dim]; lse [batch, heads, seq] saves each row's
  // log-sum-exp of the scaled scores, from which the backward recomputes the probabilities.
  virtual void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                                 const HeadShape& s) {
    (void)out, (void)lse, (void)q, (void)k, (void)v, (void)s;
    unsupported("attention_forward");
  }
  // Writes dq, dk, dv (same layout as q) from dout and the forward's q, k, v, out and lse.
  virtual void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                                  const float* k, const float* v, const float* out, const float* lse,
                                  const HeadShape& s) {
    (void)dq, (void)dk, (void)dv, (void)dout, (void)q, (void)k, (void)v, (void)out, (void)lse, (void)s;
    unsupported("attention_backward");
  }
  // h = silu(g) * u elementwise, silu(g) = g / (1 + exp(-g)).
  virtual void swiglu_forward(float* h, const float* g, const float* u, int64_t n) {
    (void)h, (void)g, (void)u, (void)n;
    unsupported("swiglu_forward");
  }
  // Writes dg and du from dh and the forward's g and u.
  virtual void swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u,
                               int64_t n) {
    (void)dg, (void)du, (void)dh, (void)g, (void)u, (void)n;
    unsupported("swiglu_backward");
  }
  // Per row of logits [rows, vocab]: loss[r] = logsumexp(logits[r]) - logits[r, targets[r]]; and,
  // when dlogits is not null, dlogits[r] = (softmax(logits[r]) - onehot(targets[r])) * scale.
  // dlogits may be logits itself (overwritten in place). targets (int32, device) in [0, vocab).
  virtual void cross_entropy(float* loss, float* dlogits, const float* logits, const int32_t* targets,
                             int64_t rows, int64_t vocab, float scale) {
    (void)loss, (void)dlogits, (void)logits, (void)targets, (void)rows, (void)vocab, (void)scale;
    unsupported("cross_entropy");
  }
  // out = a + b; out may be a or b.
  virtual void add(float* out, const float* a, const float* b, int64_t n) {
    (void)out, (void)a, (void)b, (void)n;
    unsupported("add");
  }
  // y += alpha * x.
  virtual void axpy(float* y, const float* x, float alpha, int64_t n) {
    (void)y, (void)x, (void)alpha, (void)n;
    unsupported("axpy");
  }
  // x *= alpha.
  virtual void scale(float* x, float alpha, int64_t n) {
    (void)x, (void)alpha, (void)n;
    unsupported("scale");
  }

 protected:
  [[noreturn]] void unsupported(const char* op) const {
    fail(Code::unsupported, "device '" + info().name + "' does not support the op '" + op + "'");
  }
};

inline double Device::sum_squares(const float* x, uint64_t n) {
  float buf[4096];
  double ss = 0.0;
  for (uint64_t i = 0; i < n; i += 4096) {
    const uint64_t m = n - i < 4096 ? n - i : 4096;
    download(buf, x + i, m * sizeof(float));
    for (uint64_t j = 0; j < m; ++j) ss += double(buf[j]) * double(buf[j]);
  }
  return ss;
}

inline DeviceMemory& DeviceMemory::operator=(DeviceMemory&& o) noexcept {
  if (this != &o) {
    if (dev_ && ptr_) dev_->release(ptr_);
    dev_ = o.dev_, ptr_ = o.ptr_, bytes_ = o.bytes_;
    o.dev_ = nullptr, o.ptr_ = nullptr, o.bytes_ = 0;
  }
  return *this;
}
inline DeviceMemory::~DeviceMemory() {
  if (dev_ && ptr_) dev_->release(ptr_);
}

}  // namespace distro
