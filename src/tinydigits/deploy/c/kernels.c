/* ---- integer kernels (the same in every tinydigits C export) ----
 * Tensors are uint8, channel-major ([channel][row][column]); a value q stands for
 * scale * (q - zero). Accumulators are int32. Every rescaling is an int32 multiplier and a
 * right shift: x * multiplier / 2^shift, rounded half up; no floating point anywhere. */

typedef struct {
    const int8_t *weight;      /* [out_channels][in_channels][kernel][kernel] */
    const int32_t *bias;       /* [out_channels] */
    const int32_t *multiplier; /* [out_channels] */
    const uint8_t *shift;      /* [out_channels] */
    uint16_t in_channels, in_height, in_width;
    uint16_t out_channels, out_height, out_width; /* after the pooling, if any */
    uint8_t kernel, stride, pad;
    uint8_t pool; /* 1: a 2x2 max pool (stride 2) follows; taken on the accumulators */
    uint8_t in_zero, out_zero;
} td_conv_layer;

typedef struct {
    const int32_t *offset; /* [channels]: the added constant, already times 2^shift */
    int32_t multiplier;
    uint16_t channels, size;
    uint8_t shift, in_zero, out_zero;
} td_add_layer;

typedef struct {
    int32_t multiplier;
    uint16_t channels, size;
    uint8_t shift, in_zero, out_zero;
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

static uint8_t td_saturate(int64_t value)
{
    return (uint8_t)(value < 0 ? 0 : value > 255 ? 255 : value);
}

static uint8_t td_requantize(int32_t acc, int32_t multiplier, uint8_t shift, uint8_t zero)
{
    return td_saturate(td_round_shift((int64_t)acc * multiplier, shift) + zero);
}

static void td_input(const unsigned char *pixels, const uint8_t *table, uint8_t *out)
{
    int i;
    for (i = 0; i < 784; i++) {
        out[i] = table[pixels[i]];
    }
}

/* A convolution, its requantisation and (if pool) a 2x2 max pool. One output row at a time,
 * tap by tap: the innermost loop runs along the row with a fixed weight, a plain
 * multiply-accumulate. Zero padding: the input's zero point stands for 0.0, so taps that fall
 * outside the image add nothing and their range is cut once per layer. The requantisation
 * never decreases (its multiplier is positive), so pooling the accumulators is the same as
 * pooling the outputs, and the unpooled map needs two rows of accumulators, not a buffer. */
#define TD_MAX_WIDTH 28 /* widest convolution output (before pooling) */
#define TD_MAX_KERNEL 3

/* sum[i] += (pixel[i * stride] - zero) * weight: the innermost loop. Kept out of line so that
 * its few values stay in registers (inlined into td_conv, GCC -Os spills them to the stack and
 * needs about three times the instructions). */
#if defined(__GNUC__)
#define TD_NOINLINE __attribute__((noinline))
#else
#define TD_NOINLINE
#endif

static TD_NOINLINE void td_row(int32_t *sum, const uint8_t *pixel, int count, int stride, int32_t zero, int32_t weight)
{
    int i;
    for (i = 0; i < count; i++) {
        sum[i] += ((int32_t)pixel[i * stride] - zero) * weight;
    }
}

static void td_conv(const uint8_t *in, uint8_t *out, const td_conv_layer *layer)
{
    int32_t acc[2][TD_MAX_WIDTH];
    int first[TD_MAX_KERNEL], last[TD_MAX_KERNEL]; /* the output columns each kernel column reaches */
    const int k = layer->kernel, stride = layer->stride, pad = layer->pad;
    const int pool = layer->pool ? 2 : 1, width = layer->out_width * pool;
    const int plane = layer->in_height * layer->in_width;
    int oc, oy, row, ic, ky, kx, x;
    for (kx = 0; kx < k; kx++) {
        first[kx] = pad > kx ? (pad - kx + stride - 1) / stride : 0;
        last[kx] = (layer->in_width - 1 + pad - kx) / stride + 1;
        if (last[kx] > width) {
            last[kx] = width;
        }
    }
    for (oc = 0; oc < layer->out_channels; oc++) {
        const int8_t *filter = layer->weight + oc * layer->in_channels * k * k;
        for (oy = 0; oy < layer->out_height; oy++) {
            for (row = 0; row < pool; row++) {
                int32_t *sum = acc[row];
                const int top = (oy * pool + row) * stride - pad;
                for (x = 0; x < width; x++) {
                    sum[x] = 0;
                }
                for (ic = 0; ic < layer->in_channels; ic++) {
                    for (ky = 0; ky < k; ky++) {
                        const int y = top + ky;
                        if (y < 0 || y >= layer->in_height) {
                            continue;
                        }
                        for (kx = 0; kx < k; kx++) {
                            /* the offset as one integer: never a pointer before the buffer */
                            const int offset = ic * plane + y * layer->in_width + first[kx] * stride - pad + kx;
                            td_row(sum + first[kx], in + offset, last[kx] - first[kx], stride, layer->in_zero,
                                   filter[(ic * k + ky) * k + kx]);
                        }
                    }
                }
            }
            for (x = 0; x < layer->out_width; x++) {
                int32_t best = acc[0][x * pool];
                if (pool == 2) {
                    best = best > acc[0][2 * x + 1] ? best : acc[0][2 * x + 1];
                    best = best > acc[1][2 * x] ? best : acc[1][2 * x];
                    best = best > acc[1][2 * x + 1] ? best : acc[1][2 * x + 1];
                }
                *out++ = td_requantize(best + layer->bias[oc], layer->multiplier[oc], layer->shift[oc],
                                       layer->out_zero);
            }
        }
    }
}

/* x + constant[channel], rescaled, in place: what is left of a BatchNorm shift that cannot
 * move into the zero-padded convolution after it. */
static void td_add(uint8_t *x, const td_add_layer *layer)
{
    int c, i;
    for (c = 0; c < layer->channels; c++) {
        for (i = 0; i < layer->size; i++, x++) {
            const int64_t value = (int64_t)((int32_t)*x - layer->in_zero) * layer->multiplier
                                  + layer->offset[c];
            *x = td_saturate(td_round_shift(value, layer->shift) + layer->out_zero);
        }
    }
}

/* Global average pooling: the multiplier includes the division by the number of pixels. */
static void td_average(const uint8_t *in, uint8_t *out, const td_average_layer *layer)
{
    int c, i;
    for (c = 0; c < layer->channels; c++) {
        int32_t sum = 0;
        for (i = 0; i < layer->size; i++) {
            sum += (int32_t)*in++ - layer->in_zero;
        }
        out[c] = td_requantize(sum, layer->multiplier, layer->shift, layer->out_zero);
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
