/* The int8 linear layer of llmzip.linear8 in one call: quantise each int64 input row to int8
 * (linear8.quantize_rows), the exact int32 product with the int8 weights, and the rescale
 * floor(acc * factor * 2^e + bias) (linear8._rescale: the IEEE operations in numpy's order; the
 * first two are exact, the addition is correctly rounded; built with -ffp-contract=off).
 *
 * The product is computed with AVX-512 VNNI: vpdpbusd multiplies unsigned by signed bytes, four at
 * a time, into int32 lanes. The input bytes go in offset by 128 (q + 128 in [1, 255]) and the
 * layer's 128 * column sums come off again. Every operation on the lanes is an addition modulo
 * 2^32 (vpdpbusd does not saturate; -fwrapv for the sums), and the true product fits int32
 * (|q . w| <= 127 * 127 * k < 2^31, checked), so the lanes end at exactly it, whatever the order.
 * The weights are packed once per layer (llmzip_linear8_pack): groups of four input rows, in blocks
 * of 64 output columns (packed_at).
 * Without VNNI the library has no linear layer (llmzip_linear8_packed() is 0 and llmzip_linear8
 * refuses): torch's int8 GEMM serves those machines faster than plain C loops would.
 * The probe in llmzip.fused_check compares it with numpy in every process that loads it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define PACKED 1
#else
#define PACKED 0
#endif

#define LANES 16        /* int32 outputs per vector: packed columns are padded to a multiple */
#define TILE_ROWS 4
#define TILE_VECS 4     /* a tile of 4 rows x 64 columns holds 16 accumulators in registers */

/* Whether llmzip_linear8 reads packed weights (then the caller packs each layer once). */
int64_t llmzip_linear8_packed(void) { return PACKED; }

static inline int64_t groups(int64_t k) { return (k + 3) / 4; }
static inline int64_t padded(int64_t n) { return (n + LANES - 1) / LANES * LANES; }

/* Bytes llmzip_linear8_pack writes for a (k, n) layer: the packed weights, then n_pad int32 sums. */
int64_t llmzip_linear8_packed_size(int64_t k, int64_t n) {
    return groups(k) * padded(n) * 4 + padded(n) * 4;
}

#define BLOCK_COLUMNS (TILE_VECS * LANES)

/* Where packed column j of group g lies: columns go in blocks of BLOCK_COLUMNS (the last one
 * narrower), each block's groups one after another, so that a tile's weights are one contiguous
 * stream (rows of the whole padded width apart, they fell into a few cache sets and missed L1). */
static inline int64_t packed_at(int64_t kg, int64_t np, int64_t g, int64_t j) {
    const int64_t c0 = j - j % BLOCK_COLUMNS, width = np - c0 < BLOCK_COLUMNS ? np - c0 : BLOCK_COLUMNS;
    return (c0 * kg + g * width + (j - c0)) * 4;
}

/* w (k, n) int8 into the four bytes at packed_at(g, j): w[4g + t][j] for t < 4 (zeros past k and
 * n), followed by the int32 correction 128 * sum_k w[k][j] of each (padded) column. */
void llmzip_linear8_pack(int64_t k, int64_t n, const int8_t *w, int8_t *packed) {
    const int64_t np = padded(n), kg = groups(k);
    memset(packed, 0, (size_t)llmzip_linear8_packed_size(k, n));
    int32_t *corr = (int32_t *)(packed + kg * np * 4);
    for (int64_t r = 0; r < k; r++)
        for (int64_t j = 0; j < n; j++) {
            packed[packed_at(kg, np, r / 4, j) + r % 4] = w[r * n + j];
            corr[j] += 128 * w[r * n + j];
        }
}

#if PACKED
/* acc[i][j] += the products over groups g0..g1 for rows i0.. (mb of them) and vectors v0.. (nb of
 * them) of the packed columns; the first block of groups starts from -corr instead of acc. */
static inline __attribute__((always_inline)) void tile(
    const uint8_t *restrict qu, int64_t stride, const int8_t *restrict wp, const int32_t *restrict corr,
    int64_t kg, int64_t g0, int64_t g1, int64_t np, int64_t i0, int64_t v0, int mb, int nb, int32_t *restrict acc) {
    __m512i c[TILE_ROWS][TILE_VECS];
    for (int j = 0; j < nb; j++)
        for (int i = 0; i < mb; i++)
            c[i][j] = g0 ? _mm512_loadu_si512(acc + (i0 + i) * np + (v0 + j) * LANES)
                         : _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(corr + (v0 + j) * LANES));
    for (int64_t g = g0; g < g1; g++) {
        __m512i b[TILE_VECS];
        for (int j = 0; j < nb; j++)
            b[j] = _mm512_loadu_si512(wp + packed_at(kg, np, g, (v0 + j) * LANES));
        for (int i = 0; i < mb; i++) {
            int32_t four;
            memcpy(&four, qu + (i0 + i) * stride + g * 4, 4);
            __m512i a = _mm512_set1_epi32(four);
            for (int j = 0; j < nb; j++)
                c[i][j] = _mm512_dpbusd_epi32(c[i][j], a, b[j]);
        }
    }
    for (int i = 0; i < mb; i++)
        for (int j = 0; j < nb; j++)
            _mm512_storeu_si512(acc + (i0 + i) * np + (v0 + j) * LANES, c[i][j]);
}

#define BLOCK_GROUPS 64   /* 256 inputs: a block of 64 packed columns' weights is 16 KiB, held in L1 */

/* acc (rows, np) = q @ w from the offset bytes qu (rows, 4 kg) and the packed weights. */
static void product(int64_t rows, int64_t kg, int64_t np, const uint8_t *qu, const int8_t *wp, int32_t *acc) {
    const int32_t *corr = (const int32_t *)(wp + kg * np * 4);
    const int64_t vecs = np / LANES, stride = kg * 4;
    for (int64_t v0 = 0; v0 < vecs; v0 += TILE_VECS) {
        int nb = vecs - v0 < TILE_VECS ? (int)(vecs - v0) : TILE_VECS;
        for (int64_t g0 = 0; g0 < kg; g0 += BLOCK_GROUPS) {
            int64_t g1 = kg - g0 < BLOCK_GROUPS ? kg : g0 + BLOCK_GROUPS;
            for (int64_t i0 = 0; i0 < rows; i0 += TILE_ROWS) {
                int mb = rows - i0 < TILE_ROWS ? (int)(rows - i0) : TILE_ROWS;
                if (mb == TILE_ROWS && nb == TILE_VECS)
                    tile(qu, stride, wp, corr, kg, g0, g1, np, i0, v0, TILE_ROWS, TILE_VECS, acc);
                else
                    tile(qu, stride, wp, corr, kg, g0, g1, np, i0, v0, mb, nb, acc);
            }
        }
    }
}

/* One row's rescale: floor(acc * factor * 2^e + bias), as float64 or as int64: the same IEEE
 * operations on eight lanes at once, then one at a time for the last few. */
static void rescale(const int32_t *restrict acc, int64_t n, int64_t e, const double *restrict factor,
                    const double *restrict bias, int64_t as_float, void *out) {
    const double p2 = (double)((int64_t)1 << e);     /* 0 <= e <= 56: exact */
    int64_t j = 0;
    const __m512d vp2 = _mm512_set1_pd(p2);
    for (; j + 8 <= n; j += 8) {
        __m512d x = _mm512_cvtepi32_pd(_mm256_loadu_si256((const __m256i *)(acc + j)));
        x = _mm512_add_pd(_mm512_mul_pd(_mm512_mul_pd(x, _mm512_loadu_pd(factor + j)), vp2), _mm512_loadu_pd(bias + j));
        x = _mm512_roundscale_pd(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        if (as_float)
            _mm512_storeu_pd((double *)out + j, x);
        else
            _mm512_storeu_si512((int64_t *)out + j, _mm512_cvttpd_epi64(x));
    }
    for (; j < n; j++) {
        double x = __builtin_floor((double)acc[j] * factor[j] * p2 + bias[j]);
        if (as_float)
            ((double *)out)[j] = x;
        else
            ((int64_t *)out)[j] = (int64_t)x;
    }
}
#endif

/* What follows a layer in the same pass over its outputs (int64 only), each step where asked:
 * y += residual (the residual connection; int64 wraps as numpy's), y clipped to +-clip, y replaced by
 * its activation (common.h's lookup). */
typedef struct {
    int64_t clip;              /* < 0: none */
    const int64_t *table;      /* 2 limit + 1 entries, or NULL */
    int64_t limit;
} Epilogue;

/* One row: residual is the row's own (n entries) or NULL. */
static void epilogue(const Epilogue *after, int64_t n, const int64_t *restrict residual, int64_t *restrict y) {
    if (residual)
        for (int64_t j = 0; j < n; j++)
            y[j] += residual[j];
    if (after->clip >= 0)
        for (int64_t j = 0; j < n; j++)
            y[j] = clamp(y[j], after->clip);
    if (after->table)
        for (int64_t j = 0; j < n; j++)
            y[j] = lookup(y[j], after->table, after->limit);
}

/* The epilogue alone, in place over y (rows, n) int64: for outputs another kernel computed. Returns
 * 0, or -2 for arguments out of range. */
int64_t llmzip_epilogue(int64_t rows, int64_t n, int64_t *y, const int64_t *residual, int64_t clip,
                        const int64_t *table, int64_t limit) {
    if (rows < 0 || n < 1 || (table && limit < 0))
        return -2;
    const Epilogue after = {clip, table, limit};
    for (int64_t r = 0; r < rows; r++)
        epilogue(&after, n, residual ? residual + r * n : NULL, y + r * n);
    return 0;
}

#define ROW_BLOCK 64   /* rows quantised, multiplied and rescaled together: their products stay in L2 */

/* out (rows, n) = the layer of x (rows, k) int64 (|x| < 2^62): float64 if as_float, else int64
 * (the caller's bound keeps every value below 2^62, where the conversion is defined), then the
 * epilogue (residual (rows, n) or NULL, clip, table; int64 only). packed: llmzip_linear8_pack of the
 * int8 weights (k, n); factor, bias (n,) float64. Returns 0; -1 when out of memory, -2 for sizes or
 * arguments out of range, -3 in a library built without VNNI (nothing written). */
int64_t llmzip_linear8(int64_t rows, int64_t k, int64_t n, const int64_t *x, const int8_t *packed,
                       const double *factor, const double *bias, int64_t as_float, void *out,
                       const int64_t *residual, int64_t clip, const int64_t *table, int64_t limit) {
#if PACKED
    const Epilogue after = {clip, table, limit};
    if (rows < 0 || k < 1 || n < 1 || k > (INT32_MAX / (Q_MAX * Q_MAX)) || (table && limit < 0)
        || (as_float && (residual || clip >= 0 || table)))
        return -2;
    const int64_t kg = groups(k), stride = kg * 4, width = padded(n);
    uint8_t *q = malloc((size_t)(ROW_BLOCK * stride));
    int32_t *acc = malloc((size_t)(ROW_BLOCK * width) * sizeof *acc);
    if (!q || !acc) {
        free(q), free(acc);
        return -1;
    }
    memset(q, 0, (size_t)(ROW_BLOCK * stride));
    const size_t item = as_float ? sizeof(double) : sizeof(int64_t);
    for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
        const int64_t nr = rows - r0 < ROW_BLOCK ? rows - r0 : ROW_BLOCK;
        int64_t e[ROW_BLOCK];
        for (int64_t r = 0; r < nr; r++)
            e[r] = quantize(x + (r0 + r) * k, 1, k, (int8_t *)q + r * stride, 1);
        for (int64_t i = 0; i < nr * stride; i++)
            q[i] ^= 0x80;    /* q + 128 as an unsigned byte (the pads too, whose weights are 0: any byte) */
        product(nr, kg, width, q, packed, acc);
        for (int64_t r = 0; r < nr; r++) {
            char *y = (char *)out + (size_t)((r0 + r) * n) * item;
            rescale(acc + r * width, n, e[r], factor, bias, as_float, y);
            if (!as_float)
                epilogue(&after, n, residual ? residual + (r0 + r) * n : NULL, (int64_t *)y);
        }
    }
    free(q), free(acc);
    return 0;
#else
    (void)rows, (void)k, (void)n, (void)x, (void)packed, (void)factor, (void)bias, (void)as_float, (void)out;
    (void)residual, (void)clip, (void)table, (void)limit;
    return -3;
#endif
}
