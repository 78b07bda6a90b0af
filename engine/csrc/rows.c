/* Row-wise passes of an 8-bit model's step on the CPU, each row whole on one thread, with the
 * same operations in the same order whatever the batch holds (a row's result does not depend
 * on its batch-mates, bitwise):
 *
 * - rows_rms_norm: T5's layer norm (RMS, no mean, no bias): out = w * x / sqrt(mean(x^2) + eps),
 *   where torch's rms_norm on the CPU is a composite of six ops (37 calls a step);
 * - rows_scale: each row's largest magnitude m (at least the smallest normal float; NaN where
 *   the row holds one) and x / m, bitwise what engine/rowint8.py's torch ops give (abs, amax,
 *   clamp, an IEEE division), in one pass instead of four (73 calls a step);
 * - rows_rescale: x *= m, each row by its own m (torch's `mul_`, bitwise), after the product.
 *
 * A pass runs on `threads` threads only when it is large (an encoder pass): at a decoder step's
 * few rows, waking the other threads and waiting for them at the end cost more than the pass
 * (torch parallelizes an elementwise op from 32768 elements, 16 rows of a fused product).
 *
 * rows is every position of the input (a batch's rows times their positions), width the last
 * axis; all arrays are packed fp32. */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>

#include "simd.h"

/* Below this many elements a pass stays on the calling thread. */
#define PARALLEL_FROM (1L << 18)

static void rms_row(const float *x, const float *w, float *out, int width, float eps) {
    vf acc = ZERO();
    int i = 0;
    for (; i + L <= width; i += L) {
        const vf a = LOADF(x + i);
        acc = FMA(a, a, acc);
    }
    float sum = hsum(acc);
    for (; i < width; i++) sum = fmaf(x[i], x[i], sum);
    const float scale = 1.0f / sqrtf(sum / (float)width + eps);
    const vf s = SET1(scale);
    for (i = 0; i + L <= width; i += L) STOREF(out + i, MUL(LOADF(w + i), MUL(LOADF(x + i), s)));
    for (; i < width; i++) out[i] = w[i] * (x[i] * scale);
}

void rows_rms_norm(const float *x, const float *w, float *out, long rows, int width, float eps,
                   int threads) {
#pragma omp parallel for num_threads(threads) if (threads > 1 && rows * width >= PARALLEL_FROM) schedule(static)
    for (long r = 0; r < rows; r++) rms_row(x + r * width, w, out + r * width, width, eps);
}

static void scale_row(const float *x, float *scaled, float *peak, int width) {
    vf top = ZERO();
    int i = 0, nan = 0; /* a NaN makes torch's amax NaN, and every x / m with it */
#if defined(__AVX512F__)
    __mmask16 unordered = 0;
    for (; i + L <= width; i += L) {
        const vf a = LOADF(x + i);
        unordered |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
        top = MAXV(top, _mm512_abs_ps(a));
    }
    nan = unordered != 0;
#else
    const vf sign = SET1(-0.0f);
    __m256 unordered = _mm256_setzero_ps();
    for (; i + L <= width; i += L) {
        const vf a = LOADF(x + i);
        unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
        top = MAXV(top, _mm256_andnot_ps(sign, a));
    }
    nan = _mm256_movemask_ps(unordered) != 0;
#endif
    float m = hmax(top);
    for (; i < width; i++) {
        nan |= isnan(x[i]);
        m = fmaxf(m, fabsf(x[i]));
    }
    if (nan)
        m = NAN;
    else if (m < FLT_MIN)
        m = FLT_MIN; /* an all-zero row: zeros in, zeros out */
    *peak = m;
    if (!scaled) return;
#if defined(__AVX512F__)
    const vf d = SET1(m);
    for (i = 0; i + L <= width; i += L) STOREF(scaled + i, _mm512_div_ps(LOADF(x + i), d));
#else
    const vf d = SET1(m);
    for (i = 0; i + L <= width; i += L) STOREF(scaled + i, _mm256_div_ps(LOADF(x + i), d));
#endif
    for (; i < width; i++) scaled[i] = x[i] / m;
}

void rows_scale(const float *x, float *scaled, float *peak, long rows, int width, int threads) {
#pragma omp parallel for num_threads(threads) if (threads > 1 && rows * width >= PARALLEL_FROM) schedule(static)
    for (long r = 0; r < rows; r++) scale_row(x + r * width, scaled + r * width, peak + r, width);
}

static void rescale_row(float *x, float m, int width) {
    const vf s = SET1(m);
    int i = 0;
    for (; i + L <= width; i += L) STOREF(x + i, MUL(LOADF(x + i), s));
    for (; i < width; i++) x[i] *= m;
}

void rows_rescale(float *x, const float *peak, long rows, int width, int threads) {
#pragma omp parallel for num_threads(threads) if (threads > 1 && rows * width >= PARALLEL_FROM) schedule(static)
    for (long r = 0; r < rows; r++) rescale_row(x + r * width, peak[r], width);
}

/* For oneDNN's int8 product (engine/rowint8.py, OnednnPacked): each row's largest magnitude m
 * (as rows_scale), the row on the fixed 7-bit grid, q = round(x / m * 63) + 64 in [1, 127]
 * (rounded half to even), and m / 63, what the product's integer sums are multiplied by. A row
 * holding NaN gets q = 64 (zero) and a NaN factor: NaN out, as in torch. */
static void quantize_row(const float *x, uint8_t *q, float *factor, int width) {
    float m;
    scale_row(x, 0, &m, width); /* the peak alone: scaled is not written */
    if (isnan(m)) {
        for (int i = 0; i < width; i++) q[i] = 64;
        *factor = NAN;
        return;
    }
    int i = 0;
#if defined(__AVX512F__)
    const vf d = SET1(m), steps = SET1(63.0f), low = SET1(-63.0f), zero = SET1(64.0f);
    for (; i + L <= width; i += L) {
        vf v = ROUND(MUL(_mm512_div_ps(LOADF(x + i), d), steps));
        v = ADD(_mm512_min_ps(MAXV(v, low), steps), zero);
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
    }
#endif
    for (; i < width; i++) { /* the same operations, one lane */
        const float v = nearbyintf((x[i] / m) * 63.0f);
        q[i] = (uint8_t)(int)(fminf(fmaxf(v, -63.0f), 63.0f) + 64.0f);
    }
    *factor = m * (1.0f / 63.0f);
}

void rows_quantize(const float *x, uint8_t *q, float *factor, long rows, int width, int threads) {
#pragma omp parallel for num_threads(threads) if (threads > 1 && rows * width >= PARALLEL_FROM) schedule(static)
    for (long r = 0; r < rows; r++) quantize_row(x + r * width, q + r * width, factor + r, width);
}
