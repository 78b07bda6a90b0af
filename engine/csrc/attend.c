/* One decoder step's attention (engine/t5_decoder.py) on the CPU, over caches kept in half
 * precision: for each row r and head h, with the row's query q[r][h] (fp32) and its columns
 * j in [lo[r], hi[r]) of the keys and values,
 *     s[j]       = sum_d q[r][h][d] * K[r][h][d][j] + bias[h][j]     (bias may be absent)
 *     out[r][h]  = sum_j softmax(s)[j] * V[r][h][j]
 * K is kept transposed, so that one load holds L keys' same coordinate and a block of scores
 * needs no horizontal sum, in blocks of KB columns: (slots, H, cap / KB, D, KB), each block's D
 * runs of KB columns (one cache line) together, so a row's columns are read as whole blocks in
 * memory order however far apart its coordinates' runs would sit in a (D, cap) layout (where a
 * row of 60 columns in a buffer of 256 read two lines in every 512 bytes: a quarter of what
 * the memory fetched); V is (slots, H, cap, D); row r's are in slot[r]
 * (a row that leaves frees its slot, a newcomer takes one: no copy of the others); q and out
 * are (rows, H, D), packed; bias is (H, bias_stride), indexed by the absolute column (T5's relative position
 * bias depends only on the distance between the query's column and the key's).
 *
 * Why: at 16 rows the step's attention read its fp32 caches through torch's batched GEMVs at
 * about the memory's speed, 40% of the step (docs/engine.md, "The attention kernel"). Half the
 * bytes, and the bias, mask, softmax and both products in one pass over them.
 *
 * Each (row, head) is computed whole by one thread, and every score with the same operations
 * in the same order whether it falls in a vector block or in the scalar tail (fmaf, d
 * ascending): a row's result depends only on its own columns, not on its batch-mates, where
 * its columns sit in the shared clock, or the thread count.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>

#include "simd.h"

#define MAX_D 256 /* a head's width at most (T5: 64) */
#define KB 32     /* the self-attention keys' columns per block: 64 bytes of each coordinate */

int attend_max_d(void) { return MAX_D; }
int attend_key_block(void) { return KB; }

/* e^x for x <= 0 (a score minus the maximum): 2^n * p(r), x = n ln2 + r, |r| <= ln2 / 2, with
 * a degree-6 polynomial (relative error below 2e-7); below -87 it is 0. */
static inline vf exp_neg(vf x) {
    const vf low = SET1(-87.0f);
    x = MAXV(x, low);
    const vf n = ROUND(MUL(x, SET1(1.44269504088896341f)));
    vf r = FMA(n, SET1(-0.693359375f), x);
    r = FMA(n, SET1(2.12194440e-4f), r);
    vf p = SET1(1.0f / 720);
    p = FMA(p, r, SET1(1.0f / 120));
    p = FMA(p, r, SET1(1.0f / 24));
    p = FMA(p, r, SET1(1.0f / 6));
    p = FMA(p, r, SET1(0.5f));
    p = FMA(p, r, SET1(1.0f));
    p = FMA(p, r, SET1(1.0f));
    return MUL(p, pow2i(n));
}

/* Scores of columns [lo, hi) into s[0 .. hi - lo), padded with -inf to a multiple of L. s has
 * L floats of room before it (a vector's lanes before lo are never written) and after. Each
 * score is the same fused multiply-adds, d ascending from 0, from 0: in a vector lane or in
 * the scalar tail, whatever the layout.
 *
 * Keys in blocks (block < cap: the self-attention's, (cap / KB, D, KB)): each block's vectors
 * of columns take their D coordinates' values (one line each, in memory order) into one
 * accumulator each, and the lanes in [lo, hi) are stored.
 * Keys of one block (the cross-attention's, (D, cap), lo 0): read coordinate by coordinate, a
 * run of the row's columns each, the scores accumulated in s (in cache): a key block read a
 * few columns of every coordinate at a time is D interleaved runs, which the hardware's
 * prefetchers do not follow, and the caches come from memory once a step (docs/engine.md). */
static void scores(const float *q, const uint16_t *k, long block, long cap, int D,
                   const float *bias, long lo, long hi, float *s) {
    const long n = hi - lo;
    if (block < cap) {
        for (long first = lo / KB * KB; first < hi; first += KB) {
            const uint16_t *at = k + first * D;
            vf acc[KB / L];
            for (int t = 0; t < KB / L; t++) acc[t] = ZERO();
            for (int d = 0; d < D; d++) {
                const vf qd = SET1(q[d]);
                for (int t = 0; t < KB / L; t++)
                    acc[t] = FMA(qd, LOADH(at + d * KB + t * L), acc[t]);
            }
            for (int t = 0; t < KB / L; t++) {
                const long start = first + t * L;
                const long a = lo > start ? lo - start : 0, b = hi < start + L ? hi - start : L;
                if (a < b) store_lanes(s + (start - lo), (int)a, (int)b, acc[t]);
            }
        }
    } else {
        const long whole = n / L * L;
        const uint16_t *col = k + lo;
        for (long j = 0; j < whole; j += L) STOREF(s + j, ZERO());
        for (long j = whole; j < n; j++) s[j] = 0.0f;
        for (int d = 0; d < D; d++) {
            const vf qd = SET1(q[d]);
            const uint16_t *kd = col + d * cap;
            long j = 0;
            for (; j + 4 * L <= whole; j += 4 * L) {
                STOREF(s + j, FMA(qd, LOADH(kd + j), LOADF(s + j)));
                STOREF(s + j + L, FMA(qd, LOADH(kd + j + L), LOADF(s + j + L)));
                STOREF(s + j + 2 * L, FMA(qd, LOADH(kd + j + 2 * L), LOADF(s + j + 2 * L)));
                STOREF(s + j + 3 * L, FMA(qd, LOADH(kd + j + 3 * L), LOADF(s + j + 3 * L)));
            }
            for (; j < whole; j += L) STOREF(s + j, FMA(qd, LOADH(kd + j), LOADF(s + j)));
            for (; j < n; j++) s[j] = fmaf(q[d], half_to_float(kd[j]), s[j]);
        }
    }
    if (bias)
        for (long j = 0; j < n; j++) s[j] += bias[lo + j];
    for (long j = n; j % L; j++) s[j] = -INFINITY;
}

/* out = sum_j softmax(s)[j] * V[lo + j] (s holds n scores, padded with -inf to a multiple of
 * L; the padding's exponentials are written but never summed or read). */
static void mix(float *s, long n, const uint16_t *v, int D, long lo, float *out) {
    const long padded = (n + L - 1) / L * L;
    vf m = SET1(-INFINITY);
    for (long j = 0; j < padded; j += L) m = MAXV(m, LOADF(s + j));
    const vf top = SET1(hmax(m));
    for (long j = 0; j < padded; j += L) STOREF(s + j, exp_neg(SUB(LOADF(s + j), top)));
    vf total = ZERO();
    long j = 0;
    for (; j + L <= n; j += L) total = ADD(total, LOADF(s + j));
    float sum = hsum(total);
    for (; j < n; j++) sum += s[j];
    const float inverse = 1.0f / sum; /* the largest score's term is 1: sum >= 1 */
    const int vd = D / L * L;
    vf a[MAX_D / L];
    float tail[MAX_D];
    for (int t = 0; t < vd / L; t++) a[t] = ZERO();
    for (int d = vd; d < D; d++) tail[d] = 0.0f;
    const uint16_t *row = v + lo * D;
    for (j = 0; j < n; j++, row += D) {
        const vf p = SET1(s[j]);
        for (int t = 0; t < vd / L; t++) a[t] = FMA(p, LOADH(row + t * L), a[t]);
        for (int d = vd; d < D; d++) tail[d] = fmaf(s[j], half_to_float(row[d]), tail[d]);
    }
    for (int t = 0; t < vd / L; t++) STOREF(out + t * L, MUL(a[t], SET1(inverse)));
    for (int d = vd; d < D; d++) out[d] = tail[d] * inverse;
}

/* One row and head: its query q, its keys (cap / block, D, block) and values (cap, D), its
 * columns [lo, hi);
 * s is scratch for cap + L scores (and L before it, in blocks). No column (the caller never
 * asks): zeros, not garbage. */
static void attend_one(const float *q, const uint16_t *k, const uint16_t *v, long block,
                       long cap, int D, const float *bias, long lo, long hi, float *s, float *o) {
    if (hi <= lo) {
        for (int d = 0; d < D; d++) o[d] = 0.0f;
        return;
    }
    scores(q, k, block, cap, D, bias, lo, hi, s);
    mix(s, hi - lo, v, D, lo, o);
}

/* Whether every row's slot is one of the buffers' and its columns lie in [0, limit). */
static int rows_fit(const int64_t *slot, const int64_t *lo, const int64_t *hi, int rows,
                    long slots, long limit) {
    for (int r = 0; r < rows; r++)
        if (slot[r] < 0 || slot[r] >= slots || lo[r] < 0 || hi[r] > limit) return 0;
    return 1;
}

/* q, out (rows, H, D) fp32; k (slots, H, cap / KB, D, KB) and v (slots, H, cap, D) half
 * precision (cap a multiple of KB), row
 * r's in slot[r]; bias (H, bias_stride) fp32 or NULL; lo, hi (rows) the columns each row
 * attends to; scratch holds threads x (cap + 2 L) floats. Returns -1, having read nothing, where
 * a slot is not one of the buffers' or a column lies outside [0, cap) (or past the bias). */
int attend_run(const float *q, const uint16_t *k, const uint16_t *v, const float *bias,
               long bias_stride, const int64_t *slot, const int64_t *lo, const int64_t *hi,
               float *out, float *scratch, int rows, int H, int D, long cap, long slots,
               int threads) {
    const long limit = bias && bias_stride < cap ? bias_stride : cap;
    if (cap % KB || !rows_fit(slot, lo, hi, rows, slots, limit)) return -1;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *s = scratch + (long)omp_get_thread_num() * (cap + 2 * L) + L;
#pragma omp for schedule(static) collapse(2)
        for (int r = 0; r < rows; r++) {
            for (int h = 0; h < H; h++) {
                const long rh = (long)r * H + h, sh = slot[r] * H + h;
                const long first = lo[r], last = hi[r];
                attend_one(q + rh * D, k + sh * D * cap, v + sh * cap * D, KB, cap, D,
                           bias ? bias + h * bias_stride : 0, first, last, s, out + rh * D);
            }
        }
    }
    return 0;
}

/* Eight floats clamped to [-top, top] as fminf(fmaxf(x, -top), top) clamps one (a NaN to
 * -top: max's second operand) and rounded to half precision, to nearest even. */
static inline __m128i clamp_half8(const float *x, float top) {
    const __m256 clamped = _mm256_min_ps(_mm256_max_ps(_mm256_loadu_ps(x), _mm256_set1_ps(-top)),
                                         _mm256_set1_ps(top));
    return _mm256_cvtps_ph(clamped, _MM_FROUND_TO_NEAREST_INT);
}

/* A decoder step's new keys and values into the caches: for each row r, head h and coordinate
 * d, K[slot[r]][h][position / KB][d][position % KB] and V[slot[r]][h][position][d] get
 * key[r][h][d] and value[r][h][d] (fp32), clamped to half precision's largest finite value
 * and rounded to nearest even (what torch's `clamp(...).half()` gives). One call per layer
 * where torch's indexed assignment took two (at 16 rows in 32 slots of 100 columns, 390 us
 * against 210 here for the keys alone, on cold caches: the writes are a column apart), and
 * eight coordinates a time where one a time cost a step more than its attention's reads (16
 * rows of flan-t5-base's 12 heads of 64: 26 us a call against 144-179 on an AVX2 AMD EPYC).
 * Returns -1, having written nothing, where a slot is not one of the buffers' or the column is
 * not the caches'. */
int attend_store(const float *key, const float *value, uint16_t *k, uint16_t *v,
                 const int64_t *slot, int rows, int H, int D, long cap, long slots, long position) {
    const float top = 65504.0f;
    if (position < 0 || position >= cap || cap % KB) return -1;
    for (int r = 0; r < rows; r++)
        if (slot[r] < 0 || slot[r] >= slots) return -1; /* nothing written */
    for (int r = 0; r < rows; r++) {
        for (int h = 0; h < H; h++) {
            const long sh = slot[r] * H + h, rh = ((long)r * H + h) * D;
            uint16_t *kcol = k + sh * D * cap + position / KB * KB * D + position % KB;
            uint16_t *vrow = v + (sh * cap + position) * D;
            int d = 0;
            /* 8 coordinates a time, as the tail below does each; the keys' halves then go to
             * their runs one by one. */
            for (; d + 8 <= D; d += 8) {
                uint16_t halves[8];
                _mm_storeu_si128((__m128i *)(vrow + d), clamp_half8(value + rh + d, top));
                _mm_storeu_si128((__m128i *)halves, clamp_half8(key + rh + d, top));
                for (int i = 0; i < 8; i++) kcol[(d + i) * KB] = halves[i];
            }
            for (; d < D; d++) {
                const float kd = fminf(fmaxf(key[rh + d], -top), top);
                const float vd = fminf(fmaxf(value[rh + d], -top), top);
                kcol[d * KB] = _cvtss_sh(kd, _MM_FROUND_TO_NEAREST_INT);
                vrow[d] = _cvtss_sh(vd, _MM_FROUND_TO_NEAREST_INT);
            }
        }
    }
    return 0;
}

/* Cross-attention over each row's own caches where its encoder pass left them: row r's keys
 * (H, D, cap[r]) at address k[r] and values (H, cap[r], D) at v[r] (half precision), its
 * columns [0, hi[r]), no bias; q, out (rows, H, D) fp32; scratch holds threads x (maxcap + L)
 * floats. A row that joins brings its caches as made (no copy into buffers shared by every
 * row), one that leaves takes them along. The same operations per (row, head) as attend_run.
 * Returns -1, having read nothing, where an address is 0, a row's cap exceeds maxcap or its
 * columns exceed its cap. */
int attend_rows(const float *q, const int64_t *k, const int64_t *v, const int64_t *cap,
                const int64_t *hi, float *out, float *scratch, int rows, int H, int D,
                long maxcap, int threads) {
    for (int r = 0; r < rows; r++)
        if (!k[r] || !v[r] || cap[r] < 1 || cap[r] > maxcap || hi[r] < 0 || hi[r] > cap[r])
            return -1;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *s = scratch + (long)omp_get_thread_num() * (maxcap + L);
#pragma omp for schedule(static) collapse(2)
        for (int r = 0; r < rows; r++) {
            for (int h = 0; h < H; h++) {
                const uint16_t *keys = (const uint16_t *)(uintptr_t)k[r];
                const uint16_t *values = (const uint16_t *)(uintptr_t)v[r];
                const long rh = (long)r * H + h, c = cap[r];
                attend_one(q + rh * D, keys + h * D * c, values + h * c * D, c, c, D, 0, 0, hi[r],
                           s, out + rh * D);
            }
        }
    }
    return 0;
}

/* The self-attention caches trimmed in place: columns [offset, offset + kept) of each listed
 * slot's keys (slots, H, cap / KB, D, KB) and values (slots, H, cap, D) move to [0, kept) (a
 * column is read before it is written over: it moves down, in ascending order). Where the
 * buffers fill and the oldest row started at column offset, this frees offset columns without
 * new buffers (whose first writes fault in fresh pages) or a copy of anything else. Returns
 * -1, having moved nothing, where a slot or the columns are not the buffers'. */
int attend_shift(uint16_t *k, uint16_t *v, const int64_t *slot, int count, int H, int D,
                 long cap, long slots, long offset, long kept) {
    if (offset < 0 || kept < 0 || offset + kept > cap || cap % KB) return -1;
    for (int i = 0; i < count; i++)
        if (slot[i] < 0 || slot[i] >= slots) return -1;
    if (offset == 0 || kept == 0) return 0;
    for (int i = 0; i < count; i++) {
        for (int h = 0; h < H; h++) {
            const long sh = slot[i] * H + h;
            uint16_t *keys = k + sh * D * cap;
            for (long j = 0; j < kept; j++) {
                const long from = j + offset;
                uint16_t *to = keys + j / KB * KB * D + j % KB;
                const uint16_t *at = keys + from / KB * KB * D + from % KB;
                for (int d = 0; d < D; d++) to[d * KB] = at[d * KB];
            }
            uint16_t *block = v + sh * cap * D;
            memmove(block, block + offset * D, kept * D * sizeof(uint16_t));
        }
    }
    return 0;
}
