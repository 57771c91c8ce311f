// MANN's LRUA recurrence (fast.lrua_sequence) as two C++ calls: the forward loop over
// time and the hand-written backpropagation through time.
//
// The same mathematics, layout and stored quantities as fewshot_mann/fast.py (read its
// docstrings first): time-major tensors, memory kept transposed per episode as (W, N),
// the memory stored only at the start of every `segment` steps and recomputed segment by
// segment in backward (with the same function, so bit-identical). What differs is only
// how it runs: the controller and key/gate matmuls go to BLAS (MKL's sgemm_/dgemm_,
// exported by libtorch_cpu; at::addmm_out where they are not), everything else is plain
// loops over contiguous buffers, one episode at a time (its memory, 40 x 128 floats at
// the paper's sizes, stays in the L1/L2 cache across a step's passes). Episodes never
// interact, so one at::parallel_for splits the batch into a block per thread and each
// thread runs the whole time loop (matmuls, LSTM cells, memory) for its block, with no
// barrier inside the loop. No per-op dispatch remains inside the time loops.
//
// Registered as torch.ops.fewshot_mann_lrua.{forward,backward}; fewshot_mann/cpp.py
// builds it with torch.utils.cpp_extension.load and wraps it in an autograd Function.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

extern "C" {
// MKL's Fortran BLAS, exported by libtorch_cpu on x86 builds. Weak: where a build of
// torch has no such symbol they are null and gemm() goes through at::addmm_out.
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
            const int*, const double*, const int*, const double*, double*, const int*) __attribute__((weak));
}

extern "C" {
// torch's SLEEF (what torch.exp / tanh / sigmoid use on these CPUs), exported by
// libtorch_cpu. Weak: where absent, the scalar loops of <cmath> run instead.
#if defined(__AVX512F__)
__m512 Sleef_expf16_u10(__m512) __attribute__((weak));
__m512 Sleef_tanhf16_u10(__m512) __attribute__((weak));
#endif
#if defined(__AVX2__)
__m256 Sleef_expf8_u10(__m256) __attribute__((weak));
__m256 Sleef_tanhf8_u10(__m256) __attribute__((weak));
#endif
}

namespace {

using at::Tensor;

// ---------------------------------------------------------------------------------------
// Elementwise exp, tanh and sigmoid over arrays (out may equal in): SLEEF vectors for
// float where available (sigmoid as torch computes it, 1 / (1 + exp(-x))), else <cmath>.

enum class Fn { Exp, Tanh, Sigmoid };

template <Fn fn, typename T>
inline T scalar_fn(T x) {
  if (fn == Fn::Exp) return std::exp(x);
  if (fn == Fn::Tanh) return std::tanh(x);
  return T(1) / (T(1) + std::exp(-x));
}

template <Fn fn, typename T>
void apply(const T* in, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = scalar_fn<fn>(in[i]);
}

template <Fn fn>
void apply(const float* in, float* out, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  if (Sleef_expf16_u10 && Sleef_tanhf16_u10) {
    const __m512 one = _mm512_set1_ps(1.0f);
    auto op = [&](__m512 x) {
      if (fn == Fn::Exp) return Sleef_expf16_u10(x);
      if (fn == Fn::Tanh) return Sleef_tanhf16_u10(x);
      return _mm512_div_ps(one, _mm512_add_ps(one, Sleef_expf16_u10(_mm512_sub_ps(_mm512_setzero_ps(), x))));
    };
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, op(_mm512_loadu_ps(in + i)));
    if (i < n) {
      const __mmask16 mask = __mmask16((1u << (n - i)) - 1);
      _mm512_mask_storeu_ps(out + i, mask, op(_mm512_maskz_loadu_ps(mask, in + i)));
    }
    return;
  }
#endif
#if defined(__AVX2__)
  if (Sleef_expf8_u10 && Sleef_tanhf8_u10) {
    const __m256 one = _mm256_set1_ps(1.0f);
    auto op = [&](__m256 x) {
      if (fn == Fn::Exp) return Sleef_expf8_u10(x);
      if (fn == Fn::Tanh) return Sleef_tanhf8_u10(x);
      return _mm256_div_ps(one, _mm256_add_ps(one, Sleef_expf8_u10(_mm256_sub_ps(_mm256_setzero_ps(), x))));
    };
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, op(_mm256_loadu_ps(in + i)));
  }
#endif
  for (; i < n; ++i) out[i] = scalar_fn<fn>(in[i]);
}

// ---------------------------------------------------------------------------------------
// Row-major C (m x n) = alpha op(A) op(B) + beta C, op(X) = X or X^T; lda/ldb/ldc are the
// row strides of A, B, C as stored. A column-major BLAS computes C^T = op(B)^T op(A)^T.

template <typename T>
void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const T* alpha, const T* a,
               const int* lda, const T* b, const int* ldb, const T* beta, T* c, const int* ldc);
template <>
void blas_gemm<float>(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
                      const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
                      const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
template <>
void blas_gemm<double>(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
                       const double* a, const int* lda, const double* b, const int* ldb, const double* beta,
                       double* c, const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
template <typename T>
bool have_blas() {
  return std::is_same<T, float>::value ? sgemm_ != nullptr : dgemm_ != nullptr;
}

bool g_force_aten_gemm = false;  // tests: run the at::addmm_out branch

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (have_blas<T>() && !g_force_aten_gemm) {
    const char ca = trans_a ? 'T' : 'N', cb = trans_b ? 'T' : 'N';
    const int M = int(m), N = int(n), K = int(k), LDA = int(std::max<int64_t>(lda, 1)),
              LDB = int(std::max<int64_t>(ldb, 1)), LDC = int(ldc);
    blas_gemm<T>(&cb, &ca, &N, &M, &K, &alpha, b, &LDB, a, &LDA, &beta, c, &LDC);
    return;
  }
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  Tensor A = at::from_blob(const_cast<T*>(a), {trans_a ? k : m, trans_a ? m : k}, {lda, 1}, opts);
  Tensor B = at::from_blob(const_cast<T*>(b), {trans_b ? n : k, trans_b ? k : n}, {ldb, 1}, opts);
  Tensor C = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  if (trans_a) A = A.t();
  if (trans_b) B = B.t();
  if (beta == T(0)) C.zero_();  // BLAS never reads C when beta = 0 (it may hold garbage)
  at::addmm_out(C, C, A, B, beta, alpha);
}

// C (m x n, row stride ldc) = A (m x k) B (k x n) [+ C when accumulate], all row-major
// with unit column stride: the per-step matmuls with the batch as m (16 at the paper's
// sizes). For float on AVX-512 a register-blocked loop that reads B in place (16 rows of
// A x 16 columns of B per block, accumulators in registers): MKL packs B at every call,
// which at 16 rows costs about a quarter of its time. Else gemm().
bool g_small_gemm = true;  // timing and tests: false sends these matmuls to gemm()

template <typename T>
void step_gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, bool accumulate,
               T* c, int64_t ldc) {
  gemm<T>(false, false, m, n, k, T(1), a, lda, b, ldb, accumulate ? T(1) : T(0), c, ldc);
}

#if defined(__AVX512F__)
template <int MB>
inline void step_gemm_block(int64_t mb, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                            int64_t ldb, bool accumulate, float* c, int64_t ldc) {
  const int64_t rows = MB > 0 ? MB : mb;
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 mask = n - j >= 16 ? __mmask16(0xFFFFu) : __mmask16((1u << (n - j)) - 1);
    __m512 acc[16];
    for (int64_t r = 0; r < rows; ++r)
      acc[r] = accumulate ? _mm512_maskz_loadu_ps(mask, c + r * ldc + j) : _mm512_setzero_ps();
    for (int64_t kk = 0; kk < k; ++kk) {
      const __m512 bv = _mm512_maskz_loadu_ps(mask, b + kk * ldb + j);
      for (int64_t r = 0; r < rows; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r * lda + kk]), bv, acc[r]);
    }
    for (int64_t r = 0; r < rows; ++r) _mm512_mask_storeu_ps(c + r * ldc + j, mask, acc[r]);
  }
}

void step_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
               bool accumulate, float* c, int64_t ldc) {
  if (!g_small_gemm || g_force_aten_gemm) {
    gemm<float>(false, false, m, n, k, 1.0f, a, lda, b, ldb, accumulate ? 1.0f : 0.0f, c, ldc);
    return;
  }
  int64_t r0 = 0;
  for (; r0 + 16 <= m; r0 += 16)
    step_gemm_block<16>(16, n, k, a + r0 * lda, lda, b, ldb, accumulate, c + r0 * ldc, ldc);
  for (; r0 + 8 <= m; r0 += 8)  // a thread's block of a small batch
    step_gemm_block<8>(8, n, k, a + r0 * lda, lda, b, ldb, accumulate, c + r0 * ldc, ldc);
  if (r0 < m) step_gemm_block<0>(m - r0, n, k, a + r0 * lda, lda, b, ldb, accumulate, c + r0 * ldc, ldc);
}
#endif

// ---------------------------------------------------------------------------------------
// Small helpers.

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <typename T>
inline T softplus(T x) {  // torch.nn.functional.softplus, beta 1, threshold 20
  return x > T(20) ? x : std::log1p(std::exp(x));
}

template <typename T>
inline T lerp(T start, T end, T weight) {  // torch.lerp's formula
  return weight < T(0.5) ? start + weight * (end - start) : end - (end - start) * (T(1) - weight);
}

template <typename T>
inline T dot(const T* __restrict x, const T* __restrict y, int64_t n) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * y[i];
  return s;
}

#if defined(__AVX512F__)
inline float dot(const float* __restrict x, const float* __restrict y, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), acc);
  if (i < n) {
    const __mmask16 k = __mmask16((1u << (n - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, y + i), acc);
  }
  return _mm512_reduce_add_ps(acc);
}
#endif

template <typename T>
inline T sum(const T* x, int64_t n) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  return s;
}

// Ordering key of a non-negative usage value: its bit pattern orders like the value
// (fast._LeastUsed uses the same for float32); ties go to the lower slot index.
inline int64_t order_bits(float x) {
  int32_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}
inline int64_t order_bits(double x) {
  int64_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}

// The n least-used slots of usage (N), in increasing order (ties: lower index first),
// as memory.least_used's stable sort picks them; chosen[0] is the slot zeroed next.
template <typename T>
void least_used(const T* usage, int64_t N, int64_t n, int32_t* chosen) {
  int64_t key[64];
  int64_t count = 0;
  for (int64_t slot = 0; slot < N; ++slot) {
    const int64_t k = order_bits(usage[slot]);
    if (count == n && k >= key[n - 1]) continue;  // strict: an equal key later loses
    int64_t j = count < n ? count++ : n - 1;
    while (j > 0 && key[j - 1] > k) {
      key[j] = key[j - 1];
      chosen[j] = chosen[j - 1];
      --j;
    }
    key[j] = k;
    chosen[j] = int32_t(slot);
  }
}

// ---------------------------------------------------------------------------------------
// Per-episode memory kernels. The memory of one episode is (W, N), slot n in column n
// (fast.py's transposed layout). Generic loops for any type; for float on AVX-512 the
// same operations over chunks of 16 slots (the last one masked), with the per-head
// accumulators in registers (heads unrolled for R <= 4).

// Eq. 8: M = prev with the least-used slot zeroed, plus keys^T ww. With kh (k_hat) also
// msq[n] = sum_w M[w][n]^2 and craw[r][n] = sum_w kh[r][w] M[w][n] (cosine numerators).
// Forward and the recomputation in backward run the same code for M, so the
// recomputed memories are bit-identical.
template <typename T>
void mem_write(const T* __restrict prev, T* __restrict m, const T* __restrict keys, const T* __restrict ww,
               int64_t zero, int64_t R, int64_t W, int64_t N, const T* kh, T* msq, T* craw) {
  for (int64_t w = 0; w < W; ++w) {
    const T* __restrict p = prev + w * N;
    T* __restrict row = m + w * N;
    for (int64_t i = 0; i < N; ++i) row[i] = p[i];
    row[zero] = p[zero] - p[zero];  // M - M * onehot, as fast.py (0 for finite M)
    for (int64_t r = 0; r < R; ++r) {
      const T k = keys[r * W + w];
      const T* __restrict wr = ww + r * N;
      for (int64_t i = 0; i < N; ++i) row[i] += k * wr[i];
    }
  }
  if (!kh) return;
  std::fill(msq, msq + N, T(0));
  std::fill(craw, craw + R * N, T(0));
  for (int64_t w = 0; w < W; ++w) {
    const T* __restrict row = m + w * N;
    for (int64_t i = 0; i < N; ++i) msq[i] += row[i] * row[i];
    for (int64_t r = 0; r < R; ++r) {
      const T k = kh[r * W + w];
      T* __restrict cr = craw + r * N;
      for (int64_t i = 0; i < N; ++i) cr[i] += k * row[i];
    }
  }
}

// reads[r][w] = sum_n wr[r][n] M[w][n] (eq. 4).
template <typename T>
void mem_reads(const T* wr, const T* m, T* reads, int64_t R, int64_t W, int64_t N) {
  for (int64_t w = 0; w < W; ++w)
    for (int64_t r = 0; r < R; ++r) reads[r * W + w] = dot(wr + r * N, m + w * N, N);
}

// d_wr[r][n] = carry[r][n] + sum_w g_reads[r][w] M[w][n].
template <typename T>
void mem_d_read_weights(const T* carry, const T* g_reads, const T* m, T* d_wr, int64_t R, int64_t W, int64_t N) {
  std::memcpy(d_wr, carry, sizeof(T) * R * N);
  for (int64_t w = 0; w < W; ++w) {
    const T* __restrict row = m + w * N;
    for (int64_t r = 0; r < R; ++r) {
      const T g = g_reads[r * W + w];
      T* __restrict dr = d_wr + r * N;
      for (int64_t i = 0; i < N; ++i) dr[i] += g * row[i];
    }
  }
}

// The memory's part of a backward step, given d_cs = d cos / |M_n| (R, N):
//   d_k_hat[r][w] = sum_n d_cs[r][n] M[w][n];
//   dM[w][n] += M[w][n] row_coef[n] + sum_r kh[r][w] d_cs[r][n] + sum_r g_reads[r][w] wr[r][n];
// then through the write M = ... + keys^T ww:
//   d_keys_ww[r][w] = sum_n ww[r][n] dM[w][n];  d_ww[r][n] = sum_w keys[r][w] dM[w][n].
template <typename T>
void mem_backward(const T* m, T* dm, const T* d_cs, const T* row_coef, const T* kh, const T* g_reads, const T* wr,
                  const T* ww, const T* keys, T* d_k_hat, T* d_keys_ww, T* d_ww, int64_t R, int64_t W, int64_t N) {
  std::fill(d_ww, d_ww + R * N, T(0));
  for (int64_t w = 0; w < W; ++w) {
    const T* __restrict row = m + w * N;
    T* __restrict drow = dm + w * N;
    for (int64_t r = 0; r < R; ++r) d_k_hat[r * W + w] = dot(d_cs + r * N, row, N);
    for (int64_t i = 0; i < N; ++i) drow[i] += row[i] * row_coef[i];
    for (int64_t r = 0; r < R; ++r) {
      const T k = kh[r * W + w], g = g_reads[r * W + w];
      const T* __restrict dr = d_cs + r * N;
      const T* __restrict wrr = wr + r * N;
      for (int64_t i = 0; i < N; ++i) drow[i] += k * dr[i] + g * wrr[i];
    }
    for (int64_t r = 0; r < R; ++r) {
      d_keys_ww[r * W + w] = dot(ww + r * N, drow, N);
      const T k = keys[r * W + w];
      T* __restrict dwr = d_ww + r * N;
      for (int64_t i = 0; i < N; ++i) dwr[i] += k * drow[i];
    }
  }
}

// One head's read weights (eqs. 2-3): cos = craw / |M_n| (in place), w_r = softmax(scale * cos).
template <typename T>
void cosine_softmax(T* cos, const T* inv_norm, T scale, T* wr, int64_t N) {
  for (int64_t i = 0; i < N; ++i) {
    cos[i] *= inv_norm[i];
    wr[i] = cos[i] * scale;
  }
  T top = wr[0];
  for (int64_t i = 1; i < N; ++i) top = std::max(top, wr[i]);
  for (int64_t i = 0; i < N; ++i) wr[i] -= top;
  apply<Fn::Exp>(wr, wr, N);
  const T inv = T(1) / sum(wr, N);
  for (int64_t i = 0; i < N; ++i) wr[i] *= inv;
}

#if defined(__AVX512F__)
struct Lanes {  // N slots as chunks of 16, the last one masked
  int64_t count;
  __mmask16 last;
  explicit Lanes(int64_t n) : count((n + 15) / 16), last(__mmask16(n % 16 ? (1u << (n % 16)) - 1 : 0xFFFFu)) {}
  __mmask16 mask(int64_t c) const { return c + 1 < count ? __mmask16(0xFFFFu) : last; }
};
inline __m512 ld(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
inline void st(float* p, __mmask16 k, __m512 v) { _mm512_mask_storeu_ps(p, k, v); }
inline __m512 bc(float x) { return _mm512_set1_ps(x); }

template <int RT, bool STATS>
void mem_write_512(const float* prev, float* m, const float* keys, const float* ww, int64_t zero, int64_t R_,
                   int64_t W, int64_t N, const float* kh, float* msq, float* craw) {
  const int64_t R = RT > 0 ? RT : R_;
  constexpr int RA = RT > 0 ? RT : 64;
  const Lanes L(N);
  __m512 wwv[RA], acc[RA];
  for (int64_t c = 0; c < L.count; ++c) {
    const __mmask16 k = L.mask(c);
    const int64_t o = 16 * c;
    __m512 keep = bc(1.0f);
    if (zero >= o && zero < o + 16) keep = _mm512_mask_mov_ps(keep, __mmask16(1u << (zero - o)), _mm512_setzero_ps());
    for (int64_t r = 0; r < R; ++r) {
      wwv[r] = ld(ww + r * N + o, k);
      acc[r] = _mm512_setzero_ps();
    }
    __m512 sq = _mm512_setzero_ps();
    for (int64_t w = 0; w < W; ++w) {
      __m512 v = _mm512_mul_ps(ld(prev + w * N + o, k), keep);
      for (int64_t r = 0; r < R; ++r) v = _mm512_fmadd_ps(bc(keys[r * W + w]), wwv[r], v);
      st(m + w * N + o, k, v);
      if (STATS) {
        sq = _mm512_fmadd_ps(v, v, sq);
        for (int64_t r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(bc(kh[r * W + w]), v, acc[r]);
      }
    }
    if (STATS) {
      st(msq + o, k, sq);
      for (int64_t r = 0; r < R; ++r) st(craw + r * N + o, k, acc[r]);
    }
  }
}

template <int RT>
void mem_reads_512(const float* wr, const float* m, float* reads, int64_t R_, int64_t W, int64_t N) {
  const int64_t R = RT > 0 ? RT : R_;
  constexpr int RA = RT > 0 ? RT : 64;
  const Lanes L(N);
  __m512 acc[RA];
  for (int64_t w = 0; w < W; ++w) {
    for (int64_t r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < L.count; ++c) {
      const __mmask16 k = L.mask(c);
      const __m512 v = ld(m + w * N + 16 * c, k);
      for (int64_t r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(ld(wr + r * N + 16 * c, k), v, acc[r]);
    }
    for (int64_t r = 0; r < R; ++r) reads[r * W + w] = _mm512_reduce_add_ps(acc[r]);
  }
}

template <int RT>
void mem_d_read_weights_512(const float* carry, const float* g_reads, const float* m, float* d_wr, int64_t R_,
                            int64_t W, int64_t N) {
  const int64_t R = RT > 0 ? RT : R_;
  constexpr int RA = RT > 0 ? RT : 64;
  const Lanes L(N);
  __m512 acc[RA];
  for (int64_t c = 0; c < L.count; ++c) {
    const __mmask16 k = L.mask(c);
    const int64_t o = 16 * c;
    for (int64_t r = 0; r < R; ++r) acc[r] = ld(carry + r * N + o, k);
    for (int64_t w = 0; w < W; ++w) {
      const __m512 v = ld(m + w * N + o, k);
      for (int64_t r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(bc(g_reads[r * W + w]), v, acc[r]);
    }
    for (int64_t r = 0; r < R; ++r) st(d_wr + r * N + o, k, acc[r]);
  }
}

template <int RT>
void mem_backward_512(const float* m, float* dm, const float* d_cs, const float* row_coef, const float* kh,
                      const float* g_reads, const float* wr, const float* ww, const float* keys, float* d_k_hat,
                      float* d_keys_ww, float* d_ww, int64_t R_, int64_t W, int64_t N) {
  const int64_t R = RT > 0 ? RT : R_;
  constexpr int RA = RT > 0 ? RT : 64;
  const Lanes L(N);
  std::fill(d_ww, d_ww + R * N, 0.0f);
  __m512 acck[RA], accw[RA];
  for (int64_t w = 0; w < W; ++w) {
    for (int64_t r = 0; r < R; ++r) acck[r] = accw[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < L.count; ++c) {
      const __mmask16 k = L.mask(c);
      const int64_t o = 16 * c;
      const __m512 v = ld(m + w * N + o, k);
      __m512 d = _mm512_fmadd_ps(v, ld(row_coef + o, k), ld(dm + w * N + o, k));
      for (int64_t r = 0; r < R; ++r) {
        const __m512 dc = ld(d_cs + r * N + o, k);
        acck[r] = _mm512_fmadd_ps(dc, v, acck[r]);
        d = _mm512_fmadd_ps(bc(kh[r * W + w]), dc, d);
        d = _mm512_fmadd_ps(bc(g_reads[r * W + w]), ld(wr + r * N + o, k), d);
      }
      st(dm + w * N + o, k, d);
      for (int64_t r = 0; r < R; ++r) {
        accw[r] = _mm512_fmadd_ps(ld(ww + r * N + o, k), d, accw[r]);
        st(d_ww + r * N + o, k, _mm512_fmadd_ps(bc(keys[r * W + w]), d, ld(d_ww + r * N + o, k)));
      }
    }
    for (int64_t r = 0; r < R; ++r) {
      d_k_hat[r * W + w] = _mm512_reduce_add_ps(acck[r]);
      d_keys_ww[r * W + w] = _mm512_reduce_add_ps(accw[r]);
    }
  }
}

void cosine_softmax(float* cos, const float* inv_norm, float scale, float* wr, int64_t N) {
  if (!Sleef_expf16_u10) return cosine_softmax<float>(cos, inv_norm, scale, wr, N);
  const Lanes L(N);
  const __m512 sc = bc(scale);
  __m512 top = bc(-INFINITY);
  for (int64_t c = 0; c < L.count; ++c) {
    const __mmask16 k = L.mask(c);
    const __m512 cv = _mm512_mul_ps(ld(cos + 16 * c, k), ld(inv_norm + 16 * c, k));
    st(cos + 16 * c, k, cv);
    const __m512 v = _mm512_mul_ps(cv, sc);
    st(wr + 16 * c, k, v);
    top = _mm512_mask_max_ps(top, k, top, v);
  }
  const __m512 mx = bc(_mm512_reduce_max_ps(top));
  __m512 total = _mm512_setzero_ps();
  for (int64_t c = 0; c < L.count; ++c) {
    const __mmask16 k = L.mask(c);
    const __m512 e = _mm512_maskz_mov_ps(k, Sleef_expf16_u10(_mm512_sub_ps(ld(wr + 16 * c, k), mx)));
    st(wr + 16 * c, k, e);
    total = _mm512_add_ps(total, e);
  }
  const __m512 inv = bc(1.0f / _mm512_reduce_add_ps(total));
  for (int64_t c = 0; c < L.count; ++c) {
    const __mmask16 k = L.mask(c);
    st(wr + 16 * c, k, _mm512_mul_ps(ld(wr + 16 * c, k), inv));
  }
}

#define LRUA_BY_HEADS(R, fn, ...)        \
  switch (R) {                           \
    case 1: fn<1>(__VA_ARGS__); break;   \
    case 2: fn<2>(__VA_ARGS__); break;   \
    case 3: fn<3>(__VA_ARGS__); break;   \
    case 4: fn<4>(__VA_ARGS__); break;   \
    default: fn<0>(__VA_ARGS__); break;  \
  }

template <int RT>
void mem_write_stats_512(const float* prev, float* m, const float* keys, const float* ww, int64_t zero, int64_t R,
                         int64_t W, int64_t N, const float* kh, float* msq, float* craw) {
  mem_write_512<RT, true>(prev, m, keys, ww, zero, R, W, N, kh, msq, craw);
}
template <int RT>
void mem_write_only_512(const float* prev, float* m, const float* keys, const float* ww, int64_t zero, int64_t R,
                        int64_t W, int64_t N, const float* kh, float* msq, float* craw) {
  mem_write_512<RT, false>(prev, m, keys, ww, zero, R, W, N, kh, msq, craw);
}

// float overloads: chosen over the templates above for float arguments.
void mem_write(const float* prev, float* m, const float* keys, const float* ww, int64_t zero, int64_t R, int64_t W,
               int64_t N, const float* kh, float* msq, float* craw) {
  if (kh) {
    LRUA_BY_HEADS(R, mem_write_stats_512, prev, m, keys, ww, zero, R, W, N, kh, msq, craw)
  } else {
    LRUA_BY_HEADS(R, mem_write_only_512, prev, m, keys, ww, zero, R, W, N, kh, msq, craw)
  }
}
void mem_reads(const float* wr, const float* m, float* reads, int64_t R, int64_t W, int64_t N) {
  LRUA_BY_HEADS(R, mem_reads_512, wr, m, reads, R, W, N)
}
void mem_d_read_weights(const float* carry, const float* g_reads, const float* m, float* d_wr, int64_t R, int64_t W,
                        int64_t N) {
  LRUA_BY_HEADS(R, mem_d_read_weights_512, carry, g_reads, m, d_wr, R, W, N)
}
void mem_backward(const float* m, float* dm, const float* d_cs, const float* row_coef, const float* kh,
                  const float* g_reads, const float* wr, const float* ww, const float* keys, float* d_k_hat,
                  float* d_keys_ww, float* d_ww, int64_t R, int64_t W, int64_t N) {
  LRUA_BY_HEADS(R, mem_backward_512, m, dm, d_cs, row_coef, kh, g_reads, wr, ww, keys, d_k_hat, d_keys_ww, d_ww, R, W,
                N)
}
#endif

struct Sizes {
  int64_t T, B, H, R, N, W, RW, C, F;
  bool strength;
};

Sizes sizes_of(const Tensor& gates_in, const Tensor& w_ctrl, int64_t slots, int64_t heads, bool strength) {
  Sizes s;
  s.T = gates_in.size(0);
  s.B = gates_in.size(1);
  s.H = gates_in.size(2) / 4;
  s.R = heads;
  s.N = slots;
  s.C = w_ctrl.size(0);
  s.RW = s.C - heads * (strength ? 2 : 1);
  s.W = s.RW / heads;
  s.F = s.H + s.RW;
  s.strength = strength;
  return s;
}

// ---------------------------------------------------------------------------------------
// Forward.

template <typename T>
std::vector<Tensor> forward_impl(const Tensor& gates_in, const Tensor& w_rec, const Tensor& w_ctrl,
                                 const Tensor& b_ctrl, const Sizes& s, double decay_, bool store, int64_t segment,
                                 double eps_, double init) {
  const int64_t T_ = s.T, B = s.B, H = s.H, R = s.R, N = s.N, W = s.W, RW = s.RW, C = s.C, F = s.F;
  const T eps = T(eps_), decay = T(decay_);
  const auto opts = gates_in.options();
  // Buffers with a leading time axis when storing for backward, else small rings.
  auto buf = [&](std::initializer_list<int64_t> shape, int64_t extra, int64_t ring) {
    std::vector<int64_t> full{store ? T_ + extra : ring};
    full.insert(full.end(), shape.begin(), shape.end());
    return at::empty(full, opts);
  };
  auto at_step = [&](int64_t t, int64_t ring) { return store ? t : t % ring; };

  Tensor hr = at::empty({T_ + 1, B, F}, opts);
  Tensor cells = buf({B, H}, 1, 2), acts = buf({B, 4 * H}, 0, 1), tanh_c = buf({B, H}, 0, 1);
  Tensor ctrl = buf({B, C}, 0, 1), key_norm = buf({B, R}, 0, 1), key_hat = buf({B, R, W}, 0, 1);
  Tensor mem_norm = buf({B, N}, 0, 1), cos = buf({B, R, N}, 0, 1);
  Tensor beta = s.strength ? buf({B, R}, 0, 1) : at::empty({0}, opts);
  Tensor w_read = buf({B, R, N}, 0, 2), w_write = buf({B, R, N}, 0, 1);
  Tensor lu = at::empty({store ? T_ + 1 : 2, B, R}, opts.dtype(at::kInt));
  const int64_t n_seg = (T_ + segment - 1) / segment;
  Tensor checkpoints = store ? at::empty({n_seg, B, W, N}, opts) : at::empty({0}, opts);
  Tensor mem = at::empty({2, B, W, N}, opts);
  Tensor usage = at::zeros({B, N}, opts);
  Tensor pre = at::empty({B, 4 * H}, opts), z = at::empty({B, C}, opts);

  T* hr_p = hr.data_ptr<T>();
  std::memset(hr_p, 0, sizeof(T) * B * F);
  std::memset(cells.data_ptr<T>(), 0, sizeof(T) * B * H);
  T *cells_p = cells.data_ptr<T>(), *acts_p = acts.data_ptr<T>(), *tanh_c_p = tanh_c.data_ptr<T>();
  T *ctrl_p = ctrl.data_ptr<T>(), *key_norm_p = key_norm.data_ptr<T>(), *key_hat_p = key_hat.data_ptr<T>();
  T *mem_norm_p = mem_norm.data_ptr<T>(), *cos_p = cos.data_ptr<T>();
  T* beta_p = s.strength ? beta.data_ptr<T>() : nullptr;
  T *w_read_p = w_read.data_ptr<T>(), *w_write_p = w_write.data_ptr<T>(), *usage_p = usage.data_ptr<T>();
  int32_t* lu_p = lu.data_ptr<int32_t>();
  T *mem_p = mem.data_ptr<T>(), *pre_p = pre.data_ptr<T>(), *z_p = z.data_ptr<T>();
  T* ckpt_p = store ? checkpoints.data_ptr<T>() : nullptr;
  const T *gates_p = gates_in.data_ptr<T>(), *w_rec_p = w_rec.data_ptr<T>(), *w_ctrl_p = w_ctrl.data_ptr<T>();
  const T* b_ctrl_p = b_ctrl.data_ptr<T>();
  const int64_t MEM = W * N;
  const Tensor w_rec_t = w_rec.t().contiguous(), w_ctrl_t = w_ctrl.t().contiguous();  // (F, 4H), (H, C)
  const T *w_rec_t_p = w_rec_t.data_ptr<T>(), *w_ctrl_t_p = w_ctrl_t.data_ptr<T>();

  {  // initial memory and the least-used slots of zero usage (slots 0..R-1)
    T* m0 = mem_p + MEM * B;  // mem[1]: the memory before step 0
    for (int64_t i = 0; i < B * MEM; ++i) m0[i] = T(init);
    for (int64_t b = 0; b < B; ++b) least_used(usage_p + b * N, N, R, lu_p + b * R);
  }
  // Episodes never interact, so each thread runs the whole time loop for its own block
  // of episodes (rows b0..b1 of every buffer): no barrier inside the loop, and the
  // per-step matmuls and LSTM cells run on every thread, not only the memory part.
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    const int64_t nb = b1 - b0;
    std::vector<T> wlu_buf(2 * N);
    T* wlu = wlu_buf.data();
    for (int64_t t = 0; t < T_; ++t) {
      T* hr_prev = hr_p + t * B * F;
      T* hr_t = hr_p + (t + 1) * B * F;
      const T* c_prev = cells_p + at_step(t, 2) * B * H;
      T* c_next = cells_p + at_step(t + 1, 2) * B * H;
      T* act = acts_p + at_step(t, 1) * B * 4 * H;
      T* tc = tanh_c_p + at_step(t, 1) * B * H;
      T* ct = ctrl_p + at_step(t, 1) * B * C;
      // Controller: pre = gates_in[t] + [h, r]_{t-1} w_rec^T, an LSTM cell, then
      // z = b_ctrl + h w_ctrl^T: keys tanh(z), write gate sigmoid(z), strength logit.
      std::memcpy(pre_p + b0 * 4 * H, gates_p + (t * B + b0) * 4 * H, sizeof(T) * nb * 4 * H);
      step_gemm(nb, 4 * H, F, hr_prev + b0 * F, F, w_rec_t_p, 4 * H, true, pre_p + b0 * 4 * H, 4 * H);
      for (int64_t b = b0; b < b1; ++b) {
        const T* p = pre_p + b * 4 * H;
        T* a = act + b * 4 * H;
        const T* cp = c_prev + b * H;
        T* cn = c_next + b * H;
        T* tcb = tc + b * H;
        T* h = hr_t + b * F;
        apply<Fn::Sigmoid>(p, a, 2 * H);
        apply<Fn::Tanh>(p + 2 * H, a + 2 * H, H);
        apply<Fn::Sigmoid>(p + 3 * H, a + 3 * H, H);
        for (int64_t j = 0; j < H; ++j) cn[j] = a[H + j] * cp[j] + a[j] * a[2 * H + j];
        apply<Fn::Tanh>(cn, tcb, H);
        for (int64_t j = 0; j < H; ++j) h[j] = a[3 * H + j] * tcb[j];
        std::memcpy(z_p + b * C, b_ctrl_p, sizeof(T) * C);
      }
      step_gemm(nb, C, H, static_cast<const T*>(hr_t + b0 * F), F, w_ctrl_t_p, C, true, z_p + b0 * C, C);
      T* mem_prev = mem_p + ((t + 1) % 2) * B * MEM;
      T* mem_t = mem_p + (t % 2) * B * MEM;
      if (store && t % segment == 0)
        std::memcpy(ckpt_p + ((t / segment) * B + b0) * MEM, mem_prev + b0 * MEM, sizeof(T) * nb * MEM);
      const int32_t* lu_t = lu_p + at_step(t, 2) * B * R;
      int32_t* lu_next = lu_p + at_step(t + 1, 2) * B * R;
      const T* wr_prev = t > 0 ? w_read_p + at_step(t - 1, 2) * B * R * N : nullptr;
      T* wr_t = w_read_p + at_step(t, 2) * B * R * N;
      T* ww_t = w_write_p + at_step(t, 1) * B * R * N;
      T* kn_t = key_norm_p + at_step(t, 1) * B * R;
      T* kh_t = key_hat_p + at_step(t, 1) * B * R * W;
      T* mn_t = mem_norm_p + at_step(t, 1) * B * N;
      T* cos_t = cos_p + at_step(t, 1) * B * R * N;
      T* beta_t = s.strength ? beta_p + at_step(t, 1) * B * R : nullptr;
      for (int64_t b = b0; b < b1; ++b) {
        const T* zb = z_p + b * C;
        T* cb = ct + b * C;
        apply<Fn::Tanh>(zb, cb, RW);
        apply<Fn::Sigmoid>(zb + RW, cb + RW, R);
        for (int64_t j = RW + R; j < C; ++j) cb[j] = zb[j];
        const T* keys = cb;
        const T* alpha = cb + RW;
        const int32_t* lub = lu_t + b * R;
        // Write weights (eq. 7): ww = lerp(w_lu, w_r(t-1), alpha).
        std::fill(wlu, wlu + N, T(0));
        for (int64_t r = 0; r < R; ++r) wlu[lub[r]] = T(1);
        T* ww = ww_t + b * R * N;
        for (int64_t r = 0; r < R; ++r) {
          const T a = alpha[r];
          T* wwr = ww + r * N;
          if (wr_prev) {
            const T* prev = wr_prev + b * R * N + r * N;
            if (a < T(0.5)) {  // torch.lerp's two formulas
              for (int64_t i = 0; i < N; ++i) wwr[i] = wlu[i] + a * (prev[i] - wlu[i]);
            } else {
              for (int64_t i = 0; i < N; ++i) wwr[i] = prev[i] - (prev[i] - wlu[i]) * (T(1) - a);
            }
          } else {
            for (int64_t i = 0; i < N; ++i) wwr[i] = lerp(wlu[i], T(0), a);
          }
        }
        // Keys normalised once: k_hat = k / max(|k|, eps).
        T* kn = kn_t + b * R;
        T* kh = kh_t + b * R * W;
        for (int64_t r = 0; r < R; ++r) {
          const T norm = std::max(std::sqrt(dot(keys + r * W, keys + r * W, W)), eps);
          kn[r] = norm;
          for (int64_t w = 0; w < W; ++w) kh[r * W + w] = keys[r * W + w] / norm;
        }
        // Write (eq. 8), and in the same pass the slot norms and cosine numerators.
        const T* mp = mem_prev + b * MEM;
        T* m = mem_t + b * MEM;
        T* mn = mn_t + b * N;
        T* cs = cos_t + b * R * N;
        mem_write(mp, m, keys, ww, int64_t(lub[0]), R, W, N, kh, mn, cs);
        // Read (eqs. 2-4): cosine similarity, softmax over slots, reads.
        T* inv_mn = wlu + N;  // scratch
        for (int64_t i = 0; i < N; ++i) {
          mn[i] = std::max(std::sqrt(mn[i]), eps);
          inv_mn[i] = T(1) / mn[i];
        }
        T* wr = wr_t + b * R * N;
        for (int64_t r = 0; r < R; ++r) {
          T scale = T(1);
          if (beta_t) {
            scale = softplus(cb[RW + R + r]) + T(1);
            beta_t[b * R + r] = scale;
          }
          cosine_softmax(cs + r * N, inv_mn, scale, wr + r * N, N);
        }
        mem_reads(wr, m, hr_t + b * F + H, R, W, N);
        // Usage (eq. 5) and the least-used slots of the next step (eq. 6); no gradient.
        T* u = usage_p + b * N;
        T* sr = wlu;  // w_lu is no longer needed
        T* sw = wlu + N;
        std::memcpy(sr, wr, sizeof(T) * N);
        std::memcpy(sw, ww, sizeof(T) * N);
        for (int64_t r = 1; r < R; ++r)
          for (int64_t i = 0; i < N; ++i) {
            sr[i] += wr[r * N + i];
            sw[i] += ww[r * N + i];
          }
        for (int64_t i = 0; i < N; ++i) u[i] = (sr[i] + decay * u[i]) + sw[i];
        least_used(u, N, R, lu_next + b * R);
      }
    }
  });
  if (!store) return {hr};
  return {hr, cells, acts, tanh_c, ctrl, checkpoints, key_norm, key_hat, mem_norm, cos, beta, w_read, w_write, lu};
}

// ---------------------------------------------------------------------------------------
// Backward: fast._run_backward's formulas, one episode at a time for the memory part.

template <typename T>
std::vector<Tensor> backward_impl(const Tensor& grad_out, const Tensor& w_rec, const Tensor& w_ctrl,
                                  const std::vector<Tensor>& saved, const Sizes& s, int64_t segment, double eps_) {
  const int64_t T_ = s.T, B = s.B, H = s.H, R = s.R, N = s.N, W = s.W, RW = s.RW, C = s.C, F = s.F;
  const T eps = T(eps_);
  const auto opts = grad_out.options();
  const T *hr_p = saved[0].data_ptr<T>(), *cells_p = saved[1].data_ptr<T>(), *acts_p = saved[2].data_ptr<T>();
  const T *tanh_c_p = saved[3].data_ptr<T>(), *ctrl_p = saved[4].data_ptr<T>(), *ckpt_p = saved[5].data_ptr<T>();
  const T *key_norm_p = saved[6].data_ptr<T>(), *key_hat_p = saved[7].data_ptr<T>();
  const T *mem_norm_p = saved[8].data_ptr<T>(), *cos_p = saved[9].data_ptr<T>();
  const T* beta_p = s.strength ? saved[10].data_ptr<T>() : nullptr;
  const T *w_read_p = saved[11].data_ptr<T>(), *w_write_p = saved[12].data_ptr<T>();
  const int32_t* lu_p = saved[13].data_ptr<int32_t>();
  const T *go_p = grad_out.data_ptr<T>(), *w_rec_p = w_rec.data_ptr<T>(), *w_ctrl_p = w_ctrl.data_ptr<T>();
  const int64_t MEM = W * N;

  Tensor d_pre = at::empty({T_, B, 4 * H}, opts), d_ctrl = at::empty({T_, B, C}, opts);
  Tensor segment_mem = at::empty({segment, B, W, N}, opts);
  Tensor d_mem = at::zeros({B, W, N}, opts), d_carry = at::zeros({B, R, N}, opts);
  Tensor d_cell = at::zeros({B, H}, opts), g = at::empty({B, F}, opts), d_h = at::empty({B, H}, opts);
  T *d_pre_p = d_pre.data_ptr<T>(), *d_ctrl_p = d_ctrl.data_ptr<T>(), *seg_p = segment_mem.data_ptr<T>();
  T *d_mem_p = d_mem.data_ptr<T>(), *d_carry_p = d_carry.data_ptr<T>(), *d_cell_p = d_cell.data_ptr<T>();
  T *g_p = g.data_ptr<T>(), *d_h_p = d_h.data_ptr<T>();

  // As in forward: each thread runs the whole backward loop for its block of episodes.
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    const int64_t nb = b1 - b0;
    std::vector<T> scratch(3 * R * N + 3 * R * W + N);
    T* d_sim = scratch.data();         // (R, N): d w_r, then d sim, then d cos / |M_n|
    T* d_ww = d_sim + R * N;           // (R, N)
    T* gspan = d_ww + R * N;           // (R, N): w_r(t-1) - w_lu(t)
    T* d_k_hat = gspan + R * N;        // (R, W)
    T* d_keys = d_k_hat + R * W;       // (R, W)
    T* d_keys_ww = d_keys + R * W;     // (R, W)
    T* row_coef = d_keys_ww + R * W;   // (N)
    std::memcpy(g_p + b0 * F, go_p + ((T_ - 1) * B + b0) * F, sizeof(T) * nb * F);
    for (int64_t t = T_ - 1; t >= 0; --t) {
      if (t == T_ - 1 || t % segment == segment - 1) {  // recompute this segment's memories
        const int64_t first = t - t % segment;
        for (int64_t b = b0; b < b1; ++b) {
          const T* prev = ckpt_p + ((first / segment) * B + b) * MEM;
          for (int64_t u = first; u <= t; ++u) {
            T* out = seg_p + ((u - first) * B + b) * MEM;
            mem_write(prev, out, ctrl_p + (u * B + b) * C, w_write_p + (u * B + b) * R * N,
                      int64_t(lu_p[(u * B + b) * R]), R, W, N, static_cast<const T*>(nullptr),
                      static_cast<T*>(nullptr), static_cast<T*>(nullptr));
            prev = out;
          }
        }
      }
      const T* seg_t = seg_p + (t % segment) * B * MEM;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t tb = t * B + b;
        const T* m = seg_t + b * MEM;
        const T* wr = w_read_p + tb * R * N;
        const T* cs = cos_p + tb * R * N;
        const T* mn = mem_norm_p + tb * N;
        const T* kh = key_hat_p + tb * R * W;
        const T* kn = key_norm_p + tb * R;
        const T* ww = w_write_p + tb * R * N;
        const T* keys = ctrl_p + tb * C;
        const T* alpha = keys + RW;
        const int32_t* lub = lu_p + tb * R;
        const T* g_reads = g_p + b * F + H;
        T* dm = d_mem_p + b * MEM;
        T* carry = d_carry_p + b * R * N;
        T* dc = d_ctrl_p + tb * C;
        // d w_r = carry + g_reads M (R, N).
        mem_d_read_weights(carry, g_reads, m, d_sim, R, W, N);
        // Softmax backward, key strength, and d cos / |M_n|.
        for (int64_t r = 0; r < R; ++r) {
          T* dr = d_sim + r * N;
          const T* wrr = wr + r * N;
          const T sdot = dot(dr, wrr, N);
          for (int64_t i = 0; i < N; ++i) dr[i] = wrr[i] * (dr[i] - sdot);
          if (s.strength) {
            const T d_beta = dot(dr, cs + r * N, N);
            dc[RW + R + r] = d_beta * sigmoid(keys[RW + R + r]);
            const T bt = beta_p[tb * R + r];
            for (int64_t i = 0; i < N; ++i) dr[i] *= bt;
          }
          for (int64_t i = 0; i < N; ++i) dr[i] *= T(1) / mn[i];
        }
        // Through cos = (k_hat . M_n) / |M_n|: the norm's term per slot.
        std::fill(row_coef, row_coef + N, T(0));
        for (int64_t r = 0; r < R; ++r)
          for (int64_t i = 0; i < N; ++i) row_coef[i] += d_sim[r * N + i] * cs[r * N + i];
        for (int64_t i = 0; i < N; ++i) row_coef[i] *= mn[i] > eps ? -(T(1) / mn[i]) : T(0);
        // d k_hat, d M (the read at t), then through the write: d keys (ww part), d ww.
        mem_backward(m, dm, d_sim, row_coef, kh, g_reads, wr, ww, keys, d_k_hat, d_keys_ww, d_ww, R, W, N);
        // Key normalisation k_hat = k / |k| (no projection where the clamp was active).
        for (int64_t r = 0; r < R; ++r) {
          const T* dk = d_k_hat + r * W;
          const T* khr = kh + r * W;
          const T proj = kn[r] > eps ? dot(dk, khr, W) : T(0);
          const T inv = T(1) / kn[r];
          for (int64_t w = 0; w < W; ++w)
            d_keys[r * W + w] = (dk[w] - khr[w] * proj) * inv + d_keys_ww[r * W + w];
        }
        // ww = w_lu + alpha (w_r(t-1) - w_lu): d alpha, and d w_r(t-1) carried to step t-1.
        const T* wr_prev = t > 0 ? w_read_p + ((t - 1) * B + b) * R * N : nullptr;
        for (int64_t r = 0; r < R; ++r) {
          T* span = gspan + r * N;
          if (wr_prev)
            std::memcpy(span, wr_prev + r * N, sizeof(T) * N);
          else
            std::fill(span, span + N, T(0));
          for (int64_t j = 0; j < R; ++j) span[lub[j]] -= T(1);
          const T* dwr = d_ww + r * N;
          const T d_alpha = dot(dwr, span, N);
          T* cr = carry + r * N;
          for (int64_t i = 0; i < N; ++i) cr[i] = dwr[i] * alpha[r];
          dc[RW + r] = d_alpha * (alpha[r] * (T(1) - alpha[r]));
        }
        if (t > 0) {  // the zeroed slot passes no gradient to M_{t-1}
          const int64_t zero = lub[0];
          for (int64_t w = 0; w < W; ++w) dm[w * N + zero] -= dm[w * N + zero];
        }
        for (int64_t j = 0; j < RW; ++j) dc[j] = d_keys[j] * (T(1) - keys[j] * keys[j]);
      }
      // d h = g_h + d_ctrl w_ctrl, then the LSTM cell.
      for (int64_t b = b0; b < b1; ++b) std::memcpy(d_h_p + b * H, g_p + b * F, sizeof(T) * H);
      step_gemm(nb, H, C, static_cast<const T*>(d_ctrl_p + (t * B + b0) * C), C, w_ctrl_p, H, true, d_h_p + b0 * H, H);
      const T* act = acts_p + t * B * 4 * H;
      const T* tc = tanh_c_p + t * B * H;
      const T* c_prev = cells_p + t * B * H;
      T* dp = d_pre_p + t * B * 4 * H;
      for (int64_t b = b0; b < b1; ++b) {
        const T* a = act + b * 4 * H;
        const T* tcb = tc + b * H;
        const T* cp = c_prev + b * H;
        const T* dh = d_h_p + b * H;
        T* dcell = d_cell_p + b * H;
        T* d = dp + b * 4 * H;
        for (int64_t j = 0; j < H; ++j) {
          const T si = a[j], sf = a[H + j], tg = a[2 * H + j], so = a[3 * H + j], th = tcb[j];
          const T dcj = dcell[j] + dh[j] * (so * (T(1) - th * th));
          d[j] = dcj * (tg * (si * (T(1) - si)));
          d[H + j] = dcj * (cp[j] * (sf * (T(1) - sf)));
          d[2 * H + j] = dcj * (si * (T(1) - tg * tg));
          d[3 * H + j] = dh[j] * (th * (so * (T(1) - so)));
          dcell[j] = dcj * sf;
        }
      }
      if (t > 0) {  // g = d [h, r]_{t-1} = grad_out[t-1] + d_pre w_rec
        std::memcpy(g_p + b0 * F, go_p + ((t - 1) * B + b0) * F, sizeof(T) * nb * F);
        step_gemm(nb, F, 4 * H, static_cast<const T*>(dp + b0 * 4 * H), 4 * H, w_rec_p, F, true, g_p + b0 * F, F);
      }
    }
  });
  // Weight gradients: one matmul each over all (time * batch) rows.
  const int64_t rows = T_ * B;
  Tensor d_w_rec = at::empty({4 * H, F}, opts), d_w_ctrl = at::empty({C, H}, opts);
  gemm<T>(true, false, 4 * H, F, rows, T(1), d_pre_p, 4 * H, hr_p, F, T(0), d_w_rec.data_ptr<T>(), F);
  gemm<T>(true, false, C, H, rows, T(1), d_ctrl_p, C, hr_p + B * F, F, T(0), d_w_ctrl.data_ptr<T>(), H);
  Tensor d_b_ctrl = d_ctrl.view({rows, C}).sum(0);
  return {d_pre, d_w_rec, d_w_ctrl, d_b_ctrl};
}

// ---------------------------------------------------------------------------------------
// Entry points.

void check_inputs(const Tensor& gates_in, const Tensor& w_rec, const Tensor& w_ctrl, const Tensor& b_ctrl,
                  const Sizes& s) {
  TORCH_CHECK(gates_in.device().is_cpu(), "lrua: CPU tensors only");
  TORCH_CHECK(gates_in.scalar_type() == at::kFloat || gates_in.scalar_type() == at::kDouble,
              "lrua: float32 or float64 only");
  for (const Tensor* x : {&w_rec, &w_ctrl, &b_ctrl})
    TORCH_CHECK(x->scalar_type() == gates_in.scalar_type() && x->device().is_cpu() && x->is_contiguous(),
                "lrua: weights must be contiguous CPU tensors of the inputs' dtype");
  TORCH_CHECK(gates_in.dim() == 3 && gates_in.is_contiguous() && gates_in.size(2) % 4 == 0, "lrua: gates_in (T, B, 4H)");
  TORCH_CHECK(s.R >= 1 && s.R <= 64 && s.R <= s.N && s.W >= 1 && s.RW == s.R * s.W, "lrua: bad head/slot sizes");
  TORCH_CHECK(w_rec.dim() == 2 && w_rec.size(0) == 4 * s.H && w_rec.size(1) == s.F, "lrua: w_rec (4H, H + R*W)");
  TORCH_CHECK(w_ctrl.dim() == 2 && w_ctrl.size(1) == s.H && b_ctrl.numel() == s.C, "lrua: w_ctrl (C, H), b_ctrl (C)");
}

std::vector<Tensor> lrua_forward(const Tensor& gates_in, const Tensor& w_rec, const Tensor& w_ctrl,
                                 const Tensor& b_ctrl, int64_t slots, int64_t heads, double decay, bool strength,
                                 bool store, int64_t segment, double eps, double init) {
  const Sizes s = sizes_of(gates_in, w_ctrl, slots, heads, strength);
  check_inputs(gates_in, w_rec, w_ctrl, b_ctrl, s);
  TORCH_CHECK(segment >= 1, "lrua: segment >= 1");
  if (gates_in.scalar_type() == at::kDouble)
    return forward_impl<double>(gates_in, w_rec, w_ctrl, b_ctrl, s, decay, store, segment, eps, init);
  return forward_impl<float>(gates_in, w_rec, w_ctrl, b_ctrl, s, decay, store, segment, eps, init);
}

std::vector<Tensor> lrua_backward(const Tensor& grad_out, const Tensor& w_rec, const Tensor& w_ctrl,
                                  at::TensorList saved, int64_t slots, int64_t heads, bool strength, int64_t segment,
                                  double eps) {
  TORCH_CHECK(saved.size() == 14, "lrua_backward: the 14 tensors lrua_forward stored");
  const Tensor& acts = saved[2];
  const Sizes s = sizes_of(acts, w_ctrl, slots, heads, strength);  // acts (T, B, 4H) as gates_in
  check_inputs(acts, w_rec, w_ctrl, saved[4][0][0], s);
  TORCH_CHECK(grad_out.is_contiguous() && grad_out.scalar_type() == acts.scalar_type() &&
                  grad_out.size(0) == s.T && grad_out.size(1) == s.B && grad_out.size(2) == s.F,
              "lrua_backward: grad_out (T, B, H + R*W), contiguous");
  std::vector<Tensor> tensors(saved.begin(), saved.end());
  if (acts.scalar_type() == at::kDouble) return backward_impl<double>(grad_out, w_rec, w_ctrl, tensors, s, segment, eps);
  return backward_impl<float>(grad_out, w_rec, w_ctrl, tensors, s, segment, eps);
}

bool set_aten_gemm(bool on) {  // tests: the at::addmm_out branch of gemm(); returns the old value
  const bool old = g_force_aten_gemm;
  g_force_aten_gemm = on;
  return old;
}

bool set_step_gemm(bool on) {  // timing and tests: the register-blocked per-step matmuls; returns the old value
  const bool old = g_small_gemm;
  g_small_gemm = on;
  return old;
}

bool has_blas() { return sgemm_ != nullptr && dgemm_ != nullptr; }

}  // namespace

TORCH_LIBRARY(fewshot_mann_lrua, m) {
  m.def("forward(Tensor gates_in, Tensor w_rec, Tensor w_ctrl, Tensor b_ctrl, int slots, int heads, float decay, "
        "bool strength, bool store, int segment, float eps, float init) -> Tensor[]",
        &lrua_forward);
  m.def("backward(Tensor grad_out, Tensor w_rec, Tensor w_ctrl, Tensor[] saved, int slots, int heads, "
        "bool strength, int segment, float eps) -> Tensor[]",
        &lrua_backward);
  m.def("set_aten_gemm(bool on) -> bool", &set_aten_gemm);
  m.def("has_blas() -> bool", &has_blas);
  m.def("set_step_gemm(bool on) -> bool", &set_step_gemm);
}
