// RMSNorm forward and backward. A row's reductions (sum of squares, the backward's dot product) run
// in one block: each thread sums its strided columns in order, then a fixed warp/block tree. The
// weight gradient reduces over rows, so it is cut into fixed blocks of rows (partial sums per
// column, no atomics) and the partials are then added per column in block order.
#include "cuda/kernels.hpp"
#include "model_common.cuh"

namespace distro::cuda {
namespace {

using model::block_sum;

// Threads per row block: enough for about four columns each, 32..256. A function of dim only, so
// the reduction tree (and the result) depends on nothing else.
unsigned row_threads(uint64_t dim) {
  unsigned t = 32;
  while (t < 256 && uint64_t(t) * 4 < dim) t *= 2;
  return t;
}

unsigned row_grid(uint64_t rows, unsigned max_blocks) { return model::grid_for(rows, 1, max_blocks * 4u); }

__global__ void __launch_bounds__(256)
    rmsnorm_forward_kernel(float* y, float* rstd, const float* x, const float* __restrict__ w, uint64_t rows,
                           uint64_t dim, float eps) {
  __shared__ float red[32];
  for (uint64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + r * dim;
    float ss = 0.0f;
    for (uint64_t c = threadIdx.x; c < dim; c += blockDim.x) ss += xr[c] * xr[c];
    ss = block_sum(ss, red);
    const float rs = 1.0f / sqrtf(ss / float(dim) + eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    float* yr = y + r * dim;
    for (uint64_t c = threadIdx.x; c < dim; c += blockDim.x) yr[c] = (xr[c] * rs) * w[c];
  }
}

// dx += rstd * dy * w - x * rstd^3 / dim * sum(dy * w * x).
__global__ void __launch_bounds__(256)
    rmsnorm_backward_input_kernel(float* dx, const float* dy, const float* x, const float* __restrict__ w,
                                  const float* __restrict__ rstd, uint64_t rows, uint64_t dim) {
  __shared__ float red[32];
  for (uint64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float *xr = x + r * dim, *dyr = dy + r * dim;
    float dot = 0.0f;
    for (uint64_t c = threadIdx.x; c < dim; c += blockDim.x) dot += (dyr[c] * w[c]) * xr[c];
    dot = block_sum(dot, red);
    const float rs = rstd[r];
    const float k = dot * (rs * rs * rs) / float(dim);
    float* dxr = dx + r * dim;
    for (uint64_t c = threadIdx.x; c < dim; c += blockDim.x) dxr[c] += (dyr[c] * w[c]) * rs - xr[c] * k;
  }
}

constexpr unsigned kColThreads = 256;
constexpr uint64_t kMaxPartials = 65535;  // gridDim.y limit

// Rows per partial sum: 64, more when that would need too many partials.
uint64_t rows_per_partial(uint64_t rows) {
  const uint64_t need = (rows + kMaxPartials - 1) / kMaxPartials;
  return need > 64 ? need : 64;
}
uint64_t partial_count(uint64_t rows) { return (rows + rows_per_partial(rows) - 1) / rows_per_partial(rows); }

// partial[p, c] = sum over rows r of block p, in order, of (dy * x) * rstd.
__global__ void __launch_bounds__(kColThreads)
    rmsnorm_weight_partial_kernel(float* __restrict__ partial, const float* __restrict__ dy,
                                  const float* __restrict__ x, const float* __restrict__ rstd, uint64_t rows,
                                  uint64_t dim, uint64_t per) {
  const uint64_t c = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= dim) return;
  const uint64_t r0 = uint64_t(blockIdx.y) * per, r1 = r0 + per < rows ? r0 + per : rows;
  float acc = 0.0f;
  for (uint64_t r = r0; r < r1; ++r) acc += (dy[r * dim + c] * x[r * dim + c]) * rstd[r];
  partial[uint64_t(blockIdx.y) * dim + c] = acc;
}

// dw[c] += sum over partials p, in order, of partial[p, c].
__global__ void __launch_bounds__(kColThreads)
    rmsnorm_weight_final_kernel(float* __restrict__ dw, const float* __restrict__ partial, uint64_t parts,
                                uint64_t dim) {
  for (uint64_t c = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < dim; c += uint64_t(gridDim.x) * blockDim.x) {
    float acc = 0.0f;
    for (uint64_t p = 0; p < parts; ++p) acc += partial[p * dim + c];
    dw[c] += acc;
  }
}

}  // namespace

cudaError_t launch_rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, uint64_t rows,
                                   uint64_t dim, float eps, unsigned max_blocks, cudaStream_t stream) {
  if (rows == 0 || dim == 0) return cudaSuccess;
  rmsnorm_forward_kernel<<<row_grid(rows, max_blocks), row_threads(dim), 0, stream>>>(y, rstd, x, w, rows, dim, eps);
  return cudaGetLastError();
}

cudaError_t launch_rmsnorm_backward_input(float* dx, const float* dy, const float* x, const float* w,
                                          const float* rstd, uint64_t rows, uint64_t dim, unsigned max_blocks,
                                          cudaStream_t stream) {
  if (rows == 0 || dim == 0) return cudaSuccess;
  rmsnorm_backward_input_kernel<<<row_grid(rows, max_blocks), row_threads(dim), 0, stream>>>(dx, dy, x, w, rstd,
                                                                                               rows, dim);
  return cudaGetLastError();
}

uint64_t rmsnorm_weight_workspace(uint64_t rows, uint64_t dim) { return rows == 0 ? 0 : partial_count(rows) * dim; }

cudaError_t launch_rmsnorm_backward_weight(float* dw, const float* dy, const float* x, const float* rstd,
                                           uint64_t rows, uint64_t dim, float* workspace, cudaStream_t stream) {
  if (rows == 0 || dim == 0) return cudaSuccess;
  const uint64_t parts = partial_count(rows);
  const dim3 grid(unsigned((dim + kColThreads - 1) / kColThreads), unsigned(parts));
  rmsnorm_weight_partial_kernel<<<grid, kColThreads, 0, stream>>>(workspace, dy, x, rstd, rows, dim,
                                                                  rows_per_partial(rows));
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  rmsnorm_weight_final_kernel<<<model::grid_for(dim, kColThreads, 65535), kColThreads, 0, stream>>>(dw, workspace,
                                                                                                     parts, dim);
  return cudaGetLastError();
}

}  // namespace distro::cuda
