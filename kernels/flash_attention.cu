// Fused causal attention ("flash attention") for the model's heads: forward and a deterministic
// backward, bf16 tensor cores (mma.sync m16n8k16, ldmatrix) with float32 accumulation and a float32
// online softmax, so no seq x seq matrix is ever written to memory and tiles above the diagonal are
// skipped. Launchers in libdistro/cuda/flash_attention.hpp; docs/cuda.md has the op contracts.
//
// Design.
//   - Inputs stay float32 in memory ([batch, seq, heads, head_dim], row stride heads * head_dim):
//     each tile is read with 16-byte loads, rounded to bf16 (nearest even) and stored to shared
//     memory in the same pass, so there is no separate conversion kernel and no bf16 copy. Shared
//     tiles are row-major with rows padded by 16 bytes, which makes every ldmatrix conflict-free.
//   - Every kernel keeps one block of rows resident (forward: Q; dK/dV: K and V; dQ: Q and dO) and
//     streams tiles of two other arrays (K,V; Q,dO; K,V). Streamed tiles are double-buffered in
//     shared memory; the next tile's float32 values are loaded into registers in a few pieces
//     spread over the current tile's products (Stream2), so each load has a slice of compute to
//     hide behind, and stored to the other buffer; one barrier per tile (two in dK/dV).
//   - Forward: a CTA owns BM = 16 x warps query rows of one (batch, head), each warp 16 rows; it
//     loops over key tiles up to the diagonal only, masking inside the diagonal tiles (a warp whose
//     rows all precede a tile skips its products). Scores S = Q K^T accumulate in registers, the
//     softmax runs in base 2 (exp2 of scale * log2(e) * S minus the running max), P is rounded to
//     bf16 straight from the accumulator registers into the A operand of O += P V. Writes out and
//     lse = max * scale + log(sum).
//   - Backward, deterministic (no atomics): Dt = rowsum(dout * out) (one warp per row), then
//       dK/dV: a CTA owns BN keys (K, V resident) and loops over the query tiles at or after them;
//         per tile S^T = K Q^T and dP^T = V dO^T (warps split keys x queries), P = exp(S - lse),
//         dS = P (dP - Dt), both written to shared memory as bf16, then dV += P^T dO and
//         dK += dS^T Q (warps split keys x head_dim, two blocks of 16 keys each, accumulators in
//         registers); writes dv and scale * dk once. It also stores each dS^T tile to the scratch
//         (DsTiles: only the tiles at or below the diagonal).
//       dQ: a CTA owns 128 query rows and loops over the key tiles up to the diagonal, dQ += dS K
//         with dS read back from the scratch (cp.async): one product. When the scratch cannot hold
//         even one batch entry's dS, the dQ kernel recomputes S, dP and dS in registers instead
//         (7 products of 2 T^2 D / 2 in all instead of FA2's 5; with the stored dS, 5).
//     Either way no atomics and no dq accumulator in memory. Query row 0 has a single key, so its dS
//     is exactly zero (the softmax of one score does not depend on it); it is set so rather than
//     computed as P (dP - Dt), whose two terms come from different roundings.
//   - Rows past seq (tails of the last blocks) load as zeros and are masked: a key j counts for query
//     t only if j <= t < seq; nothing past seq is written.
//   - Block sizes by head_dim (Plan<D>; forward queries x keys, dK/dV keys x queries, recomputing
//     dQ queries x keys; 8 warps each, 256 threads; the dQ from the stored dS is 128 x 64 for all):
//       32:    128 x 64 (2 CTAs/SM),  128 x 64,  128 x 32   (Q, and in dQ also dO, fragments in
//       64:    128 x 64,              128 x 64,  128 x 64    registers for head_dim <= 64)
//       128:   128 x 64,               64 x 64,  128 x 64
//       256:   128 x 64,               64 x 64,  128 x 32   (198-217 KB of shared memory: Hopper)
//     chosen by timing the variants on an H200 (1b shape: forward 188, dK/dV 188 and dQ 198 TFLOP/s
//     of the products each computes, before dS was stored; with it, Nsight: dK/dV 1.45 ms, dQ 0.49). Dynamic shared memory per block: 30/77 KB (32), 54/109 KB (64),
//     102/136 KB (128), 198/217 KB (256) for the forward / the largest backward kernel.
//     The mma/ldmatrix code needs sm_80; on older targets the kernels compile to nothing and the
//     launchers refuse the device (cudaErrorNotSupported).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/flash_attention.hpp"

namespace distro::cuda {
// Helpers and tile code (named namespace, inline: a target below sm_80 compiles the kernels empty
// and would warn about unused internal functions); the kernels are private (anonymous namespace).
namespace flash_detail {

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define DISTRO_FLASH_DEVICE 1
#else
#define DISTRO_FLASH_DEVICE 0
#endif

using bf16 = __nv_bfloat16;
using u32 = uint32_t;

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr int kWarps = 8, kThreads = 32 * kWarps;

// ---- PTX helpers -------------------------------------------------------------------------------

__device__ __forceinline__ u32 smem_addr(const void* p) { return static_cast<u32>(__cvta_generic_to_shared(p)); }

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, register i receives
// (row lane/4, columns 2 (lane%4), +1) of matrix i (of its transpose with .trans).
__device__ __forceinline__ void ldsm4(u32 (&r)[4], u32 addr) {
#if DISTRO_FLASH_DEVICE
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
#endif
}
__device__ __forceinline__ void ldsm4t(u32 (&r)[4], u32 addr) {
#if DISTRO_FLASH_DEVICE
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
#endif
}

// d += a b: a 16x16 (row-major fragment), b 16x8 (column fragment b0, b1), float32 accumulators.
__device__ __forceinline__ void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
#if DISTRO_FLASH_DEVICE
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Two floats to bf16 (round to nearest even), lo in the low half.
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
#if DISTRO_FLASH_DEVICE
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return 0;
#endif
}

__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// ldmatrix lane addresses into a row-major bf16 tile with row stride `ld` elements.
// A operand (16 rows x 16 columns at (r0, c0)): regs a0..a3 of mma.
__device__ __forceinline__ u32 a_addr(const bf16* t, int ld, int r0, int c0, int lane) {
  return smem_addr(t + (r0 + (lane & 15)) * ld + c0 + ((lane >> 4) << 3));
}
// B operand from a tile stored [n][k] (B = tile^T): rows n0..n0+15, columns k0..k0+15; regs
// (b0, b1) of n-tile n0 and (b0, b1) of n-tile n0 + 8. Non-transposed ldmatrix.
__device__ __forceinline__ u32 bnk_addr(const bf16* t, int ld, int n0, int k0, int lane) {
  return smem_addr(t + (n0 + ((lane >> 4) << 3) + (lane & 7)) * ld + k0 + (((lane >> 3) & 1) << 3));
}
// B operand from a tile stored [k][n]: rows k0..k0+15, columns n0..n0+15; same registers as
// bnk_addr. Transposed ldmatrix.
__device__ __forceinline__ u32 bkn_addr(const bf16* t, int ld, int k0, int n0, int lane) {
  return smem_addr(t + (k0 + (((lane >> 3) & 1) << 3) + (lane & 7)) * ld + n0 + ((lane >> 4) << 3));
}

// A operand (16 rows x 16 columns at (m0, k0)) from a tile stored [k][m] (A = tile^T): regs a0..a3
// of mma. Transposed ldmatrix: matrix i (rows m0 + 8 (i & 1).., columns k0 + 8 (i >> 1)..) is read
// from the stored rows k0 + 8 (i >> 1).. at column m0 + 8 (i & 1).
__device__ __forceinline__ u32 akm_addr(const bf16* t, int ld, int m0, int k0, int lane) {
  return smem_addr(t + (k0 + ((lane >> 4) << 3) + (lane & 7)) * ld + m0 + (((lane >> 3) & 1) << 3));
}

// 16 bytes from global to shared memory without registers (cp.async), zeros when !ok; complete
// after cp_async_wait().
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool ok) {
#if DISTRO_FLASH_DEVICE
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_wait() {
#if DISTRO_FLASH_DEVICE
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// acc (16 x 8N, N n-tiles) += a (16 x 16) times rows k0..k0+15, columns 0..8N-1 of a tile stored
// [k][n]: O += P V in the forward, dQ += dS K in the recomputing dQ kernel.
template <int N>
__device__ __forceinline__ void mma_rows_kn(float (&acc)[N][4], const u32 (&a)[4], const bf16* t, int ld, int k0,
                                            int lane) {
#pragma unroll
  for (int n = 0; n < N / 2; ++n) {
    u32 b[4];
    ldsm4t(b, bkn_addr(t, ld, k0, n * 16, lane));
    mma(acc[2 * n], a, b[0], b[1]);
    mma(acc[2 * n + 1], a, b[2], b[3]);
  }
}

__device__ __forceinline__ float4 load4(const float* p) { return __ldg(reinterpret_cast<const float4*>(p)); }

// 16 bytes of read-only global memory when `ok`, else zeros. A volatile asm keeps the load where
// the code puts it (the pipeline issues it a slice of compute before its use; the compiler would
// otherwise sink it next to the store when registers are short).
__device__ __forceinline__ float4 load4_v(const float* p) {
  float4 v;
  asm volatile("ld.global.nc.v4.f32 {%0, %1, %2, %3}, [%4];\n" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ float4 load4_if(const float* p, bool ok) {
  float4 v;
  asm volatile(
      "{\n"
      "  .reg .pred p;\n"
      "  setp.ne.b32 p, %5, 0;\n"
      "  mov.b32 %0, 0;\n"
      "  mov.b32 %1, 0;\n"
      "  mov.b32 %2, 0;\n"
      "  mov.b32 %3, 0;\n"
      "  @p ld.global.nc.v4.f32 {%0, %1, %2, %3}, [%4];\n"
      "}\n"
      : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
      : "l"(p), "r"(int(ok)));
  return v;
}

__device__ __forceinline__ void store4_bf16(bf16* p, float4 v) {
  *reinterpret_cast<uint2*>(p) = make_uint2(pack_bf16(v.x, v.y), pack_bf16(v.z, v.w));
}

// A warp's 16 x 8N accumulator tile (rows r0 and r0 + 8 of this lane's group, columns 2c, 2c + 1 of
// each 8) times scale into float32 rows of stride ld; rows at or past T are not written.
template <int N>
__device__ __forceinline__ void store_rows(float* out, int64_t ld, int r0, int T, int c, const float (&acc)[N][4],
                                           float scale) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = r0 + 8 * half;
    if (r >= T) continue;
    float* p = out + int64_t(r) * ld + 2 * c;
#pragma unroll
    for (int n = 0; n < N; ++n)
      *reinterpret_cast<float2*>(p + n * 8) = make_float2(acc[n][2 * half] * scale, acc[n][2 * half + 1] * scale);
  }
}

// ---- Tiles -------------------------------------------------------------------------------------

// Rows row0..row0+R-1 of a float32 [*, D] matrix with row stride ld into a bf16 tile [R][D + 8];
// rows at or past T are zeros. All threads of the block, 8 loads in flight per thread.
template <int R, int D, int NT = kThreads>
__device__ __forceinline__ void load_tile(bf16* t, const float* g, int64_t ld, int row0, int T, int tid) {
  constexpr int kRow4 = D / 4, N = R * kRow4 / NT, B = N < 8 ? N : 8;
  static_assert(R * kRow4 % NT == 0 && N % B == 0, "tile does not split over the threads");
#pragma unroll
  for (int o = 0; o < N; o += B) {
    float4 r[B];
#pragma unroll
    for (int i = 0; i < B; ++i) {
      const int f = (o + i) * NT + tid, row = row0 + f / kRow4;
      r[i] = row < T ? load4(g + int64_t(row) * ld + (f % kRow4) * 4) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int i = 0; i < B; ++i) {
      const int f = (o + i) * NT + tid;
      store4_bf16(t + (f / kRow4) * (D + 8) + (f % kRow4) * 4, r[i]);
    }
  }
}

// Streams R-row tiles of NA (1 or 2) float32 arrays into bf16 shared tiles, in NP pieces of PF
// float4 per thread (the first PF * NT float4 of the arrays' NA * R * D / 4, then the next ...).
// load(s) issues piece s into registers; store(s) rounds and writes it (g1, t1 unused when NA = 1).
template <int NA, int R, int D, int PFMAX, int NT = kThreads>
struct StreamN {
  static constexpr int kRow4 = D / 4;       // float4 per row
  static constexpr int RP = NT / kRow4;     // rows one float4 per thread covers
  static constexpr int F = R * kRow4 / NT;  // float4 per thread per array
  static_assert(NA == 1 || NA == 2, "one or two arrays");
  static_assert(NT % kRow4 == 0 && R % RP == 0 && F >= 1, "tile does not split over the threads");
  static constexpr int PF = NA * F < PFMAX ? NA * F : PFMAX;
  static_assert((NA * F) % PF == 0, "pieces must tile the arrays");
  static constexpr int NP = NA * F / PF;
  float4 r[PF];

  // Element i of piece s is float4 (row tid / kRow4 + (idx % F) RP, column tid % kRow4) of array
  // idx / F, idx = s PF + i.
  __device__ __forceinline__ void load(int s, const float* g0, const float* g1, int64_t ld, int row0, int T,
                                       int tid) {
    const int tr = tid / kRow4, left = T - row0 - tr;
    const int64_t at = int64_t(row0 + tr) * ld + (tid % kRow4) * 4, step = ld * RP;
    if (row0 + R <= T) {  // a whole tile (every one but the last): no predicates, no zeroing
#pragma unroll
      for (int i = 0; i < PF; ++i) {
        const int idx = s * PF + i, ii = idx % F;
        r[i] = load4_v((idx < F ? g0 : g1) + at + ii * step);
      }
    } else {
#pragma unroll
      for (int i = 0; i < PF; ++i) {
        const int idx = s * PF + i, ii = idx % F;
        r[i] = load4_if((idx < F ? g0 : g1) + at + ii * step, ii * RP < left);
      }
    }
  }
  __device__ __forceinline__ void store(int s, bf16* t0, bf16* t1, int tid) const {
    const int at = (tid / kRow4) * (D + 8) + (tid % kRow4) * 4;
#pragma unroll
    for (int i = 0; i < PF; ++i) {
      const int idx = s * PF + i, ii = idx % F;
      store4_bf16((idx < F ? t0 : t1) + at + ii * RP * (D + 8), r[i]);
    }
  }
  // Pipeline slot s of a loop over tiles of R rows: stores piece s of the next tile into t0/t1 (if
  // has_next) and loads the piece after it, piece 0 of the tile after next (rows next_row + R) at
  // the last slot (if has_after).
  __device__ __forceinline__ void advance(int s, bool has_next, bool has_after, bf16* t0, bf16* t1, const float* g0,
                                          const float* g1, int64_t ld, int next_row, int T, int tid) {
    if (has_next) store(s, t0, t1, tid);
    if (s + 1 < NP) {
      if (has_next) load(s + 1, g0, g1, ld, next_row, T, tid);
    } else if (has_after) {
      load(0, g0, g1, ld, next_row + R, T, tid);
    }
  }
};
template <int R, int D, int PFMAX, int NT = kThreads>
using Stream2 = StreamN<2, R, D, PFMAX, NT>;
template <int R, int D, int PFMAX, int NT = kThreads>
using Stream1 = StreamN<1, R, D, PFMAX, NT>;

// The NP pieces of one tile are spread over a loop iteration: NPA in its first product phase (at
// k-steps evenly spaced over KA), the rest in its second (over KB). Slot s stores piece s of the
// next tile (if any) and loads the piece after it (piece 0 of the tile after next at the last slot).
template <int NP>
struct Slots {
  static constexpr int NPA = (NP + 1) / 2, NPB = NP - NPA;
  // The k-step of the first phase (KA steps) at which slot s < NPA runs, and of the second phase's
  // slot NPA + s (KB steps).
  __host__ __device__ static constexpr int at_a(int s, int KA) { return s * KA / NPA; }
  __host__ __device__ static constexpr int at_b(int s, int KB) { return NPB > 0 ? s * KB / (NPB > 0 ? NPB : 1) : -1; }

  // At k-step kk of the first phase, the slots placed there; run_b likewise for the second phase.
  template <class F>
  __device__ __forceinline__ static void run_a(int kk, int KA, F&& slot) {
#pragma unroll
    for (int s = 0; s < NPA; ++s)
      if (at_a(s, KA) == kk) slot(s);
  }
  template <class F>
  __device__ __forceinline__ static void run_b(int ks, int KB, F&& slot) {
#pragma unroll
    for (int s = 0; s < NPB; ++s)
      if (at_b(s, KB) == ks) slot(NPA + s);
  }
  // A loop of one phase (K steps): slot s at k-step s K / NP.
  template <class F>
  __device__ __forceinline__ static void run_even(int k, int K, F&& slot) {
#pragma unroll
    for (int s = 0; s < NP; ++s)
      if (s * K / NP == k) slot(s);
  }
  // A phase, or the whole iteration, whose products a warp skips: only the pipeline's work.
  template <class F>
  __device__ __forceinline__ static void run_all_a(F&& slot) {
#pragma unroll
    for (int s = 0; s < NPA; ++s) slot(s);
  }
  template <class F>
  __device__ __forceinline__ static void run_all_b(F&& slot) {
#pragma unroll
    for (int s = 0; s < NPB; ++s) slot(NPA + s);
  }
  template <class F>
  __device__ __forceinline__ static void run_all(F&& slot) {
    run_all_a(slot);
    run_all_b(slot);
  }
};

// ---- Block configurations (shared memory sizes are the host's too) ------------------------------

template <int D, int BN, int NW>
struct FwdCfg {
  static constexpr int BM = 16 * NW, NT = 32 * NW, SD = D + 8;
  static constexpr bool kQRegs = D <= 64;
  static constexpr size_t kSmem = size_t(BM + 4 * BN) * SD * sizeof(bf16);  // Q, K[2], V[2]
};

// BN keys per CTA (WK = BN / 16 warps along the keys), query tiles of BM rows. Products of the
// first phase: warp (kw, qw) computes S^T and dP^T for keys 16 kw.. and QW = BM / WQ queries; of
// the second: warp (kw2, dw) accumulates dV and dK for the MK2 x 16 keys from MK2 16 kw2 and the
// DW = D / WD2 columns from DW dw: two key blocks of 16 per warp, so each B fragment read from
// shared memory feeds two products (with one, the loop read 1.5 times the bytes per product).
template <int D, int BN, int BM>
struct BkvCfg {
  static constexpr int WK = BN / 16, WQ = kWarps / WK, QW = BM / WQ, SD = D + 8, SP = BM + 8;
  static constexpr int MK2 = 2, WK2 = BN / (16 * MK2), WD2 = kWarps / WK2, DW = D / WD2;
  static_assert(kWarps % WK == 0 && BM % WQ == 0 && QW % 16 == 0, "layout of the first phase");
  static_assert(BN % (16 * MK2) == 0 && kWarps % WK2 == 0 && D % WD2 == 0 && DW % 16 == 0, "layout of the second");
  // K, V, Q[2], dO[2] (bf16 [*][SD]); P^T, dS^T (bf16 [BN][SP]); lse * log2(e) [2][BM], Dt [2][BM].
  static constexpr size_t kSmem =
      size_t(2 * BN + 4 * BM) * SD * sizeof(bf16) + size_t(2 * BN) * SP * sizeof(bf16) + 4 * BM * sizeof(float);
};

template <int D, int BN>
struct BqCfg {
  static constexpr int BM = 16 * kWarps, SD = D + 8;
  static constexpr bool kRegs = D <= 64;  // Q and dO fragments in registers
  static constexpr size_t kSmem = size_t(2 * BM + 4 * BN) * SD * sizeof(bf16);  // Q, dO, K[2], V[2]
};

// The dK/dV kernel's dS tiles, kept for the dQ kernel: per (batch, head) the tiles (kb, i) of key
// block kb (BN keys) and query tile i >= kb BN / BM (BM queries), kb-major, [BN][BM] bf16 each
// (dS^T, as the dK/dV kernel holds it).
template <int BN, int BM>
struct DsTiles {
  static constexpr int R = BN / BM;
  static_assert(BN % BM == 0, "key blocks hold whole query tiles");
  static constexpr int64_t kElems = int64_t(BN) * BM;
  __host__ __device__ static int64_t per_head(int T) {
    const int64_t nqt = (T + BM - 1) / BM, nkb = (T + BN - 1) / BN;
    return nkb * nqt - R * nkb * (nkb - 1) / 2;
  }
  __host__ __device__ static int64_t index(int kb, int i, int nqt) {
    return int64_t(kb) * nqt - int64_t(R) * kb * (kb - 1) / 2 + (i - R * kb);
  }
};

// dQ from the stored dS: BM = 16 x 8 query rows per CTA, key tiles of KT keys (K[2], dS[2] in
// shared memory; dS rows padded by 16 bytes).
template <int D, int KT>
struct BqDsCfg {
  static constexpr int BM = 16 * kWarps, SD = D + 8, SQ = BM + 8;
  static constexpr int WC = D >= 256 ? 4 : D >= 128 ? 2 : 1;  // warps along head_dim
  static constexpr size_t kSmem = size_t(2 * KT) * (SD + SQ) * sizeof(bf16);
};

}  // namespace flash_detail

namespace {

using namespace flash_detail;

// ---- Forward -----------------------------------------------------------------------------------

template <int D, int BN, int PFMAX, int NW, int MINB>
__global__ void __launch_bounds__(32 * NW, MINB)
    flash_forward_kernel(float* __restrict__ out, float* __restrict__ lse, const float* __restrict__ q,
                         const float* __restrict__ k, const float* __restrict__ v, int T, int H, float scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using C = FwdCfg<D, BN, NW>;
  constexpr int BM = C::BM, NT = C::NT, SD = C::SD, KA = D / 16, KB = BN / 16;
  using St = Stream2<BN, D, PFMAX, NT>;
  constexpr int NP = St::NP;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sK = sQ + BM * SD;  // [2][BN][SD]
  bf16* sV = sK + 2 * BN * SD;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, c = lane & 3;
  const int qb = int(gridDim.x) - 1 - int(blockIdx.x), h = blockIdx.y, b = blockIdx.z;
  const int64_t ld = int64_t(H) * D, base = int64_t(b) * T * ld + int64_t(h) * D;
  const float *gq = q + base, *gk = k + base, *gv = v + base;
  const int q0 = qb * BM, ntiles = (min(q0 + BM, T) - 1) / BN + 1;
  const int wq0 = q0 + warp * 16;  // this warp's first query row
  const float cl2 = scale * kLog2e;

  St st;
  load_tile<BM, D, NT>(sQ, gq, ld, q0, T, tid);
#pragma unroll
  for (int s = 0; s < NP; ++s) {
    st.load(s, gk, gv, ld, 0, T, tid);
    st.store(s, sK, sV, tid);
  }
  if (ntiles > 1) st.load(0, gk, gv, ld, BN, T, tid);
  __syncthreads();

  u32 qf[C::kQRegs ? KA : 1][4];
  if constexpr (C::kQRegs) {
#pragma unroll
    for (int kk = 0; kk < KA; ++kk) ldsm4(qf[kk], a_addr(sQ, SD, warp * 16, kk * 16, lane));
  }

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

  for (int j = 0; j < ntiles; ++j) {
    const int key0 = j * BN;
    const bf16* tK = sK + (j & 1) * BN * SD;
    const bf16* tV = sV + (j & 1) * BN * SD;
    bf16* nK = sK + ((j + 1) & 1) * BN * SD;
    bf16* nV = sV + ((j + 1) & 1) * BN * SD;
    const bool has1 = j + 1 < ntiles, has2 = j + 2 < ntiles;
    auto slot = [&](int s) { st.advance(s, has1, has2, nK, nV, gk, gv, ld, key0 + BN, T, tid); };

    if (key0 <= wq0 + 15) {
      // S = Q K^T for the warp's 16 rows and the tile's BN keys.
      float sc[BN / 8][4];
#pragma unroll
      for (int i = 0; i < BN / 8; ++i) sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < KA; ++kk) {
        Slots<NP>::run_a(kk, KA, slot);
        u32 a[4];
        if constexpr (C::kQRegs) {
#pragma unroll
          for (int i = 0; i < 4; ++i) a[i] = qf[kk][i];
        } else {
          ldsm4(a, a_addr(sQ, SD, warp * 16, kk * 16, lane));
        }
#pragma unroll
        for (int np = 0; np < BN / 16; ++np) {
          u32 bb[4];
          ldsm4(bb, bnk_addr(tK, SD, np * 16, kk * 16, lane));
          mma(sc[2 * np], a, bb[0], bb[1]);
          mma(sc[2 * np + 1], a, bb[2], bb[3]);
        }
      }
      // Causal mask inside the diagonal tiles, then the online softmax (rows g and g + 8).
      if (key0 + BN - 1 > wq0) {
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = key0 + nt * 8 + 2 * c + (e & 1), row = wq0 + g + 8 * (e >> 1);
            if (key > row) sc[nt][e] = -INFINITY;
          }
      }
      float x0 = m0, x1 = m1;
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        x0 = fmaxf(x0, fmaxf(sc[nt][0], sc[nt][1]));
        x1 = fmaxf(x1, fmaxf(sc[nt][2], sc[nt][3]));
      }
      x0 = quad_max(x0), x1 = quad_max(x1);  // finite: every row's key 0 is in tile 0
      const float al0 = exp2_approx((m0 - x0) * cl2), al1 = exp2_approx((m1 - x1) * cl2);
      m0 = x0, m1 = x1;
      const float mb0 = x0 * cl2, mb1 = x1 * cl2;
      float rs0 = 0.f, rs1 = 0.f;
      u32 pa[KB][4];
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        const float p0 = exp2_approx(__fmaf_rn(sc[nt][0], cl2, -mb0));
        const float p1 = exp2_approx(__fmaf_rn(sc[nt][1], cl2, -mb0));
        const float p2 = exp2_approx(__fmaf_rn(sc[nt][2], cl2, -mb1));
        const float p3 = exp2_approx(__fmaf_rn(sc[nt][3], cl2, -mb1));
        rs0 += p0 + p1, rs1 += p2 + p3;
        pa[nt / 2][(nt & 1) * 2 + 0] = pack_bf16(p0, p1);
        pa[nt / 2][(nt & 1) * 2 + 1] = pack_bf16(p2, p3);
      }
      l0 = __fmaf_rn(l0, al0, rs0), l1 = __fmaf_rn(l1, al1, rs1);
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) o[dt][0] *= al0, o[dt][1] *= al0, o[dt][2] *= al1, o[dt][3] *= al1;
      // O += P V.
#pragma unroll
      for (int ks = 0; ks < KB; ++ks) {
        Slots<NP>::run_b(ks, KB, slot);
        mma_rows_kn(o, pa[ks], tV, SD, ks * 16, lane);
      }
    } else {
      // The whole tile lies above this warp's rows: only the pipeline's work.
      Slots<NP>::run_all(slot);
    }
    __syncthreads();
  }

  l0 = quad_sum(l0), l1 = quad_sum(l1);
  const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
  const int r0 = wq0 + g, r1 = r0 + 8;
  float* lrow = lse + (int64_t(b) * H + h) * T;
  if (r0 < T) {
    float* po = out + base + int64_t(r0) * ld + 2 * c;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      *reinterpret_cast<float2*>(po + dt * 8) = make_float2(o[dt][0] * inv0, o[dt][1] * inv0);
    if (c == 0) lrow[r0] = m0 * scale + logf(l0);
  }
  if (r1 < T) {
    float* po = out + base + int64_t(r1) * ld + 2 * c;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      *reinterpret_cast<float2*>(po + dt * 8) = make_float2(o[dt][2] * inv1, o[dt][3] * inv1);
    if (c == 0) lrow[r1] = m1 * scale + logf(l1);
  }
#endif
}

// ---- Backward: Dt = rowsum(dout * out) -----------------------------------------------------------

// One warp per (b, t, h) row in memory order; lanes take float4 columns lane, lane + 32, ... and
// the warp adds by an xor butterfly (fixed order). Dt is [batch, heads, seq] like lse.
__global__ void __launch_bounds__(256)
    flash_row_dot_kernel(float* __restrict__ dt, const float* __restrict__ dout, const float* __restrict__ out,
                         int64_t rows, int T, int H, int D) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const float *a = dout + r * D, *o = out + r * D;
  float s = 0.f;
  for (int d = lane * 4; d < D; d += 128) {
    const float4 x = load4(a + d), y = load4(o + d);
    s = __fmaf_rn(x.x, y.x, s);
    s = __fmaf_rn(x.y, y.y, s);
    s = __fmaf_rn(x.z, y.z, s);
    s = __fmaf_rn(x.w, y.w, s);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (lane == 0) {
    const int64_t h = r % H, bt = r / H, t = bt % T, bb = bt / T;
    dt[(bb * H + h) * T + t] = s;
  }
}

// ---- Backward: dK, dV ----------------------------------------------------------------------------

// ds: where to keep each tile's dS for flash_backward_q_ds_kernel (DsTiles<BN, BM>), or null.
template <int D, int BN, int BM, int PFMAX>
__global__ void __launch_bounds__(kThreads, 1)
    flash_backward_kv_kernel(float* __restrict__ dk, float* __restrict__ dv, bf16* __restrict__ ds,
                             const float* __restrict__ dout, const float* __restrict__ q, const float* __restrict__ k,
                             const float* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ dt,
                             int T, int H, float scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using C = BkvCfg<D, BN, BM>;
  constexpr int WK = C::WK, QW = C::QW, SD = C::SD, SP = C::SP, KA = D / 16, KB = BM / 16;
  constexpr int MK2 = C::MK2, WD2 = C::WD2, DW = C::DW;
  using St = Stream2<BM, D, PFMAX>;
  constexpr int NP = St::NP;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);
  bf16* sV = sK + BN * SD;
  bf16* sQ = sV + BN * SD;      // [2][BM][SD]
  bf16* sO = sQ + 2 * BM * SD;  // [2][BM][SD]
  bf16* sP = sO + 2 * BM * SD;  // [BN][SP]
  bf16* sS = sP + BN * SP;      // [BN][SP]
  float* sL = reinterpret_cast<float*>(sS + BN * SP);  // [2][BM]
  float* sD = sL + 2 * BM;                             // [2][BM]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, c = lane & 3;
  const int kb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t ld = int64_t(H) * D, base = int64_t(b) * T * ld + int64_t(h) * D;
  const float *gq = q + base, *gk = k + base, *gv = v + base, *go = dout + base;
  const float *lrow = lse + (int64_t(b) * H + h) * T, *drow = dt + (int64_t(b) * H + h) * T;
  const int key0 = kb * BN, nqt = (T + BM - 1) / BM, i0 = key0 / BM;
  const int kw = warp % WK, qw = warp / WK;       // first phase
  const int kw2 = warp / WD2, dw = warp % WD2;    // second phase
  const int kmin2 = key0 + kw2 * 16 * MK2;        // the second phase's first key
  const float cl2 = scale * kLog2e;

  St st;
  float vl = 0.f, vd = 0.f;  // this thread's row of lse and Dt for the tile in flight (tid < BM)
  auto load_vec = [&](int row0) {
    if (tid < BM) {
      const int r = row0 + tid;
      vl = r < T ? lrow[r] : 0.f;
      vd = r < T ? drow[r] : 0.f;
    }
  };
  auto store_vec = [&](int buf) {
    if (tid < BM) sL[buf * BM + tid] = vl * kLog2e, sD[buf * BM + tid] = vd;
  };

  load_tile<BN, D>(sK, gk, ld, key0, T, tid);
  load_tile<BN, D>(sV, gv, ld, key0, T, tid);
  load_vec(i0 * BM);
#pragma unroll
  for (int s = 0; s < NP; ++s) {
    st.load(s, gq, go, ld, i0 * BM, T, tid);
    st.store(s, sQ, sO, tid);
  }
  store_vec(0);
  if (i0 + 1 < nqt) {
    st.load(0, gq, go, ld, (i0 + 1) * BM, T, tid);
    load_vec((i0 + 1) * BM);
  }
  __syncthreads();

  float acc_v[MK2][DW / 8][4], acc_k[MK2][DW / 8][4];
#pragma unroll
  for (int m = 0; m < MK2; ++m)
#pragma unroll
    for (int i = 0; i < DW / 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_v[m][i][e] = acc_k[m][i][e] = 0.f;

  for (int i = i0; i < nqt; ++i) {
    const int buf = (i - i0) & 1, qt0 = i * BM;
    const bf16* tQ = sQ + buf * BM * SD;
    const bf16* tO = sO + buf * BM * SD;
    const float* tL = sL + buf * BM;
    const float* tD = sD + buf * BM;
    const bool has1 = i + 1 < nqt, has2 = i + 2 < nqt;
    // The rows' vectors (lse, D) travel with piece 0: stored at slot 0, loaded at the last slot
    // (store_vec before load_vec, which reuses its registers, also when that is one slot).
    auto slot = [&](int s) {
      st.advance(s, has1, has2, sQ + (buf ^ 1) * BM * SD, sO + (buf ^ 1) * BM * SD, gq, go, ld, qt0 + BM, T, tid);
      if (has1 && s == 0) store_vec(buf ^ 1);
      if (has2 && s + 1 == NP) load_vec(qt0 + 2 * BM);
    };

    // Phase 1: S^T, dP^T for keys key0 + 16 kw.. and queries qt0 + QW qw.., then P^T, dS^T.
    const int kmin = key0 + kw * 16, qmin = qt0 + qw * QW;
    float sa[QW / 8][4], pa[QW / 8][4];
#pragma unroll
    for (int n = 0; n < QW / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) sa[n][e] = pa[n][e] = 0.f;
    if (kmin <= qmin + QW - 1) {
#pragma unroll
      for (int kk = 0; kk < KA; ++kk) {
        Slots<NP>::run_a(kk, KA, slot);
        u32 ak[4], av[4];
        ldsm4(ak, a_addr(sK, SD, kw * 16, kk * 16, lane));
        ldsm4(av, a_addr(sV, SD, kw * 16, kk * 16, lane));
#pragma unroll
        for (int np = 0; np < QW / 16; ++np) {
          u32 bq[4], bo[4];
          ldsm4(bq, bnk_addr(tQ, SD, qw * QW + np * 16, kk * 16, lane));
          mma(sa[2 * np], ak, bq[0], bq[1]);
          mma(sa[2 * np + 1], ak, bq[2], bq[3]);
          ldsm4(bo, bnk_addr(tO, SD, qw * QW + np * 16, kk * 16, lane));
          mma(pa[2 * np], av, bo[0], bo[1]);
          mma(pa[2 * np + 1], av, bo[2], bo[3]);
        }
      }
    } else {
      Slots<NP>::run_all_a(slot);
    }
    {
      // Masked when some key may follow some query, when the tile passes seq, or at query 0.
      const bool masked = kmin + 15 > qmin || qt0 + BM > T;
#pragma unroll
      for (int n = 0; n < QW / 8; ++n) {
        const int ql = qw * QW + n * 8 + 2 * c;  // local query of elements 0 and 2 (1 and 3: ql + 1)
        const float l2[2] = {tL[ql], tL[ql + 1]}, dd[2] = {tD[ql], tD[ql + 1]};
        float p[4], ds[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          p[e] = exp2_approx(__fmaf_rn(sa[n][e], cl2, -l2[e & 1]));
          if (masked) {
            const int key = kmin + g + 8 * (e >> 1), query = qt0 + ql + (e & 1);
            if (key > query || query >= T) p[e] = 0.f;
          }
          ds[e] = p[e] * (pa[n][e] - dd[e & 1]);
          if (masked && qt0 + ql + (e & 1) == 0) ds[e] = 0.f;
        }
        const int kr = kw * 16 + g;
        *reinterpret_cast<u32*>(sP + kr * SP + ql) = pack_bf16(p[0], p[1]);
        *reinterpret_cast<u32*>(sP + (kr + 8) * SP + ql) = pack_bf16(p[2], p[3]);
        *reinterpret_cast<u32*>(sS + kr * SP + ql) = pack_bf16(ds[0], ds[1]);
        *reinterpret_cast<u32*>(sS + (kr + 8) * SP + ql) = pack_bf16(ds[2], ds[3]);
      }
    }
    __syncthreads();

    if (ds != nullptr) {  // dS^T of this tile for the dQ kernel: 16-byte rows of sS, coalesced
      using Tiles = DsTiles<BN, BM>;
      bf16* tile = ds + ((int64_t(b) * H + h) * Tiles::per_head(T) + Tiles::index(kb, i, nqt)) * Tiles::kElems;
#pragma unroll
      for (int e = tid; e < BN * BM / 8; e += kThreads) {
        const int row = e / (BM / 8), col = (e % (BM / 8)) * 8;
        *reinterpret_cast<uint4*>(tile + row * BM + col) = *reinterpret_cast<const uint4*>(sS + row * SP + col);
      }
    }

    // Phase 2: dV += P^T dO, dK += dS^T Q for keys kmin2.. (MK2 blocks of 16) and columns DW dw...
    if (kmin2 <= qt0 + BM - 1) {
#pragma unroll
      for (int ks = 0; ks < KB; ++ks) {
        Slots<NP>::run_b(ks, KB, slot);
        u32 ap[MK2][4], as[MK2][4];
#pragma unroll
        for (int m = 0; m < MK2; ++m) {
          ldsm4(ap[m], a_addr(sP, SP, kw2 * 16 * MK2 + 16 * m, ks * 16, lane));
          ldsm4(as[m], a_addr(sS, SP, kw2 * 16 * MK2 + 16 * m, ks * 16, lane));
        }
#pragma unroll
        for (int dp = 0; dp < DW / 16; ++dp) {
          u32 bo[4], bq[4];
          ldsm4t(bo, bkn_addr(tO, SD, ks * 16, dw * DW + dp * 16, lane));
          ldsm4t(bq, bkn_addr(tQ, SD, ks * 16, dw * DW + dp * 16, lane));
#pragma unroll
          for (int m = 0; m < MK2; ++m) {
            mma(acc_v[m][2 * dp], ap[m], bo[0], bo[1]);
            mma(acc_v[m][2 * dp + 1], ap[m], bo[2], bo[3]);
            mma(acc_k[m][2 * dp], as[m], bq[0], bq[1]);
            mma(acc_k[m][2 * dp + 1], as[m], bq[2], bq[3]);
          }
        }
      }
    } else {
      Slots<NP>::run_all_b(slot);
    }
    __syncthreads();
  }

#pragma unroll
  for (int m = 0; m < MK2; ++m) {
    const int r0 = kmin2 + 16 * m + g;
    store_rows(dv + base + dw * DW, ld, r0, T, c, acc_v[m], 1.0f);
    store_rows(dk + base + dw * DW, ld, r0, T, c, acc_k[m], scale);
  }
#endif
}

// ---- Backward: dQ --------------------------------------------------------------------------------

template <int D, int BN, int PFMAX>
__global__ void __launch_bounds__(kThreads, 1)
    flash_backward_q_kernel(float* __restrict__ dq, const float* __restrict__ dout, const float* __restrict__ q,
                            const float* __restrict__ k, const float* __restrict__ v, const float* __restrict__ lse,
                            const float* __restrict__ dt, int T, int H, float scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using C = BqCfg<D, BN>;
  constexpr int BM = C::BM, SD = C::SD, KA = D / 16, KB = BN / 16;
  using St = Stream2<BN, D, PFMAX>;
  constexpr int NP = St::NP;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sO = sQ + BM * SD;
  bf16* sK = sO + BM * SD;      // [2][BN][SD]
  bf16* sV = sK + 2 * BN * SD;  // [2][BN][SD]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, c = lane & 3;
  const int qb = int(gridDim.x) - 1 - int(blockIdx.x), h = blockIdx.y, b = blockIdx.z;
  const int64_t ld = int64_t(H) * D, base = int64_t(b) * T * ld + int64_t(h) * D;
  const float *gq = q + base, *gk = k + base, *gv = v + base, *go = dout + base;
  const int q0 = qb * BM, ntiles = (min(q0 + BM, T) - 1) / BN + 1;
  const int wq0 = q0 + warp * 16, r0 = wq0 + g, r1 = r0 + 8;
  const float cl2 = scale * kLog2e;
  const float *lrow = lse + (int64_t(b) * H + h) * T, *drow = dt + (int64_t(b) * H + h) * T;
  const float l2_0 = r0 < T ? lrow[r0] * kLog2e : 0.f, l2_1 = r1 < T ? lrow[r1] * kLog2e : 0.f;
  const float d_0 = r0 < T ? drow[r0] : 0.f, d_1 = r1 < T ? drow[r1] : 0.f;

  St st;
  load_tile<BM, D>(sQ, gq, ld, q0, T, tid);
  load_tile<BM, D>(sO, go, ld, q0, T, tid);
#pragma unroll
  for (int s = 0; s < NP; ++s) {
    st.load(s, gk, gv, ld, 0, T, tid);
    st.store(s, sK, sV, tid);
  }
  if (ntiles > 1) st.load(0, gk, gv, ld, BN, T, tid);
  __syncthreads();

  u32 qf[C::kRegs ? KA : 1][4], of[C::kRegs ? KA : 1][4];
  if constexpr (C::kRegs) {
#pragma unroll
    for (int kk = 0; kk < KA; ++kk) {
      ldsm4(qf[kk], a_addr(sQ, SD, warp * 16, kk * 16, lane));
      ldsm4(of[kk], a_addr(sO, SD, warp * 16, kk * 16, lane));
    }
  }

  float acc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;

  for (int j = 0; j < ntiles; ++j) {
    const int key0 = j * BN;
    const bf16* tK = sK + (j & 1) * BN * SD;
    const bf16* tV = sV + (j & 1) * BN * SD;
    bf16* nK = sK + ((j + 1) & 1) * BN * SD;
    bf16* nV = sV + ((j + 1) & 1) * BN * SD;
    const bool has1 = j + 1 < ntiles, has2 = j + 2 < ntiles;
    auto slot = [&](int s) { st.advance(s, has1, has2, nK, nV, gk, gv, ld, key0 + BN, T, tid); };

    if (key0 <= wq0 + 15) {
      float sc[BN / 8][4], dp[BN / 8][4];
#pragma unroll
      for (int i = 0; i < BN / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[i][e] = dp[i][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < KA; ++kk) {
        Slots<NP>::run_a(kk, KA, slot);
        u32 aq[4], ao[4];
        if constexpr (C::kRegs) {
#pragma unroll
          for (int i = 0; i < 4; ++i) aq[i] = qf[kk][i], ao[i] = of[kk][i];
        } else {
          ldsm4(aq, a_addr(sQ, SD, warp * 16, kk * 16, lane));
          ldsm4(ao, a_addr(sO, SD, warp * 16, kk * 16, lane));
        }
#pragma unroll
        for (int np = 0; np < BN / 16; ++np) {
          u32 bk[4], bv[4];
          ldsm4(bk, bnk_addr(tK, SD, np * 16, kk * 16, lane));
          mma(sc[2 * np], aq, bk[0], bk[1]);
          mma(sc[2 * np + 1], aq, bk[2], bk[3]);
          ldsm4(bv, bnk_addr(tV, SD, np * 16, kk * 16, lane));
          mma(dp[2 * np], ao, bv[0], bv[1]);
          mma(dp[2 * np + 1], ao, bv[2], bv[3]);
        }
      }
      // P = exp(S - lse) (masked in diagonal tiles), dS = P (dP - Dt) as bf16 A fragments.
      const bool masked = key0 + BN - 1 > wq0;
      u32 dsa[KB][4];
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        float ds[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool hi = e >> 1;
          float p = exp2_approx(__fmaf_rn(sc[nt][e], cl2, -(hi ? l2_1 : l2_0)));
          const int row = hi ? r1 : r0;
          if (masked && key0 + nt * 8 + 2 * c + (e & 1) > row) p = 0.f;
          ds[e] = p * (dp[nt][e] - (hi ? d_1 : d_0));
          if (masked && row == 0) ds[e] = 0.f;
        }
        dsa[nt / 2][(nt & 1) * 2 + 0] = pack_bf16(ds[0], ds[1]);
        dsa[nt / 2][(nt & 1) * 2 + 1] = pack_bf16(ds[2], ds[3]);
      }
      // dQ += dS K.
#pragma unroll
      for (int ks = 0; ks < KB; ++ks) {
        Slots<NP>::run_b(ks, KB, slot);
        mma_rows_kn(acc, dsa[ks], tK, SD, ks * 16, lane);
      }
    } else {
      Slots<NP>::run_all(slot);
    }
    __syncthreads();
  }

  store_rows(dq + base, ld, r0, T, c, acc, scale);
#endif
}

// ---- Backward: dQ from the stored dS -------------------------------------------------------------

// A CTA owns BM query rows and loops over key tiles of KT keys up to its diagonal: dQ += dS K, with
// dS as the dK/dV kernel stored it (DsTiles<KVBN, KVBM>: already masked, zero above the diagonal,
// past seq and in query row 0), copied to shared memory by cp.async, and K streamed and rounded to
// bf16 as everywhere else. One product instead of the recomputing kernel's three. The 8 warps
// split the BM x D output into WR x WC tiles of 16 MT rows x 8 NT columns: at head size 256, 64 x 64
// each, so every B fragment read from shared memory feeds 4 products and every A fragment 8 (16
// rows x 256 columns per warp would read twice the bytes per product, and shared-memory bandwidth
// is what bounds these loops). Writes scale * dq once.
template <int D, int KT, int PFMAX, int KVBN, int KVBM>
__global__ void __launch_bounds__(kThreads, 1)
    flash_backward_q_ds_kernel(float* __restrict__ dq, const bf16* __restrict__ ds, const float* __restrict__ k,
                               int T, int H, float scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using C = BqDsCfg<D, KT>;
  using Tiles = DsTiles<KVBN, KVBM>;
  constexpr int BM = C::BM, SD = C::SD, SQ = C::SQ, KB = KT / 16;
  constexpr int WC = C::WC, WR = kWarps / WC, MT = BM / WR / 16, NT = D / WC / 8;
  static_assert(KVBN % KT == 0 && BM % KVBM == 0, "key tiles inside key blocks, whole query tiles per CTA");
  static_assert(MT >= 1 && NT % 2 == 0, "warp tiles");
  using St = Stream1<KT, D, PFMAX>;
  constexpr int NP = St::NP;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);  // [2][KT][SD]
  bf16* sS = sK + 2 * KT * SD;                // [2][KT][SQ]: dS^T, keys x the CTA's queries

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, c = lane & 3;
  const int qb = int(gridDim.x) - 1 - int(blockIdx.x), h = blockIdx.y, b = blockIdx.z;
  const int64_t ld = int64_t(H) * D, base = int64_t(b) * T * ld + int64_t(h) * D;
  const float* gk = k + base;
  const int q0 = qb * BM, ntiles = (min(q0 + BM, T) - 1) / KT + 1, nqt = (T + KVBM - 1) / KVBM;
  const int wr = warp / WC, wc = warp % WC;  // this warp's rows wr * 16 MT.., columns wc * 8 NT..
  const int wq0 = q0 + wr * 16 * MT;
  const bf16* dsh = ds + (int64_t(b) * H + h) * Tiles::per_head(T) * Tiles::kElems;

  // Key tile j's dS for the CTA's queries into dst; query tiles past seq or above the diagonal
  // (none of their keys precede them) are zeros.
  auto fetch_ds = [&](int j, bf16* dst) {
    const int key0 = j * KT, kb = key0 / KVBN, ro = key0 % KVBN;
#pragma unroll
    for (int e = tid; e < KT * BM / 8; e += kThreads) {
      const int row = e / (BM / 8), col = (e % (BM / 8)) * 8, qt = q0 / KVBM + col / KVBM;
      const bool ok = qt < nqt && qt >= kb * Tiles::R;
      const bf16* src = ok ? dsh + Tiles::index(kb, qt, nqt) * Tiles::kElems + (ro + row) * KVBM + col % KVBM : dsh;
      cp_async16(smem_addr(dst + row * SQ + col), src, ok);
    }
  };

  St st;
#pragma unroll
  for (int s = 0; s < NP; ++s) {
    st.load(s, gk, gk, ld, 0, T, tid);
    st.store(s, sK, sK, tid);
  }
  fetch_ds(0, sS);
  if (ntiles > 1) st.load(0, gk, gk, ld, KT, T, tid);
  cp_async_wait();
  __syncthreads();

  float acc[MT][NT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int i = 0; i < NT; ++i) acc[m][i][0] = acc[m][i][1] = acc[m][i][2] = acc[m][i][3] = 0.f;

  for (int j = 0; j < ntiles; ++j) {
    const int key0 = j * KT;
    const bf16* tK = sK + (j & 1) * KT * SD;
    const bf16* tS = sS + (j & 1) * KT * SQ;
    bf16* nK = sK + ((j + 1) & 1) * KT * SD;
    const bool has1 = j + 1 < ntiles, has2 = j + 2 < ntiles;
    if (has1) fetch_ds(j + 1, sS + ((j + 1) & 1) * KT * SQ);
    auto slot = [&](int s) { st.advance(s, has1, has2, nK, nK, gk, gk, ld, key0 + KT, T, tid); };
    if (key0 <= wq0 + 16 * MT - 1) {
#pragma unroll
      for (int ks = 0; ks < KB; ++ks) {
        Slots<NP>::run_even(ks, KB, slot);
        u32 a[MT][4];
#pragma unroll
        for (int m = 0; m < MT; ++m) ldsm4t(a[m], akm_addr(tS, SQ, wr * 16 * MT + 16 * m, ks * 16, lane));
#pragma unroll
        for (int dd = 0; dd < NT / 2; ++dd) {
          u32 bk[4];
          ldsm4t(bk, bkn_addr(tK, SD, ks * 16, wc * 8 * NT + dd * 16, lane));
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            if (key0 > wq0 + 16 * m + 15) continue;  // a tile above these 16 rows: dS is zero there
            mma(acc[m][2 * dd], a[m], bk[0], bk[1]);
            mma(acc[m][2 * dd + 1], a[m], bk[2], bk[3]);
          }
        }
      }
    } else {
      Slots<NP>::run_all(slot);
    }
    cp_async_wait();
    __syncthreads();
  }

#pragma unroll
  for (int m = 0; m < MT; ++m) store_rows(dq + base + wc * 8 * NT, ld, wq0 + 16 * m + g, T, c, acc[m], scale);
#endif
}

// ---- Configurations and host side ----------------------------------------------------------------

// Per head_dim: forward key tile; dK/dV key block and query tile; dQ key tile; the streamed pieces'
// register budget (float4 per thread); the key tile of dQ from the stored dS.
template <int D>
struct Plan;
template <>
struct Plan<32> {
  static constexpr int kFwdNW = 8, kFwdMinB = 2, kFwdPF = 8, kFwdBN = 64, kKvBN = 128, kKvBM = 64, kKvPF = 8, kQBN = 32, kQPF = 8, kDsKT = 64;
};
template <>
struct Plan<64> {
  static constexpr int kFwdNW = 8, kFwdMinB = 1, kFwdPF = 8, kFwdBN = 64, kKvBN = 128, kKvBM = 64, kKvPF = 8, kQBN = 64, kQPF = 8, kDsKT = 64;
};
template <>
struct Plan<128> {
  static constexpr int kFwdNW = 8, kFwdMinB = 1, kFwdPF = 8, kFwdBN = 64, kKvBN = 64, kKvBM = 64, kKvPF = 8, kQBN = 64, kQPF = 8, kDsKT = 64;
};
template <>
struct Plan<256> {
  static constexpr int kFwdNW = 8, kFwdMinB = 1, kFwdPF = 4, kFwdBN = 64, kKvBN = 64, kKvBM = 64, kKvPF = 4, kQBN = 32, kQPF = 4, kDsKT = 64;
};

template <int D>
size_t smem_needed() {
  using P = Plan<D>;
  size_t m = FwdCfg<D, P::kFwdBN, P::kFwdNW>::kSmem;
  if (BkvCfg<D, P::kKvBN, P::kKvBM>::kSmem > m) m = BkvCfg<D, P::kKvBN, P::kKvBM>::kSmem;
  if (BqCfg<D, P::kQBN>::kSmem > m) m = BqCfg<D, P::kQBN>::kSmem;
  if (BqDsCfg<D, P::kDsKT>::kSmem > m) m = BqDsCfg<D, P::kDsKT>::kSmem;
  return m;
}

size_t smem_for(int64_t head_dim) {
  switch (head_dim) {
    case 32: return smem_needed<32>();
    case 64: return smem_needed<64>();
    case 128: return smem_needed<128>();
    case 256: return smem_needed<256>();
    default: return 0;
  }
}

// cudaSuccess when the current device runs head_dim's kernels.
cudaError_t device_check(int64_t head_dim) {
  const size_t need = smem_for(head_dim);
  if (need == 0) return cudaErrorInvalidValue;
  int dev = 0, major = 0, optin = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e != cudaSuccess) return e;
  if (major < 8 || size_t(optin) < need) return cudaErrorNotSupported;
  return cudaSuccess;
}

bool aligned(const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

cudaError_t check_sizes(int64_t batch, int64_t seq, int64_t heads) {
  if (batch < 0 || seq < 0 || heads <= 0 || batch > 65535 || heads > 65535 || seq >= (int64_t(1) << 30))
    return cudaErrorInvalidValue;
  return cudaSuccess;
}

template <class Kernel>
cudaError_t prepare(Kernel kernel, size_t smem) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
}

template <int D>
cudaError_t forward(float* out, float* lse, const float* q, const float* k, const float* v, int B, int T, int H,
                    float scale, cudaStream_t stream) {
  using P = Plan<D>;
  constexpr int BN = P::kFwdBN;
  using C = FwdCfg<D, BN, P::kFwdNW>;
  auto kernel = flash_forward_kernel<D, BN, P::kFwdPF, P::kFwdNW, P::kFwdMinB>;
  if (cudaError_t e = prepare(kernel, C::kSmem); e != cudaSuccess) return e;
  const dim3 grid(unsigned((T + C::BM - 1) / C::BM), unsigned(H), unsigned(B));
  kernel<<<grid, C::NT, C::kSmem, stream>>>(out, lse, q, k, v, T, H, scale);
  return cudaGetLastError();
}

// Bytes of one batch entry's stored dS tiles (all heads).
template <int D>
uint64_t ds_entry_bytes(int64_t seq, int64_t heads) {
  using P = Plan<D>;
  return uint64_t(heads) * uint64_t(DsTiles<P::kKvBN, P::kKvBM>::per_head(int(seq))) *
         uint64_t(DsTiles<P::kKvBN, P::kKvBM>::kElems) * sizeof(bf16);
}

uint64_t ds_entry_bytes(int64_t seq, int64_t heads, int64_t head_dim) {
  switch (head_dim) {
    case 32: return ds_entry_bytes<32>(seq, heads);
    case 64: return ds_entry_bytes<64>(seq, heads);
    case 128: return ds_entry_bytes<128>(seq, heads);
    case 256: return ds_entry_bytes<256>(seq, heads);
    default: return 0;
  }
}

// The scratch's first part: Dt, float32 [batch, heads, seq], rounded up so the dS tiles after it
// start 16-byte aligned (cp.async and the tiles' 16-byte stores).
uint64_t dt_bytes(int64_t batch, int64_t seq, int64_t heads) {
  return (uint64_t(batch) * uint64_t(seq) * uint64_t(heads) * sizeof(float) + 15) / 16 * 16;
}

// nb > 0: batch entries nb at a time, dK/dV keeping dS in ds and dQ reading it; nb == 0: dQ recomputes.
template <int D>
cudaError_t backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                     const float* v, const float* out, const float* lse, float* dt, bf16* ds, int nb, int B, int T,
                     int H, float scale, cudaStream_t stream) {
  using P = Plan<D>;
  {
    const int64_t rows = int64_t(B) * T * H;
    const int64_t blocks = (rows * 32 + 255) / 256;
    flash_row_dot_kernel<<<unsigned(blocks), 256, 0, stream>>>(dt, dout, out, rows, T, H, D);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  using Ckv = BkvCfg<D, P::kKvBN, P::kKvBM>;
  auto kv = flash_backward_kv_kernel<D, P::kKvBN, P::kKvBM, P::kKvPF>;
  if (cudaError_t e = prepare(kv, Ckv::kSmem); e != cudaSuccess) return e;
  const unsigned kv_blocks = unsigned((T + P::kKvBN - 1) / P::kKvBN);
  if (nb == 0) {
    kv<<<dim3(kv_blocks, unsigned(H), unsigned(B)), kThreads, Ckv::kSmem, stream>>>(dk, dv, nullptr, dout, q, k, v,
                                                                                   lse, dt, T, H, scale);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    using C = BqCfg<D, P::kQBN>;
    auto kernel = flash_backward_q_kernel<D, P::kQBN, P::kQPF>;
    if (cudaError_t e = prepare(kernel, C::kSmem); e != cudaSuccess) return e;
    const unsigned q_blocks = unsigned((T + C::BM - 1) / C::BM);
    kernel<<<dim3(q_blocks, unsigned(H), unsigned(B)), kThreads, C::kSmem, stream>>>(dq, dout, q, k, v, lse, dt, T, H,
                                                                                    scale);
    return cudaGetLastError();
  }
  using Cds = BqDsCfg<D, P::kDsKT>;
  auto qds = flash_backward_q_ds_kernel<D, P::kDsKT, P::kQPF, P::kKvBN, P::kKvBM>;
  if (cudaError_t e = prepare(qds, Cds::kSmem); e != cudaSuccess) return e;
  const unsigned q_blocks = unsigned((T + Cds::BM - 1) / Cds::BM);
  const int64_t entry = int64_t(T) * H * D, rows = int64_t(H) * T;
  for (int b0 = 0; b0 < B; b0 += nb) {
    const int n = min(nb, B - b0);
    const int64_t o = b0 * entry, r = b0 * rows;
    kv<<<dim3(kv_blocks, unsigned(H), unsigned(n)), kThreads, Ckv::kSmem, stream>>>(
        dk + o, dv + o, ds, dout + o, q + o, k + o, v + o, lse + r, dt + r, T, H, scale);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    qds<<<dim3(q_blocks, unsigned(H), unsigned(n)), kThreads, Cds::kSmem, stream>>>(dq + o, ds, k + o, T, H, scale);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace

bool flash_attention_supported(int64_t head_dim) { return device_check(head_dim) == cudaSuccess; }

bool flash_attention_supported(int64_t batch, int64_t seq, int64_t heads, int64_t head_dim) {
  return check_sizes(batch, seq, heads) == cudaSuccess && flash_attention_supported(head_dim);
}

uint64_t flash_attention_backward_scratch_bytes(int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                                                uint64_t ds_budget) {
  if (batch <= 0 || seq <= 0 || heads <= 0) return 0;
  const uint64_t entry = ds_entry_bytes(seq, heads, head_dim);
  const uint64_t nb = entry == 0 ? 0 : std::min<uint64_t>(uint64_t(batch), ds_budget / entry);
  return dt_bytes(batch, seq, heads) + nb * entry;
}

cudaError_t launch_flash_attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                                           int64_t batch, int64_t seq, int64_t heads, int64_t head_dim, float scale,
                                           cudaStream_t stream) {
  if (cudaError_t e = check_sizes(batch, seq, heads); e != cudaSuccess) return e;
  if (cudaError_t e = device_check(head_dim); e != cudaSuccess) return e;
  if (batch == 0 || seq == 0) return cudaSuccess;
  for (const void* p : {static_cast<const void*>(out), static_cast<const void*>(q), static_cast<const void*>(k),
                        static_cast<const void*>(v)})
    if (!aligned(p, kFlashAttentionAlignment)) return cudaErrorMisalignedAddress;
  if (!aligned(lse, 4)) return cudaErrorMisalignedAddress;
  const int B = int(batch), T = int(seq), H = int(heads);
  switch (head_dim) {
    case 32: return forward<32>(out, lse, q, k, v, B, T, H, scale, stream);
    case 64: return forward<64>(out, lse, q, k, v, B, T, H, scale, stream);
    case 128: return forward<128>(out, lse, q, k, v, B, T, H, scale, stream);
    case 256: return forward<256>(out, lse, q, k, v, B, T, H, scale, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_flash_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                                            const float* k, const float* v, const float* out, const float* lse,
                                            void* scratch, uint64_t scratch_bytes, int64_t batch, int64_t seq,
                                            int64_t heads, int64_t head_dim, float scale, cudaStream_t stream) {
  if (cudaError_t e = check_sizes(batch, seq, heads); e != cudaSuccess) return e;
  if (cudaError_t e = device_check(head_dim); e != cudaSuccess) return e;
  if (batch == 0 || seq == 0) return cudaSuccess;
  for (const void* p : {static_cast<const void*>(dq), static_cast<const void*>(dk), static_cast<const void*>(dv),
                        static_cast<const void*>(dout), static_cast<const void*>(q), static_cast<const void*>(k),
                        static_cast<const void*>(v), static_cast<const void*>(out)})
    if (!aligned(p, kFlashAttentionAlignment)) return cudaErrorMisalignedAddress;
  if (!aligned(lse, 4) || !aligned(scratch, 16)) return cudaErrorMisalignedAddress;
  const uint64_t dtb = dt_bytes(batch, seq, heads);
  if (scratch == nullptr || scratch_bytes < dtb) return cudaErrorInvalidValue;
  auto* dt = static_cast<float*>(scratch);
  bf16* ds = reinterpret_cast<bf16*>(static_cast<unsigned char*>(scratch) + dtb);
  const uint64_t entry = ds_entry_bytes(seq, heads, head_dim);
  const int nb = entry == 0 ? 0 : int(std::min<uint64_t>(uint64_t(batch), (scratch_bytes - dtb) / entry));
  const int B = int(batch), T = int(seq), H = int(heads);
  switch (head_dim) {
    case 32: return backward<32>(dq, dk, dv, dout, q, k, v, out, lse, dt, ds, nb, B, T, H, scale, stream);
    case 64: return backward<64>(dq, dk, dv, dout, q, k, v, out, lse, dt, ds, nb, B, T, H, scale, stream);
    case 128: return backward<128>(dq, dk, dv, dout, q, k, v, out, lse, dt, ds, nb, B, T, H, scale, stream);
    case 256: return backward<256>(dq, dk, dv, dout, q, k, v, out, lse, dt, ds, nb, B, T, H, scale, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace distro::cuda
