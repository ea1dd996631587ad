/* Decode-step attention over a float16 KV cache, for the CPU (AVX2 + F16C + FMA).
 *
 * One new query per head attends to the T cached keys/values of that head. The cache is stored in float16 to
 * halve its memory; converting it to float32 for torch's attention would cost more than the attention itself,
 * so this kernel converts on the fly while streaming the cache once. Pointers arrive as integers from
 * tensor.data_ptr(); the GIL is released while computing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static inline __m256 load_f16(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* out[D] = softmax(scale * q . K[t]) @ V for t < T; K, V rows are D float16 values, `scores` holds T floats. */
static int attend_head(const float *q, const uint16_t *k, const uint16_t *v, long T, int D, float scale,
                       float *out) {
    float *scores = malloc(sizeof(float) * (size_t)T);
    __m256 acc[32]; /* D <= 256 */
    if (!scores) return -1;
    float maxv = -INFINITY;
    for (long t = 0; t < T; t++) {
        const uint16_t *kr = k + t * D;
        __m256 s = _mm256_setzero_ps();
        for (int d = 0; d < D; d += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load_f16(kr + d), s);
        float x = hsum256(s) * scale;
        scores[t] = x;
        if (x > maxv) maxv = x;
    }
    float sum = 0.f;
    for (long t = 0; t < T; t++) { scores[t] = expf(scores[t] - maxv); sum += scores[t]; }
    int blocks = D / 8;
    for (int b = 0; b < blocks; b++) acc[b] = _mm256_setzero_ps();
    for (long t = 0; t < T; t++) {
        const uint16_t *vr = v + t * D;
        __m256 w = _mm256_set1_ps(scores[t]);
        for (int b = 0; b < blocks; b++) acc[b] = _mm256_fmadd_ps(w, load_f16(vr + 8 * b), acc[b]);
    }
    __m256 inv = _mm256_set1_ps(1.f / sum);
    for (int b = 0; b < blocks; b++) _mm256_storeu_ps(out + 8 * b, _mm256_mul_ps(acc[b], inv));
    free(scores);
    return 0;
}

/* decode_f16(q, k, v, out, heads, T, D, head_stride, scale, threads)
 * q, out: float32 [heads, D]; k, v: float16, head h starts at h * head_stride elements, rows of D. */
static PyObject *decode_f16(PyObject *self, PyObject *args) {
    unsigned long long q, k, v, out;
    int heads, D, threads;
    long long T, head_stride;
    float scale;
    if (!PyArg_ParseTuple(args, "KKKKiLiLfi", &q, &k, &v, &out, &heads, &T, &D, &head_stride, &scale, &threads))
        return NULL;
    if (D % 8 || D > 256 || T < 1) {
        PyErr_SetString(PyExc_ValueError, "decode_f16 needs 1 <= T and a head size that is a multiple of 8, <= 256");
        return NULL;
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : failed)
    for (int h = 0; h < heads; h++) {
        failed |= attend_head((const float *)q + (long)h * D, (const uint16_t *)k + h * head_stride,
                              (const uint16_t *)v + h * head_stride, T, D, scale, (float *)out + (long)h * D);
    }
    Py_END_ALLOW_THREADS
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode_f16", decode_f16, METH_VARARGS, "Single-query attention over a float16 KV cache."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_attention", NULL, -1, methods};

PyMODINIT_FUNC PyInit__attention(void) { return PyModule_Create(&module); }
