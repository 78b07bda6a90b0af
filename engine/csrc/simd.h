/* The vector vocabulary engine/csrc's kernels share: one float vector `vf` of L lanes (AVX-512:
 * 16, AVX2 with FMA and F16C: 8), its loads (LOADH: L half-precision values, converted), its
 * arithmetic and horizontal reductions. engine/native.py builds every kernel once per target. */
#ifndef ENGINE_SIMD_H
#define ENGINE_SIMD_H

#include <immintrin.h>
#include <stdint.h>

#if defined(__AVX512F__)
typedef __m512 vf;
#define L 16
#define ZERO() _mm512_setzero_ps()
#define LOADF(p) _mm512_loadu_ps(p)
#define STOREF(p, v) _mm512_storeu_ps(p, v)
#define LOADH(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define SET1(s) _mm512_set1_ps(s)
#define ADD(a, b) _mm512_add_ps(a, b)
#define SUB(a, b) _mm512_sub_ps(a, b)
#define MUL(a, b) _mm512_mul_ps(a, b)
#define MAXV(a, b) _mm512_max_ps(a, b)
#define ROUND(a) _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
static inline vf pow2i(vf n) { /* 2^n for integral n in [-126, 127] */
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_castsi512_ps(e);
}
static inline float hmax(vf v) { return _mm512_reduce_max_ps(v); }
static inline float hsum(vf v) { return _mm512_reduce_add_ps(v); }
/* Lanes [a, b) of v into p[a .. b) (the other lanes' memory is not touched). */
static inline void store_lanes(float *p, int a, int b, vf v) {
    _mm512_mask_storeu_ps(p, (__mmask16)(((1u << b) - 1) & ~((1u << a) - 1)), v);
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
typedef __m256 vf;
#define L 8
#define ZERO() _mm256_setzero_ps()
#define LOADF(p) _mm256_loadu_ps(p)
#define STOREF(p, v) _mm256_storeu_ps(p, v)
#define LOADH(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define SET1(s) _mm256_set1_ps(s)
#define ADD(a, b) _mm256_add_ps(a, b)
#define SUB(a, b) _mm256_sub_ps(a, b)
#define MUL(a, b) _mm256_mul_ps(a, b)
#define MAXV(a, b) _mm256_max_ps(a, b)
#define ROUND(a) _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
static inline vf pow2i(vf n) {
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_castsi256_ps(e);
}
static inline float hmax(vf v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}
static inline float hsum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline void store_lanes(float *p, int a, int b, vf v) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i in = _mm256_and_si256(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32(a - 1)),
                                        _mm256_cmpgt_epi32(_mm256_set1_epi32(b), lane));
    _mm256_maskstore_ps(p, in, v);
}
#else
#error "engine/csrc needs AVX-512F, or AVX2 with FMA and F16C"
#endif

static inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

#endif
