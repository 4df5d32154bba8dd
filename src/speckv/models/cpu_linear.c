/* speckv: y = x W^T (+ b) for a bf16 or float32 weight on an AVX2 + FMA CPU (models/cpu_linear.py says why).
 *
 * x: k x d, W: n x d, b: n or NULL, y: k x n, d % 8 == 0; all bf16 (raw uint16) in speckv_linear_bf16,
 * all float32 in speckv_linear_f32. bf16 activations are widened to float32 once per call and each
 * output is rounded once to bf16 (nearest even, as torch rounds), here rather than as torch ops
 * around every call. A tile is 4 weight rows against up to 3 activation rows: 12 accumulators, 3
 * activation and 1 weight register of the 16. Each weight row is read from memory once (the tiles of
 * later activation rows find it in cache), a bf16 one widened to float32 in registers (a bf16 is the
 * top half of a float32). Every output is the same 8-lane sum in the same order whatever k is, so a
 * row's result does not depend on the rows batched with it. */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0; /* NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline __m256 load8(const void *w, size_t at, const int f32) {
    if (f32) return _mm256_loadu_ps((const float *)w + at);
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + at)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* weight rows j .. j + 3 (the last row repeated past n) against m activation rows; m and f32 are
 * constants at each call, so the compiler keeps the tile in registers and drops the other type */
static inline __attribute__((always_inline)) void tile(const float *x, const void *w, const void *b, void *y,
                                                       int j, int n, int d, const int m, const int f32) {
    size_t rows[4];
    __m256 acc[4][3];
    for (int r = 0; r < 4; r++) {
        rows[r] = (size_t)(j + r < n ? j + r : n - 1) * d;
        for (int i = 0; i < m; i++) acc[r][i] = _mm256_setzero_ps();
    }
    for (int t = 0; t < d; t += 8) {
        __m256 xv[3];
        for (int i = 0; i < m; i++) xv[i] = _mm256_loadu_ps(x + (size_t)i * d + t);
        for (int r = 0; r < 4; r++) {
            __m256 v = load8(w, rows[r] + t, f32);
            for (int i = 0; i < m; i++) acc[r][i] = _mm256_fmadd_ps(v, xv[i], acc[r][i]);
        }
    }
    for (int r = 0; r < 4 && j + r < n; r++) {
        float bias = !b ? 0.0f : f32 ? ((const float *)b)[j + r] : bf16_to_float(((const uint16_t *)b)[j + r]);
        for (int i = 0; i < m; i++) {
            float v = hsum(acc[r][i]) + bias;
            if (f32) ((float *)y)[(size_t)i * n + j + r] = v;
            else ((uint16_t *)y)[(size_t)i * n + j + r] = float_to_bf16(v);
        }
    }
}

/* the tiles of one product; F32 a literal, so each entry point gets its own specialized loop (an
 * OpenMP region is outlined into a function of its own, where a variable flag would stay a branch) */
#define PRODUCT(x, w, b, y, k, n, d, threads, F32, OUT)                                        \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                          \
    for (int j = 0; j < (n); j += 4) {                                                          \
        for (int i0 = 0; i0 < (k); i0 += 3) {                                                   \
            const float *xi = (x) + (size_t)i0 * (d);                                           \
            OUT *yi = (y) + (size_t)i0 * (n);                                                   \
            switch ((k) - i0 < 3 ? (k) - i0 : 3) {                                              \
                case 1: tile(xi, w, b, yi, j, n, d, 1, F32); break;                             \
                case 2: tile(xi, w, b, yi, j, n, d, 2, F32); break;                             \
                default: tile(xi, w, b, yi, j, n, d, 3, F32); break;                            \
            }                                                                                   \
        }                                                                                       \
    }

/* returns 0, or -1 when the activations' float32 copy cannot be allocated (nothing written) */
int speckv_linear_bf16(const uint16_t *xh, const uint16_t *w, const uint16_t *b, uint16_t *y, int k, int n, int d,
                       int threads) {
    float *x = malloc((size_t)k * d * sizeof(float));
    if (!x) return -1;
    for (size_t i = 0; i < (size_t)k * d; i++) x[i] = bf16_to_float(xh[i]);
    PRODUCT(x, w, b, y, k, n, d, threads, 0, uint16_t)
    free(x);
    return 0;
}

int speckv_linear_f32(const float *x, const float *w, const float *b, float *y, int k, int n, int d, int threads) {
    PRODUCT(x, w, b, y, k, n, d, threads, 1, float)
    return 0;
}
