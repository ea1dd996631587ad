/*
 * AVX2 INT4 / INT8 weight kernels for ChatGLM-6B on CPU (plain C, only Python.h).
 *
 * INT4 packed layout (must match cpu.py):
 *   data[S][T][C][R][32] uint8: S = K/SEGK segments of SEGK inputs (SEGK = 4096 when
 *   K % 4096 == 0, else K), T = ceil(N/R) row tiles, C = SEGK/64 chunks, R = 4 rows.
 *   Byte j of (segment s, tile t, chunk c, row r) holds q[tR+r][s*SEGK+64c+j]+8 in
 *   its low nibble and q[tR+r][s*SEGK+64c+32+j]+8 in its high nibble; rows past N
 *   are zero padding.  Interleaving 4 rows lets one activation load serve 4 rows;
 *   each thread streams one contiguous block per segment (hardware prefetch does
 *   the rest; software prefetch measured slower); segments keep the 4 KB of int8
 *   activations in L1 (without them K = 16384 ran ~40 % slower than K = 4096:
 *   the weight stream evicted them).
 * Activations are quantised per 32 values (q8_0 style: int8 + one float scale).
 * The dot product uses unsigned nibbles u = q + 8 directly with maddubs:
 *   sum(q*x) = sum(u*x) - 8*sum(x), and the 8*sum(x) term depends only on the
 *   activations, so it is computed once per call per group, not per row.
 * All pointers arrive as Python ints; sizes are validated in cpu.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#define R 4      /* rows per tile */
#define CH 64    /* inputs per packed chunk (32 bytes per row) */
#define QB 32    /* activation quantisation block */

/* Quantised activations: row m at q + m*ldq (int8), d + m*ldd (block scales);
 * corr[M][G] = sum over the group's blocks of d_b * sum(q_b).  The row strides are
 * padded by 64 bytes: with K = 16384 an unpadded 16 KB stride would map the same
 * chunk of every row to one L1 set (8 ways) in the small-M GEMM. */
typedef struct { int8_t *q; float *d; float *corr; int64_t ldq, ldd; void *mem; } qact_t;

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int hsum8i(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* 32 floats -> 32 int8 (round to nearest), returns the scale, *sum = sum(q). */
static inline float quant_block(const float *x, int8_t *q, int *sum) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 v[4], mx = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        mx = _mm256_max_ps(mx, _mm256_and_ps(v[i], absmask));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    float amax = _mm_cvtss_f32(m);
    __m256 id = _mm256_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
    __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v[0], id));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v[1], id));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v[2], id));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v[3], id));
    *sum = hsum8i(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
    /* packs work per 128-bit lane; the permute restores linear order */
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, p);
    return amax / 127.f;
}

/* group_size == 0: no correction terms (int8 weights are signed). */
static int quant_act(const float *x, int64_t M, int64_t K, int64_t group, qact_t *a) {
    int64_t nb = K / QB, G = group ? K / group : 0, bpg = group / QB;
    a->ldq = K + 64;
    a->ldd = nb + 16;
    size_t qbytes = (size_t)(M * a->ldq);
    a->mem = aligned_alloc(64, qbytes + sizeof(float) * (size_t)(M * a->ldd + M * G + 16));
    if (!a->mem) return -1;
    a->q = (int8_t *)a->mem;
    a->d = (float *)((char *)a->mem + qbytes);
    a->corr = a->d + M * a->ldd;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t b = 0; b < nb; b++) {
            int s;
            float d = quant_block(x + m * K + b * QB, a->q + m * a->ldq + b * QB, &s);
            a->d[m * a->ldd + b] = d;
            if (G) {
                float *c = &a->corr[m * G + b / bpg];
                *c = (b % bpg ? *c : 0.f) + d * (float)s;
            }
        }
    }
    return 0;
}

static inline float dot_f(const float *a, const float *b, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = hsum8(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* integer dot of 32 unsigned nibbles with 32 int8 activations, as 8 float lanes */
static inline __m256 dot32(__m256i u, __m256i x) {
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)));
}

/* One tile of 4 rows against one activation row over chunks [c0, c1) (global chunk
 * indices; w points at chunk c0 of the tile); adds to acc[r].  sw[r] = scales of
 * row r.  Groups that are multiples of 64: accumulate with the activation scales
 * inside a group, apply the weight scale once per group. */
static void tile_int4_grouped(const uint8_t *w, const int8_t *xq, const float *xd, const float *const sw[R],
                              int64_t cpg, int64_t c0, int64_t c1, __m256 acc[R]) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    w -= c0 * (R * 32);
    for (int64_t c = c0; c < c1;) {
        const int64_t g = c / cpg, ce = (g + 1) * cpg < c1 ? (g + 1) * cpg : c1;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (; c < ce; c++) {
            const uint8_t *wc = w + c * (R * 32);
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + c * CH));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + c * CH + 32));
            __m256 s0 = _mm256_broadcast_ss(xd + 2 * c), s1 = _mm256_broadcast_ss(xd + 2 * c + 1);
#define ROW(r, a)                                                                               \
    {                                                                                           \
        __m256i v = _mm256_loadu_si256((const __m256i *)(wc + 32 * r));                        \
        a = _mm256_fmadd_ps(dot32(_mm256_and_si256(v, m4), x0), s0, a);                         \
        a = _mm256_fmadd_ps(dot32(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), x1), s1, a);   \
    }
            ROW(0, a0) ROW(1, a1) ROW(2, a2) ROW(3, a3)
#undef ROW
        }
        acc[0] = _mm256_fmadd_ps(a0, _mm256_set1_ps(sw[0][g]), acc[0]);
        acc[1] = _mm256_fmadd_ps(a1, _mm256_set1_ps(sw[1][g]), acc[1]);
        acc[2] = _mm256_fmadd_ps(a2, _mm256_set1_ps(sw[2][g]), acc[2]);
        acc[3] = _mm256_fmadd_ps(a3, _mm256_set1_ps(sw[3][g]), acc[3]);
    }
}

/* Groups that are odd multiples of 32 (e.g. 32): combine the two scales per block. */
static void tile_int4_blocks(const uint8_t *w, const int8_t *xq, const float *xd, const float *const sw[R],
                             int64_t bpg, int64_t c0, int64_t c1, __m256 acc[R]) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    w -= c0 * (R * 32);
    for (int64_t c = c0; c < c1; c++) {
        const uint8_t *wc = w + c * (R * 32);
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + c * CH));
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + c * CH + 32));
        const int64_t g0 = (2 * c) / bpg, g1 = (2 * c + 1) / bpg;
        for (int r = 0; r < R; r++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(wc + 32 * r));
            __m256 s0 = _mm256_set1_ps(xd[2 * c] * sw[r][g0]), s1 = _mm256_set1_ps(xd[2 * c + 1] * sw[r][g1]);
            acc[r] = _mm256_fmadd_ps(dot32(_mm256_and_si256(v, m4), x0), s0, acc[r]);
            acc[r] = _mm256_fmadd_ps(dot32(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), x1), s1, acc[r]);
        }
    }
}

/* Split `ntiles` into contiguous per-thread ranges: each thread streams one block. */
#define THREAD_RANGE(ntiles, lo, hi)                                      \
    int64_t lo = (ntiles) * omp_get_thread_num() / omp_get_num_threads(); \
    int64_t hi = (ntiles) * (omp_get_thread_num() + 1) / omp_get_num_threads();

/* Activation rows per pass: MB segments of 4 KB of int8 activations stay in L2
 * while the weights stream once per pass. */
#define MB 64

static inline int64_t seg_len(int64_t K) { return K % 4096 == 0 ? 4096 : K; }

/* Every thread owns the same rows in every segment, so y is accumulated without
 * synchronisation: segment 0 writes bias - correction + partial, later ones add. */
static void int4_mm(int64_t M, int64_t K, const uint8_t *w, const float *scales, int64_t N, int64_t group,
                    float *y, const float *bias, int nt, const qact_t *a) {
    const int64_t T = (N + R - 1) / R, G = K / group, SK = seg_len(K), CS = SK / CH;
    const int grouped = group % CH == 0;
#pragma omp parallel num_threads(nt)
    {
        THREAD_RANGE(T, lo, hi)
        for (int64_t m0 = 0; m0 < M; m0 += MB)
        for (int64_t s = 0; s < K / SK; s++) {
            const uint8_t *ws = w + s * T * R * (SK / 2);
            for (int64_t t = lo; t < hi; t++) {
                const float *sw[R];
                for (int r = 0; r < R; r++) sw[r] = scales + (t * R + r < N ? t * R + r : N - 1) * G;
                for (int64_t m = m0; m < M && m < m0 + MB; m++) {  /* the tile's 8 KB stay in L1 */
                    const int8_t *xq = a->q + m * a->ldq;
                    const float *xd = a->d + m * a->ldd;
                    __m256 acc[R] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
                    const uint8_t *wt = ws + t * R * (SK / 2);
                    if (grouped) tile_int4_grouped(wt, xq, xd, sw, group / CH, s * CS, (s + 1) * CS, acc);
                    else tile_int4_blocks(wt, xq, xd, sw, group / QB, s * CS, (s + 1) * CS, acc);
                    for (int r = 0; r < R && t * R + r < N; r++) {
                        const int64_t n = t * R + r;
                        float *dst = y + m * N + n;
                        if (s == 0)  /* sum(q*x) = sum(u*x) - 8*sum(x), see the top of the file */
                            *dst = (bias ? bias[n] : 0.f) - 8.f * dot_f(sw[r], a->corr + m * G, G);
                        *dst += hsum8(acc[r]);
                    }
                }
            }
        }
    }
}

/* One int8 row against int8 activations.  maddubs needs one unsigned operand, so
 * use |w| and sign(x, w) (products stay within int16).  One row at a time beat 2-,
 * 4- and 8-row tiles on the 130528 x 4096 lm_head (a single stream per thread);
 * two accumulators shorten the FMA dependency chain. */
static inline __m256 dot32_s8(const int8_t *w, const int8_t *xq) {
    __m256i x = _mm256_loadu_si256((const __m256i *)xq), v = _mm256_loadu_si256((const __m256i *)w);
    __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(x, v));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

static float row_int8(const int8_t *w, const int8_t *xq, const float *xd, int64_t K) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= K / QB; b += 2) {
        a0 = _mm256_fmadd_ps(dot32_s8(w + b * QB, xq + b * QB), _mm256_broadcast_ss(xd + b), a0);
        a1 = _mm256_fmadd_ps(dot32_s8(w + b * QB + QB, xq + b * QB + QB), _mm256_broadcast_ss(xd + b + 1), a1);
    }
    if (b < K / QB) a0 = _mm256_fmadd_ps(dot32_s8(w + b * QB, xq + b * QB), _mm256_broadcast_ss(xd + b), a0);
    return hsum8(_mm256_add_ps(a0, a1));
}

static void int8_mm(int64_t M, int64_t K, const int8_t *w, const float *scales, int64_t N, float *y,
                    const float *bias, int nt, const qact_t *a) {
#pragma omp parallel num_threads(nt)
    {
        THREAD_RANGE(N, lo, hi)
        for (int64_t n = lo; n < hi; n++)
            for (int64_t m = 0; m < M; m++)  /* the row (K bytes) stays in L1 across m */
                y[m * N + n] = row_int8(w + n * K, a->q + m * a->ldq, a->d + m * a->ldd, K) * scales[n] +
                               (bias ? bias[n] : 0.f);
    }
}

/* 8 int8 -> 8 floats times s, stored (streaming when aligned: the scratch is
 * far larger than cache and is read back by sgemm, so skip read-for-ownership). */
static inline void store8(float *dst, __m128i q8, __m256 s, int stream) {
    __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8)), s);
    if (stream) _mm256_stream_ps(dst, f); else _mm256_storeu_ps(dst, f);
}

static void int4_dequant(const uint8_t *w, const float *scales, int64_t N, int64_t K, int64_t group,
                         float *out, int nt) {
    const int64_t T = (N + R - 1) / R, G = K / group, bpg = group / QB, SK = seg_len(K), CS = SK / CH;
    const int stream = ((uintptr_t)out & 31) == 0;
    const __m256i m4 = _mm256_set1_epi8(0x0f), eight = _mm256_set1_epi8(8);
#pragma omp parallel num_threads(nt)
    {
        THREAD_RANGE(T, lo, hi)
        for (int64_t s = 0; s < K / SK; s++)
            for (int64_t t = lo; t < hi; t++)
                for (int64_t c = 0; c < CS; c++)
                    for (int r = 0; r < R && t * R + r < N; r++) {
                        const int64_t n = t * R + r, c_glob = s * CS + c;
                        const uint8_t *src = w + ((s * T + t) * CS + c) * (R * 32) + 32 * r;
                        __m256i v = _mm256_loadu_si256((const __m256i *)src);
                        __m256i h[2] = {_mm256_sub_epi8(_mm256_and_si256(v, m4), eight),
                                        _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), eight)};
                        for (int k = 0; k < 2; k++) {
                            __m256 sc = _mm256_set1_ps(scales[n * G + (2 * c_glob + k) / bpg]);
                            float *dst = out + n * K + c_glob * CH + 32 * k;
                            __m128i l = _mm256_castsi256_si128(h[k]), u = _mm256_extracti128_si256(h[k], 1);
                            store8(dst, l, sc, stream);
                            store8(dst + 8, _mm_srli_si128(l, 8), sc, stream);
                            store8(dst + 16, u, sc, stream);
                            store8(dst + 24, _mm_srli_si128(u, 8), sc, stream);
                        }
                    }
        _mm_sfence();
    }
}

/* ---------------------------------------------------------------- AVX-512 BF16 level
 * Prefill on CPUs with AVX512_BF16 (Zen 4, Sapphire Rapids, Cooper Lake): rows [row0, row0 + rows) of an int4
 * weight unpacked to bfloat16 (q * scale, rounded to nearest even), for oneDNN's bf16 GEMM, which runs ~3.4x
 * faster than the int8-activation kernel above on such cores.  Compiled for those instructions alone (the rest
 * of the file stays AVX2), and only called after the CPU says it has them, so one build runs everywhere. */
#if defined(__GNUC__) && (__GNUC__ >= 10 || defined(__clang__))
#define HAVE_BF16_KERNEL 1
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void int4_dequant_bf16(const uint8_t *w, const float *scales, int64_t N, int64_t K, int64_t group,
                              uint16_t *out, int64_t row0, int64_t rows, int nt) {
    const int64_t T = (N + R - 1) / R, G = K / group, SK = seg_len(K), CS = SK / CH;
    const int64_t t0 = row0 / R, t1 = (row0 + rows + R - 1) / R;
    const __m256i m4 = _mm256_set1_epi8(0x0f), eight = _mm256_set1_epi8(8);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t t = t0; t < t1; t++)
        for (int64_t s = 0; s < K / SK; s++)
            for (int64_t c = 0; c < CS; c++)
                for (int r = 0; r < R; r++) {
                    const int64_t n = t * R + r, c_glob = s * CS + c;
                    if (n < row0 || n >= row0 + rows || n >= N) continue;
                    const uint8_t *src = w + ((s * T + t) * CS + c) * (R * 32) + 32 * r;
                    __m256i v = _mm256_loadu_si256((const __m256i *)src);
                    __m256i h[2] = {_mm256_sub_epi8(_mm256_and_si256(v, m4), eight),
                                    _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), eight)};
                    for (int k = 0; k < 2; k++) {  /* 32 inputs: one group (groups are multiples of 32) */
                        const int64_t first = c_glob * CH + 32 * k;
                        __m512 sc = _mm512_set1_ps(scales[n * G + first / group]);
                        __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(h[k]))), sc);
                        __m512 hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(h[k], 1))), sc);
                        _mm512_storeu_si512((void *)(out + (n - row0) * K + first), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
                    }
                }
}
#endif

/* Streams n bytes (a multiple of 128) with 4 independent accumulators per thread: the memory-read bandwidth
 * probe of `chatglm bench`, the same way our GEMV kernels read weights. Returns a checksum so the loads stay. */
static int64_t stream_read(const uint8_t *p, int64_t n, int nt) {
    int64_t total = 0;
#pragma omp parallel num_threads(nt) reduction(+ : total)
    {
        const int64_t blocks = n / 128;
        THREAD_RANGE(blocks, lo, hi)
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t b = lo; b < hi; b++) {
            const __m256i *q = (const __m256i *)(p + b * 128);
            a0 = _mm256_xor_si256(a0, _mm256_loadu_si256(q));
            a1 = _mm256_xor_si256(a1, _mm256_loadu_si256(q + 1));
            a2 = _mm256_xor_si256(a2, _mm256_loadu_si256(q + 2));
            a3 = _mm256_xor_si256(a3, _mm256_loadu_si256(q + 3));
        }
        __m256i a = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
        total += _mm256_extract_epi64(a, 0) + _mm256_extract_epi64(a, 3);
    }
    return total;
}

/* ---------------------------------------------------------------- Python glue */

#define PTR(v) ((void *)(uintptr_t)(v))

static PyObject *py_int4_mm(PyObject *self, PyObject *args) {
    unsigned long long x, w, s, y, b;
    Py_ssize_t M, K, N, group;
    int nt, err;
    if (!PyArg_ParseTuple(args, "KnnKKnnKKi", &x, &M, &K, &w, &s, &N, &group, &y, &b, &nt)) return NULL;
    qact_t a;
    Py_BEGIN_ALLOW_THREADS
    err = quant_act(PTR(x), M, K, group, &a);
    if (!err) {
        int4_mm(M, K, PTR(w), PTR(s), N, group, PTR(y), PTR(b), nt, &a);
        free(a.mem);
    }
    Py_END_ALLOW_THREADS
    if (err) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_int8_mm(PyObject *self, PyObject *args) {
    unsigned long long x, w, s, y, b;
    Py_ssize_t M, K, N;
    int nt, err;
    if (!PyArg_ParseTuple(args, "KnnKKnKKi", &x, &M, &K, &w, &s, &N, &y, &b, &nt)) return NULL;
    qact_t a;
    Py_BEGIN_ALLOW_THREADS
    err = quant_act(PTR(x), M, K, 0, &a);
    if (!err) {
        int8_mm(M, K, PTR(w), PTR(s), N, PTR(y), PTR(b), nt, &a);
        free(a.mem);
    }
    Py_END_ALLOW_THREADS
    if (err) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_int4_dequant(PyObject *self, PyObject *args) {
    unsigned long long w, s, out;
    Py_ssize_t N, K, group;
    int nt;
    if (!PyArg_ParseTuple(args, "KKnnnKi", &w, &s, &N, &K, &group, &out, &nt)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    int4_dequant(PTR(w), PTR(s), N, K, group, PTR(out), nt);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_int4_dequant_bf16(PyObject *self, PyObject *args) {
    unsigned long long w, s, out;
    Py_ssize_t N, K, group, row0, rows;
    int nt;
    if (!PyArg_ParseTuple(args, "KKnnnKnni", &w, &s, &N, &K, &group, &out, &row0, &rows, &nt)) return NULL;
#ifdef HAVE_BF16_KERNEL
    Py_BEGIN_ALLOW_THREADS
    int4_dequant_bf16(PTR(w), PTR(s), N, K, group, PTR(out), row0, rows, nt);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
#else
    PyErr_SetString(PyExc_RuntimeError, "built without the AVX-512 BF16 kernel");
    return NULL;
#endif
}

/* Whether this build has the AVX-512 BF16 kernel and this CPU can run it (the OS saves the ZMM state too). */
static PyObject *py_has_bf16(PyObject *self, PyObject *args) {
#ifdef HAVE_BF16_KERNEL
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16"))
        Py_RETURN_TRUE;
#endif
    Py_RETURN_FALSE;
}

static PyObject *py_stream_read(PyObject *self, PyObject *args) {
    unsigned long long p;
    Py_ssize_t n;
    int nt;
    int64_t checksum;
    if (!PyArg_ParseTuple(args, "Kni", &p, &n, &nt)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    checksum = stream_read(PTR(p), n, nt);
    Py_END_ALLOW_THREADS
    return PyLong_FromLongLong(checksum);
}

static PyMethodDef methods[] = {
    {"stream_read", py_stream_read, METH_VARARGS,
     "stream_read(ptr, nbytes, nthreads): read nbytes (a multiple of 128) once; returns a checksum"},
    {"int4_mm", py_int4_mm, METH_VARARGS,
     "int4_mm(x, M, K, w, scales, N, group, y, bias_or_0, nthreads): y[M,N] = x[M,K] @ W^T (+ bias)"},
    {"int8_mm", py_int8_mm, METH_VARARGS,
     "int8_mm(x, M, K, w, scales, N, y, bias_or_0, nthreads): y[M,N] = x[M,K] @ W^T (+ bias)"},
    {"int4_dequant", py_int4_dequant, METH_VARARGS,
     "int4_dequant(w, scales, N, K, group, out, nthreads): out[N,K] = q * scale"},
    {"int4_dequant_bf16", py_int4_dequant_bf16, METH_VARARGS,
     "int4_dequant_bf16(w, scales, N, K, group, out, row0, rows, nthreads): out[rows,K] = bf16(q * scale)"},
    {"has_bf16", py_has_bf16, METH_NOARGS, "has_bf16(): whether the AVX-512 BF16 kernel runs on this CPU"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu", "AVX2 int4/int8 matmul kernels", -1, methods};

PyMODINIT_FUNC PyInit__cpu(void) { return PyModule_Create(&module); }
