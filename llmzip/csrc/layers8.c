/* The engine's per-row layers, one call per block of rows: the norms and activation tables of
 * llmzip.fixedpoint (layer_norm, rms_norm, activation_lookup) with the clip of engine.common, and
 * the SwiGLU of engine.llama.
 *
 * Norm of a row x (d entries, int64, |x| < 2^62):
 *  - LayerNorm centres it: mean = floor((2 sum x + d) / (2 d)) (fixedpoint.row_mean, a floor
 *    division as numpy's //); RMSNorm does not (mean 0, beta 0);
 *  - shift = max(bit_length(max |x - mean|) - square_bits, 0), xs = (x - mean) >> shift, and the
 *    exact sum of squares ss of xs (below 2^62 by the choice of square_bits);
 *  - fixedpoint.norm_scale, the same IEEE operations in the same order, each correctly rounded:
 *    rms = sqrt((double)ss / d + ldexp(eps, 2 (in_frac - shift))), g = 24 + frexp exponent of rms,
 *    inv = floor(2^g / rms), s = g - out_frac;
 *  - z = (xs inv + 2^(s-1)) >> s, then ((z gamma + 2^(gf-1)) >> gf) + beta, clipped to +-clip.
 * A row whose s is below 1 (a row of zeros with eps below 2^-56) or whose rms is 0 (eps 0) is not
 * defined by these shifts: the call then returns 1 and the caller computes the rows with numpy.
 *
 * Built with -ffp-contract=off; -fwrapv makes int64 overflow wrap as numpy's does (never, for the
 * engine's inputs). The probe in llmzip.fused_check compares it with numpy in every process. */
#include <math.h>
#include <stdint.h>

#include "common.h"

/* numpy's // of int64 (rounds toward minus infinity). */
static inline int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return q - ((a % b != 0) && ((a < 0) != (b < 0)));
}

/* One row into out; returns 0, or 1 where its shifts are out of range (nothing defined). */
static int norm_row(int64_t d, const int64_t *restrict x, int64_t centre, int64_t square_bits, double eps,
                    int64_t in_frac, int64_t out_frac, const int64_t *restrict gamma, int64_t gamma_frac,
                    const int64_t *restrict beta, int64_t clip, int64_t *restrict out) {
    int64_t sum = 0;
    if (centre)
        for (int64_t j = 0; j < d; j++)
            sum += x[j];
    const int64_t mean = centre ? floor_div(2 * sum + d, 2 * d) : 0;
    int64_t hi = INT64_MIN, lo = INT64_MAX;
    for (int64_t j = 0; j < d; j++) {
        int64_t v = x[j] - mean;
        hi = v > hi ? v : hi;
        lo = v < lo ? v : lo;
    }
    int64_t shift = bit_length(hi > -lo ? hi : -lo) - square_bits;
    shift = shift > 0 ? shift : 0;
    int64_t ss = 0;
    for (int64_t j = 0; j < d; j++) {
        int64_t v = (x[j] - mean) >> shift;
        ss += v * v;
    }
    const double rms = sqrt((double)ss / (double)d + ldexp(eps, (int)(2 * (in_frac - shift))));
    int g;
    (void)frexp(rms, &g);
    g += 24;
    const int64_t s = g - out_frac;
    if (!(rms > 0) || s < 1 || s > 62)
        return 1;
    const int64_t inv = (int64_t)floor(ldexp(1.0, g) / rms);
    const int64_t half = (int64_t)1 << (s - 1), ghalf = (int64_t)1 << (gamma_frac - 1);
    for (int64_t j = 0; j < d; j++) {
        int64_t z = (((x[j] - mean) >> shift) * inv + half) >> s;
        z = ((z * gamma[j] + ghalf) >> gamma_frac) + beta[j];
        out[j] = clamp(z, clip);
    }
    return 0;
}

/* LayerNorm (centre) or RMSNorm (beta zeros) of x (rows, d), clipped, into out (rows, d).
 * Returns 0; 1 if some row's shifts are out of range (use numpy); -2 for arguments out of range. */
int64_t llmzip_norm(int64_t rows, int64_t d, const int64_t *x, int64_t centre, int64_t square_bits, double eps,
                    int64_t in_frac, int64_t out_frac, const int64_t *gamma, int64_t gamma_frac, const int64_t *beta,
                    int64_t clip, int64_t *out) {
    if (rows < 0 || d < 1 || square_bits < 1 || square_bits > 62 || gamma_frac < 1 || gamma_frac > 62 || clip < 0)
        return -2;
    for (int64_t r = 0; r < rows; r++)
        if (norm_row(d, x + r * d, centre, square_bits, eps, in_frac, out_frac, gamma, gamma_frac, beta, clip,
                     out + r * d))
            return 1;
    return 0;
}

/* The activation of u (n,) into out. */
void llmzip_activation(int64_t n, const int64_t *u, const int64_t *table, int64_t limit, int64_t *out) {
    for (int64_t i = 0; i < n; i++)
        out[i] = lookup(u[i], table, limit);
}

/* engine.llama.swiglu of gate_up (rows, 2 inner) into out (rows, inner): both halves clipped to
 * +-clip, then (silu(gate) * up + 2^(frac-1)) >> frac, silu by the table. Returns 0; -2 for a
 * shift out of range. */
int64_t llmzip_swiglu(int64_t rows, int64_t inner, const int64_t *gate_up, const int64_t *table, int64_t limit,
                      int64_t clip, int64_t frac, int64_t *out) {
    if (frac < 1 || frac > 62 || clip < 0 || inner < 1)
        return -2;
    const int64_t half = (int64_t)1 << (frac - 1);
    for (int64_t r = 0; r < rows; r++) {
        const int64_t *gate = gate_up + r * 2 * inner, *up = gate + inner;
        for (int64_t j = 0; j < inner; j++) {
            out[r * inner + j] = (lookup(clamp(gate[j], clip), table, limit) * clamp(up[j], clip) + half) >> frac;
        }
    }
    return 0;
}
