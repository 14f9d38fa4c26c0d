/* ---- integer kernels (the same in every tinydigits C export) ----
 * A value q of a uint8 tensor stands for scale * (q - zero). Accumulators are int32. Every
 * rescaling is an int32 multiplier and a right shift: x * multiplier / 2^shift, rounded half
 * up; no floating point anywhere.
 *
 * Memory: the network runs row by row. Each layer reads its input from a ring of a few rows
 * (as many as its kernel is tall) and writes each output row into the next layer's ring as soon
 * as it is computed; a schedule made at export says which layer computes its next row at each
 * step. So the RAM holds a few rows per layer, never a whole feature map. Rows are stored
 * pixel by pixel, the channels of a pixel side by side ([column][channel]), with the padding
 * columns in place: the zero padding of a convolution is the input's zero point (it stands for
 * 0.0), stored once, so the inner loops never test a border. */

#define TD_MAX_KERNEL 3

#if defined(__GNUC__)
#define TD_NOINLINE __attribute__((noinline))
#define TD_ALWAYS_INLINE __attribute__((always_inline))
#define TD_ALIGN4 __attribute__((aligned(4)))
#else
#define TD_NOINLINE
#define TD_ALWAYS_INLINE
#define TD_ALIGN4
#endif

typedef struct {
    uint16_t offset;    /* where its slots start in the arena */
    uint16_t row_bytes; /* (pad + width + pad) * channels */
    uint8_t rows;       /* slots: padded row r lives in slot r % rows */
    uint8_t pad;        /* rows of padding above and below, columns left and right */
    uint8_t height;     /* rows without the padding */
    uint8_t zero;       /* the zero point: the padding's value */
} td_ring;

typedef struct {
    /* [out_channels / 4][kernel][run / 4][4][4]: for each group of four output channels and
     * kernel row, the kernel row's weights in input order (column, then channel), four taps at
     * a time: four of the first channel, the same four of the second, third and fourth.
     * Zero-padded to whole groups of taps and of channels. */
    const int8_t *weight;
    const int32_t *bias;       /* [out_channels, padded to 4]: the bias less in_zero * the weights' sum */
    const int32_t *multiplier; /* [out_channels] */
    const uint8_t *shift;      /* [out_channels] */
    const int32_t *add_offset; /* 0, or [out_channels]: a constant added after the rescaling (x 2^add_shift) */
    int32_t add_multiplier;
    uint8_t in, out; /* ring indexes */
    uint8_t in_channels, out_channels, kernel, stride;
    uint8_t width; /* output columns computed (before the pooling) */
    uint8_t pool;  /* 1: a 2x2 max pool (stride 2) follows */
    uint8_t out_zero, add_shift, add_zero;
} td_conv_layer;

typedef struct {
    int32_t multiplier;
    uint8_t shift, in, out, channels, width, height, in_zero, out_zero;
} td_average_layer;

/* floor((x + 2^(n-1)) / 2^n) for 1 <= n <= 62, without shifting a negative number (whose
 * result C leaves to the compiler). */
static int64_t td_round_shift(int64_t x, uint8_t n)
{
    const int64_t y = x + ((int64_t)1 << (n - 1));
    if (y >= 0) {
        return y >> n;
    }
    return -((-y + ((int64_t)1 << n) - 1) >> n);
}

/* Clamped to 0..255 (one USAT on a Cortex-M3 or M4, in this form). */
static int32_t td_clamp(int32_t value)
{
    return value < 0 ? 0 : value > 255 ? 255 : value;
}

/* acc * multiplier / 2^shift, rounded half up, plus zero, saturated to uint8. */
static uint8_t td_requantize(int32_t acc, int32_t multiplier, uint8_t shift, uint8_t zero)
{
    if (shift > 32) {
        /* The usual case (a factor below 1/2), in 32-bit steps: the rounding term 2^(shift-1)
         * has no bit in the product's low word, so the high word alone gives the result, and
         * 2^30 added to it (2^62 to the product) keeps it positive, so the shift is unsigned. */
        const uint32_t high = (uint32_t)((uint64_t)((int64_t)acc * multiplier) >> 32)
                              + ((uint32_t)1 << (shift - 33)) + ((uint32_t)1 << 30);
        return (uint8_t)td_clamp((int32_t)(high >> (shift - 32)) - ((int32_t)1 << (62 - shift)) + zero);
    }
    {
        const int64_t value = td_round_shift((int64_t)acc * multiplier, shift) + zero;
        return (uint8_t)(value < 0 ? 0 : value > 255 ? 255 : value);
    }
}

/* Fill `count` bytes with `value` (a loop of our own: no C library). */
static void td_fill(uint8_t *bytes, int count, uint8_t value)
{
    int i;
    for (i = 0; i < count; i++) {
        bytes[i] = value;
    }
}

/* Every ring filled with its zero point: the padding rows above the image and the padding
 * columns, which no layer overwrites. */
static void td_start(uint8_t *arena, const td_ring *rings, int count)
{
    int i;
    for (i = 0; i < count; i++) {
        td_fill(arena + rings[i].offset, rings[i].rows * rings[i].row_bytes, rings[i].zero);
    }
}

/* Slot of padded row r of a ring. */
static uint8_t *td_slot(uint8_t *arena, const td_ring *ring, int r)
{
    return arena + ring->offset + (r % ring->rows) * ring->row_bytes;
}

/* Row y of the image, through the input table, into the first ring. */
static void td_input_row(const unsigned char *pixels, const uint8_t *table, uint8_t *arena, const td_ring *ring,
                         int y)
{
    uint8_t *out = td_slot(arena, ring, y + ring->pad) + ring->pad;
    const unsigned char *in = pixels + y * 28;
    int x;
    for (x = 0; x < 28; x++) {
        out[x] = table[in[x]];
    }
}

/* ---- the multiply-accumulate kernels ----
 * sum[0..7] += four output channels (a, b, c, d) at two output columns (0, 1), in the order
 * a0 a1 b0 b1 c0 c1 d0 d1. In each input row the window of column 0 starts `at` bytes in,
 * that of column 1 `gap` bytes after it; both are `run` bytes long (a multiple of 4). The
 * weights come in groups of four taps: four of channel a, then the same four of b, c and d
 * (16 bytes), so that each input byte loaded serves four channels and each weight two
 * columns: 6 loads for 8 multiply-adds. Out of line so that the eight sums stay in registers;
 * and with the gap a constant (td_dot's copies for gaps of 8, 16 and 32 bytes: 8 or 16
 * channels, stride 1 or 2), the second column needs no pointer of its own, which is what lets
 * the loop fit a Cortex-M's registers without spilling a sum to the stack. */

/* One tap in portable C: an input byte of each column times the four channels' weights, byte
 * loads and 32-bit multiply-adds (one MLA each on a Cortex-M3). */
#define TD_TAP(j)                                                                \
    x = p[j], y = p[gap + (j)];                                                  \
    u = w[j], a0 += x * u, a1 += y * u;                                          \
    u = w[4 + (j)], b0 += x * u, b1 += y * u;                                    \
    u = w[8 + (j)], c0 += x * u, c1 += y * u;                                    \
    u = w[12 + (j)], d0 += x * u, d1 += y * u

#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__) && !defined(__ARM_BIG_ENDIAN)
/* Cortex-M4/M7/M33 with the DSP extension: four input bytes in one load, spread into two
 * pairs of halfwords (UXTB16: bytes 0 and 2; rotated by 8: bytes 1 and 3), a channel's four
 * weights alike (SXTB16, signed); SMLAD multiplies both halfword pairs and adds both products
 * at once: each input word, once spread, serves the four channels. */
typedef uint32_t td_word __attribute__((may_alias, aligned(1)));

static inline uint32_t td_uxtb16(uint32_t x)
{
    uint32_t r;
    __asm__("uxtb16 %0, %1" : "=r"(r) : "r"(x));
    return r;
}

static inline uint32_t td_uxtb16_ror8(uint32_t x)
{
    uint32_t r;
    __asm__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

static inline uint32_t td_sxtb16(uint32_t x)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1" : "=r"(r) : "r"(x));
    return r;
}

static inline uint32_t td_sxtb16_ror8(uint32_t x)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

static inline int32_t td_smlad(uint32_t x, uint32_t y, int32_t acc)
{
    int32_t r;
    __asm__("smlad %0, %1, %2, %3" : "=r"(r) : "r"(x), "r"(y), "r"(acc));
    return r;
}

/* One channel's four weights (at w + 4 * n) times both columns' four inputs: two SMLAD each. */
#define TD_DSP_CHANNEL(n, s0, s1)                                                \
    v = *(const td_word *)(w + 4 * (n));                                         \
    v02 = td_sxtb16(v), v = td_sxtb16_ror8(v);                                   \
    s0 = td_smlad(x02, v02, s0), s0 = td_smlad(x13, v, s0);                      \
    s1 = td_smlad(y02, v02, s1), s1 = td_smlad(y13, v, s1)

static inline TD_ALWAYS_INLINE void td_dot_body(const uint8_t *const *rows, int kernel, int at, int gap,
                                                const int8_t *w, int run, int32_t *sum)
{
    int32_t a0 = sum[0], a1 = sum[1], b0 = sum[2], b1 = sum[3], c0 = sum[4], c1 = sum[5], d0 = sum[6], d1 = sum[7];
    int ky;
    for (ky = 0; ky < kernel; ky++) {
        const uint8_t *p = rows[ky] + at;
        const uint8_t *const end = p + run;
        do {
            const uint32_t x = *(const td_word *)p, y = *(const td_word *)(p + gap);
            const uint32_t x02 = td_uxtb16(x), x13 = td_uxtb16_ror8(x);
            const uint32_t y02 = td_uxtb16(y), y13 = td_uxtb16_ror8(y);
            uint32_t v, v02;
            TD_DSP_CHANNEL(0, a0, a1);
            TD_DSP_CHANNEL(1, b0, b1);
            TD_DSP_CHANNEL(2, c0, c1);
            TD_DSP_CHANNEL(3, d0, d1);
            p += 4, w += 16;
        } while (p != end);
    }
    sum[0] = a0, sum[1] = a1, sum[2] = b0, sum[3] = b1, sum[4] = c0, sum[5] = c1, sum[6] = d0, sum[7] = d1;
}
#else
/* Portable C: byte loads and 32-bit multiply-adds (one MLA each on a Cortex-M3). */
static inline TD_ALWAYS_INLINE void td_dot_body(const uint8_t *const *rows, int kernel, int at, int gap,
                                                const int8_t *w, int run, int32_t *sum)
{
    int32_t a0 = sum[0], a1 = sum[1], b0 = sum[2], b1 = sum[3], c0 = sum[4], c1 = sum[5], d0 = sum[6], d1 = sum[7];
    int ky;
    for (ky = 0; ky < kernel; ky++) {
        const uint8_t *p = rows[ky] + at;
        const uint8_t *const end = p + run;
        do {
            int32_t x, y, u;
            TD_TAP(0);
            TD_TAP(1);
            TD_TAP(2);
            TD_TAP(3);
            p += 4, w += 16;
        } while (p != end);
    }
    sum[0] = a0, sum[1] = a1, sum[2] = b0, sum[3] = b1, sum[4] = c0, sum[5] = c1, sum[6] = d0, sum[7] = d1;
}
#endif

static TD_NOINLINE void td_dot_gap8(const uint8_t *const *rows, int kernel, int at, const int8_t *w, int run,
                                    int32_t *sum)
{
    td_dot_body(rows, kernel, at, 8, w, run, sum);
}

static TD_NOINLINE void td_dot_gap16(const uint8_t *const *rows, int kernel, int at, const int8_t *w, int run,
                                     int32_t *sum)
{
    td_dot_body(rows, kernel, at, 16, w, run, sum);
}

static TD_NOINLINE void td_dot_gap32(const uint8_t *const *rows, int kernel, int at, const int8_t *w, int run,
                                     int32_t *sum)
{
    td_dot_body(rows, kernel, at, 32, w, run, sum);
}

static TD_NOINLINE void td_dot_any(const uint8_t *const *rows, int kernel, int at, int gap, const int8_t *w, int run,
                                   int32_t *sum)
{
    td_dot_body(rows, kernel, at, gap, w, run, sum);
}

/* The first convolution: one input channel and a 3x3 kernel, so nine taps, three per kernel
 * row (the general kernel would round each row up to four), all unrolled. */
static inline TD_ALWAYS_INLINE void td_first_body(const uint8_t *const *rows, int at, int gap, const int8_t *w,
                                                  int32_t *sum)
{
    int32_t a0 = sum[0], a1 = sum[1], b0 = sum[2], b1 = sum[3], c0 = sum[4], c1 = sum[5], d0 = sum[6], d1 = sum[7];
    int32_t x, y, u;
    const uint8_t *p = rows[0] + at;
    TD_TAP(0);
    TD_TAP(1);
    TD_TAP(2);
    p = rows[1] + at, w += 16;
    TD_TAP(0);
    TD_TAP(1);
    TD_TAP(2);
    p = rows[2] + at, w += 16;
    TD_TAP(0);
    TD_TAP(1);
    TD_TAP(2);
    sum[0] = a0, sum[1] = a1, sum[2] = b0, sum[3] = b1, sum[4] = c0, sum[5] = c1, sum[6] = d0, sum[7] = d1;
}

static TD_NOINLINE void td_dot_first(const uint8_t *const *rows, int at, const int8_t *w, int32_t *sum)
{
    td_first_body(rows, at, 1, w, sum); /* stride 1 */
}

static TD_NOINLINE void td_dot_first_any(const uint8_t *const *rows, int at, int gap, const int8_t *w, int32_t *sum)
{
    td_first_body(rows, at, gap, w, sum);
}

/* One output channel's rescaling, prepared once per row so that each value costs a few
 * instructions: see td_value. */
typedef struct {
    int32_t multiplier;
    uint32_t round;     /* 2^(shift-33) + 2^30 */
    int32_t less;       /* 2^(62-shift) - zero */
    uint8_t high_shift; /* shift - 32; 0 for a shift of 32 or less, taken by td_requantize */
    uint8_t shift, zero;
    uint8_t add_shift;  /* 0: no addition */
    uint32_t add_multiplier, add_base; /* add_base: offset - zero * add_multiplier + 2^31 + 2^(add_shift-1) */
    int32_t add_less;   /* 2^(31-add_shift) - add_zero */
} td_scale;

static void td_prepare(td_scale *scale, const td_conv_layer *layer, int channel)
{
    const uint8_t shift = layer->shift[channel];
    scale->multiplier = layer->multiplier[channel];
    scale->shift = shift;
    scale->zero = layer->out_zero;
    scale->high_shift = shift > 32 ? (uint8_t)(shift - 32) : 0;
    if (shift > 32) {
        scale->round = ((uint32_t)1 << (shift - 33)) + ((uint32_t)1 << 30);
        scale->less = ((int32_t)1 << (62 - shift)) - layer->out_zero;
    }
    scale->add_shift = layer->add_offset != 0 ? layer->add_shift : 0;
    if (scale->add_shift != 0) {
        scale->add_multiplier = (uint32_t)layer->add_multiplier;
        scale->add_base = (uint32_t)layer->add_offset[channel] - (uint32_t)layer->out_zero * scale->add_multiplier
                          + ((uint32_t)1 << 31) + ((uint32_t)1 << (layer->add_shift - 1));
        scale->add_less = ((int32_t)1 << (31 - layer->add_shift)) - layer->add_zero;
    }
}

/* One output value of a convolution: the accumulator rescaled, then the fused per-channel
 * addition if any (what is left of a BatchNorm shift that cannot move into the zero-padded
 * convolution after it). The same integers as td_requantize and td_round_shift, in 32-bit
 * steps: with a shift above 32 the rounding term 2^(shift-1) has no bit in the product's low
 * word, so its high word alone gives the result, and 2^30 added to it (2^62 to the product)
 * keeps it positive, so the shift is an unsigned one; the addition likewise with 2^31 (the
 * export checks that (q - zero) * multiplier + offset fits 31 bits). */
static inline TD_ALWAYS_INLINE int32_t td_value(const td_scale *scale, int32_t acc)
{
    int32_t v;
    if (scale->high_shift != 0) {
        const uint32_t high = (uint32_t)((uint64_t)((int64_t)acc * scale->multiplier) >> 32) + scale->round;
        v = td_clamp((int32_t)(high >> scale->high_shift) - scale->less);
    } else {
        v = td_requantize(acc, scale->multiplier, scale->shift, scale->zero);
    }
    if (scale->add_shift != 0) {
        v = td_clamp((int32_t)(((uint32_t)v * scale->add_multiplier + scale->add_base) >> scale->add_shift)
                     - scale->add_less);
    }
    return v;
}

/* A block's sums rescaled: channel j's column 0 to o0[j], its column 1 to o1[j]. */
static TD_NOINLINE void td_put(const td_scale *scale, const int32_t *sum, int count, uint8_t *o0, uint8_t *o1)
{
    int j;
    for (j = 0; j < count; j++, scale++, sum += 2) {
        o0[j] = (uint8_t)td_value(scale, sum[0]);
        o1[j] = (uint8_t)td_value(scale, sum[1]);
    }
}

/* The same for a 2x2 max pool: the larger sum of the pair of columns is the larger value
 * (rescaling and addition never decrease); an even row writes it, the odd row after it keeps
 * the larger of its own and that. So the pooling is ONNX's, taken on the values. */
static TD_NOINLINE void td_put_pooled(const td_scale *scale, const int32_t *sum, int count, uint8_t *o, int odd)
{
    int j;
    for (j = 0; j < count; j++, scale++, sum += 2) {
        const int32_t v = td_value(scale, sum[0] > sum[1] ? sum[0] : sum[1]);
        o[j] = (uint8_t)(odd && o[j] > v ? o[j] : v);
    }
}

/* Output row y of a convolution (before its pooling), its rescaling, its fused addition and,
 * if it pools, its half of the 2x2 max pool: written straight into the next layer's ring.
 * Four output channels at a time (the rescaling prepared once per row), two columns at a time;
 * the gap between the columns' windows picks the kernel's copy. */
static void td_conv_row(const td_conv_layer *layer, const td_ring *rings, uint8_t *arena, int y)
{
    const td_ring *in = &rings[layer->in], *out = &rings[layer->out];
    const int k = layer->kernel, cout = layer->out_channels;
    const int step = layer->stride * layer->in_channels; /* from one output column's window to the next */
    const int run = (k * layer->in_channels + 3) & ~3;    /* weights per kernel row and channel */
    const int first = layer->in_channels == 1 && k == 3;
    const int pool = layer->pool;
    uint8_t *const target = td_slot(arena, out, (pool ? y >> 1 : y) + out->pad) + out->pad * cout;
    const uint8_t *rows[TD_MAX_KERNEL];
    td_scale scale[4];
    int ky, x, c, j;
    for (ky = 0; ky < k; ky++) {
        const int r = y * layer->stride + ky; /* padded input row */
        uint8_t *slot = td_slot(arena, in, r);
        if (r >= in->pad + in->height) {
            td_fill(slot, in->row_bytes, in->zero); /* padding below the image: its slot is free by now */
        }
        rows[ky] = slot;
    }
    for (c = 0; c < cout; c += 4) {
        const int8_t *const w = layer->weight + c * k * run;
        const int count = cout - c < 4 ? cout - c : 4; /* channels of this group that exist (zero weights pad it) */
        for (j = 0; j < count; j++) {
            td_prepare(&scale[j], layer, c + j);
        }
        for (x = 0; x < layer->width; x += 2) {
            const int x1 = x + 1 < layer->width ? x + 1 : x; /* an odd last column: computed twice */
            const int gap = (x1 - x) * step;
            int32_t sum[8];
            for (j = 0; j < 4; j++) {
                sum[2 * j] = sum[2 * j + 1] = layer->bias[c + j];
            }
            if (first && gap == 1) {
                td_dot_first(rows, x * step, w, sum);
            } else if (first) {
                td_dot_first_any(rows, x * step, gap, w, sum);
            } else if (gap == 8) {
                td_dot_gap8(rows, k, x * step, w, run, sum);
            } else if (gap == 16) {
                td_dot_gap16(rows, k, x * step, w, run, sum);
            } else if (gap == 32) {
                td_dot_gap32(rows, k, x * step, w, run, sum);
            } else {
                td_dot_any(rows, k, x * step, gap, w, run, sum);
            }
            if (pool) {
                td_put_pooled(scale, sum, count, target + (x >> 1) * cout + c, y & 1);
            } else {
                td_put(scale, sum, count, target + x * cout + c, target + x1 * cout + c);
            }
        }
    }
}

/* Global average pooling, a row at a time: the sums of (q - zero) per channel; after the last
 * row, the mean rescaled (the multiplier includes the division by the number of pixels). */
static void td_average_row(const td_average_layer *layer, const td_ring *rings, uint8_t *arena, int32_t *sums,
                           int y)
{
    const uint8_t *in = td_slot(arena, &rings[layer->in], y);
    int c, x;
    if (y == 0) {
        for (c = 0; c < layer->channels; c++) {
            sums[c] = 0;
        }
    }
    for (x = 0; x < layer->width; x++) {
        for (c = 0; c < layer->channels; c++) {
            sums[c] += (int32_t)*in++ - layer->in_zero;
        }
    }
    if (y == layer->height - 1) {
        uint8_t *out = td_slot(arena, &rings[layer->out], 0);
        for (c = 0; c < layer->channels; c++) {
            out[c] = td_requantize(sums[c], layer->multiplier, layer->shift, layer->out_zero);
        }
    }
}

/* The scores (quantized logits less their zero point) and the first of the highest. */
static int td_argmax(const uint8_t *logits, uint8_t zero, int32_t scores[10])
{
    int i, best = 0;
    for (i = 0; i < 10; i++) {
        scores[i] = (int32_t)logits[i] - zero;
        if (scores[i] > scores[best]) {
            best = i;
        }
    }
    return best;
}
