/* The output head's coding tables, written out by hand: quantize.freqs_from_logits of
 * Linear8.float_out, from the int32 products the int8 GEMM gives (torch._int_mm), in one pass per
 * row that keeps the row in cache. The probe in llmzip.fused_check compares it with numpy in every
 * process that loads this library.
 *
 *  - logit: floor(acc * factor * 2^e + bias), the IEEE operations of linear8._rescale in its order
 *    (the first two exact, the addition correctly rounded), clipped to +-clip;
 *  - e = table[min(max - logit, last)] (integers: exact); their sum is an exact integer (each entry
 *    <= 2^30, fewer than 2^22 of them), summed here in int64 so that the loop vectorises;
 *  - f = 1 + floor(e * (scale / sum)): one IEEE division per row, one product per entry, as numpy.
 *
 * Built with -ffp-contract=off (no fused multiply-add may merge two roundings into one). */
#include <stdint.h>
#include <string.h>

#include "common.h"

/* 2^e for 0 <= e <= 1023, from its bits. */
static inline double pow2(int64_t e) {
    uint64_t bits = (uint64_t)(e + 1023) << 52;
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* One row: out[j] = 1 + floor(e_j * (scale / sum e)); logits is scratch of `vocab` int32 (the
 * clipped logits are integers within +-clip <= 2^30, so the gaps and indices run in 32-bit lanes). */
static void head_row(const int32_t *restrict acc, double p2, const double *restrict factor,
                     const double *restrict bias, const int32_t *restrict table, int32_t last, double clip,
                     double scale, int64_t vocab, int32_t *restrict logits, int32_t *restrict out) {
    /* floor, then the clip: the same as a clip to +-(clip + 1) (clip is an integer), a floor by
     * truncation and one correction, and the clip; written so, the loop vectorises. */
    const int32_t high = (int32_t)clip;
    int32_t top = -high;
    for (int64_t j = 0; j < vocab; j++) {
        double x = (double)acc[j] * factor[j] * p2 + bias[j];
        x = x < -clip - 1 ? -clip - 1 : x > clip + 1 ? clip + 1 : x;
        int32_t t = (int32_t)x;                        /* toward zero: floor, or one above it */
        t -= x < (double)t;
        logits[j] = t < -high ? -high : t > high ? high : t;
        top = logits[j] > top ? logits[j] : top;
    }
    int64_t sum = 0;
    for (int64_t j = 0; j < vocab; j++) {
        uint32_t gap = (uint32_t)top - (uint32_t)logits[j];   /* in [0, 2 * clip], up to 2^31: unsigned */
        int32_t e = table[gap < (uint32_t)last ? gap : (uint32_t)last];
        out[j] = e;
        sum += e;
    }
    const double ratio = scale / (double)sum;
    for (int64_t j = 0; j < vocab; j++)
        out[j] = (int32_t)((double)out[j] * ratio) + 1;  /* the cast truncates: floor (e >= 0) */
}

/* Tables (rows, vocab) int32 into out from acc (rows, vocab) int32 and the rows' quantisation shifts
 * (0 <= e <= 62); factor, bias: (vocab,); table: the exp table as int32, table_len entries; clip at
 * most 2^30; logits: scratch of vocab int32. Returns 0, or -2 for sizes, shifts or a clip out of
 * range (nothing written). */
int64_t llmzip_head_tables(int64_t rows, int64_t vocab, const int32_t *acc, const int64_t *shift, const double *factor,
                          const double *bias, const int32_t *table, int64_t table_len, double clip, double scale,
                          int32_t *logits, int32_t *out) {
    if (rows < 0 || vocab < 1 || table_len < 1 || table_len > INT32_MAX || !(clip >= 0 && clip <= 1 << 30))
        return -2;
    for (int64_t r = 0; r < rows; r++)
        if (shift[r] < 0 || shift[r] > 62)
            return -2;
    for (int64_t r = 0; r < rows; r++)
        head_row(acc + r * vocab, pow2(shift[r]), factor, bias, table, (int32_t)(table_len - 1), clip, scale, vocab, logits,
                 out + r * vocab);
    return 0;
}

/* linear8.quantize_rows: int8 rows q and shifts e (rows,) of int64 x (rows, n). */
void llmzip_quantize_rows(int64_t rows, int64_t n, const int64_t *x, int8_t *q, int64_t *e) {
    for (int64_t r = 0; r < rows; r++)
        e[r] = quantize(x + r * n, 1, n, q + r * n, 1);
}
