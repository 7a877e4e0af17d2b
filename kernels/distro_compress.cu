// The DisTrO compress on CUDA (CompressArgs in backend/device.hpp; the CPU reference is
// CpuDevice::compress with optim/chunk_math.cpp), and the gradient check that precedes it.
//
// One thread block of 256 threads owns a chunk at a time (a persistent grid loops over chunks):
//   1. momentum x = beta * delta + lr * grad, float32 with the CPU's roundings (two products, one sum);
//   2. block DCT Y = B1^T X B2 with float32 accumulation (explicit __fmaf_rn; the library is built
//      with --fmad=false, so nothing else is contracted). The compress need not match the CPU's bits
//      (each peer sends its own payload); the CPU accumulates in float64;
//   3. top-k of |Y| over non-zero coefficients, ties to the lowest index, indices ascending
//      (select_chunk below: a cheap candidate filter and ranks; a radix select when that fails);
//   4. values quantised exactly like quantize_values (sign, or int8 = round(127 y / max|y|) in
//      double, halves away from zero);
//   5. error feedback: delta = x - sum_s y_s B1[i][f1_s] B2[j][f2_s] over the selected coefficients.
//
// Two kernels: a tiled one for 64x64 chunks (the DeMo/Psyche default; register-blocked 4x4 tiles per
// thread, X, T = X B2 and Y in shared memory), and a generic one for any n1, n2 <= 256 whose three
// n1 x n2 buffers sit in shared memory when small and in a global workspace otherwise.
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "chunk_runs.cuh"
#include "cuda/kernels.hpp"

namespace distro::cuda {
namespace {

constexpr unsigned kThreads = 256;
constexpr unsigned kWarps = kThreads / 32;
constexpr unsigned kCandCap = kThreads;  // candidates of the fast selection: one per thread
constexpr uint32_t kInfBits = 0x7F800000u;
constexpr uint32_t kGenericSmemFloats = 10240;  // 40 KiB: the generic kernel's buffers in shared memory

// The momentum of one element, with the CPU's roundings: beta * d + lr * g.
__device__ __forceinline__ float momentum(float beta, float d, float lr, float g) {
  return __fadd_rn(__fmul_rn(beta, d), __fmul_rn(lr, g));
}

__device__ __forceinline__ bool finite_bits(float x) { return (__float_as_uint(x) & kInfBits) != kInfBits; }

// Selection key of a coefficient: the bits of |y| (monotone in |y|), 0 for zeros and NaN (never
// selected, like the CPU's !(|y| > 0)); infinities are kept.
__device__ __forceinline__ uint32_t mag_key(float y) {
  const uint32_t b = __float_as_uint(y) & 0x7FFFFFFFu;
  return b <= kInfBits ? b : 0u;
}

// acc[b] += a * B.b for the four components: one row of a 4x4 register tile, float32 with
// explicit roundings.
__device__ __forceinline__ void fma4(float (&acc)[4], float a, const float4& B) {
  acc[0] = __fmaf_rn(a, B.x, acc[0]);
  acc[1] = __fmaf_rn(a, B.y, acc[1]);
  acc[2] = __fmaf_rn(a, B.z, acc[2]);
  acc[3] = __fmaf_rn(a, B.w, acc[3]);
}

__device__ __forceinline__ float comp(const float4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// The float32 kernels' two 4x4 register-tile products, operands as float4 rows in shared memory.
// tile_rows: acc[a][b] = sum_{j < K} X[a * XR + j] B[j * BS + b] (four rows of X XR apart).
template <int K, int XR, int BS>
__device__ __forceinline__ void tile_rows(float (&acc)[4][4], const float* X, const float* B) {
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) acc[a][b] = 0.0f;
#pragma unroll 2
  for (int j0 = 0; j0 < K; j0 += 4) {
    float4 A[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) A[a] = *reinterpret_cast<const float4*>(&X[a * XR + j0]);
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      const float4 Bv = *reinterpret_cast<const float4*>(&B[(j0 + jj) * BS]);
#pragma unroll
      for (int a = 0; a < 4; ++a) fma4(acc[a], comp(A[a], jj), Bv);
    }
  }
}

// tile_cols: acc[a][b] = sum_{i < K} A[i * S + a] B[i * S + b] (A^T B, both with row stride S).
template <int K, int S>
__device__ __forceinline__ void tile_cols(float (&acc)[4][4], const float* A, const float* B) {
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) acc[a][b] = 0.0f;
#pragma unroll 4
  for (int i = 0; i < K; ++i) {
    const float4 Av = *reinterpret_cast<const float4*>(&A[i * S]);
    const float4 Bv = *reinterpret_cast<const float4*>(&B[i * S]);
#pragma unroll
    for (int a = 0; a < 4; ++a) fma4(acc[a], comp(Av, a), Bv);
  }
}

// ---------------------------------------------------------------------------------------------
// Per-chunk top-k selection, shared by both kernels. All threads of the block call these
// functions together (they contain barriers).

// Where coefficient index f1 * n2 + f2 of a chunk sits in the kernel's Y buffer (slot), and back.
struct Linear {
  __device__ uint32_t slot(uint32_t index) const { return index; }
  __device__ uint32_t index(uint32_t slot) const { return slot; }
};

struct SelectSmem {
  union {  // the radix path (more than kCandCap candidates) never reads ckey
    uint32_t hist[256];
    uint32_t ckey[kCandCap];
  };
  uint16_t cidx[kCandCap];
  uint8_t csel[kCandCap];
  uint32_t wtot[kWarps];
  uint32_t word[8];
  // The selected indices too, when at most kCandCap (selected() below); the tensor-core kernel's
  // per-warp path (select_in_warps) uses it instead as one list of 32 per warp.
  uint16_t osel[kCandCap];
};

// Where the values and the feedback read a chunk's selected indices: the shared-memory copy when
// it holds them all, else the output in global memory (a round trip to L2 on the critical path).
__device__ __forceinline__ const uint16_t* selected(const SelectSmem& s, const uint16_t* out, uint32_t cnt) {
  return cnt <= kCandCap ? s.osel : out;
}

// Exclusive prefix count of flag in thread order (thread order = element order of a round), and
// the block's total.
__device__ uint32_t block_excl_scan(bool flag, uint32_t& total, SelectSmem& s) {
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint32_t b = __ballot_sync(0xffffffffu, flag);
  const uint32_t pre = __popc(b & ((1u << lane) - 1u));
  if (lane == 0) s.wtot[warp] = __popc(b);
  __syncthreads();
  uint32_t base = 0, t = 0;
  for (unsigned w = 0; w < kWarps; ++w) {
    const uint32_t v = s.wtot[w];
    if (w < warp) base += v;
    t += v;
  }
  __syncthreads();
  total = t;
  return base + pre;
}

// The k-th largest key among get(0..n-1) (keys 0 excluded; at least k keys are non-zero), by a
// most-significant-digit radix select over four 8-bit digits. Returns it in t, and in need how many
// of the keys equal to t belong to the top k (the others are larger).
template <class Get>
__device__ void radix_select(Get get, uint32_t n, uint32_t k, SelectSmem& s, uint32_t& t, uint32_t& need) {
  uint32_t prefix = 0, mask = 0, remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    __syncthreads();
    for (unsigned i = threadIdx.x; i < 256; i += kThreads) s.hist[i] = 0;
    __syncthreads();
    for (uint32_t i = threadIdx.x; i < n; i += kThreads) {
      const uint32_t key = get(i);
      if (key != 0 && (key & mask) == prefix) atomicAdd(&s.hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      const unsigned lane = threadIdx.x;
      uint32_t h[8], sum = 0;
#pragma unroll
      for (int b = 0; b < 8; ++b) sum += (h[b] = s.hist[lane * 8 + b]);
      uint32_t incl = sum;  // sum over lanes >= lane
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const uint32_t v = __shfl_down_sync(0xffffffffu, incl, o);
        if (lane + o < 32) incl += v;
      }
      uint32_t cum = incl - sum;  // keys in higher digits
#pragma unroll
      for (int b = 7; b >= 0; --b) {
        if (cum < remaining && remaining <= cum + h[b]) {
          s.word[0] = lane * 8 + b;
          s.word[1] = remaining - cum;
        }
        cum += h[b];
      }
    }
    __syncthreads();
    prefix |= s.word[0] << shift;
    mask |= 255u << shift;
    remaining = s.word[1];
  }
  t = prefix;
  need = remaining;
}

// Ranks C <= 32 candidates of s in one warp (all its lanes call it) with shuffles and a ballot:
// lane d gets candidate d's coefficient index and, when it is among the keff selected, its
// position among them in index order (returns true).
__device__ __forceinline__ bool rank_few(const SelectSmem& s, uint32_t C, uint32_t keff, uint32_t& id, uint32_t& pos) {
  const unsigned lane = threadIdx.x & 31;
  const bool valid = lane < C;
  const uint32_t key = valid ? s.ckey[lane] : 0u;
  id = valid ? uint32_t(s.cidx[lane]) : 0xFFFFu;
  // Four lanes per step, so the shuffles overlap; lanes past C hold key 0, which no valid lane
  // ranks below, and no selection bit.
  const uint32_t C4 = (C + 3) & ~3u;
  uint32_t rank = 0;
  for (uint32_t d0 = 0; d0 < C4; d0 += 4) {
#pragma unroll
    for (uint32_t d = d0; d < d0 + 4; ++d) {
      const uint32_t kd = __shfl_sync(0xffffffffu, key, d), idd = __shfl_sync(0xffffffffu, id, d);
      rank += (kd > key) | ((kd == key) & (idd < id));
    }
  }
  const bool sel = valid && rank < keff;
  const uint32_t selm = __ballot_sync(0xffffffffu, sel);
  pos = 0;  // selected candidates with a lower index
  for (uint32_t d0 = 0; d0 < C4; d0 += 4) {
#pragma unroll
    for (uint32_t d = d0; d < d0 + 4; ++d) {
      const uint32_t idd = __shfl_sync(0xffffffffu, id, d);
      pos += ((selm >> d) & 1u) & (idd < id);
    }
  }
  return sel;
}

// Selects the min(k, non-zero) largest |Y[e]|, e < E, ties to the lowest index, and writes their
// indices ascending to out (global memory of this chunk) and the first kCandCap of them to s.osel.
// Returns how many; on return every thread of the block sees both.
//
// Fast path (k <= the thread count): thread t keeps m_t, the largest key among its elements. Each
// of the W warps finds r = ceil(k / W), the r-th largest m_t of its lanes; the smallest of those W
// values, L, has at least W * r >= k keys >= L (each warp's r largest maxima are keys), so the top k
// are among the keys >= L; for k <= W (r = 1) L is the k-th largest of the W warp maxima instead,
// for the same reason and tighter. There are usually few more than k of those candidates; when they fit in
// one per thread, each candidate's rank in (|y| descending, index ascending) order decides, and its
// position among the selected ones in index order is a count too. Otherwise (k larger than the
// thread count, very many candidates) a radix select and an ordered compaction run over all E.
//
// Owned1 / Owned2: owned(f) calls f(key, slot) for every element this thread owns in the fast
// path, before and after the first barrier (any partition of the E slots among the threads, the
// same in both; select_chunk below: slot tid + kThreads * n, read from Y; the folded kernel: its 16
// transform results, from registers, then its own slots of Y). Y must be complete in shared memory
// only from the first barrier inside on (the slow path and the callers read it).
//
// gather_candidates is the part up to the candidates (two barriers; returns their count C, the same
// in every thread), rank_candidates the rest.
template <class Layout, class Owned1, class Owned2>
__device__ __forceinline__ uint32_t gather_candidates(uint32_t k, SelectSmem& s, Layout lay, Owned1 owned1,
                                                      Owned2 owned2) {
  const unsigned tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  uint32_t m = 0;
  owned1([&](uint32_t key, uint32_t) { m = key > m ? key : m; });
  uint32_t rth = 0;
  const uint32_t r = (k + kWarps - 1) / kWarps;
  if (k <= kThreads) {
    uint32_t v = m;
    for (uint32_t it = 0; it < r; ++it) {
      uint32_t mx = v;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const uint32_t w = __shfl_xor_sync(0xffffffffu, mx, o);
        mx = w > mx ? w : mx;
      }
      rth = mx;
      const uint32_t holders = __ballot_sync(0xffffffffu, v == mx);
      if (lane == unsigned(__ffs(holders) - 1)) v = 0;
    }
  }
  if (lane == 0) s.wtot[warp] = rth;
  if (tid == 0) s.word[4] = 0;
  __syncthreads();
  uint32_t lower = 0xFFFFFFFFu;
  if (r == 1) {
    // k <= W: the W warp maxima are keys of W different elements, so at least k keys are >= the
    // k-th largest of them (a tighter bound than their minimum: fewer candidates). Each warp
    // finds it on lanes 0..W-1.
    const uint32_t v = lane < kWarps ? s.wtot[lane] : 0u;
    uint32_t ge = 0;  // maxima >= this lane's
#pragma unroll
    for (unsigned w = 0; w < kWarps; ++w) ge += __shfl_sync(0xffffffffu, v, w) >= v;
    uint32_t L = lane < kWarps && ge >= k ? v : 0u;
#pragma unroll
    for (unsigned o = kWarps / 2; o > 0; o >>= 1) {
      const uint32_t w = __shfl_xor_sync(0xffffffffu, L, o);
      L = w > L ? w : L;
    }
    lower = __shfl_sync(0xffffffffu, L, 0);
  } else {
    for (unsigned w = 0; w < kWarps; ++w) lower = s.wtot[w] < lower ? s.wtot[w] : lower;
  }
  if (lower == 0) lower = 1;  // fewer than k non-zero maxima: every non-zero key is a candidate
  // Only a thread whose own maximum reaches the bound has candidates (few do when it is tight).
  if (m >= lower)
    owned2([&](uint32_t key, uint32_t e) {
      if (key >= lower) {
        const uint32_t pos = atomicAdd(&s.word[4], 1u);
        if (pos < kCandCap) {
          s.ckey[pos] = key;
          s.cidx[pos] = uint16_t(lay.index(e));
        }
      }
    });
  __syncthreads();
  return s.word[4];
}

// Ranks the C candidates (all non-zero keys when the bound fell to 1, at least k otherwise), so
// min(k, C) are selected.
template <class Layout>
__device__ __forceinline__ uint32_t rank_candidates(const float* Y, uint32_t E, uint32_t k, uint32_t C,
                                                    SelectSmem& s, uint16_t* out, Layout lay) {
  const unsigned tid = threadIdx.x, warp = tid >> 5;
  const uint32_t keff = k < C ? k : C;
  if (keff == 0) return 0;

  if (C <= 32) {
    // Few candidates (the usual case for small k): one warp ranks and places them.
    if (warp == 0) {
      uint32_t id, pos;
      if (rank_few(s, C, keff, id, pos)) out[pos] = s.osel[pos] = uint16_t(id);
    }
  } else if (C <= kCandCap) {
    bool sel = false;
    uint32_t key = 0, id = 0;
    if (tid < C) {
      key = s.ckey[tid], id = s.cidx[tid];
      uint32_t rank = 0;
      for (uint32_t d = 0; d < C; ++d) {
        const uint32_t kd = s.ckey[d];
        rank += (kd > key) | ((kd == key) & (s.cidx[d] < id));
      }
      sel = rank < keff;
      s.csel[tid] = sel;
    }
    __syncthreads();
    if (sel) {
      uint32_t pos = 0;
      for (uint32_t d = 0; d < C; ++d) pos += s.csel[d] & (s.cidx[d] < id);
      out[pos] = s.osel[pos] = uint16_t(id);
    }
  } else {
    uint32_t t = 0, need = 0;
    radix_select([&](uint32_t i) { return mag_key(Y[i]); }, E, keff, s, t, need);
    uint32_t eq_base = 0, sel_base = 0;
    for (uint32_t r0 = 0; r0 < E; r0 += kThreads) {
      const uint32_t e = r0 + tid;
      const uint32_t key = e < E ? mag_key(Y[lay.slot(e)]) : 0u;
      uint32_t eq_total = 0, sel_total = 0;
      const uint32_t eq_rank = eq_base + block_excl_scan(key == t, eq_total, s);
      const bool sel = key > t || (key == t && eq_rank < need);
      const uint32_t pos = sel_base + block_excl_scan(sel, sel_total, s);
      if (sel) {
        out[pos] = uint16_t(e);
        if (pos < kCandCap) s.osel[pos] = uint16_t(e);
      }
      eq_base += eq_total;
      sel_base += sel_total;
    }
  }
  __syncthreads();
  return keff;
}

template <class Layout, class Owned1, class Owned2>
__device__ __forceinline__ uint32_t select_chunk_owned(const float* Y, uint32_t E, uint32_t k, SelectSmem& s,
                                                      uint16_t* out, Layout lay, Owned1 owned1, Owned2 owned2) {
  const uint32_t C = gather_candidates(k, s, lay, owned1, owned2);
  return rank_candidates(Y, E, k, C, s, out, lay);
}

template <class Layout>
__device__ uint32_t select_chunk(const float* Y, uint32_t E, uint32_t k, SelectSmem& s, uint16_t* out,
                                 Layout lay) {
  const auto owned = [&](auto&& f) {
    for (uint32_t e = threadIdx.x; e < E; e += kThreads) f(mag_key(Y[e]), e);
  };
  return select_chunk_owned(Y, E, k, s, out, lay, owned, owned);
}

// One int8 value of quantize_values: round(127 y / mx) in double, halves away from zero, clamped.
__device__ __forceinline__ int8_t quantize_int8(float y, float mx) {
  const double qd = mx > 0.0f ? __ddiv_rn(__dmul_rn(127.0, double(y)), double(mx)) : 0.0;
  long long r = llround(qd);
  r = r < -127 ? -127 : (r > 127 ? 127 : r);
  return int8_t(r);
}

// Quantises the selected coefficients Y[slot(idx[q])], q < cnt, into val (quantize_values).
template <class Layout>
__device__ void emit_values(const float* Y, const uint16_t* idx, uint32_t cnt, int mode, int8_t* val,
                            SelectSmem& s, Layout lay) {
  if (mode == 1) {
    for (uint32_t q = threadIdx.x; q < cnt; q += kThreads) val[q] = Y[lay.slot(idx[q])] < 0.0f ? int8_t(-1) : int8_t(1);
    return;
  }
  if (threadIdx.x == 0) s.word[5] = 0;
  __syncthreads();
  uint32_t mx = 0;
  for (uint32_t q = threadIdx.x; q < cnt; q += kThreads) {
    const uint32_t b = __float_as_uint(Y[lay.slot(idx[q])]) & 0x7FFFFFFFu;
    mx = b > mx ? b : mx;
  }
  atomicMax(&s.word[5], mx);
  __syncthreads();
  const float mxf = __uint_as_float(s.word[5]);
  for (uint32_t q = threadIdx.x; q < cnt; q += kThreads) val[q] = quantize_int8(Y[lay.slot(idx[q])], mxf);
  __syncthreads();
}

// ---------------------------------------------------------------------------------------------
// The 64x64 kernel. Thread (ty, tx) = (tid / 16, tid % 16) owns rows ty + 16a and columns
// 4tx..4tx+3 of X (float4 loads and stores of grad and delta), rows ty + 16a of T = X B2, and rows
// 4ty + a of Y = B^T T, each time a 4x4 register tile; operands come from shared memory as float4.

constexpr int kXs = 68;  // padded row stride of X: rows ty and ty + 1 fall in different banks
constexpr int kWs = 36;  // row stride of W in the feedback (32 terms + pad)

struct Smem64 {
  float xs[64 * kXs];  // X (stride kXs), then Y (stride 64)
  float t1[64 * kXs];  // T (stride 64), then the feedback's W (64 x kWs) and V (32 x 64)
  float b[64 * 64];    // the basis, row-major B[i][f]
  SelectSmem sel;
};

__global__ void __launch_bounds__(kThreads, 3) compress64_kernel(const __grid_constant__ CompressLaunch p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Smem64& sm = *reinterpret_cast<Smem64*>(smem_raw);
  const unsigned tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  for (unsigned e = tid * 4; e < 64 * 64; e += kThreads * 4)
    *reinterpret_cast<float4*>(&sm.b[e]) = __ldg(reinterpret_cast<const float4*>(p.b1 + e));
  __syncthreads();

  uint32_t t = 0;  // this block's run
  for (uint64_t g = blockIdx.x; g < p.chunks; g += gridDim.x) {
    t = run_of(p.run, p.runs, g, t);
    const CompressRun& R = p.run[t];
    const uint32_t c = uint32_t(g - R.at.begin);
    const uint64_t origin = chunk_origin(R.at, 64, 64, c);
    const uint64_t cols = R.at.cols;

    if (g + gridDim.x < p.chunks) {  // the next chunk's inputs into L2 meanwhile
      const CompressRun& N = p.run[run_of(p.run, p.runs, g + gridDim.x, t)];
      prefetch_chunk64_l2(N.grad, N.delta, chunk_origin(N.at, 64, 64, uint32_t(g + gridDim.x - N.at.begin)), N.at.cols);
    }

    // 1. Momentum, kept in registers until the feedback.
    float x[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const uint64_t o = origin + uint64_t(ty + 16 * a) * cols + 4 * tx;
      const float4 gr = __ldg(reinterpret_cast<const float4*>(R.grad + o));
      const float4 d = *reinterpret_cast<const float4*>(R.delta + o);
      x[a][0] = momentum(p.beta, d.x, p.lr, gr.x);
      x[a][1] = momentum(p.beta, d.y, p.lr, gr.y);
      x[a][2] = momentum(p.beta, d.z, p.lr, gr.z);
      x[a][3] = momentum(p.beta, d.w, p.lr, gr.w);
      *reinterpret_cast<float4*>(&sm.xs[(ty + 16 * a) * kXs + 4 * tx]) =
          make_float4(x[a][0], x[a][1], x[a][2], x[a][3]);
    }
    __syncthreads();

    // 2a. T[i][f] = sum_j X[i][j] B[j][f].
    float acc[4][4];
    tile_rows<64, 16 * kXs, 64>(acc, sm.xs + ty * kXs, sm.b + 4 * tx);
#pragma unroll
    for (int a = 0; a < 4; ++a)
      *reinterpret_cast<float4*>(&sm.t1[(ty + 16 * a) * 64 + 4 * tx]) =
          make_float4(acc[a][0], acc[a][1], acc[a][2], acc[a][3]);
    __syncthreads();

    // 2b. Y[f1][f2] = sum_i B[i][f1] T[i][f2], rows f1 = 4ty + a.
    tile_cols<64, 64>(acc, sm.b + 4 * ty, sm.t1 + 4 * tx);
    float* Y = sm.xs;
#pragma unroll
    for (int a = 0; a < 4; ++a)
      *reinterpret_cast<float4*>(&Y[(4 * ty + a) * 64 + 4 * tx]) =
          make_float4(acc[a][0], acc[a][1], acc[a][2], acc[a][3]);
    __syncthreads();

    // 3-4. Selection and values.
    uint16_t* out_idx = R.index + uint64_t(c) * p.k;
    const uint32_t cnt = select_chunk(Y, 64 * 64, p.k, sm.sel, out_idx, Linear{});
    const uint16_t* sel_idx = selected(sm.sel, out_idx, cnt);
    emit_values(Y, sel_idx, cnt, p.value_mode, R.value + uint64_t(c) * p.k, sm.sel, Linear{});
    if (tid == 0) R.count[c] = uint16_t(cnt);

    // 5. Feedback: X -= W V with W[i][s] = B[i][f1_s] y_s and V[s][j] = B[j][f2_s], 32 terms at a time.
    float fb[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int b = 0; b < 4; ++b) fb[a][b] = 0.0f;
    float* W = sm.t1;
    float* V = sm.t1 + 64 * kWs;
    for (uint32_t s0 = 0; s0 < cnt; s0 += 32) {
      const uint32_t ns = cnt - s0 < 32 ? cnt - s0 : 32, nsr = (ns + 3) & ~3u;
      for (uint32_t e = tid; e < 64 * nsr; e += kThreads) {
        const uint32_t s = e >> 6, i = e & 63;
        float w = 0.0f, v = 0.0f;
        if (s < ns) {
          const uint32_t id = sel_idx[s0 + s];
          w = __fmul_rn(__ldg(p.b1t + (id >> 6) * 64 + i), Y[id]);
          v = __ldg(p.b2t + (id & 63) * 64 + i);
        }
        W[i * kWs + s] = w;
        V[s * 64 + i] = v;
      }
      __syncthreads();
      for (uint32_t s4 = 0; s4 < nsr; s4 += 4) {
        float4 A[4];
#pragma unroll
        for (int a = 0; a < 4; ++a) A[a] = *reinterpret_cast<const float4*>(&W[(ty + 16 * a) * kWs + s4]);
#pragma unroll
        for (int ss = 0; ss < 4; ++ss) {
          const float4 B = *reinterpret_cast<const float4*>(&V[(s4 + ss) * 64 + 4 * tx]);
#pragma unroll
          for (int a = 0; a < 4; ++a) fma4(fb[a], comp(A[a], ss), B);
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const uint64_t o = origin + uint64_t(ty + 16 * a) * cols + 4 * tx;
      *reinterpret_cast<float4*>(R.delta + o) =
          make_float4(__fsub_rn(x[a][0], fb[a][0]), __fsub_rn(x[a][1], fb[a][1]),
                      __fsub_rn(x[a][2], fb[a][2]), __fsub_rn(x[a][3], fb[a][3]));
    }
    __syncthreads();  // Y and the selection's shared memory are reused by the next chunk
  }
}

// ---------------------------------------------------------------------------------------------
// The folded 64x64 kernel (the default for 64x64 chunks). The DCT-II basis is even or odd about its
// middle: B[63 - i][f] = (-1)^f B[i][f]. Folding X into four 32x32 quadrant sums
//   X^{pq}[i][j] = X[i][j] + (-1)^q X[i][63-j] + (-1)^p X[63-i][j] + (-1)^(p+q) X[63-i][63-j]
// gives Y[2m1 + p][2m2 + q] = sum_{i,j < 32} B[i][2m1 + p] X^{pq}[i][j] B[j][2m2 + q]: four 32x32
// transforms, half the multiply-adds and shared-memory reads of the plain kernel. Y is kept
// quadrant-major (Quad64 below); the selection reports true coefficient indices.
//
// Thread t loads and stores rows r = t / 8 and 63 - r, columns 4c..4c+3 and their mirrors
// 60-4c..63-4c (c = t % 8): exactly the four elements of each fold, in float4s. For the transforms
// the block splits into four quadrants of 64 threads (two warps), each thread a 4x4 tile.

struct Quad64 {
  __device__ uint32_t slot(uint32_t index) const {
    const uint32_t f1 = index >> 6, f2 = index & 63;
    return ((((f1 & 1) << 1) | (f2 & 1)) << 10) | ((f1 >> 1) << 5) | (f2 >> 1);
  }
  __device__ uint32_t index(uint32_t slot) const {
    const uint32_t quad = slot >> 10, m1 = (slot >> 5) & 31, m2 = slot & 31;
    return ((2 * m1 + (quad >> 1)) << 6) | (2 * m2 + (quad & 1));
  }
};

constexpr int kFs = 36;  // row stride of the folded quadrants and of the feedback's W and V

struct SmemF {
  float xf[4 * 32 * kFs];  // X^{pq} (quadrant pq = 2p + q, stride kFs); then Y, quadrant-major
  float t[4 * 32 * 32];    // T^{pq} = X^{pq} B_q (stride 32); then the feedback's W, V and signs
  float bp[2 * 32 * 32];   // B_p[i][m] = B[i][2m + p], i < 32
  SelectSmem sel;
};

__device__ __forceinline__ float4 f4(float a, float b, float c, float d) { return make_float4(a, b, c, d); }

// ---- The transforms on tensor cores (sm_80 and newer; the default there) ----
//
// The same four 32x32 quadrant transforms as products of TF32 tensor-core tiles (mma.sync m16n8k8).
// Every float32 operand v is split into big = tf32(v) and small = v - big (split_tf32), and a product
// A B is taken as As Bb + Ab Bs + Ab Bb with float32 accumulation (the "3xTF32" scheme): about
// 2^-21 relative error per operand instead of tf32's 2^-11, well inside what the compress may differ
// from the CPU (which accumulates in float64; the tests' near-tie and residual tolerances).
//
// Warp w owns quadrant w / 2 and the 16 columns m2 in 16 (w % 2) .. + 15 of its Y. It computes
// T^T = B_q^T X^T (rows m2, all 32 i) and then Y^T = T^T B_p, with T^T staying in registers: the
// first product's accumulator tile for i in 8s..8s+7 is the second's A operand for k-step s once
// the k index is taken in the order 2t, 2t + 1 (t = lane % 4) instead of t, t + 4, which only
// reorders the sum. The first product takes its k (= j) in the same order; it reads the basis from
// MmaFragA, the second from MmaFrag (the same values, each in its operand's register order, so no
// register moves). No barrier between the two products.

// Y of the tensor-core kernel: quadrant-major like Quad64 but stored transposed (rows m2) with the
// column m1 XOR-swizzled by m2 % 4, so the warps' float2 stores of their accumulators and the
// reads of X^T hit distinct banks.
struct QuadT {
  __device__ uint32_t slot(uint32_t index) const {
    const uint32_t f1 = index >> 6, f2 = index & 63, m1 = f1 >> 1, m2 = f2 >> 1;
    return ((((f1 & 1) << 1) | (f2 & 1)) << 10) | (m2 << 5) | (m1 ^ ((m2 & 3) << 3));
  }
  __device__ uint32_t index(uint32_t slot) const {
    const uint32_t quad = slot >> 10, m2 = (slot >> 5) & 31, m1 = (slot & 31) ^ ((m2 & 3) << 3);
    return ((2 * m1 + (quad >> 1)) << 6) | (2 * m2 + (quad & 1));
  }
};

// Row i, column j of a 32x32 quadrant stored with stride 32 and the column swizzled by i % 4 (X^{pq}
// in the tensor-core kernel; float4 groups of 4 columns stay contiguous).
__device__ __forceinline__ uint32_t swz32(uint32_t i, uint32_t j) { return i * 32 + (j ^ ((i & 3) << 3)); }

struct SmemM {
  float xf[4 * 32 * 32];  // X^{pq}, quadrant-major, swz32
  float y[4 * 32 * 32];   // Y, QuadT slots
  // MmaFrag: fragment f = (par * 4 + s) * 4 + n of lane l = 4g + t holds B_par[8s + 2t][8n + g] and
  // B_par[8s + 2t + 1][8n + g], big halves then small halves (B_par[i][m] = B[i][2m + par]).
  float4 frag[2 * 4 * 4 * 32];
  // MmaFragA: the first product's A operand (B_q^T, rows m2 = 16h + g (+ 8), k = j = 8s + 2t (+ 1))
  // in register order, so that it loads into the four consecutive registers mma takes: fragment
  // ((q * 2 + h) * 4 + s) * 2 + part of lane l, part 0 the big halves, 1 the small ones.
  float4 fraga[2 * 2 * 4 * 2 * 32];
  float bt[64 * 32];  // bt[f * 32 + i] = B[i][f], i < 32: the per-warp feedback's basis
  SelectSmem sel;
};
// Three blocks per SM (the register budget's count, 80 per thread) need three of these and the
// driver's 1 KiB per block in an SM's 228 KiB (the occupancy this kernel is tuned for).
static_assert(3 * (sizeof(SmemM) + 1024) <= 228 * 1024, "SmemM too large for 3 blocks per SM");
static_assert(kCandCap >= kWarps * 32, "osel holds the per-warp lists of select_in_warps");

// big: x rounded to tf32 (its low 13 bits cleared after adding half of that unit, the magnitude
// rounded half away from zero; two integer operations where cvt.rna.tf32 takes about ten, with
// its NaN handling that finite momenta do not need); small: the exact rest x - big, passed with
// its low bits, which the tensor cores ignore (truncation: at most 2^-21 |x| in all).
__device__ __forceinline__ void split_tf32(float x, uint32_t& big, uint32_t& small) {
  big = (__float_as_uint(x) + 0x1000u) & 0xFFFFE000u;
  small = __float_as_uint(__fsub_rn(x, __uint_as_float(big)));
}

// A plain 16-byte global store: NVVM had split two of the compress's four float4 stores into 4-byte
// ones, and __stwb compiles to a strong store.
__device__ __forceinline__ void store_f4(float* p, float4 v) {
  asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w));
}

// d += a b for one 16x8x8 TF32 tile (fragment layouts of the PTX ISA's mma.m16n8k8).
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  (void)d, (void)a, (void)b0, (void)b1;
#endif
}

// d += a b in 3xTF32 for split operands.
__device__ __forceinline__ void mma_3xtf32(float (&d)[4], const uint32_t (&ab)[4], const uint32_t (&as)[4],
                                           uint32_t bb0, uint32_t bb1, uint32_t bs0, uint32_t bs1) {
  mma_tf32(d, as, bb0, bb1);
  mma_tf32(d, ab, bs0, bs1);
  mma_tf32(d, ab, bb0, bb1);
}

// Fills MmaFrag and MmaFragA from the 64-point basis b (row-major B[i][f]).
__device__ __forceinline__ void fill_mma_frag(float4* frag, float4* fraga, const float* __restrict__ b) {
  for (unsigned e = threadIdx.x; e < 2 * 4 * 4 * 32; e += kThreads) {
    const unsigned par = e >> 9, s = (e >> 7) & 3, n = (e >> 5) & 3, g = (e & 31) >> 2, t = e & 3;
    const unsigned i = 8 * s + 2 * t, m = 8 * n + g;
    uint32_t b0, s0, b1, s1;
    split_tf32(__ldg(b + i * 64 + 2 * m + par), b0, s0);
    split_tf32(__ldg(b + (i + 1) * 64 + 2 * m + par), b1, s1);
    frag[e] = make_float4(__uint_as_float(b0), __uint_as_float(b1), __uint_as_float(s0), __uint_as_float(s1));
  }
  for (unsigned e = threadIdx.x; e < 2 * 2 * 4 * 32; e += kThreads) {
    const unsigned q = e >> 8, h = (e >> 7) & 1, s = (e >> 5) & 3, g = (e & 31) >> 2, t = e & 3;
    const unsigned j = 8 * s + 2 * t, m = 16 * h + g;
    uint32_t big[4], small[4];
    split_tf32(__ldg(b + j * 64 + 2 * m + q), big[0], small[0]);
    split_tf32(__ldg(b + j * 64 + 2 * (m + 8) + q), big[1], small[1]);
    split_tf32(__ldg(b + (j + 1) * 64 + 2 * m + q), big[2], small[2]);
    split_tf32(__ldg(b + (j + 1) * 64 + 2 * (m + 8) + q), big[3], small[3]);
    const unsigned at = ((e >> 5) * 2) * 32 + (e & 31);  // part 0; part 1 is 32 further
    fraga[at] = make_float4(__uint_as_float(big[0]), __uint_as_float(big[1]), __uint_as_float(big[2]),
                            __uint_as_float(big[3]));
    fraga[at + 32] = make_float4(__uint_as_float(small[0]), __uint_as_float(small[1]),
                                 __uint_as_float(small[2]), __uint_as_float(small[3]));
  }
}

// The warp's part of the four quadrant transforms (see above): y[n] holds Y^T[m2][m1] for
// m2 = 16h + g (elements 0, 1) and 16h + g + 8 (2, 3), m1 = 8n + 2t (0, 2) and 8n + 2t + 1 (1, 3),
// of quadrant quad = warp / 2, h = warp % 2.
__device__ __forceinline__ void transform_mma(const float* xf, const float4* frag, const float4* fraga,
                                              float (&y)[4][4]) {
  const unsigned warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const unsigned quad = warp >> 1, h = warp & 1, qp = quad >> 1, qq = quad & 1;
  const float* X = xf + quad * 1024;
  float tt[4][4];
#pragma unroll
  for (int n = 0; n < 4; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) tt[n][e] = 0.0f, y[n][e] = 0.0f;
  // T^T[m2][i] = sum_j B_q[j][m2] X[i][j]: A = B_q^T (rows m2, k = j), B = X^T (n = i).
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    const float4 fb = fraga[(((qq * 2 + h) * 4 + s) * 2) * 32 + lane];
    const float4 fs = fraga[(((qq * 2 + h) * 4 + s) * 2 + 1) * 32 + lane];
    const uint32_t ab[4] = {__float_as_uint(fb.x), __float_as_uint(fb.y), __float_as_uint(fb.z), __float_as_uint(fb.w)};
    const uint32_t as[4] = {__float_as_uint(fs.x), __float_as_uint(fs.y), __float_as_uint(fs.z), __float_as_uint(fs.w)};
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      const float2 xv = *reinterpret_cast<const float2*>(&X[swz32(8 * n + g, 8 * s + 2 * t)]);
      uint32_t bb0, bs0, bb1, bs1;
      split_tf32(xv.x, bb0, bs0);
      split_tf32(xv.y, bb1, bs1);
      mma_3xtf32(tt[n], ab, as, bb0, bb1, bs0, bs1);
    }
  }
  // Y^T[m2][m1] = sum_i T^T[m2][i] B_p[i][m1]: A = T^T from registers (k-step s = tile s of tt), B = B_p.
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    uint32_t ab[4], as[4];
    split_tf32(tt[s][0], ab[0], as[0]);
    split_tf32(tt[s][2], ab[1], as[1]);
    split_tf32(tt[s][1], ab[2], as[2]);
    split_tf32(tt[s][3], ab[3], as[3]);
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      const float4 f = frag[((qp * 4 + s) * 4 + n) * 32 + lane];
      mma_3xtf32(y[n], ab, as, __float_as_uint(f.x), __float_as_uint(f.y), __float_as_uint(f.z),
                 __float_as_uint(f.w));
    }
  }
}

// The momentum of the 16 elements thread (r, c) of the folded kernel owns: x[g][d] for
// g = (r, j), (r, 63 - j), (63 - r, j), (63 - r, 63 - j), j = 4c + d (o0, o1: rows r and 63 - r);
// in two halves, loads and arithmetic, so that other work can go between them.
struct MirrorsIn {
  float4 g[4], d[4];
};
__device__ __forceinline__ void load_mirrors(const CompressRun& R, uint64_t o0, uint64_t o1, unsigned c, MirrorsIn& in) {
  in.g[0] = __ldg(reinterpret_cast<const float4*>(R.grad + o0 + 4 * c));
  in.g[1] = __ldg(reinterpret_cast<const float4*>(R.grad + o0 + 60 - 4 * c));
  in.g[2] = __ldg(reinterpret_cast<const float4*>(R.grad + o1 + 4 * c));
  in.g[3] = __ldg(reinterpret_cast<const float4*>(R.grad + o1 + 60 - 4 * c));
  in.d[0] = *reinterpret_cast<const float4*>(R.delta + o0 + 4 * c);
  in.d[1] = *reinterpret_cast<const float4*>(R.delta + o0 + 60 - 4 * c);
  in.d[2] = *reinterpret_cast<const float4*>(R.delta + o1 + 4 * c);
  in.d[3] = *reinterpret_cast<const float4*>(R.delta + o1 + 60 - 4 * c);
}
__device__ __forceinline__ void mirrors_momentum(const CompressLaunch& p, const MirrorsIn& in, float (&x)[4][4]) {
#pragma unroll
  for (int d = 0; d < 4; ++d) {
    x[0][d] = momentum(p.beta, comp(in.d[0], d), p.lr, comp(in.g[0], d));
    x[1][d] = momentum(p.beta, comp(in.d[1], 3 - d), p.lr, comp(in.g[1], 3 - d));
    x[2][d] = momentum(p.beta, comp(in.d[2], d), p.lr, comp(in.g[2], d));
    x[3][d] = momentum(p.beta, comp(in.d[3], 3 - d), p.lr, comp(in.g[3], 3 - d));
  }
}
__device__ __forceinline__ void momentum_mirrors(const CompressLaunch& p, const CompressRun& R, uint64_t o0,
                                                 uint64_t o1, unsigned c, float (&x)[4][4]) {
  MirrorsIn in;
  load_mirrors(R, o0, o1, c, in);
  mirrors_momentum(p, in, x);
}

// Adds up to 32 selected coefficients' terms to the feedback sums gq of thread (r, c) (as the
// folded kernel's feedback loop), in one warp: lane p holds the coefficient index id of the p-th
// term when mine. The warp walks them one parity class at a time, so the class is a loop constant
// instead of a branch per term, and each sum gq[q] takes its terms in lane order. The basis comes
// from bt (bt[f * 32 + i] = B[i][f], i < 32): one broadcast read for w, one float4 for v.
template <class Layout>
__device__ __forceinline__ void feedback_warp(uint32_t id, bool mine, const float* Y, Layout lay, const float* bt,
                                              unsigned r, unsigned c, float (&gq)[4][4]) {
  const float py = mine ? Y[lay.slot(id)] : 0.0f;
  const uint32_t pcls = ((id >> 6) & 1u) << 1 | (id & 1u);
#pragma unroll
  for (uint32_t q = 0; q < 4; ++q) {
    for (uint32_t m = __ballot_sync(0xffffffffu, mine && pcls == q); m != 0; m &= m - 1) {
      const int at = __ffs(m) - 1;
      const uint32_t sid = __shfl_sync(0xffffffffu, id, at);
      const float yv = __shfl_sync(0xffffffffu, py, at);
      const float w = __fmul_rn(bt[(sid >> 6) * 32 + r], yv);
      fma4(gq[q], w, *reinterpret_cast<const float4*>(&bt[(sid & 63) * 32 + 4 * c]));
    }
  }
}

// The end of a chunk's selection when it has C <= 32 candidates (the usual case for small k), in
// every warp at once and without a barrier: each warp ranks the candidates itself (rank_few), warp
// 0 writes the indices, values and count, and every thread adds the selected coefficients' terms
// to its feedback sums gq. The warp puts the selected indices in index order in its own list wl,
// so lane p holds position p's and feedback_warp sums each class's terms in index order.
template <class Layout>
__device__ __forceinline__ void select_in_warps(const CompressLaunch& p, const CompressRun& R, uint32_t ch,
                                                const float* Y, uint32_t C, const SelectSmem& s, Layout lay,
                                                const float* bt, uint16_t* wl, unsigned r, unsigned c,
                                                float (&gq)[4][4]) {
  const unsigned lane = threadIdx.x & 31;
  const uint32_t keff = p.k < C ? p.k : C;
  uint32_t id = 0, pos = 0;
  const bool sel = keff > 0 && rank_few(s, C, keff, id, pos);
  if (threadIdx.x < 32) {
    const float y = sel ? Y[lay.slot(id)] : 0.0f;
    int8_t v = y < 0.0f ? int8_t(-1) : int8_t(1);
    if (p.value_mode != 1) {
      uint32_t mx = sel ? __float_as_uint(y) & 0x7FFFFFFFu : 0u;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const uint32_t w = __shfl_xor_sync(0xffffffffu, mx, o);
        mx = w > mx ? w : mx;
      }
      v = quantize_int8(y, __uint_as_float(mx));
    }
    if (sel) {
      R.index[uint64_t(ch) * p.k + pos] = uint16_t(id);
      R.value[uint64_t(ch) * p.k + pos] = v;
    }
    if (lane == 0) R.count[ch] = uint16_t(keff);
  }
  if (sel) wl[pos] = uint16_t(id);
  __syncwarp();
  // (The next chunk's selection writes wl only past that chunk's barriers.)
  const bool mine = lane < keff;
  feedback_warp(mine ? wl[lane] : 0u, mine, Y, lay, bt, r, c, gq);
}

// The end of a chunk after a block-wide selection of cnt coefficients (more than 32 candidates):
// their values and count out, then every warp sums the feedback terms itself, 32 at a time in
// index order (feedback_warp), so each class's sum takes its terms in index order as above.
template <class Layout>
__device__ __forceinline__ void values_feedback_warps(const CompressLaunch& p, const CompressRun& R, uint32_t ch,
                                                      const float* Y, uint16_t* out_idx, uint32_t cnt,
                                                      SelectSmem& sel, Layout lay, const float* bt, unsigned r,
                                                      unsigned c, float (&gq)[4][4]) {
  const uint16_t* sel_idx = selected(sel, out_idx, cnt);
  emit_values(Y, sel_idx, cnt, p.value_mode, R.value + uint64_t(ch) * p.k, sel, lay);
  if (threadIdx.x == 0) R.count[ch] = uint16_t(cnt);
  const unsigned lane = threadIdx.x & 31;
  for (uint32_t s0 = 0; s0 < cnt; s0 += 32) {
    const bool mine = s0 + lane < cnt;
    feedback_warp(mine ? uint32_t(sel_idx[s0 + lane]) : 0u, mine, Y, lay, bt, r, c, gq);
  }
}

// The float32 kernel's four quadrant transforms (4x4 register tiles per thread; T through shared
// memory, one barrier) and its block-wide selection. Y lands in xf in Quad64 slots; returns how
// many coefficients were selected (their indices in out_idx).
__device__ __forceinline__ uint32_t transform_select_ffma(SmemF& sm, uint32_t k, uint16_t* out_idx) {
  const unsigned tid = threadIdx.x;
  const unsigned quad = tid >> 6, qy = (tid & 63) >> 3, qx = tid & 7;  // the transforms' 4x4 tiles
  const unsigned qp = quad >> 1, qq = quad & 1;

  // 2a. T^{pq}[i][m2] = sum_{j < 32} X^{pq}[i][j] B_q[j][m2]; rows i = qy + 8a, columns m2 = 4qx + b.
  float acc[4][4];
  tile_rows<32, 8 * kFs, 32>(acc, sm.xf + (quad * 32 + qy) * kFs, sm.bp + qq * 1024 + 4 * qx);
  {
    float* T = sm.t + quad * 1024;
#pragma unroll
    for (int a = 0; a < 4; ++a)
      *reinterpret_cast<float4*>(&T[(qy + 8 * a) * 32 + 4 * qx]) = f4(acc[a][0], acc[a][1], acc[a][2], acc[a][3]);
  }
  __syncthreads();

  // 2b. Y^{pq}[m1][m2] = sum_{i < 32} B_p[i][m1] T^{pq}[i][m2]; rows m1 = 4qy + a.
  tile_cols<32, 32>(acc, sm.bp + qp * 1024 + 4 * qy, sm.t + quad * 1024 + 4 * qx);
  float* Y = sm.xf;
#pragma unroll
  for (int a = 0; a < 4; ++a)
    *reinterpret_cast<float4*>(&Y[quad * 1024 + (4 * qy + a) * 32 + 4 * qx]) =
        f4(acc[a][0], acc[a][1], acc[a][2], acc[a][3]);
  // No barrier here: the selection's fast path takes this thread's 16 coefficients from registers
  // (first pass) and from its own slots of Y (second pass, its own writes), and its first barrier
  // comes before any thread reads another's Y.

  // 3-4. Selection.
  const uint32_t ybase = quad * 1024 + (4 * qy) * 32 + 4 * qx;
  const auto own_regs = [&](auto&& f) {
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int b = 0; b < 4; ++b) f(mag_key(acc[a][b]), ybase + a * 32 + b);
  };
  const auto own_smem = [&](auto&& f) {
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const float4 v = *reinterpret_cast<const float4*>(&Y[ybase + a * 32]);
      f(mag_key(v.x), ybase + a * 32 + 0), f(mag_key(v.y), ybase + a * 32 + 1);
      f(mag_key(v.z), ybase + a * 32 + 2), f(mag_key(v.w), ybase + a * 32 + 3);
    }
  };
  return select_chunk_owned(Y, 64 * 64, k, sm.sel, out_idx, Quad64{}, own_regs, own_smem);
}

// The end of a chunk after a block-wide selection of cnt coefficients: their values and count out,
// then the feedback's sums gq of thread (r, c) through shared memory: the terms sorted by parity
// class (32 at a time) into W and V at wv (room that is free by then), so each costs one
// multiply-add per element quad.
template <class Layout>
__device__ __forceinline__ void values_feedback_block(const CompressLaunch& p, const CompressRun& R, uint32_t ch,
                                                      const float* Y, uint16_t* out_idx, uint32_t cnt,
                                                      SelectSmem& sel, Layout lay, float* wv, unsigned r,
                                                      unsigned c, float (&gq)[4][4]) {
  const unsigned tid = threadIdx.x;
  const uint16_t* sel_idx = selected(sel, out_idx, cnt);
  emit_values(Y, sel_idx, cnt, p.value_mode, R.value + uint64_t(ch) * p.k, sel, lay);
  if (tid == 0) R.count[ch] = uint16_t(cnt);

  float* W = wv;                                               // W[i][slot], i < 32, stride kFs
  float* V = wv + 32 * kFs;                                    // V[slot][j], j < 32, stride kFs
  uint32_t* cb = reinterpret_cast<uint32_t*>(wv + 64 * kFs);  // class bounds [5]
  for (uint32_t s0 = 0; s0 < cnt; s0 += 32) {
    const uint32_t ns = cnt - s0 < 32 ? cnt - s0 : 32;
    // Every warp sorts the 32 terms into classes itself (ballots; no barrier before the fill);
    // thread 0 publishes the class bounds for the sums (read after the fill's barrier).
    const unsigned lane = tid & 31;
    uint32_t cls = 4, lid = 0;
    if (lane < ns) {
      lid = sel_idx[s0 + lane];
      cls = (((lid >> 6) & 1u) << 1) | (lid & 1u);
    }
    uint32_t base = 0, lslot = 0;
#pragma unroll
    for (uint32_t q = 0; q < 4; ++q) {
      const uint32_t m = __ballot_sync(0xffffffffu, cls == q);
      if (cls == q) lslot = base + __popc(m & ((1u << lane) - 1u));
      if (tid == 0) cb[q] = base;
      base += __popc(m);
    }
    if (tid == 0) cb[4] = base;
    for (uint32_t e = tid; e < 32 * ns; e += kThreads) {  // warp-uniform: s is the same in a warp
      const uint32_t s = e >> 5, i = e & 31;
      const uint32_t id = __shfl_sync(0xffffffffu, lid, s), slot = __shfl_sync(0xffffffffu, lslot, s);
      W[i * kFs + slot] = __fmul_rn(__ldg(p.b1t + (id >> 6) * 64 + i), Y[lay.slot(id)]);
      V[slot * kFs + i] = __ldg(p.b2t + (id & 63) * 64 + i);
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint32_t end = cb[q + 1];
      for (uint32_t slot = cb[q]; slot < end; ++slot) {
        const float w = W[r * kFs + slot];
        const float4 Vv = *reinterpret_cast<const float4*>(&V[slot * kFs + 4 * c]);
        fma4(gq[q], w, Vv);
      }
    }
    __syncthreads();
  }
}

// KeepX: keep the momentum in registers from the load to the feedback (80 registers, 3 blocks per
// SM) instead of recomputing it from its inputs, then in L2, at the end (64 registers, 4 blocks per
// SM). Mma: the transforms on tensor cores (transform_mma, Y in QuadT slots) instead of float32
// multiply-adds in 4x4 register tiles (Y in Quad64 slots). The default is both on sm_80 and newer,
// neither below; plan_compress reads DISTRO_CUDA_DCT_KEEPX and DISTRO_CUDA_DCT_MMA for A/B timing.
template <bool KeepX, bool Mma>
__global__ void __launch_bounds__(kThreads, KeepX ? 3 : 4) compress64f_kernel(const __grid_constant__ CompressLaunch p) {
  using Smem = std::conditional_t<Mma, SmemM, SmemF>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Smem& sm = *reinterpret_cast<Smem*>(smem_raw);
  const unsigned tid = threadIdx.x;
  if constexpr (Mma) {
    fill_mma_frag(sm.frag, sm.fraga, p.b1);
    for (unsigned e = tid; e < 64 * 32; e += kThreads) sm.bt[e] = __ldg(p.b1 + (e & 31) * 64 + (e >> 5));
  } else {
    for (unsigned e = tid; e < 2 * 32 * 32; e += kThreads) {
      const unsigned par = e >> 10, i = (e >> 5) & 31, m = e & 31;
      sm.bp[e] = __ldg(p.b1 + i * 64 + 2 * m + par);
    }
  }
  __syncthreads();
  const unsigned r = tid >> 3, c = tid & 7;  // loads, fold, feedback, stores
  // Where row i, column j of quadrant quad of X^{pq} sits.
  const auto xslot = [](unsigned quad, unsigned i, unsigned j) -> uint32_t {
    if constexpr (Mma) return quad * 1024 + swz32(i, j);
    else return (quad * 32 + i) * kFs + j;
  };

  uint32_t t = 0;  // this block's run
  for (uint64_t g = blockIdx.x; g < p.chunks; g += gridDim.x) {
    t = run_of(p.run, p.runs, g, t);
    const CompressRun& R = p.run[t];
    const uint32_t ch = uint32_t(g - R.at.begin);
    const uint64_t cols = R.at.cols, origin = chunk_origin(R.at, 64, 64, ch);
    const uint64_t o0 = origin + uint64_t(r) * cols, o1 = origin + uint64_t(63 - r) * cols;

    // 1. Momentum, folded into the four quadrants. While this chunk's inputs are on their way, the
    // next chunk's are hinted into L2, to be there when it starts.
    MirrorsIn in;
    load_mirrors(R, o0, o1, c, in);
    if (g + gridDim.x < p.chunks) {
      const CompressRun& N = p.run[run_of(p.run, p.runs, g + gridDim.x, t)];
      prefetch_chunk64_l2(N.grad, N.delta, chunk_origin(N.at, 64, 64, uint32_t(g + gridDim.x - N.at.begin)), N.at.cols);
    }
    float x[4][4];
    mirrors_momentum(p, in, x);
    {
      float q00[4], q01[4], q10[4], q11[4];
#pragma unroll
      for (int d = 0; d < 4; ++d) {
        const float s0 = __fadd_rn(x[0][d], x[1][d]), e0 = __fsub_rn(x[0][d], x[1][d]);
        const float s1 = __fadd_rn(x[2][d], x[3][d]), e1 = __fsub_rn(x[2][d], x[3][d]);
        q00[d] = __fadd_rn(s0, s1);
        q01[d] = __fadd_rn(e0, e1);
        q10[d] = __fsub_rn(s0, s1);
        q11[d] = __fsub_rn(e0, e1);
      }
      *reinterpret_cast<float4*>(&sm.xf[xslot(0, r, 4 * c)]) = f4(q00[0], q00[1], q00[2], q00[3]);
      *reinterpret_cast<float4*>(&sm.xf[xslot(1, r, 4 * c)]) = f4(q01[0], q01[1], q01[2], q01[3]);
      *reinterpret_cast<float4*>(&sm.xf[xslot(2, r, 4 * c)]) = f4(q10[0], q10[1], q10[2], q10[3]);
      *reinterpret_cast<float4*>(&sm.xf[xslot(3, r, 4 * c)]) = f4(q11[0], q11[1], q11[2], q11[3]);
    }
    __syncthreads();

    // 2-5. Transforms, selection, values and the feedback's sums. The feedback, folded like the
    // transform: a selected coefficient (f1, f2, y) of parity class q = 2 (f1 & 1) + (f2 & 1) adds
    // w v with w = B[i][f1] y, v = B[j][f2] to G_q[i][j] (i, j < 32); with a = G0 + G2, b = G1 + G3,
    // e = G0 - G2, f = G1 - G3 the element (r, j) gets a + b, (r, 63 - j) a - b, (63 - r, j) e + f
    // and (63 - r, 63 - j) e - f (B[63 - i][f] = (-1)^f B[i][f]). gq[q][d] is G_q at (r, 4c + d).
    uint16_t* out_idx = R.index + uint64_t(ch) * p.k;
    float gq[4][4];
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int d = 0; d < 4; ++d) gq[q][d] = 0.0f;
    if constexpr (Mma) {
      float y[4][4];
      transform_mma(sm.xf, sm.frag, sm.fraga, y);
      // This warp's slots of Y (QuadT): rows m2 = 16h + g (+ 8), columns m1 = 8n + 2t (+ 1).
      const unsigned warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
      const uint32_t ybase = (warp >> 1) * 1024;
      const unsigned m2 = 16 * (warp & 1) + g;
      float* Y = sm.y;
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        *reinterpret_cast<float2*>(&Y[ybase + swz32(m2, 8 * n + 2 * tq)]) = make_float2(y[n][0], y[n][1]);
        *reinterpret_cast<float2*>(&Y[ybase + swz32(m2 + 8, 8 * n + 2 * tq)]) = make_float2(y[n][2], y[n][3]);
      }
      // No barrier: as in transform_select_ffma, the selection's first pass reads registers and its
      // second this thread's own slots.
      const auto own_regs = [&](auto&& f) {
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          const uint32_t s0 = ybase + swz32(m2, 8 * n + 2 * tq), s1 = ybase + swz32(m2 + 8, 8 * n + 2 * tq);
          f(mag_key(y[n][0]), s0), f(mag_key(y[n][1]), s0 + 1);
          f(mag_key(y[n][2]), s1), f(mag_key(y[n][3]), s1 + 1);
        }
      };
      const auto own_smem = [&](auto&& f) {
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          const uint32_t s0 = ybase + swz32(m2, 8 * n + 2 * tq), s1 = ybase + swz32(m2 + 8, 8 * n + 2 * tq);
          const float2 v0 = *reinterpret_cast<const float2*>(&Y[s0]);
          const float2 v1 = *reinterpret_cast<const float2*>(&Y[s1]);
          f(mag_key(v0.x), s0), f(mag_key(v0.y), s0 + 1);
          f(mag_key(v1.x), s1), f(mag_key(v1.y), s1 + 1);
        }
      };
      const uint32_t C = gather_candidates(p.k, sm.sel, QuadT{}, own_regs, own_smem);
      if (C <= 32) {
        select_in_warps(p, R, ch, Y, C, sm.sel, QuadT{}, sm.bt, sm.sel.osel + 32 * (tid >> 5), r, c, gq);
      } else {
        const uint32_t cnt = rank_candidates(Y, 64 * 64, p.k, C, sm.sel, out_idx, QuadT{});
        values_feedback_warps(p, R, ch, Y, out_idx, cnt, sm.sel, QuadT{}, sm.bt, r, c, gq);
      }
    } else {
      const uint32_t cnt = transform_select_ffma(sm, p.k, out_idx);
      values_feedback_block(p, R, ch, sm.xf, out_idx, cnt, sm.sel, Quad64{}, sm.t, r, c, gq);
    }
    // Unless kept, the momentum again from the same inputs (still in L2): the same bits as before.
    if constexpr (!KeepX) momentum_mirrors(p, R, o0, o1, c, x);
    float out[4][4];
#pragma unroll
    for (int d = 0; d < 4; ++d) {
      const float a = __fadd_rn(gq[0][d], gq[2][d]), b = __fadd_rn(gq[1][d], gq[3][d]);
      const float e = __fsub_rn(gq[0][d], gq[2][d]), f = __fsub_rn(gq[1][d], gq[3][d]);
      out[0][d] = __fsub_rn(x[0][d], __fadd_rn(a, b));
      out[1][d] = __fsub_rn(x[1][d], __fsub_rn(a, b));
      out[2][d] = __fsub_rn(x[2][d], __fadd_rn(e, f));
      out[3][d] = __fsub_rn(x[3][d], __fsub_rn(e, f));
    }
    store_f4(R.delta + o0 + 4 * c, f4(out[0][0], out[0][1], out[0][2], out[0][3]));
    store_f4(R.delta + o0 + 60 - 4 * c, f4(out[1][3], out[1][2], out[1][1], out[1][0]));
    store_f4(R.delta + o1 + 4 * c, f4(out[2][0], out[2][1], out[2][2], out[2][3]));
    store_f4(R.delta + o1 + 60 - 4 * c, f4(out[3][3], out[3][2], out[3][1], out[3][0]));
    // No barrier before the next chunk's first shared-memory writes (the fold into xf). The float32
    // kernel's xf holds Y, W and V: every read of them and of the selection state comes before the
    // feedback loop's last barrier, and a chunk with no coefficient (no loop) reads none after the
    // selection's. The tensor-core kernel keeps Y apart and its feedback reads only Y, bt and the
    // selection state, which the next chunk writes only past its fold's barrier, which every
    // thread reaches after its last read of them.
  }
}

// ---------------------------------------------------------------------------------------------
// The generic kernel: any n1, n2 in 1..256. X, T and Y (n1 x n2 each) live in dynamic shared
// memory when they fit in kGenericSmemFloats, else in this block's slice of the global workspace.
// Bases are read through the read-only cache.

__global__ void __launch_bounds__(kThreads) compress_generic_kernel(const __grid_constant__ CompressLaunch p,
                                                                   int in_smem) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ SelectSmem sel;
  const uint32_t n1 = p.n1, n2 = p.n2, E = n1 * n2;
  float* ws = in_smem ? reinterpret_cast<float*>(smem_raw) : p.workspace + uint64_t(blockIdx.x) * 3ull * E;
  float* X = ws;
  float* T = ws + E;
  float* Y = ws + 2 * E;

  uint32_t t = 0;  // this block's run
  for (uint64_t g = blockIdx.x; g < p.chunks; g += gridDim.x) {
    t = run_of(p.run, p.runs, g, t);
    const CompressRun& R = p.run[t];
    const uint32_t c = uint32_t(g - R.at.begin);
    const uint64_t cols = R.at.cols, origin = chunk_origin(R.at, n1, n2, c);
    for (uint32_t e = threadIdx.x; e < E; e += kThreads) {
      const uint64_t o = origin + uint64_t(e / n2) * cols + e % n2;
      X[e] = momentum(p.beta, R.delta[o], p.lr, __ldg(R.grad + o));
    }
    __syncthreads();
    for (uint32_t e = threadIdx.x; e < E; e += kThreads) {
      const uint32_t i = e / n2, f = e % n2;
      float s = 0.0f;
      for (uint32_t j = 0; j < n2; ++j) s = __fmaf_rn(X[i * n2 + j], __ldg(p.b2 + j * n2 + f), s);
      T[e] = s;
    }
    __syncthreads();
    for (uint32_t e = threadIdx.x; e < E; e += kThreads) {
      const uint32_t f1 = e / n2, f2 = e % n2;
      float s = 0.0f;
      for (uint32_t i = 0; i < n1; ++i) s = __fmaf_rn(__ldg(p.b1 + i * n1 + f1), T[i * n2 + f2], s);
      Y[e] = s;
    }
    __syncthreads();

    uint16_t* out_idx = R.index + uint64_t(c) * p.k;
    const uint32_t cnt = select_chunk(Y, E, p.k, sel, out_idx, Linear{});
    const uint16_t* sel_idx = selected(sel, out_idx, cnt);
    emit_values(Y, sel_idx, cnt, p.value_mode, R.value + uint64_t(c) * p.k, sel, Linear{});
    if (threadIdx.x == 0) R.count[c] = uint16_t(cnt);

    for (uint32_t e = threadIdx.x; e < E; e += kThreads) {
      const uint32_t i = e / n2, j = e % n2;
      float acc = 0.0f;
      for (uint32_t s = 0; s < cnt; ++s) {
        const uint32_t id = sel_idx[s];
        const float w = __fmul_rn(__ldg(p.b1 + i * n1 + id / n2), Y[id]);
        acc = __fmaf_rn(w, __ldg(p.b2 + j * n2 + id % n2), acc);
      }
      R.delta[origin + uint64_t(i) * cols + j] = __fsub_rn(X[e], acc);
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------
// first_nonfinite_momentum: each thread walks its indices upward and reports its first offender;
// the minimum over threads is the lowest offending index.

__global__ void __launch_bounds__(kThreads) nonfinite_kernel(const float* __restrict__ delta,
                                                             const float* __restrict__ grad, float beta,
                                                             float lr, uint64_t n,
                                                             unsigned long long* __restrict__ out) {
  const uint64_t stride = uint64_t(gridDim.x) * blockDim.x;
  for (uint64_t i = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = __ldg(grad + i);
    if (!finite_bits(g) || !finite_bits(momentum(beta, __ldg(delta + i), lr, g))) {
      atomicMin(out, (unsigned long long)i);
      return;
    }
  }
}

// Same, four elements per thread step through 16-byte loads (both pointers 16-byte aligned).
__global__ void __launch_bounds__(kThreads) nonfinite4_kernel(const float4* __restrict__ delta,
                                                              const float4* __restrict__ grad, float beta,
                                                              float lr, uint64_t quads,
                                                              unsigned long long* __restrict__ out) {
  const uint64_t stride = uint64_t(gridDim.x) * blockDim.x;
  for (uint64_t q = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; q < quads; q += stride) {
    const float4 g = __ldg(grad + q), d = __ldg(delta + q);
    const float gs[4] = {g.x, g.y, g.z, g.w}, ds[4] = {d.x, d.y, d.z, d.w};
#pragma unroll
    for (int m = 0; m < 4; ++m)
      if (!finite_bits(gs[m]) || !finite_bits(momentum(beta, ds[m], lr, gs[m]))) {
        atomicMin(out, (unsigned long long)(4 * q + m));
        return;
      }
  }
}

}  // namespace

cudaError_t plan_compress(const CompressLaunch& L, unsigned sm_count, CompressPlan* plan) {
  CompressPlan out;
  const uint64_t E = uint64_t(L.n1) * L.n2;
  const unsigned sms = sm_count ? sm_count : 1;
  bool aligned = true;
  for (uint32_t t = 0; t < L.runs; ++t)
    aligned = aligned && reinterpret_cast<uintptr_t>(L.run[t].grad) % 16 == 0 &&
              reinterpret_cast<uintptr_t>(L.run[t].delta) % 16 == 0;
  const bool tiled = L.n1 == 64 && L.n2 == 64 && aligned;
  int per_sm = 0;
  // DISTRO_CUDA_DCT_FOLD=0 selects the plain 64x64 kernel instead of the folded one (A/B timing).
  const char* fold_env = std::getenv("DISTRO_CUDA_DCT_FOLD");
  const bool fold = !(fold_env && fold_env[0] == '0');
  // DISTRO_CUDA_DCT_MMA=0 keeps the folded kernel's transforms off the tensor cores. They need
  // code compiled for sm_80 or newer (TF32 mma), not merely a device that has them: the PTX
  // version of the kernel that would run decides.
  const char* mma_env = std::getenv("DISTRO_CUDA_DCT_MMA");
  bool mma = tiled && fold && !(mma_env && mma_env[0] == '0');
  if (mma) {
    cudaFuncAttributes fa{};
    const cudaError_t err = cudaFuncGetAttributes(&fa, compress64f_kernel<true, true>);
    if (err != cudaSuccess) return err;
    mma = fa.ptxVersion >= 80;
  }
  // DISTRO_CUDA_DCT_KEEPX=1 / 0: keep the momentum in registers or recompute it (the defaults:
  // kept with the tensor cores, 6% faster at 3 blocks per SM; recomputed without, where it was
  // no faster).
  const char* keep_env = std::getenv("DISTRO_CUDA_DCT_KEEPX");
  const bool keep = keep_env && (keep_env[0] == '0' || keep_env[0] == '1') ? keep_env[0] == '1' : mma;
  // A 64x64 kernel with its dynamic shared memory: allowed past 48 KiB, and its blocks per SM.
  const auto tiled_kernel = [&](int id, void (*kern)(CompressLaunch), size_t smem) {
    out.kernel = id;
    out.smem = smem;
    const cudaError_t err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    return err != cudaSuccess ? err : cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, kThreads, smem);
  };
  if (tiled) {
    const cudaError_t err =
        mma    ? tiled_kernel(keep ? 6 : 5, keep ? compress64f_kernel<true, true> : compress64f_kernel<false, true>,
                              sizeof(SmemM))
        : fold ? tiled_kernel(keep ? 4 : 3, keep ? compress64f_kernel<true, false> : compress64f_kernel<false, false>,
                              sizeof(SmemF))
               : tiled_kernel(1, compress64_kernel, sizeof(Smem64));
    if (err != cudaSuccess) return err;
  } else {
    out.kernel = 2;
    if (3 * E <= kGenericSmemFloats) {
      out.smem = size_t(3 * E) * sizeof(float);
      cudaError_t err =
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, compress_generic_kernel, kThreads, out.smem);
      if (err != cudaSuccess) return err;
    } else {
      out.smem = 0;
      per_sm = 1;
    }
  }
  if (per_sm < 1) per_sm = 1;
  const uint64_t want = uint64_t(sms) * unsigned(per_sm);
  out.grid = unsigned(L.chunks < want ? (L.chunks ? L.chunks : 1) : want);
  if (out.kernel == 2 && out.smem == 0) out.workspace_floats = uint64_t(out.grid) * 3 * E;
  *plan = out;
  return cudaSuccess;
}

cudaError_t launch_compress(const CompressLaunch& L, const CompressPlan& plan, cudaStream_t stream) {
  if (L.chunks == 0 || L.runs == 0) return cudaSuccess;
  if (plan.kernel == 5)
    compress64f_kernel<false, true><<<plan.grid, kThreads, plan.smem, stream>>>(L);
  else if (plan.kernel == 6)
    compress64f_kernel<true, true><<<plan.grid, kThreads, plan.smem, stream>>>(L);
  else if (plan.kernel == 3)
    compress64f_kernel<false, false><<<plan.grid, kThreads, plan.smem, stream>>>(L);
  else if (plan.kernel == 4)
    compress64f_kernel<true, false><<<plan.grid, kThreads, plan.smem, stream>>>(L);
  else if (plan.kernel == 1)
    compress64_kernel<<<plan.grid, kThreads, plan.smem, stream>>>(L);
  else
    compress_generic_kernel<<<plan.grid, kThreads, plan.smem, stream>>>(L, plan.smem > 0 ? 1 : 0);
  return cudaGetLastError();
}

cudaError_t launch_first_nonfinite(const float* delta, const float* grad, float beta, float lr, uint64_t n,
                                   unsigned long long* out, unsigned max_blocks, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (max_blocks == 0) max_blocks = 1;
  const bool aligned = reinterpret_cast<uintptr_t>(delta) % 16 == 0 && reinterpret_cast<uintptr_t>(grad) % 16 == 0;
  if (aligned && n % 4 == 0) {
    const uint64_t quads = n / 4, want = (quads + kThreads - 1) / kThreads;
    const unsigned blocks = unsigned(want < max_blocks ? want : max_blocks);
    nonfinite4_kernel<<<blocks, kThreads, 0, stream>>>(reinterpret_cast<const float4*>(delta),
                                                       reinterpret_cast<const float4*>(grad), beta, lr, quads, out);
  } else {
    const uint64_t want = (n + kThreads - 1) / kThreads;
    const unsigned blocks = unsigned(want < max_blocks ? want : max_blocks);
    nonfinite_kernel<<<blocks, kThreads, 0, stream>>>(delta, grad, beta, lr, n, out);
  }
  return cudaGetLastError();
}

}  // namespace distro::cuda
