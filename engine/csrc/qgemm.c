/* The int8 products of a decoder step's few rows on the CPU (engine/qgemm.py), with the
 * per-row activation grid of engine/rowint8.py:
 *     q[m][k]   = round(x[m][k] / peak[m] * inverse + 64) in [1, 127]   (peak: the row's
 *                 largest magnitude; inverse: 1 / (1/63) in float; one fused multiply-add)
 *     out[m][n] = ((float)(sum_k q[m][k] w[n][k] - 64 colsum[n]) * (grid * scale[n])) * peak[m]
 *                 (+ bias[n])
 * with w the per-channel int8 weight (out, in) and scale its per-channel scale: the operations,
 * in that order, of fbgemm's `linear_with_input_q_dq_qweight_dq_output_fp32` followed by the
 * row's rescaling, so the result is bitwise what that path gives (tested).
 *
 * Why: at a step's 1-32 rows the weights stream from memory once per step (124 MB on
 * flan-t5-base) and fbgemm's kernel, built for large inputs, neither keeps that stream at the
 * memory's speed nor overlaps it with the arithmetic (docs/engine.md, "The step's products").
 * Here the weights are packed in panels read as one contiguous stream, every row of a tile is
 * multiplied with each group of weights while they are in registers, and the row scaling, the
 * product and the rescaling are one call.
 *
 * Layout: a panel holds `width` output channels (32 on the VNNI path, 16 on AVX2: the path is
 * fixed for the process, qgemm_panel); for each group of 4 inputs (k4) its width * 4 bytes are
 * the channels' 4 weights each (channel-major within the group). VNNI: one `vpdpbusd` per 16
 * channels and row, tiles of up to 12 rows over the whole panel. AVX2: `vpmaddubsw` +
 * `vpmaddwd` per 8 channels and row (the grid's 7 bits keep the 16-bit pair sums from
 * saturating: 2 x 127 x 127 < 32768), tiles of up to 4 rows (the 16 registers) taken in turn
 * over each 4 KB chunk of a panel, so the later tiles find the chunk in L1 and the stream runs
 * on (with a software prefetch ahead) while they compute. Integer sums are exact, and every
 * other step is per row or per channel: a row's output does not depend on its batch-mates, the
 * tile it falls in, the order of the chunks or the thread count. Channels past `out` and inputs
 * past `in` are packed as zeros.
 */
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#define PANEL 32    /* output channels per panel (VNNI) */
#define TILE 12     /* rows multiplied with each loaded group of weights, at most (VNNI) */
#define HALF 16     /* output channels per panel (AVX2) */
#define AVX2_TILE 4 /* rows a tile (AVX2: 8 accumulators of the 16 registers) */
#define CHUNK 64    /* groups of a panel each tile goes over before the next tile (AVX2: 4 KB) */
#define BLOCK 32    /* rows whose sums one pass over a panel keeps (AVX2) */

static int use_vnni = -1;

/* Whether the AVX-512 VNNI path runs: in the AVX-512 build, on a CPU with VNNI (checked once;
 * a racing first check only writes the same value twice). The AVX2 build never takes it, so
 * its own path is what it tests, on any machine. */
static int vnni(void) {
#if defined(__AVX512F__)
    if (use_vnni < 0) {
        __builtin_cpu_init();
        use_vnni = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
    }
    return use_vnni;
#else
    return 0;
#endif
}

/* 1: AVX-512 VNNI, 2: AVX2 (for the wrapper's report). */
int qgemm_path(void) { return vnni() ? 1 : 2; }

/* Output channels per panel (the packed layout's, engine/rowint8.py's StepPacked reads it):
 * the path's, fixed for the process. */
int qgemm_panel(void) { return vnni() ? PANEL : HALF; }

long qgemm_packed_bytes(long out, long in) {
    const long width = qgemm_panel();
    return (out + width - 1) / width * width * ((in + 3) / 4 * 4);
}

/* w (out, in) int8 row-major into `packed` (qgemm_packed_bytes); colsum[n] = sum_k w[n][k] and
 * mult[n] = grid * scale[n] (in float, as fbgemm multiplies the sums by), each (out). */
void qgemm_pack(const int8_t *w, long out, long in, const float *scale, float grid,
                int8_t *packed, int32_t *colsum, float *mult) {
    const long width = qgemm_panel(), groups = (in + 3) / 4, panels = (out + width - 1) / width;
    for (long p = 0; p < panels; p++) {
        for (long g = 0; g < groups; g++) {
            int8_t *dst = packed + (p * groups + g) * width * 4;
            for (int c = 0; c < width; c++) {
                const long n = p * width + c;
                for (int j = 0; j < 4; j++) {
                    const long k = g * 4 + j;
                    dst[c * 4 + j] = (n < out && k < in) ? w[n * in + k] : 0;
                }
            }
        }
    }
    for (long n = 0; n < out; n++) {
        int32_t sum = 0;
        for (long k = 0; k < in; k++) sum += w[n * in + k];
        colsum[n] = sum;
        mult[n] = grid * scale[n];
    }
}

#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))
#define AVX2_TARGET __attribute__((target("avx2,fma")))

/* The row's largest magnitude over whole vectors (NaN noted); returns where it stopped. */
static VNNI_TARGET long peak_avx512(const float *x, long in, float *m, int *nan) {
    __m512 top = _mm512_setzero_ps();
    __mmask16 unordered = 0;
    long k = 0;
    for (; k + 16 <= in; k += 16) {
        const __m512 a = _mm512_loadu_ps(x + k);
        unordered |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
        top = _mm512_max_ps(top, _mm512_abs_ps(a));
    }
    *m = _mm512_reduce_max_ps(top);
    *nan = unordered != 0;
    return k;
}

/* q = round(x / m * inverse) + 64 over whole vectors; returns where it stopped. */
static VNNI_TARGET long grid_avx512(const float *x, long in, float m, float inverse, uint8_t *q) {
    const __m512 d = _mm512_set1_ps(m), s = _mm512_set1_ps(inverse);
    const __m512 low = _mm512_setzero_ps(), high = _mm512_set1_ps(255.0f);
    const __m512 zero = _mm512_set1_ps(64.0f);
    long k = 0;
    for (; k + 16 <= in; k += 16) {
        __m512 v = _mm512_fmadd_ps(_mm512_div_ps(_mm512_loadu_ps(x + k), d), s, zero);
        v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm512_min_ps(_mm512_max_ps(v, low), high);
        _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
    }
    return k;
}

/* The same three passes for AVX2 (8 lanes). */
static AVX2_TARGET long peak_avx2(const float *x, long in, float *m, int *nan) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 top = _mm256_setzero_ps(), unordered = _mm256_setzero_ps();
    long k = 0;
    for (; k + 8 <= in; k += 8) {
        const __m256 a = _mm256_loadu_ps(x + k);
        unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
        top = _mm256_max_ps(top, _mm256_andnot_ps(sign, a));
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, top);
    float best = 0.0f;
    for (int i = 0; i < 8; i++) best = fmaxf(best, lanes[i]);
    *m = best;
    *nan = _mm256_movemask_ps(unordered) != 0;
    return k;
}

static AVX2_TARGET long grid_avx2(const float *x, long in, float m, float inverse, uint8_t *q) {
    const __m256 d = _mm256_set1_ps(m), s = _mm256_set1_ps(inverse);
    const __m256 low = _mm256_setzero_ps(), high = _mm256_set1_ps(255.0f);
    const __m256 zero = _mm256_set1_ps(64.0f);
    long k = 0;
    for (; k + 8 <= in; k += 8) {
        __m256 v = _mm256_fmadd_ps(_mm256_div_ps(_mm256_loadu_ps(x + k), d), s, zero);
        v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm256_min_ps(_mm256_max_ps(v, low), high);
        const __m256i w = _mm256_cvtps_epi32(v); /* 8 int32 in [0, 255] to 8 bytes */
        const __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
        _mm_storel_epi64((__m128i *)(q + k), _mm_packus_epi16(h, h));
    }
    return k;
}

static AVX2_TARGET void finish8(const int32_t *sums, const int32_t *colsum, const float *mult,
                                const float *bias, float peak, float *out) {
    const __m256i raw = _mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)sums),
                                         _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)colsum), 6));
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(raw), _mm256_loadu_ps(mult));
    v = _mm256_mul_ps(v, _mm256_set1_ps(peak));
    if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias));
    _mm256_storeu_ps(out, v);
}

/* One row's float epilogue over 16 channels: ((float)(sums - 64 colsum) * mult) * peak (+ bias). */
static VNNI_TARGET void finish16(const int32_t *sums, const int32_t *colsum, const float *mult,
                                 const float *bias, float peak, __mmask16 keep, float *out) {
    const __m512i raw = _mm512_sub_epi32(_mm512_loadu_si512((const void *)sums),
                                         _mm512_slli_epi32(_mm512_maskz_loadu_epi32(keep, colsum), 6));
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(raw), _mm512_maskz_loadu_ps(keep, mult));
    v = _mm512_mul_ps(v, _mm512_set1_ps(peak));
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(keep, bias));
    _mm512_mask_storeu_ps(out, keep, v);
}

/* Row m of x on the grid into q (groups * 4 bytes, the padding 64), its peak into *peak. The
 * peak is rows.c's (at least the smallest normal float; NaN where the row holds one); the
 * vector loops below do the same IEEE operations as the scalar tail, lane by lane. */
static void quantize_row(const float *x, long in, long groups, float inverse, uint8_t *q,
                         float *peak) {
    float m = 0.0f;
    int nan = 0;
    long k = 0;
    k = vnni() ? peak_avx512(x, in, &m, &nan) : peak_avx2(x, in, &m, &nan);
    for (; k < in; k++) {
        nan |= isnan(x[k]);
        m = fmaxf(m, fabsf(x[k]));
    }
    if (nan) {
        *peak = NAN; /* NaN out whatever the sums: q is the grid's zero */
        memset(q, 64, groups * 4);
        return;
    }
    if (m < FLT_MIN) m = FLT_MIN;
    *peak = m;
    k = vnni() ? grid_avx512(x, in, m, inverse, q) : grid_avx2(x, in, m, inverse, q);
    for (; k < in; k++) {
        /* x / m first (an IEEE division, as rows_scale), then fbgemm's quantization: one
         * fused multiply-add with the zero point, rounded half to even, clamped. */
        const float v = nearbyintf(fmaf(x[k] / m, inverse, 64.0f));
        q[k] = (uint8_t)(int)fminf(fmaxf(v, 0.0f), 255.0f);
    }
    for (k = in; k < groups * 4; k++) q[k] = 64;
}

/* The float epilogue of one row's sums over one panel's channels [n0, n0 + count). */
static void finish(const int32_t *sums, const int32_t *colsum, const float *mult,
                   const float *bias, float peak, long n0, int count, float *out) {
    int c = 0;
    if (vnni()) {
        for (; c < count; c += 16) {
            const int left = count - c < 16 ? count - c : 16;
            const long n = n0 + c;
            finish16(sums + c, colsum + n, mult + n, bias ? bias + n : 0, peak,
                     (__mmask16)((1u << left) - 1), out + n);
        }
        return;
    }
    for (; c + 8 <= count; c += 8)
        finish8(sums + c, colsum + n0 + c, mult + n0 + c, bias ? bias + n0 + c : 0, peak,
                out + n0 + c);
    for (; c < count; c++) {
        const long n = n0 + c;
        float v = (float)(sums[c] - 64 * colsum[n]) * mult[n];
        v *= peak;
        if (bias) v += bias[n];
        out[n] = v;
    }
}

/* rows [0, mt) of q times one panel: sums[m][0..32). */
static inline __attribute__((always_inline)) VNNI_TARGET void
panel_vnni(const uint8_t *q, long qstride, const int8_t *panel, long groups, int mt,
           int32_t sums[TILE][PANEL]) {
    __m512i a0[TILE], a1[TILE];
#pragma GCC unroll 12
    for (int m = 0; m < TILE; m++) a0[m] = a1[m] = _mm512_setzero_si512();
    const int8_t *w = panel;
    for (long g = 0; g < groups; g++, w += PANEL * 4) {
        const __m512i w0 = _mm512_loadu_si512((const void *)w);
        const __m512i w1 = _mm512_loadu_si512((const void *)(w + 64));
#pragma GCC unroll 12
        for (int m = 0; m < TILE; m++) {
            if (m < mt) {
                int32_t four;
                memcpy(&four, q + m * qstride + g * 4, 4);
                const __m512i a = _mm512_set1_epi32(four);
                a0[m] = _mm512_dpbusd_epi32(a0[m], a, w0);
                a1[m] = _mm512_dpbusd_epi32(a1[m], a, w1);
            }
        }
    }
#pragma GCC unroll 12
    for (int m = 0; m < TILE; m++) {
        if (m < mt) {
            _mm512_storeu_si512((void *)sums[m], a0[m]);
            _mm512_storeu_si512((void *)(sums[m] + 16), a1[m]);
        }
    }
}

#define VNNI_TILE(MT)                                                                          \
    static VNNI_TARGET void tile_vnni_##MT(const uint8_t *q, long qs, const int8_t *p, long g, \
                                           int32_t sums[TILE][PANEL]) {                       \
        panel_vnni(q, qs, p, g, MT, sums);                                                     \
    }
VNNI_TILE(1)
VNNI_TILE(2)
VNNI_TILE(3)
VNNI_TILE(4)
VNNI_TILE(5)
VNNI_TILE(6)
VNNI_TILE(7)
VNNI_TILE(8)
VNNI_TILE(9)
VNNI_TILE(10)
VNNI_TILE(11)
VNNI_TILE(12)

typedef void (*tile_fn)(const uint8_t *, long, const int8_t *, long, int32_t[TILE][PANEL]);
static const tile_fn vnni_tiles[TILE + 1] = {
    0,           tile_vnni_1, tile_vnni_2, tile_vnni_3,  tile_vnni_4,  tile_vnni_5, tile_vnni_6,
    tile_vnni_7, tile_vnni_8, tile_vnni_9, tile_vnni_10, tile_vnni_11, tile_vnni_12};

/* AVX2: panels of 16 channels (64 bytes a group: one cache line, read in order), a tile of up
 * to 4 rows (8 accumulators) over one chunk of a panel's groups, adding into sums[m][0..16). */
static inline __attribute__((always_inline)) AVX2_TARGET void
chunk_avx2(const uint8_t *q, long qstride, const int8_t *w, long g0, long g1, int mt, int fresh,
           long ahead, int32_t *sums) {
    __m256i a0[AVX2_TILE], a1[AVX2_TILE];
    const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 4
    for (int m = 0; m < AVX2_TILE; m++) {
        if (m < mt) {
            a0[m] = fresh ? _mm256_setzero_si256() : _mm256_load_si256((const __m256i *)(sums + m * 16));
            a1[m] = fresh ? _mm256_setzero_si256() : _mm256_load_si256((const __m256i *)(sums + m * 16 + 8));
        }
    }
    for (long g = g0; g < g1; g++) {
        const int8_t *at = w + g * HALF * 4;
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)at);
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(at + 32));
        if (ahead) _mm_prefetch((const char *)(at + ahead), _MM_HINT_T0);
#pragma GCC unroll 4
        for (int m = 0; m < AVX2_TILE; m++) {
            if (m < mt) {
                int32_t four;
                memcpy(&four, q + m * qstride + g * 4, 4);
                const __m256i a = _mm256_set1_epi32(four);
                a0[m] = _mm256_add_epi32(a0[m], _mm256_madd_epi16(_mm256_maddubs_epi16(a, w0), ones));
                a1[m] = _mm256_add_epi32(a1[m], _mm256_madd_epi16(_mm256_maddubs_epi16(a, w1), ones));
            }
        }
    }
#pragma GCC unroll 4
    for (int m = 0; m < AVX2_TILE; m++) {
        if (m < mt) {
            _mm256_store_si256((__m256i *)(sums + m * 16), a0[m]);
            _mm256_store_si256((__m256i *)(sums + m * 16 + 8), a1[m]);
        }
    }
}

typedef void (*chunk_fn)(const uint8_t *, long, const int8_t *, long, long, int, long, int32_t *);
#define AVX2_CHUNK(MT)                                                                         \
    static AVX2_TARGET void chunk_avx2_##MT(const uint8_t *q, long qs, const int8_t *w, long g0, \
                                            long g1, int fresh, long ahead, int32_t *sums) {    \
        chunk_avx2(q, qs, w, g0, g1, MT, fresh, ahead, sums);                                  \
    }
AVX2_CHUNK(1)
AVX2_CHUNK(2)
AVX2_CHUNK(3)
AVX2_CHUNK(4)

static const chunk_fn avx2_chunks[AVX2_TILE + 1] = {0, chunk_avx2_1, chunk_avx2_2, chunk_avx2_3,
                                                    chunk_avx2_4};

/* One 16-channel panel times rows [0, rows) (rows <= BLOCK) into sums[m][0..16): the panel's
 * groups a chunk (4 KB) at a time, every tile of rows over a chunk before the next, so the
 * weights stream from memory at an even pace while the later tiles read them from L1. */
static void panel_avx2(const uint8_t *q, long qstride, const int8_t *panel, long groups,
                       long rows, int32_t *sums) {
    /* Each group's weights ask for those a chunk ahead (a quarter chunk at 1-2 rows): measured
     * on an AVX2 AMD EPYC (docs/benchmarks.md), the hardware's prefetcher alone leaves the
     * stream idle while the later tiles compute. */
    const long ahead = rows < 3 ? CHUNK * HALF : CHUNK * HALF * 4;
    for (long g0 = 0; g0 < groups; g0 += CHUNK) {
        const long g1 = groups - g0 < CHUNK ? groups : g0 + CHUNK;
        for (long m0 = 0; m0 < rows; m0 += AVX2_TILE) {
            const int mt = rows - m0 < AVX2_TILE ? (int)(rows - m0) : AVX2_TILE;
            avx2_chunks[mt](q + m0 * qstride, qstride, panel, g0, g1, g0 == 0, ahead, sums + m0 * 16);
        }
    }
}

/* result (rows, out) = the grid product of x (rows, in) fp32 and the packed weight (colsum and
 * mult from qgemm_pack), bias (out) or NULL; scratch holds rows * (groups * 4) bytes, 64 more
 * and rows floats. inverse: 1 / grid in float (what fbgemm multiplies the input by). */
void qgemm_run(const float *x, long rows, long in, const int8_t *packed, const int32_t *colsum,
               const float *mult, const float *bias, long out, float inverse, float *result,
               uint8_t *scratch, int threads) {
    const long width = qgemm_panel(), groups = (in + 3) / 4, panels = (out + width - 1) / width;
    const long qstride = groups * 4;
    float *peaks = (float *)(scratch + rows * qstride + (-(rows * qstride) & 63));
    for (long m = 0; m < rows; m++)
        quantize_row(x + m * in, in, groups, inverse, scratch + m * qstride, peaks + m);
    if (vnni()) {
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
        for (long p = 0; p < panels; p++) {
            int32_t sums[TILE][PANEL] __attribute__((aligned(64)));
            const int8_t *panel = packed + p * groups * PANEL * 4;
            const long n0 = p * PANEL;
            const int count = out - n0 < PANEL ? (int)(out - n0) : PANEL;
            for (long m0 = 0; m0 < rows; m0 += TILE) {
                const int mt = rows - m0 < TILE ? (int)(rows - m0) : TILE;
                vnni_tiles[mt](scratch + m0 * qstride, qstride, panel, groups, sums);
                for (int m = 0; m < mt; m++)
                    finish(sums[m], colsum, mult, bias, peaks[m0 + m], n0, count,
                           result + (m0 + m) * out);
            }
        }
        return;
    }
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (long p = 0; p < panels; p++) {
        int32_t sums[BLOCK * HALF] __attribute__((aligned(64)));
        const int8_t *panel = packed + p * groups * HALF * 4;
        const long n0 = p * HALF;
        const int count = out - n0 < HALF ? (int)(out - n0) : HALF;
        for (long m0 = 0; m0 < rows; m0 += BLOCK) {
            const long mb = rows - m0 < BLOCK ? rows - m0 : BLOCK;
            panel_avx2(scratch + m0 * qstride, qstride, panel, groups, mb, sums);
            for (long m = 0; m < mb; m++)
                finish(sums + m * HALF, colsum, mult, bias, peaks[m0 + m], n0, count,
                       result + (m0 + m) * out);
        }
    }
}
