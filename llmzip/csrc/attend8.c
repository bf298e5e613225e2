/* Causal int8 attention of llmzip.attention8, written out by hand for one call per layer.
 *
 * One call stores a block's keys and values into an llmzip.attention8_int8.Int8KVCache and attends
 * its queries: the integers of llmzip.attention8.store and llmzip.attention8.attend (the probe in
 * llmzip.fused_check compares them in every process that loads this library). Every step is an
 * integer operation; the only float is the int64 -> float64 conversion whose exponent field gives
 * fixedpoint.bit_length (correctly rounded, as numpy's).
 *
 *  - score: dot = q8 . k8 is an exact int32 (|dot| <= hd * 127^2 < 2^24), then
 *    floor(dot * 2^s + 1/2) with s = e_q + e_k - score_shift, as integer shifts;
 *  - weight: w = table[min(max - score, last)]; den = sum of w;
 *  - value: w >> (E - e_v) times int8 values, an exact int32 sum over at most SPAN = 512 positions
 *    (2^15 * 127 * 512 < 2^31); out = floor((2 * (num << E) + den) / (2 * den)).
 *
 * Built with -fwrapv: signed integers wrap on overflow as numpy's do (the engine's inputs never
 * overflow; where numpy would wrap, this code wraps the same way instead of being undefined).
 * Negative numbers are scaled by powers of two as products, never by <<, which ISO C leaves
 * undefined for them. Sizes outside the exact range are refused (-2), never computed.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define BLOCK 4        /* query rows that share each load of keys and values */
#define SPAN 512       /* attention8.SPAN: the int32 value sums are exact up to this many positions */

/* SIMD of the machine this library is built on (-march=native): LANES 32-bit lanes. The dot
 * products run in float32 (int8 products below 2^14, sums below 2^24: every partial sum is an
 * exact integer, in any order, fused multiply-add or not); the value sums need 31 bits and run in
 * int32. Without AVX2 the same code runs on scalars. */
#if defined(__AVX512F__)
#define LANES 16
typedef __m512 vf;
typedef __m512i vi;
static inline vf vf_zero(void) { return _mm512_setzero_ps(); }
static inline vf vf_load8(const int8_t *p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p))); }
static inline vf vf_madd(vf acc, vf k, float q) { return _mm512_fmadd_ps(k, _mm512_set1_ps(q), acc); }
static inline void vf_store(int32_t *p, vf a) { _mm512_storeu_si512(p, _mm512_cvtps_epi32(a)); }
static inline vi vi_zero(void) { return _mm512_setzero_si512(); }
static inline vi vi_load8(const int8_t *p) { return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)); }
static inline vi vi_madd(vi acc, vi v, int32_t w) { return _mm512_add_epi32(acc, _mm512_mullo_epi32(v, _mm512_set1_epi32(w))); }
static inline void vi_store(int32_t *p, vi a) { _mm512_storeu_si512(p, a); }
#elif defined(__AVX2__)
#define LANES 8
typedef __m256 vf;
typedef __m256i vi;
static inline vf vf_zero(void) { return _mm256_setzero_ps(); }
static inline vf vf_load8(const int8_t *p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p))); }
static inline vf vf_madd(vf acc, vf k, float q) { return _mm256_add_ps(acc, _mm256_mul_ps(k, _mm256_set1_ps(q))); }
static inline void vf_store(int32_t *p, vf a) { _mm256_storeu_si256((__m256i *)p, _mm256_cvtps_epi32(a)); }
static inline vi vi_zero(void) { return _mm256_setzero_si256(); }
static inline vi vi_load8(const int8_t *p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
static inline vi vi_madd(vi acc, vi v, int32_t w) { return _mm256_add_epi32(acc, _mm256_mullo_epi32(v, _mm256_set1_epi32(w))); }
static inline void vi_store(int32_t *p, vi a) { _mm256_storeu_si256((__m256i *)p, a); }
#else
#define LANES 1
typedef float vf;
typedef int32_t vi;
static inline vf vf_zero(void) { return 0.0f; }
static inline vf vf_load8(const int8_t *p) { return (float)*p; }
static inline vf vf_madd(vf acc, vf k, float q) { return acc + k * q; }
static inline void vf_store(int32_t *p, vf a) { *p = (int32_t)a; }
static inline vi vi_zero(void) { return 0; }
static inline vi vi_load8(const int8_t *p) { return *p; }
static inline vi vi_madd(vi acc, vi v, int32_t w) { return acc + v * w; }
static inline void vi_store(int32_t *p, vi a) { *p = a; }
#endif

typedef struct {              /* one layer of an Int8KVCache, for the rows of this call */
    int8_t *keys_t;           /* (rows, kv, hd, cap) */
    int32_t *key_exp;         /* (rows, kv, cap): e_k - score_shift */
    int8_t *values;           /* (rows, kv, cap, hd) */
    int32_t *value_exp;       /* (rows, kv, cap) */
    int32_t *value_max;       /* (rows, kv, cap): running maximum of value_exp */
    int64_t kv, hd, cap;
} Cache;


/* Where element (row, head, position) of a (rows, heads, t, hd) array lies, by its strides in
 * elements (the last axis contiguous): views of the engine's (rows, t, heads, hd) arrays are read
 * and written in place, without a copy. */
typedef struct {
    int64_t row, head, pos;
} Strides;

static inline int64_t at(const Strides *s, int64_t r, int64_t h, int64_t i) {
    return r * s->row + h * s->head + i * s->pos;
}

/* attention8.store: keys and values (rows, kv, t, hd) at positions start... of every row. */
static void store(const Cache *c, int64_t rows, int64_t t, int64_t start, const int64_t *k, const Strides *ks,
                  const int64_t *v, const Strides *vs, int64_t score_shift) {
    for (int64_t rh = 0; rh < rows * c->kv; rh++) {
        int64_t base = rh * c->cap, r = rh / c->kv, h = rh % c->kv;
        for (int64_t i = 0; i < t; i++) {
            int64_t p = start + i;
            const int64_t *kx = k + at(ks, r, h, i), *vx = v + at(vs, r, h, i);
            c->key_exp[base + p] = quantize(kx, 1, c->hd, c->keys_t + rh * c->hd * c->cap + p, c->cap) - (int32_t)score_shift;
            int32_t ev = quantize(vx, 1, c->hd, c->values + (base + p) * c->hd, 1);
            c->value_exp[base + p] = ev;
            c->value_max[base + p] = p > 0 && c->value_max[base + p - 1] > ev ? c->value_max[base + p - 1] : ev;
        }
    }
}

#define INLINE static inline __attribute__((always_inline))

/* Dots of nb query rows with sv vectors of positions from s (nb * sv independent sums in flight). */
INLINE void dots_tile(const int8_t *q8, const int nb, const int sv, const int8_t *keys, int64_t hd, int64_t cap,
                      int64_t s, int32_t *out, int64_t stride) {
    vf acc[BLOCK][4];
    for (int b = 0; b < nb; b++)
        for (int j = 0; j < sv; j++)
            acc[b][j] = vf_zero();
    for (int64_t d = 0; d < hd; d++)
        for (int j = 0; j < sv; j++) {
            vf k = vf_load8(keys + d * cap + s + j * LANES);
            for (int b = 0; b < nb; b++)
                acc[b][j] = vf_madd(acc[b][j], k, (float)q8[b * hd + d]);
        }
    for (int b = 0; b < nb; b++)
        for (int j = 0; j < sv; j++)
            vf_store(out + b * stride + s + j * LANES, acc[b][j]);
}

static void dots_step(const int8_t *q8, int nb, int sv, const int8_t *keys, int64_t hd, int64_t cap, int64_t s,
                      int32_t *out, int64_t stride) {
    switch (nb * 8 + sv) {      /* constant sizes: the accumulators stay in registers */
    case 8 + 1: dots_tile(q8, 1, 1, keys, hd, cap, s, out, stride); return;
    case 8 + 4: dots_tile(q8, 1, 4, keys, hd, cap, s, out, stride); return;
    case 16 + 1: dots_tile(q8, 2, 1, keys, hd, cap, s, out, stride); return;
    case 16 + 2: dots_tile(q8, 2, 2, keys, hd, cap, s, out, stride); return;
    case 24 + 1: dots_tile(q8, 3, 1, keys, hd, cap, s, out, stride); return;
    case 32 + 1: dots_tile(q8, 4, 1, keys, hd, cap, s, out, stride); return;
    case 32 + 2: dots_tile(q8, 4, 2, keys, hd, cap, s, out, stride); return;
    default: abort();           /* dots() asks for no other tile */
    }
}

/* out[b][s] = q8[b] . keys[:, s] for b < nb, s < n (and up to the next multiple of LANES): exact int32.
 * keys: (hd, cap) transposed; vector loads stay inside it (the last, partial vector goes through
 * bounce, hd * LANES bytes). */
static void dots(const int8_t *q8, int nb, const int8_t *keys, int64_t hd, int64_t cap, int64_t n, int32_t *out,
                 int64_t stride, int8_t *bounce) {
    int sv = nb == 1 ? 4 : nb == 3 ? 1 : 2;
    int64_t room = cap - cap % LANES, whole = (n + LANES - 1) / LANES * LANES;
    int64_t limit = room < whole ? room : whole, s = 0;
    for (; s + sv * LANES <= limit; s += sv * LANES)
        dots_step(q8, nb, sv, keys, hd, cap, s, out, stride);
    for (; s + LANES <= limit; s += LANES)
        dots_step(q8, nb, 1, keys, hd, cap, s, out, stride);
    if (s < n) {
        memset(bounce, 0, hd * LANES);
        for (int64_t d = 0; d < hd; d++)
            memcpy(bounce + d * LANES, keys + d * cap + s, cap - s);
        dots_step(q8, nb, 1, bounce, hd, LANES, 0, out + s, stride);
    }
}

/* num[b][j0 ...] += the weighted sums of nv vectors of values from column j0, for nb rows. */
INLINE void values_tile(const int32_t *w, int64_t w_stride, const int nb, const int8_t *values, int64_t hd,
                        int64_t n, int64_t j0, const int nv, int32_t *num) {
    vi acc[BLOCK][4];
    for (int b = 0; b < nb; b++)
        for (int j = 0; j < nv; j++)
            acc[b][j] = vi_zero();
    for (int64_t s = 0; s < n; s++) {
        int32_t ws[BLOCK], any = 0;
        for (int b = 0; b < nb; b++)
            any |= ws[b] = w[b * w_stride + s];
        if (!any)            /* positions far below every row's maximum weigh 0 */
            continue;
        for (int j = 0; j < nv; j++) {
            vi v = vi_load8(values + s * hd + j0 + j * LANES);
            for (int b = 0; b < nb; b++)
                acc[b][j] = vi_madd(acc[b][j], v, ws[b]);
        }
    }
    for (int b = 0; b < nb; b++)
        for (int j = 0; j < nv; j++)
            vi_store(num + b * hd + j0 + j * LANES, acc[b][j]);
}

#define VALUES_CASE(NB, NV) case NB * 8 + NV: values_tile(w, w_stride, NB, values, hd, n, j0, NV, num); break;

/* num[b][d] = sum over s < n of w[b][s] * values[s][d]: exact int32 (n <= SPAN). */
static void weighted_values(const int32_t *w, int64_t w_stride, int nb, const int8_t *values, int64_t hd, int64_t n,
                            int32_t *num) {
    int64_t vectors = hd / LANES, j0 = 0;
    while (vectors > 0) {
        int nv = vectors < 4 ? (int)vectors : 4;
        switch (nb * 8 + nv) {
        VALUES_CASE(1, 1) VALUES_CASE(1, 2) VALUES_CASE(1, 3) VALUES_CASE(1, 4)
        VALUES_CASE(2, 1) VALUES_CASE(2, 2) VALUES_CASE(2, 3) VALUES_CASE(2, 4)
        VALUES_CASE(3, 1) VALUES_CASE(3, 2) VALUES_CASE(3, 3) VALUES_CASE(3, 4)
        VALUES_CASE(4, 1) VALUES_CASE(4, 2) VALUES_CASE(4, 3) VALUES_CASE(4, 4)
        default: abort();       /* 1 <= nb <= BLOCK, 1 <= nv <= 4 */
        }
        vectors -= nv;
        j0 += nv * LANES;
    }
    for (int b = 0; b < nb; b++)        /* head sizes that are not a multiple of LANES: the rest */
        for (int64_t d = j0; d < hd; d++) {
            int32_t acc = 0;
            for (int64_t s = 0; s < n; s++)
                acc += w[b * w_stride + s] * values[s * hd + d];
            num[b * hd + d] = acc;
        }
}

/* One query row's weights over positions s < n (0 beyond, up to n_pad), from its dots; returns den. */
static int64_t row_weights(const int32_t *restrict dot, int64_t n, int64_t n_pad, int32_t eq, const int32_t *key_exp,
                           const int32_t *value_exp, int32_t top, const int32_t *table, int64_t table_len,
                           int64_t *restrict scores, int32_t *restrict w) {
    int64_t best = INT64_MIN, den = 0;
    /* floor(dot * 2^s + 1/2) as integers, s = e_q + e_k - score_shift: dot * 2^s for s >= 0,
     * (dot + 2^(m-1)) >> m for m = -s >= 1 (an arithmetic shift: the floor). For the engine's inputs
     * (queries below 2^36, keys below 2^21) s lies in [-score_shift, 62 - 24], so dot * 2^s stays
     * below 2^62; the clamps at 62 only keep the shifts defined (past 62, (dot + 2^61) >> 62 is 0
     * for |dot| < 2^24, as numpy's rounding gives). >> of a negative number is the arithmetic shift
     * in every compiler this builds with (GCC, Clang: implementation-defined in ISO C). Written
     * without branches, so that the loop vectorises. */
    for (int64_t s = 0; s < n; s++) {
        int64_t sh = (int64_t)eq + key_exp[s], d = dot[s];
        int64_t left = sh > 0 ? (sh < 62 ? sh : 62) : 0, right = sh < 0 ? (-sh < 62 ? -sh : 62) : 0;
        scores[s] = (d * ((int64_t)1 << left) + ((int64_t)(right > 0) << (right - (right > 0)))) >> right;
        best = scores[s] > best ? scores[s] : best;
    }
    for (int64_t s = 0; s < n; s++) {
        /* gap >= 0 for the engine's scores; compared unsigned, so that a wrapped one cannot index
         * below the table */
        uint64_t gap = (uint64_t)(best - scores[s]);
        int32_t weight = table[gap < (uint64_t)(table_len - 1) ? gap : (uint64_t)(table_len - 1)];
        den += weight;
        /* numpy's w >> (E - e_s) is 0 for counts >= 32 (w <= 2^15); counts are >= 0 (E: running maximum). */
        int32_t count = top - value_exp[s];
        w[s] = weight >> (count < 31 ? count : 31);
    }
    for (int64_t s = n; s < n_pad; s++)
        w[s] = 0;
    return den;
}

/* floor((2 * (num << top) + den) / (2 * den)) for one query row, in int64, wrapping as numpy does.
 * The quotient comes from a float64 product by the reciprocal, corrected by one step: for |a| < 2^52
 * both roundings together are off by less than one unit of the quotient (which is below 2^52 / 2^16),
 * so the floor is off by at most one, and the remainder tells which way. Larger numerators (none
 * in the engine) are divided again as integers. */
static void divide_row(const int32_t *restrict num, int32_t top, int64_t den, int64_t hd, int64_t *restrict out) {
    const int64_t b = 2 * den, limit = (int64_t)1 << 52;
    const double inv = 1.0 / (double)b;
    int64_t large = 0;
    for (int64_t d = 0; d < hd; d++) {
        int64_t a = 2 * ((int64_t)num[d] * ((int64_t)1 << top)) + den;
        int64_t quo = (int64_t)__builtin_floor((double)a * inv), rem = a - quo * b;
        out[d] = quo + (rem >= b) - (rem < 0);
        large |= a >= limit || a <= -limit;
    }
    for (int64_t d = 0; large && d < hd; d++) {
        int64_t a = 2 * ((int64_t)num[d] * ((int64_t)1 << top)) + den, quo = a / b;
        out[d] = quo - (a % b != 0 && a < 0);
    }
}

typedef struct {               /* scratch of one (row, key/value head) */
    int8_t *q8, *bounce;       /* (queries, hd); (hd, LANES) */
    int32_t *eq, *pos, *dots, *w, *num;
    int64_t *scores;
    int64_t n_pad;             /* positions per row of dots and w */
} Scratch;

/* The queries of one (row, kv head), in blocks of up to BLOCK rows that share each key and value read. */
static void attend_head(const Cache *c, int64_t rh, int64_t nq, const int32_t *table, int64_t table_len,
                        Scratch *x, int64_t *const *outs) {
    const int8_t *keys = c->keys_t + rh * c->hd * c->cap, *values = c->values + rh * c->cap * c->hd;
    const int32_t *key_exp = c->key_exp + rh * c->cap, *value_exp = c->value_exp + rh * c->cap;
    const int32_t *value_max = c->value_max + rh * c->cap;
    for (int64_t i0 = 0; i0 < nq; i0 += BLOCK) {
        int nb = nq - i0 < BLOCK ? (int)(nq - i0) : BLOCK;
        int64_t n = 0, den[BLOCK];
        for (int b = 0; b < nb; b++)
            n = x->pos[i0 + b] + 1 > n ? x->pos[i0 + b] + 1 : n;
        dots(x->q8 + i0 * c->hd, nb, keys, c->hd, c->cap, n, x->dots, x->n_pad, x->bounce);
        for (int b = 0; b < nb; b++) {
            int64_t p = x->pos[i0 + b];
            den[b] = row_weights(x->dots + b * x->n_pad, p + 1, n, x->eq[i0 + b], key_exp, value_exp,
                                 value_max[p], table, table_len, x->scores, x->w + b * x->n_pad);
        }
        weighted_values(x->w, x->n_pad, nb, values, c->hd, n, x->num);
        for (int b = 0; b < nb; b++)
            divide_row(x->num + b * c->hd, value_max[x->pos[i0 + b]], den[b], c->hd, outs[i0 + b]);
    }
}

/* Whether the sizes are inside the kernel's exact range: dot sums below 2^24 (hd * 127^2), value
 * sums below 2^31 (weights <= 2^15, at most SPAN positions), positions inside the cache. */
static int sizes_valid(int64_t rows, int64_t heads, int64_t t, int64_t start, int64_t kv, int64_t hd, int64_t cap,
                       const int32_t *table, int64_t table_len) {
    if (rows < 0 || t < 1 || start < 0 || kv < 1 || heads < 1 || heads % kv || hd < 1 || start + t > cap
        || start + t > SPAN || hd * Q_MAX * Q_MAX >= (1 << 24) || table_len < 1)
        return 0;
    for (int64_t i = 0; i < table_len; i++)
        if (table[i] < 0 || table[i] > (1 << 15))
            return 0;
    return 1;
}

/* Store keys and values (rows, kv, t, hd) of positions start... into the cache, then attend the
 * queries q * scale (rows, heads, t, hd), query head h reading key/value head h / (heads / kv); the
 * outputs (rows, heads, t, hd) into out. q, k, v and out are read and written by their strides
 * (strides: row, head, position for each of them in turn, in elements; the last axis contiguous);
 * the cache's arrays are C-contiguous. Returns 0, or -1 (no memory) or -2 (sizes outside this
 * kernel's exact range) having written nothing. */
int64_t llmzip_attend8(int64_t rows, int64_t heads, int64_t t, int64_t start, const int64_t *q, int64_t scale,
                       const int64_t *k, const int64_t *v, int64_t score_shift, int8_t *keys_t, int32_t *key_exp,
                       int8_t *values, int32_t *value_exp, int32_t *value_max, int64_t kv, int64_t hd, int64_t cap,
                       const int32_t *table, int64_t table_len, int64_t *out, const int64_t *strides) {
    if (!sizes_valid(rows, heads, t, start, kv, hd, cap, table, table_len))
        return -2;
    const Strides qs = {strides[0], strides[1], strides[2]}, ks = {strides[3], strides[4], strides[5]};
    const Strides vs = {strides[6], strides[7], strides[8]}, os = {strides[9], strides[10], strides[11]};
    int64_t g = heads / kv, nq = g * t;
    Scratch x;
    x.n_pad = (start + t + LANES - 1) / LANES * LANES;
    x.q8 = malloc(nq * hd);
    x.bounce = malloc(hd * LANES);
    x.eq = malloc(nq * sizeof *x.eq);
    x.pos = malloc(nq * sizeof *x.pos);
    x.dots = malloc(BLOCK * x.n_pad * sizeof *x.dots);
    x.w = malloc(BLOCK * x.n_pad * sizeof *x.w);
    x.num = malloc(BLOCK * hd * sizeof *x.num);
    x.scores = malloc(x.n_pad * sizeof *x.scores);
    int64_t **outs = malloc(nq * sizeof *outs);
    int64_t rc = -1;
    if (x.q8 && x.bounce && x.eq && x.pos && x.dots && x.w && x.num && x.scores && outs) {
        Cache c = {keys_t, key_exp, values, value_exp, value_max, kv, hd, cap};
        store(&c, rows, t, start, k, &ks, v, &vs, score_shift);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t h = 0; h < kv; h++) {
                for (int64_t i = 0; i < nq; i++) {       /* query row i: head h * g + i / t, position i % t */
                    x.eq[i] = quantize(q + at(&qs, r, h * g + i / t, i % t), scale, hd, x.q8 + i * hd, 1);
                    x.pos[i] = (int32_t)(start + i % t);
                    outs[i] = out + at(&os, r, h * g + i / t, i % t);
                }
                attend_head(&c, r * kv + h, nq, table, table_len, &x, outs);
            }
        rc = 0;
    }
    free(x.q8); free(x.bounce); free(x.eq); free(x.pos); free(x.dots); free(x.w); free(x.num); free(x.scores); free(outs);
    return rc;
}

/* divide_row for the probe (llmzip.fused_check): rows of num (rows, hd), each with its top and den. */
void llmzip_divide_rows(int64_t rows, int64_t hd, const int32_t *num, const int32_t *top, const int64_t *den,
                        int64_t *out) {
    for (int64_t r = 0; r < rows; r++)
        divide_row(num + r * hd, top[r], den[r], hd, out + r * hd);
}
