// Weight-only int8 GEMV for decode on AVX-512 CPUs: y[m, n] = s[n] * sum_k q[n, k] * x[m, k].
//
// torch 2.13's _weight_int8pack_mm is compute-bound at one row on 2 cores (7-9 GB/s of int8 weights
// against ~19 GB/s of memory bandwidth), so int8 decode gained little over bf16. Here the weights are
// stored in tiles of 4 rows x 32 columns, [N/4, K/32, 4, 32], so each thread streams one contiguous
// run of bytes while 8 fp32 accumulators stay in registers; x stays fp32 (weight-only: the activations
// are never quantized). Built at first use by qwenvl/engine/cpu_kernels.py with -march=native.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cstdint>

namespace {
constexpr int64_t kRows = 4, kCols = 32;
// software prefetch of the bytes ahead: into L1 2 KiB ahead, into L2 16 KiB ahead. The decoder's 196
// matrices in a row streamed 11 GB/s with none, 15-17 GB/s with L1 only (4-8 KiB), 27-29 GB/s with both
// (2-core Xeon, 2026-12-02; one-run comparisons, the host's speed drifted between runs)
constexpr int64_t kPrefetchL1 = 2048, kPrefetchL2 = 16384;

// One tile column of 4 rows against one x row: out[r] = sum_k tile[r, k] * x[k].
inline void tile_dot(const int8_t* tile, int64_t k_total, const float* x, float* out) {
  __m512 a0[kRows], a1[kRows];
  for (int r = 0; r < kRows; ++r) { a0[r] = _mm512_setzero_ps(); a1[r] = _mm512_setzero_ps(); }
  for (int64_t k = 0; k < k_total; k += kCols) {
    const __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
    const int8_t* p = tile + k * kRows;
    // a step reads 128 bytes (4 rows x 32 columns): two cache lines per level
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchL1), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchL1 + 64), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchL2), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchL2 + 64), _MM_HINT_T1);
    for (int r = 0; r < kRows; ++r) {
      const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p + kCols * r))));
      const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p + kCols * r + 16))));
      a0[r] = _mm512_fmadd_ps(w0, x0, a0[r]);
      a1[r] = _mm512_fmadd_ps(w1, x1, a1[r]);
    }
  }
  for (int r = 0; r < kRows; ++r) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
}

// The same tile against MB x rows at once (x row m at x + m * ldx): each 32-column step of a weight row is
// widened to fp32 once and used MB times. Widening (2 sign-extends + 2 converts) costs as much as the two FMAs
// of one x row and competes for the same ports, so tile_dot per x row spent 2/3 of its work re-widening the
// tile (8960x1536 at 16 rows: 10.2 ms, against 2.0-2.2 for bf16's GEMM). 4 x MB accumulators + 2 widened
// halves stay in registers (MB <= 6: 26 of the 32); x is read from L1 as the FMAs' memory operand.
template <int MB>
inline void tile_dot_rows(const int8_t* tile, int64_t k_total, const float* x, int64_t ldx, float* out) {
  __m512 acc[kRows][MB];
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < k_total; k += kCols) {
    const int8_t* p = tile + k * kRows;
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchL1), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchL1 + 64), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchL2), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchL2 + 64), _MM_HINT_T1);
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p + kCols * r))));
      const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p + kCols * r + 16))));
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) {
        acc[r][m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + m * ldx + k), acc[r][m]);
        acc[r][m] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + m * ldx + k + 16), acc[r][m]);
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) out[m * kRows + r] = _mm512_reduce_add_ps(acc[r][m]);
}

constexpr int kMaxBlock = 6;  // x rows per pass over a tile (the accumulators' register budget)

// out [mb * kRows] for x rows [0, mb), mb in 1..kMaxBlock
inline void tile_block(int mb, const int8_t* tile, int64_t k, const float* x, int64_t ldx, float* out) {
  switch (mb) {
    case 1: tile_dot(tile, k, x, out); break;
    case 2: tile_dot_rows<2>(tile, k, x, ldx, out); break;
    case 3: tile_dot_rows<3>(tile, k, x, ldx, out); break;
    case 4: tile_dot_rows<4>(tile, k, x, ldx, out); break;
    case 5: tile_dot_rows<5>(tile, k, x, ldx, out); break;
    default: tile_dot_rows<6>(tile, k, x, ldx, out); break;
  }
}
}  // namespace

// x [M, K] float / bf16, p [N, K] int8 in tile order (quant.tile_int8), s [N] float / bf16 -> [M, N] float.
torch::Tensor gemv(const torch::Tensor& x, const torch::Tensor& p, const torch::Tensor& s) {
  TORCH_CHECK(p.scalar_type() == torch::kInt8 && p.is_contiguous(), "gemv: p must be contiguous int8 (quant.tile_int8's output)");
  const auto xf = x.to(torch::kFloat).contiguous();
  const auto sf = s.to(torch::kFloat).contiguous();
  const int64_t m_total = xf.size(0), k = xf.size(1), n = p.size(0);
  TORCH_CHECK(p.size(1) == k && s.size(0) == n && n % kRows == 0 && k % kCols == 0, "gemv: shapes do not match");
  auto y = torch::empty({m_total, n}, xf.options());
  const float* xp = xf.data_ptr<float>();
  const int8_t* pp = p.data_ptr<int8_t>();
  const float* sp = sf.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // grain: >= 8 tiles (32 rows) per task so small matrices do not pay for thread hand-offs
  // tiles outermost: a tile (4 x K bytes) is read from memory once and stays in L1 for every x block
  at::parallel_for(0, n / kRows, 8, [&](int64_t t0, int64_t t1) {
    float out[kMaxBlock * kRows];
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t m0 = 0; m0 < m_total; m0 += kMaxBlock) {
        const int mb = static_cast<int>(std::min<int64_t>(kMaxBlock, m_total - m0));
        tile_block(mb, pp + t * kRows * k, k, xp + m0 * k, k, out);
        for (int m = 0; m < mb; ++m)
          for (int r = 0; r < kRows; ++r) yp[(m0 + m) * n + t * kRows + r] = out[m * kRows + r] * sp[t * kRows + r];
      }
    }
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemv", &gemv, "x [M, K] @ (q * s).T from tile-ordered int8 weights");
}
