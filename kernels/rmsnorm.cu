// RMSNorm forward and backward. A row's reductions (sum of squares, the backward's dot product) run
// in one block: each thread sums its strided columns in order, then a fixed warp/block tree. The
// weight gradient reduces over rows, so it is cut into fixed blocks of rows (partial sums per
// column, no atomics) and the partials are then added per column in block order.
#include <initializer_list>
#include <type_traits>

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

// The same two ops for rows of dim % 4 == 0 floats, 16-byte aligned, with at most 4 * threads float4
// per row: each thread loads its NV float4 of the row once, with every load in flight together,
// and keeps them in registers for the second pass (the scalar kernels above read the row twice).
// Sums per thread run over its elements in column order; the tree is block_sum's.
template <int NV>
__global__ void __launch_bounds__(256)
    rmsnorm_forward4_kernel(float4* y, float* rstd, const float4* x, const float4* __restrict__ w, uint64_t rows,
                            uint64_t dim, float eps) {
  __shared__ float red[32];
  const uint64_t d4 = dim / 4;
  for (uint64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float4* xr = x + r * d4;
    float4 v[NV];
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const uint64_t c = threadIdx.x + uint64_t(i) * blockDim.x;
      v[i] = c < d4 ? xr[c] : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int i = 0; i < NV; ++i) ss += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
    ss = block_sum(ss, red);
    const float rs = 1.0f / sqrtf(ss / float(dim) + eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    float4* yr = y + r * d4;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const uint64_t c = threadIdx.x + uint64_t(i) * blockDim.x;
      if (c >= d4) continue;
      const float4 wc = w[c];
      yr[c] = make_float4((v[i].x * rs) * wc.x, (v[i].y * rs) * wc.y, (v[i].z * rs) * wc.z, (v[i].w * rs) * wc.w);
    }
  }
}

template <int NV>
__global__ void __launch_bounds__(256)
    rmsnorm_backward_input4_kernel(float4* dx, const float4* dy, const float4* x, const float4* __restrict__ w,
                                   const float* __restrict__ rstd, uint64_t rows, uint64_t dim) {
  __shared__ float red[32];
  const uint64_t d4 = dim / 4;
  for (uint64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float4 *xr = x + r * d4, *dyr = dy + r * d4;
    float4 gw[NV], xv[NV];  // dy * w and x
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const uint64_t c = threadIdx.x + uint64_t(i) * blockDim.x;
      const float4 z = make_float4(0.f, 0.f, 0.f, 0.f);
      const float4 g = c < d4 ? dyr[c] : z, wc = c < d4 ? w[c] : z;
      xv[i] = c < d4 ? xr[c] : z;
      gw[i] = make_float4(g.x * wc.x, g.y * wc.y, g.z * wc.z, g.w * wc.w);
    }
#pragma unroll
    for (int i = 0; i < NV; ++i)
      dot += gw[i].x * xv[i].x + gw[i].y * xv[i].y + gw[i].z * xv[i].z + gw[i].w * xv[i].w;
    dot = block_sum(dot, red);
    const float rs = rstd[r];
    const float k = dot * (rs * rs * rs) / float(dim);
    float4* dxr = dx + r * d4;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const uint64_t c = threadIdx.x + uint64_t(i) * blockDim.x;
      if (c >= d4) continue;
      float4 o = dxr[c];
      o.x += gw[i].x * rs - xv[i].x * k;
      o.y += gw[i].y * rs - xv[i].y * k;
      o.z += gw[i].z * rs - xv[i].z * k;
      o.w += gw[i].w * rs - xv[i].w * k;
      dxr[c] = o;
    }
  }
}

// Calls launch(std::integral_constant<int, NV>) with the float4 per thread of the vector kernels
// for a row of dim floats and returns true, or returns false when they do not apply.
template <class Launch>
bool launch_vector(uint64_t dim, std::initializer_list<const void*> ptrs, Launch&& launch) {
  if (dim % 4 != 0) return false;
  for (const void* p : ptrs)
    if (!model::aligned(p, 16)) return false;
  switch ((dim / 4 + row_threads(dim) - 1) / row_threads(dim)) {
    case 1: launch(std::integral_constant<int, 1>{}); return true;
    case 2: launch(std::integral_constant<int, 2>{}); return true;
    case 3: launch(std::integral_constant<int, 3>{}); return true;
    case 4: launch(std::integral_constant<int, 4>{}); return true;
    default: return false;
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
  const unsigned grid = row_grid(rows, max_blocks), threads = row_threads(dim);
  auto* y4 = reinterpret_cast<float4*>(y);
  auto *x4 = reinterpret_cast<const float4*>(x), *w4 = reinterpret_cast<const float4*>(w);
  const bool vector = launch_vector(dim, {y, x, w}, [&](auto nv) {
    rmsnorm_forward4_kernel<decltype(nv)::value><<<grid, threads, 0, stream>>>(y4, rstd, x4, w4, rows, dim, eps);
  });
  if (!vector) rmsnorm_forward_kernel<<<grid, threads, 0, stream>>>(y, rstd, x, w, rows, dim, eps);
  return cudaGetLastError();
}

cudaError_t launch_rmsnorm_backward_input(float* dx, const float* dy, const float* x, const float* w,
                                          const float* rstd, uint64_t rows, uint64_t dim, unsigned max_blocks,
                                          cudaStream_t stream) {
  if (rows == 0 || dim == 0) return cudaSuccess;
  const unsigned grid = row_grid(rows, max_blocks), threads = row_threads(dim);
  auto* dx4 = reinterpret_cast<float4*>(dx);
  auto *dy4 = reinterpret_cast<const float4*>(dy), *x4 = reinterpret_cast<const float4*>(x),
       *w4 = reinterpret_cast<const float4*>(w);
  const bool vector = launch_vector(dim, {dx, dy, x, w}, [&](auto nv) {
    rmsnorm_backward_input4_kernel<decltype(nv)::value><<<grid, threads, 0, stream>>>(dx4, dy4, x4, w4, rstd, rows,
                                                                                       dim);
  });
  if (!vector) rmsnorm_backward_input_kernel<<<grid, threads, 0, stream>>>(dx, dy, x, w, rstd, rows, dim);
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
