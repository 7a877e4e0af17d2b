// The exact DisTrO apply on CUDA (ApplyArgs in backend/device.hpp; the CPU reference is
// CpuDevice::apply with merged_signs and apply_element in optim/chunk_math.*). DESIGN.md section 4:
// replicas stay bit-identical on every backend, so this kernel must give the CPU's float32 bits on
// every input.
//
// Per chunk, U[i][j] = sum over the merged entries s of v_s * B1[i][f1_s] * B2[j][f2_s] with the
// integer tables round(B * 2^14). Every term is computed exactly and summed in int64 (two's
// complement addition is associative, so the order differs from the CPU's separable sum but the
// integer does not). Then sign(U), and per element the two IEEE float32 operations of apply_element
// with the same explicit flush of subnormals (the library is built with --fmad=false and without
// -ftz; the operations below are written as __fmul_rn / __fsub_rn / __fadd_rn anyway).
#include <cstdint>
#include <cstdlib>

#include "chunk_runs.cuh"
#include "cuda/kernels.hpp"

namespace distro::cuda {
namespace {

constexpr unsigned kThreads = 256;
constexpr unsigned kBatch = 512;  // merged entries staged in shared memory at a time

// flush_subnormal (optim/chunk_math.hpp): a float32 subnormal becomes a zero of the same sign.
__device__ __forceinline__ float flush_subnormal(float x) {
  uint32_t b = __float_as_uint(x);
  if ((b & 0x7F800000u) == 0) b &= 0x80000000u;
  return __uint_as_float(b);
}

// apply_element (optim/chunk_math.hpp), operation for operation.
__device__ __forceinline__ float apply_element(float theta, float decay, float lr, int sign) {
  float t = flush_subnormal(__fmul_rn(flush_subnormal(theta), decay));
  if (sign > 0) t = flush_subnormal(__fsub_rn(t, lr));
  if (sign < 0) t = flush_subnormal(__fadd_rn(t, lr));
  return t;
}

// g[d] += w * b2.d in 64 bits for the four components (w = v * B1, which fits in 32 bits when
// |v| <= 65535); madd4_wide for any int32 v: g[d] += v * (B1 * B2.d), the basis product in 32 bits.
__device__ __forceinline__ void madd4(long long (&g)[4], int32_t w, const int4& b2) {
  g[0] += (long long)w * b2.x;
  g[1] += (long long)w * b2.y;
  g[2] += (long long)w * b2.z;
  g[3] += (long long)w * b2.w;
}
__device__ __forceinline__ void madd4_wide(long long (&g)[4], long long v, int32_t b1, const int4& b2) {
  g[0] += v * (b1 * b2.x);
  g[1] += v * (b1 * b2.y);
  g[2] += v * (b1 * b2.z);
  g[3] += v * (b1 * b2.w);
}

__device__ __forceinline__ int sign_of(long long u) { return (u > 0) - (u < 0); }

// Entries [o, o + u) of chunk c of a run, clamped to a sane range.
__device__ __forceinline__ void chunk_entries(const ApplyRun& R, uint32_t c, uint32_t& o, uint32_t& u) {
  o = R.offset[c];
  const uint32_t e = R.offset[c + 1];
  u = e > o ? e - o : 0;
}

// ---------------------------------------------------------------------------------------------
// 64x64 chunks: thread (ty, tx) owns rows ty + 16a, columns 4tx..4tx+3 (float4 parameter loads);
// the transposed integer table Bt[f][i] sits in shared memory, so B[ty + 16a][f1] are four scalar
// reads and B[4tx..4tx+3][f2] one int4 read.

struct Smem64 {
  int32_t bt[64 * 64];
  uint16_t eidx[kBatch];
  int32_t eval[kBatch];
};

__global__ void __launch_bounds__(kThreads, 4) apply64_kernel(const __grid_constant__ ApplyLaunch p) {
  __shared__ __align__(16) Smem64 sm;
  const unsigned tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  for (unsigned e = tid; e < 64 * 64; e += kThreads) sm.bt[e] = __ldg(p.bi1t + e);
  __syncthreads();

  uint32_t t = 0;  // this block's run
  for (uint64_t g = blockIdx.x; g < p.chunks; g += gridDim.x) {
    t = run_of(p.run, p.runs, g, t);
    const ApplyRun& R = p.run[t];
    const uint32_t c = uint32_t(g - R.at.begin);
    // The parameters are fetched into L2 now, so that the loads after the integer work hit it.
    const uint64_t origin = chunk_origin(R.at, 64, 64, c), cols = R.at.cols;
    prefetch_chunk64_l2(R.params, nullptr, origin, cols);
    uint32_t o, u;
    chunk_entries(R, c, o, u);
    long long acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int b = 0; b < 4; ++b) acc[a][b] = 0;
    for (uint32_t s0 = 0; s0 < u; s0 += kBatch) {
      const uint32_t nb = u - s0 < kBatch ? u - s0 : kBatch;
      bool small = true;
      for (uint32_t s = tid; s < nb; s += kThreads) {
        uint32_t id = R.index[o + s0 + s];
        int32_t v = R.value[o + s0 + s];
        if (id >= 64 * 64) id = 0, v = 0;  // out of range: contributes nothing (the caller validated)
        sm.eidx[s] = uint16_t(id);
        sm.eval[s] = v;
        small = small && v >= -65535 && v <= 65535;
      }
      small = __syncthreads_and(small);
      if (small) {
        // |v * B1| < 2^31: one 32-bit product per row, then 32 x 32 -> 64-bit multiply-adds.
#pragma unroll 4
        for (uint32_t s = 0; s < nb; ++s) {
          const uint32_t id = sm.eidx[s], f1 = id >> 6, f2 = id & 63;
          const int32_t v = sm.eval[s];
          const int4 b2 = *reinterpret_cast<const int4*>(&sm.bt[f2 * 64 + 4 * tx]);
#pragma unroll
          for (int a = 0; a < 4; ++a) {
            const int32_t w = v * sm.bt[f1 * 64 + ty + 16 * a];
            madd4(acc[a], w, b2);
          }
        }
      } else {
        // Any int32 value: the basis product |B1 B2| <= 2^28 fits in 32 bits, v times it in 64.
        for (uint32_t s = 0; s < nb; ++s) {
          const uint32_t id = sm.eidx[s], f1 = id >> 6, f2 = id & 63;
          const int32_t v = sm.eval[s];
          const int4 b2 = *reinterpret_cast<const int4*>(&sm.bt[f2 * 64 + 4 * tx]);
#pragma unroll
          for (int a = 0; a < 4; ++a) {
            const int32_t b1 = sm.bt[f1 * 64 + ty + 16 * a];
            madd4_wide(acc[a], v, b1, b2);
          }
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      float4* ptr = reinterpret_cast<float4*>(R.params + origin + uint64_t(ty + 16 * a) * cols + 4 * tx);
      float4 t = *ptr;
      t.x = apply_element(t.x, p.decay, p.lr, sign_of(acc[a][0]));
      t.y = apply_element(t.y, p.decay, p.lr, sign_of(acc[a][1]));
      t.z = apply_element(t.z, p.decay, p.lr, sign_of(acc[a][2]));
      t.w = apply_element(t.w, p.decay, p.lr, sign_of(acc[a][3]));
      *ptr = t;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 64x64 chunks, folded (the default): the integer tables keep the DCT's mirror symmetry exactly,
// Bi[63 - i][f] = (-1)^f Bi[i][f] (make_dct_basis rounds symmetric values identically; the tests
// compare with the CPU bit for bit). Split the entries into four classes by the parities (p, q) of
// (f1, f2) and let G_pq[i][j] = sum over class pq of v Bi[i][f1] Bi[j][f2] for i, j < 32; then
//   U[i][j] = G00 + G01 + G10 + G11        U[i][63-j] = G00 - G01 + G10 - G11
//   U[63-i][j] = G00 + G01 - G10 - G11     U[63-i][63-j] = G00 - G01 - G10 + G11,
// exact int64 sums in any order: a quarter of the multiply-adds. Thread t owns rows r = t / 8 and
// 63 - r, columns 4c..4c+3 and 60-4c..63-4c (c = t % 8). The entries of a block's next chunks are
// staged in shared memory a group at a time (SmemA).

constexpr unsigned kAhead = 32;    // chunks of a block whose merged entries are staged at once
constexpr unsigned kStage = 1024;  // entries staged at most

struct SmemA {
  int32_t bt[64 * 64];        // transposed table Bt[f][i] = Bi[i][f]
  uint16_t eidx[4][kBatch];   // entries of the batch by parity class (order within a class is free)
  int32_t eval[4][kBatch];
  uint32_t ccount[2][4];  // per class; two sets used by alternate batches, so a reset needs no barrier
  // The staged group: chunk j (the block's j-th next chunk) has its entries at sidx/sval[sbeg[j] ..
  // sbeg[j + 1]), its first entry at so[j] of run srun[j]; when sbeg[nstage] > kStage, the group is
  // one chunk with more entries than that, read from global memory.
  uint32_t sbeg[kAhead + 1], so[kAhead], srun[kAhead];
  uint32_t nstage;
  uint16_t sidx[kStage];
  int32_t sval[kStage];
};

// Stages the entries of the block's next chunks g0, g0 + G, ... (G the grid): warp 0 reads the
// offsets of up to kAhead of them, as many as fit kStage entries (at least one; a first chunk with
// more is left in global memory), then all threads copy the entries into shared memory in one round
// of independent loads, so a chunk does not wait for two dependent trips to global memory (its
// offsets, then its entries) before its sums. t: the run of g0 or an earlier one. Returns the
// group's size; the caller has passed a barrier since it last read the staged state.
__device__ __forceinline__ uint32_t stage_entries(const ApplyLaunch& p, SmemA& sm, uint64_t g0, uint32_t t) {
  const unsigned tid = threadIdx.x, lane = tid & 31;
  if (tid < 32) {
    const uint64_t gj = g0 + uint64_t(lane) * gridDim.x;
    uint32_t o = 0, u = 0, tj = t;
    const bool valid = gj < p.chunks;
    if (valid) {
      tj = run_of(p.run, p.runs, gj, t);
      chunk_entries(p.run[tj], uint32_t(gj - p.run[tj].at.begin), o, u);
    }
    uint32_t incl = u;  // entries of this lane's chunk and the lanes before it
#pragma unroll
    for (unsigned d = 1; d < 32; d <<= 1) {
      const uint32_t v = __shfl_up_sync(0xffffffffu, incl, d);
      if (lane >= d) incl += v;
    }
    const uint32_t fits = __ballot_sync(0xffffffffu, valid && incl <= kStage);
    const uint32_t n = fits == 0xffffffffu ? 32u : uint32_t(__ffs(~fits) - 1);
    if (lane < (n ? n : 1u)) sm.sbeg[lane + 1] = incl, sm.so[lane] = o, sm.srun[lane] = tj;
    if (lane == 0) sm.sbeg[0] = 0, sm.nstage = n ? n : 1u;
  }
  __syncthreads();
  const uint32_t nstage = sm.nstage, staged = sm.sbeg[nstage] <= kStage ? sm.sbeg[nstage] : 0u;
  for (uint32_t e = tid; e < staged; e += kThreads) {
    uint32_t j = 0;  // the group's chunk holding staged entry e: the last j with sbeg[j] <= e
    for (uint32_t step = 16; step > 0; step >>= 1)
      if (j + step < nstage && sm.sbeg[j + step] <= e) j += step;
    const ApplyRun& Rj = p.run[sm.srun[j]];
    const uint32_t at = sm.so[j] + (e - sm.sbeg[j]);
    sm.sidx[e] = Rj.index[at];
    sm.sval[e] = Rj.value[at];
  }
  __syncthreads();
  return nstage;
}

__global__ void __launch_bounds__(kThreads, 4) apply64f_kernel(const __grid_constant__ ApplyLaunch p) {
  __shared__ __align__(16) SmemA sm;
  const unsigned tid = threadIdx.x, r = tid >> 3, c = tid & 7;
  for (unsigned e = tid; e < 64 * 64; e += kThreads) sm.bt[e] = __ldg(p.bi1t + e);
  if (tid < 8) sm.ccount[tid >> 2][tid & 3] = 0;
  __syncthreads();
  unsigned batch = 0;  // batches done by this block: batch & 1 picks the counter set

  uint32_t t = 0;  // this block's run
  for (uint64_t g0 = blockIdx.x; g0 < p.chunks;) {
    __syncthreads();  // the previous group's staged state is read
    const uint32_t nstage = stage_entries(p, sm, g0, t);
    const bool big = sm.sbeg[nstage] > kStage;
    for (uint32_t j = 0; j < nstage; ++j) {
      const uint64_t gi = g0 + uint64_t(j) * gridDim.x;
      t = sm.srun[j];
      const ApplyRun& R = p.run[t];
      const uint32_t ch = uint32_t(gi - R.at.begin);
      const uint64_t cols = R.at.cols, origin = chunk_origin(R.at, 64, 64, ch);
      const uint64_t o0 = origin + uint64_t(r) * cols, o1 = origin + uint64_t(63 - r) * cols;
      prefetch_chunk64_l2(R.params, nullptr, origin, cols);
      // The entries: staged at sb, or (a big chunk) at o in global memory.
      const uint32_t sb = sm.sbeg[j], u = sm.sbeg[j + 1] - sb, o = sm.so[j];
      long long g[4][4];
#pragma unroll
      for (int q = 0; q < 4; ++q)
#pragma unroll
        for (int d = 0; d < 4; ++d) g[q][d] = 0;
      for (uint32_t s0 = 0; s0 < u; s0 += kBatch, ++batch) {
        const uint32_t nb = u - s0 < kBatch ? u - s0 : kBatch;
        uint32_t* count = sm.ccount[batch & 1];  // zero: reset during the previous batch (or at start)
        bool small = true;
        for (uint32_t s = tid; s < nb; s += kThreads) {
          const uint32_t id = big ? R.index[o + s0 + s] : sm.sidx[sb + s0 + s];
          const int32_t v = big ? R.value[o + s0 + s] : sm.sval[sb + s0 + s];
          if (id >= 64 * 64) continue;  // out of range: contributes nothing (the caller validated)
          const uint32_t cls = ((id >> 6) & 1) * 2 + (id & 1);
          const uint32_t pos = atomicAdd(&count[cls], 1u);
          sm.eidx[cls][pos] = uint16_t(id);
          sm.eval[cls][pos] = v;
          small = small && v >= -65535 && v <= 65535;
        }
        small = __syncthreads_and(small);
        // The other set was last read before the previous batch's closing barrier and is next
        // incremented after this batch's: reset it now.
        if (tid < 4) sm.ccount[(batch + 1) & 1][tid] = 0;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const uint32_t n = count[q];
          if (small) {
            // |v| <= 65535 and |Bi| <= 2896 for n = 64: v * Bi fits in 32 bits.
#pragma unroll 4
            for (uint32_t s = 0; s < n; ++s) {
              const uint32_t id = sm.eidx[q][s];
              const int32_t w = sm.eval[q][s] * sm.bt[(id >> 6) * 64 + r];
              const int4 b2 = *reinterpret_cast<const int4*>(&sm.bt[(id & 63) * 64 + 4 * c]);
              madd4(g[q], w, b2);
            }
          } else {
            for (uint32_t s = 0; s < n; ++s) {
              const uint32_t id = sm.eidx[q][s];
              const long long v = sm.eval[q][s];
              const int32_t b1 = sm.bt[(id >> 6) * 64 + r];
              const int4 b2 = *reinterpret_cast<const int4*>(&sm.bt[(id & 63) * 64 + 4 * c]);
              madd4_wide(g[q], v, b1, b2);
            }
          }
        }
        __syncthreads();
      }
      // sg[k][d]: sign of U at (r, j), (r, 63 - j), (63 - r, j), (63 - r, 63 - j), j = 4c + d.
      int sg[4][4];
#pragma unroll
      for (int d = 0; d < 4; ++d) {
        const long long a = g[0][d] + g[2][d], b = g[1][d] + g[3][d];  // q even / odd, p summed
        const long long e = g[0][d] - g[2][d], f = g[1][d] - g[3][d];  // p odd flips
        sg[0][d] = sign_of(a + b);
        sg[1][d] = sign_of(a - b);
        sg[2][d] = sign_of(e + f);
        sg[3][d] = sign_of(e - f);
      }
      float4* p0 = reinterpret_cast<float4*>(R.params + o0 + 4 * c);
      float4* p1 = reinterpret_cast<float4*>(R.params + o0 + 60 - 4 * c);
      float4* p2 = reinterpret_cast<float4*>(R.params + o1 + 4 * c);
      float4* p3 = reinterpret_cast<float4*>(R.params + o1 + 60 - 4 * c);
      float4 t0 = *p0, t1 = *p1, t2 = *p2, t3 = *p3;
      const float dec = p.decay, lr = p.lr;
      t0 = make_float4(apply_element(t0.x, dec, lr, sg[0][0]), apply_element(t0.y, dec, lr, sg[0][1]),
                       apply_element(t0.z, dec, lr, sg[0][2]), apply_element(t0.w, dec, lr, sg[0][3]));
      // The mirrored float4s hold columns 63 - j for j = 4c + 3 .. 4c: component e is d = 3 - e.
      t1 = make_float4(apply_element(t1.x, dec, lr, sg[1][3]), apply_element(t1.y, dec, lr, sg[1][2]),
                       apply_element(t1.z, dec, lr, sg[1][1]), apply_element(t1.w, dec, lr, sg[1][0]));
      t2 = make_float4(apply_element(t2.x, dec, lr, sg[2][0]), apply_element(t2.y, dec, lr, sg[2][1]),
                       apply_element(t2.z, dec, lr, sg[2][2]), apply_element(t2.w, dec, lr, sg[2][3]));
      t3 = make_float4(apply_element(t3.x, dec, lr, sg[3][3]), apply_element(t3.y, dec, lr, sg[3][2]),
                       apply_element(t3.z, dec, lr, sg[3][1]), apply_element(t3.w, dec, lr, sg[3][0]));
      *p0 = t0, *p1 = t1, *p2 = t2, *p3 = t3;
    }
    g0 += uint64_t(nstage) * gridDim.x;
  }
}

// ---------------------------------------------------------------------------------------------
// Any n1, n2 <= 256: one element per thread at a time, the entries streamed through shared memory,
// the tables read through the read-only cache.

__global__ void __launch_bounds__(kThreads) apply_generic_kernel(const __grid_constant__ ApplyLaunch p) {
  __shared__ uint16_t eidx[kBatch];
  __shared__ int32_t eval[kBatch];
  const uint32_t n1 = p.n1, n2 = p.n2, E = n1 * n2;

  uint32_t t = 0;  // this block's run
  for (uint64_t g = blockIdx.x; g < p.chunks; g += gridDim.x) {
    t = run_of(p.run, p.runs, g, t);
    const ApplyRun& R = p.run[t];
    const uint32_t c = uint32_t(g - R.at.begin);
    uint32_t o, u;
    chunk_entries(R, c, o, u);
    const uint64_t cols = R.at.cols, origin = chunk_origin(R.at, n1, n2, c);
    const bool one_batch = u <= kBatch;
    if (one_batch) {
      for (uint32_t s = threadIdx.x; s < u; s += kThreads) {
        eidx[s] = R.index[o + s];
        eval[s] = R.value[o + s];
      }
      __syncthreads();
    }
    for (uint32_t r0 = 0; r0 < E; r0 += kThreads) {
      const uint32_t e = r0 + threadIdx.x;
      const uint32_t i = e / n2, j = e % n2;
      long long acc = 0;
      for (uint32_t s0 = 0; s0 < u; s0 += kBatch) {
        const uint32_t nb = u - s0 < kBatch ? u - s0 : kBatch;
        if (!one_batch) {
          __syncthreads();
          for (uint32_t s = threadIdx.x; s < nb; s += kThreads) {
            eidx[s] = R.index[o + s0 + s];
            eval[s] = R.value[o + s0 + s];
          }
          __syncthreads();
        }
        if (e < E) {
          for (uint32_t s = 0; s < nb; ++s) {
            const uint32_t id = eidx[s];
            if (id >= E) continue;
            const int32_t b = __ldg(p.bi1 + i * n1 + id / n2) * __ldg(p.bi2 + j * n2 + id % n2);
            acc += (long long)eval[s] * b;
          }
        }
      }
      if (e < E) {
        float* ptr = R.params + origin + uint64_t(i) * cols + j;
        *ptr = apply_element(*ptr, p.decay, p.lr, sign_of(acc));
      }
    }
    __syncthreads();  // the staged entries are replaced by the next chunk's
  }
}

}  // namespace

cudaError_t launch_apply(const ApplyLaunch& L, unsigned sm_count, cudaStream_t stream) {
  if (L.chunks == 0 || L.runs == 0) return cudaSuccess;
  const unsigned sms = sm_count ? sm_count : 1;
  bool aligned = true;
  for (uint32_t t = 0; t < L.runs; ++t) aligned = aligned && reinterpret_cast<uintptr_t>(L.run[t].params) % 16 == 0;
  const bool tiled = L.n1 == 64 && L.n2 == 64 && aligned;
  // DISTRO_CUDA_APPLY_FOLD=0 selects the plain 64x64 kernel instead of the folded one (A/B, tests).
  const char* fold_env = std::getenv("DISTRO_CUDA_APPLY_FOLD");
  const bool fold = tiled && !(fold_env && fold_env[0] == '0');
  int per_sm = 0;
  cudaError_t err =
      fold    ? cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, apply64f_kernel, kThreads, 0)
      : tiled ? cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, apply64_kernel, kThreads, 0)
              : cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, apply_generic_kernel, kThreads, 0);
  if (err != cudaSuccess) return err;
  if (per_sm < 1) per_sm = 1;
  const uint64_t want = uint64_t(sms) * unsigned(per_sm);
  const unsigned grid = unsigned(L.chunks < want ? L.chunks : want);
  if (fold)
    apply64f_kernel<<<grid, kThreads, 0, stream>>>(L);
  else if (tiled)
    apply64_kernel<<<grid, kThreads, 0, stream>>>(L);
  else
    apply_generic_kernel<<<grid, kThreads, 0, stream>>>(L);
  return cudaGetLastError();
}

}  // namespace distro::cuda
