/* The per-row LoRA side path (engine/lora.py) on the CPU: a decoder step (one position per
 * row), an encoder pass, or cross-attention's keys and values at join.
 *
 * For each row r of the batch and each of its P positions p, with that row's own matrices (half
 * precision, gathered when the row joined) and the position's activations x[r][p] (fp32):
 *     low[j]   = sum_i A[r][j][i] * x[r][p][i]                  j < n * R
 *     out[r][p][t * W + w] += sum_k low[t * R + k] * B[r][t][k][w]
 * A is (rows, n * R, in); B is blocked, (rows, n, W / BLOCK, R, BLOCK), so that one block of
 * outputs reads its R x BLOCK weights in one sequential run; out is (rows, P, n * W), packed.
 *
 * Each position of each row is computed whole by one thread, with the same operations in the
 * same order whatever the batch holds, the row's length or the thread count: a row's result
 * does not depend on its batch-mates (bitwise). engine/lowrank.py builds this file for AVX-512
 * or for AVX2 (with FMA and F16C) and picks the one the CPU runs.
 */
#include <stdint.h>

#include "simd.h"

#define BLOCK 64
#define MAX_LOW 512
#define NV (BLOCK / L)

int lowrank_block(void) { return BLOCK; }

int lowrank_max_low(void) { return MAX_LOW; }

/* Up to GROUP positions at once: each weight is loaded and converted once for all of them.
 * A position's arithmetic is the same whatever group it falls in (the same FMAs in the same
 * order), so a row's result does not depend on its length either. */
#define GROUP 4

/* low[q][j] = A[j] . x[q] for the group's np positions (x rows `in` apart). */
static inline void dots(const uint16_t *a, long m, const float *x, long in, int np, float *low,
                        long low_stride) {
    for (long j = 0; j < m; j++) {
        const uint16_t *aj = a + j * in;
        vf s0[GROUP], s1[GROUP];
        for (int q = 0; q < np; q++) s0[q] = s1[q] = ZERO();
        long i = 0;
        for (; i + 2 * L <= in; i += 2 * L) {
            const vf a0 = LOADH(aj + i), a1 = LOADH(aj + i + L);
            for (int q = 0; q < np; q++) {
                s0[q] = FMA(a0, LOADF(x + q * in + i), s0[q]);
                s1[q] = FMA(a1, LOADF(x + q * in + i + L), s1[q]);
            }
        }
        if (i + L <= in) {
            const vf a0 = LOADH(aj + i);
            for (int q = 0; q < np; q++) s0[q] = FMA(a0, LOADF(x + q * in + i), s0[q]);
            i += L;
        }
        for (int q = 0; q < np; q++) {
            float s = hsum(ADD(s0[q], s1[q]));
            for (long t = i; t < in; t++) s += half_to_float(aj[t]) * x[q * in + t];
            low[q * low_stride + j] = s;
        }
    }
}

/* out[q][w] += sum_k low[q][k] * B[k][w] for the group's np positions (out rows `stride`
 * apart), B blocked (W / BLOCK, R, BLOCK). */
static inline void update(const uint16_t *b, long W, int R, const float *low, long low_stride,
                          int np, float *out, long stride) {
    for (long w0 = 0; w0 < W; w0 += BLOCK) {
        const uint16_t *block = b + w0 * R;
        vf acc[GROUP][NV];
        for (int q = 0; q < np; q++)
            for (int v = 0; v < NV; v++) acc[q][v] = LOADF(out + q * stride + w0 + v * L);
        for (int k = 0; k < R; k++) {
            const uint16_t *row = block + (long)k * BLOCK;
            vf weights[NV];
            for (int v = 0; v < NV; v++) weights[v] = LOADH(row + v * L);
            for (int q = 0; q < np; q++) {
                const vf l = SET1(low[q * low_stride + k]);
                for (int v = 0; v < NV; v++) acc[q][v] = FMA(l, weights[v], acc[q][v]);
            }
        }
        for (int q = 0; q < np; q++)
            for (int v = 0; v < NV; v++) STOREF(out + q * stride + w0 + v * L, acc[q][v]);
    }
}

/* One group of np positions of row r. */
static inline void group(const uint16_t *A, const uint16_t *B, const float *x, float *out, int n,
                         int R, long in, long W, int np) {
    float low[GROUP * MAX_LOW];
    dots(A, (long)n * R, x, in, np, low, MAX_LOW);
    for (int t = 0; t < n; t++)
        update(B + (long)t * R * W, W, R, low + t * R, MAX_LOW, np, out + (long)t * W, n * W);
}

/* x (rows, P, in), out (rows, P, n * W); P is 1 in a decoder step, the prompt's length in an
 * encoder pass (and cross-attention's keys and values when rows join). */
void lowrank_run(const uint16_t *A, const uint16_t *B, const float *x, float *out, int rows,
                 int P, int n, int R, long in, long W, int threads) {
    const int groups = (P + GROUP - 1) / GROUP;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) if (threads > 1)
    for (int r = 0; r < rows; r++) {
        for (int g = 0; g < groups; g++) {
            const int p = g * GROUP, np = P - p < GROUP ? P - p : GROUP;
            const uint16_t *a = A + (long)r * n * R * in, *b = B + (long)r * n * R * W;
            const float *xp = x + ((long)r * P + p) * in;
            float *op = out + ((long)r * P + p) * n * W;
            switch (np) {  /* constant group sizes: the compiler unrolls and keeps registers */
            case 4: group(a, b, xp, op, n, R, in, W, 4); break;
            case 3: group(a, b, xp, op, n, R, in, W, 3); break;
            case 2: group(a, b, xp, op, n, R, in, W, 2); break;
            default: group(a, b, xp, op, n, R, in, W, 1); break;
            }
        }
    }
}
