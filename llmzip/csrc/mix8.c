/* The dense part of the context mixer's tables, written out by hand: llmzip.mixing.mixture.
 *
 * A row's mixed table is floor(lm * scale / 2^28) + 1 with scale = floor(mass * 2^28 / sum(lm)),
 * plus each sparse candidate's share at its token. Every number is an integer: lm entries >= 1
 * with totals <= 2^30 and mass <= 2^28, so lm * scale <= mass * 2^28 <= 2^56 (no overflow), and
 * every sum below is an exact int64 in any order. The probe in llmzip.fused_check compares both
 * functions with numpy in every process that loads this library.
 *
 *  - llmzip_mix_terms: what an encoder needs of the table of token x (mixture.coding_terms): its
 *    cumulative frequency, its frequency and the table's total, without building the table;
 *  - llmzip_mix_tables: the tables themselves (mixture.tables of mixture.scaled_lm), for a decoder.
 */
#include <stdint.h>

#define MASS_BITS 28

/* scale = floor(mass * 2^28 / sum(lm)) of one row; -1 if the sum is not in [1, 2^30]. */
static inline int64_t row_scale(const int32_t *restrict lm, int64_t vocab, int64_t mass) {
    int64_t sum = 0;
    for (int64_t j = 0; j < vocab; j++)
        sum += lm[j];
    return sum >= 1 && sum <= ((int64_t)1 << 30) ? (mass << MASS_BITS) / sum : -1;
}

/* Sum of floor(lm[j] * scale / 2^28) over j in [from, to). */
static inline int64_t scaled_sum(const int32_t *restrict lm, int64_t from, int64_t to, int64_t scale) {
    int64_t sum = 0;
    for (int64_t j = from; j < to; j++)
        sum += ((int64_t)lm[j] * scale) >> MASS_BITS;
    return sum;
}

/* Whether the sizes, gates and candidate tokens are in range (the LM rows are checked by their sums). */
static int rows_valid(int64_t rows, int64_t vocab, int64_t lm_stride, const int64_t *mass, int64_t width,
                      const int64_t *tok) {
    if (rows < 0 || vocab < 1 || width < 0 || lm_stride < vocab)
        return 0;
    for (int64_t r = 0; r < rows; r++) {
        if (mass[r] < 0 || mass[r] > ((int64_t)1 << MASS_BITS))
            return 0;
        for (int64_t k = 0; k < width; k++)
            if (tok[r * width + k] < 0 || tok[r * width + k] >= vocab)
                return 0;
    }
    return 1;
}

/* For each row r (lm rows lm_stride apart, int32; mass[r] the LM's gate; width candidates tok/share):
 * cum, freq and total of token x[r] in the mixed table. Returns 0, or -2 for inputs outside the
 * ranges above (an LM row whose total is not in [1, 2^30] is found when its turn comes: the rows
 * before it are written). */
int64_t llmzip_mix_terms(int64_t rows, int64_t vocab, const int32_t *lm, int64_t lm_stride, const int64_t *mass,
                         int64_t width, const int64_t *tok, const int64_t *share, const int64_t *x, int64_t *cum,
                         int64_t *freq, int64_t *total) {
    if (!rows_valid(rows, vocab, lm_stride, mass, width, tok))
        return -2;
    for (int64_t r = 0; r < rows; r++)
        if (x[r] < 0 || x[r] >= vocab)
            return -2;
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *row = lm + r * lm_stride;
        const int64_t *t = tok + r * width, *sh = share + r * width, xr = x[r];
        int64_t scale = row_scale(row, vocab, mass[r]);
        if (scale < 0)
            return -2;
        int64_t below = scaled_sum(row, 0, xr, scale), at = scaled_sum(row, xr, xr + 1, scale);
        int64_t above = scaled_sum(row, xr + 1, vocab, scale), sh_below = 0, sh_hit = 0, sh_all = 0;
        for (int64_t k = 0; k < width; k++) {
            sh_all += sh[k];
            sh_below += t[k] < xr ? sh[k] : 0;
            sh_hit += t[k] == xr ? sh[k] : 0;
        }
        cum[r] = below + xr + sh_below;
        freq[r] = at + 1 + sh_hit;
        total[r] = below + at + above + vocab + sh_all;
    }
    return 0;
}

/* The mixed tables (rows, vocab) int64 into out (C-contiguous). Returns 0, or -2 as above. */
int64_t llmzip_mix_tables(int64_t rows, int64_t vocab, const int32_t *lm, int64_t lm_stride, const int64_t *mass,
                          int64_t width, const int64_t *tok, const int64_t *share, int64_t *out) {
    if (!rows_valid(rows, vocab, lm_stride, mass, width, tok))
        return -2;
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *restrict row = lm + r * lm_stride;
        int64_t *restrict dest = out + r * vocab;
        const int64_t scale = row_scale(row, vocab, mass[r]);
        if (scale < 0)
            return -2;
        for (int64_t j = 0; j < vocab; j++)
            dest[j] = (((int64_t)row[j] * scale) >> MASS_BITS) + 1;
        for (int64_t k = 0; k < width; k++)      /* repeated tokens add up */
            dest[tok[r * width + k]] += share[r * width + k];
    }
    return 0;
}

/* The n-gram table of llmzip.mixing.ngram: one int32 record per slot, its check value (0: empty)
 * then `width` entries token | count << TOKEN_BITS. */
#define TOKEN_BITS 21
#define TOKEN_MASK ((1 << TOKEN_BITS) - 1)

/* NgramTable.lookup: tokens and counts (n, width) of the records at slot[i]; counts 0 where the
 * record's check is not chk[i]. Returns 0, or -2 for a slot outside the table. */
int64_t llmzip_ngram_lookup(const int32_t *table, int64_t slots, int64_t width, int64_t n, const int64_t *slot,
                            const int64_t *chk, int64_t *tok, int64_t *cnt) {
    for (int64_t i = 0; i < n; i++)
        if (slot[i] < 0 || slot[i] >= slots)
            return -2;
    for (int64_t i = 0; i < n; i++) {
        const int32_t *rec = table + slot[i] * (width + 1);
        const int64_t same = rec[0] == chk[i];
        for (int64_t k = 0; k < width; k++) {
            tok[i * width + k] = rec[1 + k] & TOKEN_MASK;
            cnt[i * width + k] = (rec[1 + k] >> TOKEN_BITS) * same;
        }
    }
    return 0;
}

/* One update of NgramTable.count: token x after the context of check chk, in the record rec. */
static void count_one(int32_t *rec, int64_t width, int64_t limit, int32_t chk, int32_t x) {
    int32_t tok[64], cnt[64];
    const int same = rec[0] == chk;
    for (int64_t k = 0; k < width; k++) {
        tok[k] = rec[1 + k] & TOKEN_MASK;
        cnt[k] = same ? rec[1 + k] >> TOKEN_BITS : 0;
    }
    int64_t hit = -1, low = 0;
    for (int64_t k = width - 1; k >= 0; k--) {      /* the first counted entry of x; the first least counted */
        hit = tok[k] == x && cnt[k] > 0 ? k : hit;
        low = cnt[k] <= cnt[low] ? k : low;
    }
    if (hit >= 0) {
        if (++cnt[hit] > limit)                      /* only the bumped entry can exceed the limit */
            for (int64_t k = 0; k < width; k++)
                cnt[k] >>= 1;
    } else {
        tok[low] = x;
        cnt[low] = 1;
    }
    rec[0] = chk;
    for (int64_t k = 0; k < width; k++)
        rec[1 + k] = tok[k] | cnt[k] << TOKEN_BITS;
}

/* NgramTable.learn: count x[i / orders] after each context i (slot, chk) with chk > 0, in the order
 * given (rows, then orders), each slot's updates in that order as the reference applies them.
 * Returns 0, or -2 for a slot, a width or a token out of range (nothing written). */
int64_t llmzip_ngram_learn(int32_t *table, int64_t slots, int64_t width, int64_t limit, int64_t rows, int64_t orders,
                           const int64_t *slot, const int64_t *chk, const int64_t *x) {
    if (width < 1 || width > 64 || limit < 1 || limit >= (1 << (31 - TOKEN_BITS)))
        return -2;
    for (int64_t i = 0; i < rows * orders; i++)
        if (chk[i] > 0 && (slot[i] < 0 || slot[i] >= slots || chk[i] > INT32_MAX || x[i / orders] < 0
                           || x[i / orders] > TOKEN_MASK))
            return -2;
    for (int64_t i = 0; i < rows * orders; i++)
        if (chk[i] > 0)
            count_one(table + slot[i] * (width + 1), width, limit, (int32_t)chk[i], (int32_t)x[i / orders]);
    return 0;
}
