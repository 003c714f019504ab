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
  at::parallel_for(0, n / kRows, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t m = 0; m < m_total; ++m) {
        float out[kRows];
        tile_dot(pp + t * kRows * k, k, xp + m * k, out);
        for (int r = 0; r < kRows; ++r) yp[m * n + t * kRows + r] = out[r] * sp[t * kRows + r];
      }
    }
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemv", &gemv, "x [M, K] @ (q * s).T from tile-ordered int8 weights");
}
