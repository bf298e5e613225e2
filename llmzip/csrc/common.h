/* What the hand-written kernels share: the int8 quantiser of llmzip.linear8 and the activation
 * tables' lookup of llmzip.fixedpoint. The library is built
 * with -fwrapv: x * mult wraps on overflow as numpy's does (never, for the engine's inputs). */
#ifndef LLMZIP_COMMON_H
#define LLMZIP_COMMON_H

#include <stdint.h>
#include <string.h>

#define Q_MAX 127

/* fixedpoint.bit_length: the exponent of the float64 conversion (0 for 0). */
static inline int64_t bit_length(int64_t peak) {
    double d = (double)peak;
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    int64_t field = (int64_t)((bits >> 52) & 2047);
    return field > 1022 ? field - 1022 : 0;
}

/* linear8.quantize_rows of one vector x * mult: int8 into q (stride apart), returns the shift. */
static inline int32_t quantize(const int64_t *x, int64_t mult, int64_t n, int8_t *q, int64_t stride) {
    int64_t hi = INT64_MIN, lo = INT64_MAX;
    for (int64_t i = 0; i < n; i++) {
        int64_t v = x[i] * mult;
        hi = v > hi ? v : hi;
        lo = v < lo ? v : lo;
    }
    int64_t neg = -lo;
    int64_t e = bit_length(hi > neg ? hi : neg) - 7;
    e = e > 0 ? e : 0;
    int64_t half = ((int64_t)1 << e) >> 1;
    for (int64_t i = 0; i < n; i++) {
        int64_t v = (x[i] * mult + half) >> e;
        q[i * stride] = (int8_t)(v > Q_MAX ? Q_MAX : v < -Q_MAX ? -Q_MAX : v);
    }
    return (int32_t)e;
}

/* v clipped to [-bound, bound] (bound >= 0): numpy's clip of the engine's residuals and activations. */
static inline int64_t clamp(int64_t v, int64_t bound) {
    return v < -bound ? -bound : v > bound ? bound : v;
}

/* fixedpoint.activation_lookup of one value: table[u + limit] inside [-limit, limit], u above it,
 * and the table's first entry (0) below it; table has 2 limit + 1 entries. */
static inline int64_t lookup(int64_t u, const int64_t *table, int64_t limit) {
    return u > limit ? u : table[(u < -limit ? -limit : u) + limit];
}

#endif
