// Weight-only GEMVs for decode on AVX-512 or AVX2 CPUs, fp32 activations and accumulation:
//   int8: y[m, n] = s[n] * sum_k q[n, k] * x[m, k]        bf16: y[m, n] = sum_k w[n, k] * x[m, k]
//
// torch 2.13's _weight_int8pack_mm is compute-bound at one row on 2 cores (7-9 GB/s of int8 weights
// against ~19 GB/s of memory bandwidth), so int8 decode gained little over bf16; on CPUs without native
// bf16 (where "auto" computes in fp32), fp32 F.linear reads weights at 6-8 GB/s at one row and 2-5 GB/s at
// 2-16 rows (2-core AVX2 EPYC). Here the weights are stored in tiles of 4 rows x 32 columns,
// [N/4, K/32, 4, 32], so each thread streams one contiguous run of bytes while the fp32 accumulators stay
// in registers; x stays fp32 (weight-only: the activations are never quantized). A bf16 weight widens to
// fp32 exactly (a 16-bit shift). Built at first use by qwenvl/engine/cpu_kernels.py with -march=native,
// which picks the AVX-512 body (16 lanes) or the AVX2 + FMA one (8 lanes, 16 registers: fewer x rows per pass).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cstdint>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define QWENVL_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#define QWENVL_AVX512 0
#else
#error "tiled_gemv.cpp needs AVX-512 (F, BW) or AVX2 + FMA (cpu_kernels.py checks the flags first)"
#endif

namespace {
constexpr int64_t kRows = 4, kCols = 32;
// software prefetch of the bytes ahead: into L1 2 KiB ahead, into L2 16 KiB ahead. The decoder's 196
// matrices in a row streamed 11 GB/s with none, 15-17 GB/s with L1 only (4-8 KiB), 27-29 GB/s with both
// (2-core Xeon, 2026-12-02; one-run comparisons, the host's speed drifted between runs)
constexpr int64_t kPrefetchL1 = 2048, kPrefetchL2 = 16384;

// a 32-column step of a tile reads 4 x 32 weights: 128 bytes (int8, two cache lines) or 256 (bf16, four)
template <typename W>
inline void prefetch_step(const W* w) {
  const char* p = reinterpret_cast<const char*>(w);
  for (int line = 0; line < static_cast<int>(sizeof(W)) * 2; ++line) {
    _mm_prefetch(p + kPrefetchL1 + 64 * line, _MM_HINT_T0);
    _mm_prefetch(p + kPrefetchL2 + 64 * line, _MM_HINT_T1);
  }
}

// The ISA's primitives; the tile loops below are written once over them.
#if QWENVL_AVX512
using Vec = __m512;
constexpr int kLanes = 16;
constexpr int kMaxBlock = 6;  // x rows per pass: 4 x 6 accumulators + the widened weights, 26 of 32 registers
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec vadd(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline float vsum(Vec v) { return _mm512_reduce_add_ps(v); }
// 16 weights -> 16 fp32 lanes: int8 sign-extended and converted; bf16 (raw uint16) shifted into the high half
inline Vec widen(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline Vec widen(const uint16_t* p) {
  const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}
#else  // AVX2 + FMA: 8 lanes, 16 registers
using Vec = __m256;
constexpr int kLanes = 8;
constexpr int kMaxBlock = 3;  // 4 x 3 accumulators + a widened weight vector fit the 16 registers
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec vadd(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline float vsum(Vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline Vec widen(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline Vec widen(const uint16_t* p) {
  const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}
#endif
constexpr int kChunks = kCols / kLanes;  // vectors per 32-column step of one weight row: 2 or 4

// One tile column of 4 rows against one x row: out[r] = sum_k tile[r, k] * x[k]. Two accumulators per tile
// row, chunks alternating between them, so consecutive FMAs into one register are two apart and the FMA
// latency does not bound the loop.
template <typename W>
inline void tile_dot(const W* tile, int64_t k_total, const float* x, float* out) {
  Vec acc[kRows][2];
  for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = vzero();
  for (int64_t k = 0; k < k_total; k += kCols) {
    const W* p = tile + k * kRows;
    prefetch_step(p);
    Vec xs[kChunks];
#pragma GCC unroll 4
    for (int c = 0; c < kChunks; ++c) xs[c] = vload(x + k + c * kLanes);
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < kChunks; ++c)
        acc[r][c % 2] = vfma(widen(p + kCols * r + c * kLanes), xs[c], acc[r][c % 2]);
  }
  for (int r = 0; r < kRows; ++r) out[r] = vsum(vadd(acc[r][0], acc[r][1]));
}

// The same tile against MB x rows at once (x row m at x + m * ldx): each chunk of a weight row is widened to
// fp32 once and used MB times. Widening (a sign-extend + a convert per chunk) costs as much as the FMAs of one
// x row and competes for the same ports, so tile_dot per x row spent 2/3 of its work re-widening the tile
// (AVX-512, 8960x1536 at 16 rows: 10.2 ms, against 2.0-2.2 for bf16's GEMM). The 4 x MB accumulators stay in
// registers; x is read from L1 as the FMAs' memory operand.
template <int MB, typename W>
inline void tile_dot_rows(const W* tile, int64_t k_total, const float* x, int64_t ldx, float* out) {
  Vec acc[kRows][MB];
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) acc[r][m] = vzero();
  for (int64_t k = 0; k < k_total; k += kCols) {
    const W* p = tile + k * kRows;
    prefetch_step(p);
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
      for (int c = 0; c < kChunks; ++c) {
        const Vec w = widen(p + kCols * r + c * kLanes);
#pragma GCC unroll 8
        for (int m = 0; m < MB; ++m) acc[r][m] = vfma(w, vload(x + m * ldx + k + c * kLanes), acc[r][m]);
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) out[m * kRows + r] = vsum(acc[r][m]);
}

// out [mb * kRows] for x rows [0, mb), mb in 1..kMaxBlock
template <typename W>
inline void tile_block(int mb, const W* tile, int64_t k, const float* x, int64_t ldx, float* out) {
  switch (mb) {
    case 1: tile_dot(tile, k, x, out); break;
    case 2: tile_dot_rows<2>(tile, k, x, ldx, out); break;
#if QWENVL_AVX512
    case 3: tile_dot_rows<3>(tile, k, x, ldx, out); break;
    case 4: tile_dot_rows<4>(tile, k, x, ldx, out); break;
    case 5: tile_dot_rows<5>(tile, k, x, ldx, out); break;
#endif
    default: tile_dot_rows<kMaxBlock>(tile, k, x, ldx, out); break;
  }
}
// x [M, K] float / bf16, p [N, K] in tile order, sp [N] fp32 scales or null -> [M, N] float
template <typename W>
torch::Tensor tiled_gemv(const torch::Tensor& x, const W* pp, int64_t n, const float* sp) {
  const auto xf = x.to(torch::kFloat).contiguous();
  const int64_t m_total = xf.size(0), k = xf.size(1);
  auto y = torch::empty({m_total, n}, xf.options());
  const float* xp = xf.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // grain: >= 8 tiles (32 rows) per task so small matrices do not pay for thread hand-offs
  // tiles outermost: a tile (4 x K weights) is read from memory once and stays in L1 for every x block
  at::parallel_for(0, n / kRows, 8, [&](int64_t t0, int64_t t1) {
    float out[kMaxBlock * kRows];
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t m0 = 0; m0 < m_total; m0 += kMaxBlock) {
        const int mb = static_cast<int>(std::min<int64_t>(kMaxBlock, m_total - m0));
        tile_block(mb, pp + t * kRows * k, k, xp + m0 * k, k, out);
        for (int m = 0; m < mb; ++m)
          for (int r = 0; r < kRows; ++r)
            yp[(m0 + m) * n + t * kRows + r] = sp ? out[m * kRows + r] * sp[t * kRows + r] : out[m * kRows + r];
      }
    }
  });
  return y;
}

void check_shapes(const char* name, const torch::Tensor& x, const torch::Tensor& p) {
  TORCH_CHECK(x.dim() == 2 && p.dim() == 2 && p.is_contiguous(), name, ": x [M, K] and contiguous tiles [N, K]");
  TORCH_CHECK(p.size(1) == x.size(1) && p.size(0) % kRows == 0 && x.size(1) % kCols == 0, name,
              ": shapes do not match (N a multiple of 4, K of 32)");
}
}  // namespace

// x [M, K] float / bf16, p [N, K] int8 in tile order (quant.tile_int8), s [N] float / bf16 -> [M, N] float.
torch::Tensor int8_gemv(const torch::Tensor& x, const torch::Tensor& p, const torch::Tensor& s) {
  TORCH_CHECK(p.scalar_type() == torch::kInt8, "int8_gemv: p must be int8 (quant.tile_int8's output)");
  check_shapes("int8_gemv", x, p);
  TORCH_CHECK(s.numel() == p.size(0), "int8_gemv: one scale per row");
  const auto sf = s.to(torch::kFloat).contiguous();
  return tiled_gemv(x, p.data_ptr<int8_t>(), p.size(0), sf.data_ptr<float>());
}

// x [M, K] float / bf16, p [N, K] bf16 in tile order (quant.tile_bf16) -> [M, N] float.
torch::Tensor bf16_gemv(const torch::Tensor& x, const torch::Tensor& p) {
  TORCH_CHECK(p.scalar_type() == torch::kBFloat16, "bf16_gemv: p must be bf16 (quant.tile_bf16's output)");
  check_shapes("bf16_gemv", x, p);
  return tiled_gemv(x, reinterpret_cast<const uint16_t*>(p.data_ptr<at::BFloat16>()), p.size(0), nullptr);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_gemv", &int8_gemv, "x [M, K] @ (q * s).T from tile-ordered int8 weights");
  m.def("bf16_gemv", &bf16_gemv, "x [M, K] @ w.T from tile-ordered bf16 weights");
}
