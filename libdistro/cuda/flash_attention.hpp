// Launchers of the fused causal attention (kernels/flash_attention.cu): one kernel for the forward,
// two (and a small row-dot pass) for the backward, bf16 tensor cores with float32 accumulation and
// an online softmax; the only seq x seq data in memory is the backward's dS, when the scratch
// holds it. Conventions as kernels.hpp's: the caller checked
// the arguments the Device op checks (sizes, that pointers are this device's memory and large
// enough), a launcher queues its work on `stream`, never synchronises, and returns the launch's
// cudaError_t. Results are deterministic run to run (no atomics; every sum has a fixed order).
//
// Layouts are the Device ops' (backend/device.hpp): q, k, v, out, dout, dq, dk, dv are float32
// [batch, seq, heads, head_dim] row-major; lse is float32 [batch, heads, seq], the natural-log
// log-sum-exp of each query row's scaled scores (the backward reads the forward's). scale is
// 1 / sqrt(head_dim) as the host computes it (the CPU's attention_scale<float>).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace distro::cuda {

// True when these kernels run head_dim on the current device: head_dim 32, 64, 128 or 256, compute
// capability 8.0 or later (bf16 mma.sync), and enough opt-in shared memory per block for the
// largest of the three kernels: 77 KB for 32 (any sm_80+ part), 109 KB for 64 and 136 KB for 128
// (A100, Hopper; not the 99 KB consumer parts), 217 KB for 256 (H100/H200 only). Other head sizes,
// and these where false, keep the GEMM path (CudaDevice::attention_forward/backward).
bool flash_attention_supported(int64_t head_dim);
// The same, and the launchers take these sizes (batch and heads at most 65535, seq below 2^30).
bool flash_attention_supported(int64_t batch, int64_t seq, int64_t heads, int64_t head_dim);

// The alignment every [batch, seq, heads, head_dim] pointer must have (16-byte loads and stores);
// lse and the scratch need only 4. A launcher given a misaligned pointer returns
// cudaErrorMisalignedAddress without launching.
inline constexpr uintptr_t kFlashAttentionAlignment = 16;

// out = causal softmax(scale q k^T) v per (batch, head), and lse. Returns cudaErrorInvalidValue for
// an unsupported head_dim or sizes past the grid's limits (heads or batch > 65535, seq >= 2^30),
// cudaErrorNotSupported on a device older than sm_80; batch or seq 0 launches nothing.
cudaError_t launch_flash_attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                                           int64_t batch, int64_t seq, int64_t heads, int64_t head_dim, float scale,
                                           cudaStream_t stream);

// Bytes of device scratch the backward takes: the rows' dout . out (float32 [batch, heads, seq])
// and, for as many batch entries as ds_budget bytes hold (at most batch), the dK/dV kernel's dS
// tiles (bf16, about heads x seq^2 / 2 per entry: 34.6 MB per entry at seq 2048, 8 heads of 256),
// which let dq be one product instead of a recompute. ds_budget 0 (or a budget under one entry)
// gives the recomputing backward.
uint64_t flash_attention_backward_scratch_bytes(int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                                                uint64_t ds_budget);

// Writes dq, dk, dv (every element) from dout and the forward's q, k, v, out and lse; the outputs
// must not overlap the inputs (other blocks still read q, k, v, dout while one writes). scratch holds
// scratch_bytes bytes (16-byte aligned), at least flash_attention_backward_scratch_bytes(batch,
// seq, heads, head_dim, 0); it is written and read by the queued work only, so it may be reused once
// that work is done. Launches: Dt = rowsum(dout * out); then, when the scratch holds the dS tiles of
// nb >= 1 batch entries, for each slice of nb entries a dK/dV kernel (per key block, over the query
// blocks at or after it; dk and dv written once) that also stores dS, and a dQ kernel that reads it
// (dq over the key blocks up to its diagonal, one product); otherwise one dK/dV kernel and a dQ
// kernel that recomputes S and dP (three products instead of one). No atomics either way: the
// results are deterministic, and the same whatever nb is. Errors as the forward's;
// cudaErrorInvalidValue for a null or too small scratch.
cudaError_t launch_flash_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                                            const float* k, const float* v, const float* out, const float* lse,
                                            void* scratch, uint64_t scratch_bytes, int64_t batch, int64_t seq,
                                            int64_t heads, int64_t head_dim, float scale, cudaStream_t stream);

}  // namespace distro::cuda
