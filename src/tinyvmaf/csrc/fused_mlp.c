/* The training step of stacked tiny MLPs (nn.Linear layers and one parameter-free activation),
 * written out by hand: forward, the censored squared loss, backward and AdamW, one fold's
 * mini-batch at a time, with no allocation and no dispatch per step.
 *
 * Why: at these sizes (225 to 2,561 weights, 256 rows a mini-batch) a step written in torch ops
 * costs its ~40 op dispatches and its kernels' fixed costs (a [14, 256, 16] x [14, 16, 8] bmm,
 * 54 us for 0.7 MFLOP), not its arithmetic: the v1 mlp_small LOSO ran at 1 % of the machine's
 * matmul rate. Here a fold's step is a few loops over its rows, vectorized by the compiler, and
 * folds are independent: the caller runs disjoint ranges of folds on separate threads.
 *
 * Semantics (tinyvmaf.stacked holds the autograd reference the tests compare against):
 *   - rows are the fold's own, standardized as its model standardizes them (z, target, bounds);
 *   - a fold's mini-batch j covers rows order[j*B .. min((j+1)*B, n_k)): past n_k the fold is
 *     inactive for that step (no update, no step counted), as a separate run's shorter epoch;
 *   - loss: mean over the mini-batch's rows of r^2, r = out - target, r = 0 where the teacher sits
 *     on a bound (low/high, +-inf where it does not) and the prediction lies beyond it;
 *   - AdamW with the per-step coefficients tinyvmaf.stacked._coefficients tables (lr schedule,
 *     betas, bias corrections): p *= c0; m += c1 (g - m); v = v c2 + c3 g^2;
 *     p -= m c4 / (sqrt(v) c5 + eps).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { ACT_IDENTITY = 0, ACT_RELU = 1, ACT_SILU = 2, ACT_TANH = 3, ACT_SIGMOID = 4 };
enum { C_DECAY, C_MOMENT1, C_BETA2, C_MOMENT2, C_STEP_SIZE, C_RMS_SCALE, N_COEF };

#define MAX_LAYERS 64
/* Rows are processed LANES at a time: fixed-size inner loops that the compiler keeps in vector
 * registers. Activations are stored feature-major ([width][stride], stride = the mini-batch rounded
 * up to LANES), so every inner loop runs over contiguous rows. */
#define LANES 16

/* exp(x) of LANES values in float32, to ~2 ulp (Cephes' expf), written as fixed-size loops that the
 * compiler vectorizes: libm's expf is an opaque call per element (6,000 of them in a small fold's
 * step). 2^n is built in its exponent bits, copied between arrays (a union blocks vectorizing). */
static inline void exp_lanes(const float *x, float *y) {
    float r[LANES], n[LANES], scale[LANES];
    int32_t bits[LANES];
    for (int l = 0; l < LANES; l++) {
        float v = x[l] < -87.3f ? -87.3f : (x[l] > 88.3f ? 88.3f : x[l]);  /* 2^n stays a normal float */
        n[l] = floorf(v * 1.44269504088896341f + 0.5f);
        r[l] = v - n[l] * 0.693359375f + n[l] * 2.12194440e-4f;
        bits[l] = ((int32_t)n[l] + 127) << 23;
    }
    memcpy(scale, bits, sizeof scale);
    for (int l = 0; l < LANES; l++) {
        float p = 1.9875691500e-4f;
        p = p * r[l] + 1.3981999507e-3f;
        p = p * r[l] + 8.3334519073e-3f;
        p = p * r[l] + 4.1665795894e-2f;
        p = p * r[l] + 1.6666665459e-1f;
        p = p * r[l] + 5.0000001201e-1f;
        p = p * r[l] * r[l] + r[l] + 1.0f;
        y[l] = x[l] != x[l] ? x[l] : p * scale[l];  /* NaN stays NaN: the step reports it */
    }
}

/* a = act(h) over n values, n a multiple of LANES; SiLU keeps its sigmoid in `sig` for the backward. */
static void activate(int act, const float *restrict h, float *restrict a, float *restrict sig, int64_t n) {
    float e[LANES];
    for (int64_t i = 0; i < n; i += LANES) {
        const float *hi = h + i;
        float *ai = a + i;
        switch (act) {
        case ACT_RELU:
            for (int l = 0; l < LANES; l++) ai[l] = hi[l] > 0.0f ? hi[l] : 0.0f;
            break;
        case ACT_SILU:
            for (int l = 0; l < LANES; l++) e[l] = -hi[l];
            exp_lanes(e, e);
            for (int l = 0; l < LANES; l++) {
                sig[i + l] = 1.0f / (1.0f + e[l]);
                ai[l] = hi[l] * sig[i + l];
            }
            break;
        case ACT_SIGMOID:
            for (int l = 0; l < LANES; l++) e[l] = -hi[l];
            exp_lanes(e, e);
            for (int l = 0; l < LANES; l++) ai[l] = 1.0f / (1.0f + e[l]);
            break;
        case ACT_TANH:
            for (int l = 0; l < LANES; l++) e[l] = 2.0f * hi[l];
            exp_lanes(e, e);
            for (int l = 0; l < LANES; l++) ai[l] = 1.0f - 2.0f / (1.0f + e[l]);
            break;
        default:
            for (int l = 0; l < LANES; l++) ai[l] = hi[l];
        }
    }
}

/* g *= act'(h), given h, a = act(h) and SiLU's sigmoid `sig`, over n values, n a multiple of LANES. */
static void activate_backward(int act, const float *restrict h, const float *restrict a, const float *restrict sig,
                              float *restrict g, int64_t n) {
    for (int64_t i = 0; i < n; i += LANES) {
        const float *hi = h + i, *ai = a + i, *si = sig + i;
        float *gi = g + i;
        switch (act) {
        case ACT_RELU:
            for (int l = 0; l < LANES; l++) gi[l] = hi[l] > 0.0f ? gi[l] : 0.0f;
            break;
        case ACT_SILU:  /* s (1 + h (1 - s)), s = sigmoid(h) */
            for (int l = 0; l < LANES; l++) gi[l] *= si[l] * (1.0f + hi[l] * (1.0f - si[l]));
            break;
        case ACT_TANH:
            for (int l = 0; l < LANES; l++) gi[l] *= 1.0f - ai[l] * ai[l];
            break;
        case ACT_SIGMOID:
            for (int l = 0; l < LANES; l++) gi[l] *= ai[l] * (1.0f - ai[l]);
            break;
        default:
            break;
        }
    }
}

/* Offsets of layer l's weight [out, in] and bias [out] in a fold's flat parameter row. */
static void layer_offsets(int n_layers, const int32_t *widths, int64_t *weight_at, int64_t *bias_at) {
    int64_t at = 0;
    for (int l = 0; l < n_layers; l++) {
        weight_at[l] = at;
        at += (int64_t)widths[l] * widths[l + 1];
        bias_at[l] = at;
        at += widths[l + 1];
    }
}

typedef struct {
    int n_layers, activation;
    const int32_t *widths;  /* n_layers + 1: inputs, hidden..., 1 */
    int64_t n_params, stride;
    float eps;
} Shape;

typedef struct {  /* one thread's working memory, sized for a full mini-batch */
    float *act[MAX_LAYERS], *pre[MAX_LAYERS];  /* each layer's input and its pre-activation */
    float *sig[MAX_LAYERS];                     /* SiLU's sigmoid of each hidden pre-activation */
    float *delta, *delta_next, *grad;
} Scratch;

/* W(o, i): W[o * in + i] in torch's [out, in] layout, or W[i * out + o] read as its transpose. */
static inline float weight_at_(const float *W, int in, int out, int o, int i, int transpose) {
    return transpose ? W[(int64_t)i * out + o] : W[(int64_t)o * in + i];
}

/* y[o][r] = b[o] + sum_i W(o, i) x[i][r] over row blocks (b NULL: no bias). Four outputs at a
 * time share each load of x (a 64-32 layer: 1.25 loads per multiply-add instead of 2); the
 * fixed 4 x LANES accumulators stay in registers. */
static void affine(const float *W, const float *b, const float *restrict x, float *restrict y, int in, int out,
                   int64_t blocks, int64_t stride, int transpose) {
    const int quads = out / 4 * 4;
    for (int64_t r0 = 0; r0 < blocks * LANES; r0 += LANES) {
        for (int o = 0; o < quads; o += 4) {
            float a0[LANES], a1[LANES], a2[LANES], a3[LANES];
            for (int l = 0; l < LANES; l++) {
                a0[l] = b ? b[o] : 0.0f;
                a1[l] = b ? b[o + 1] : 0.0f;
                a2[l] = b ? b[o + 2] : 0.0f;
                a3[l] = b ? b[o + 3] : 0.0f;
            }
            for (int i = 0; i < in; i++) {
                const float w0 = weight_at_(W, in, out, o, i, transpose), w1 = weight_at_(W, in, out, o + 1, i, transpose),
                            w2 = weight_at_(W, in, out, o + 2, i, transpose), w3 = weight_at_(W, in, out, o + 3, i, transpose);
                const float *xi = x + i * stride + r0;
                for (int l = 0; l < LANES; l++) {
                    a0[l] += w0 * xi[l];
                    a1[l] += w1 * xi[l];
                    a2[l] += w2 * xi[l];
                    a3[l] += w3 * xi[l];
                }
            }
            for (int l = 0; l < LANES; l++) {
                y[o * stride + r0 + l] = a0[l];
                y[(o + 1) * stride + r0 + l] = a1[l];
                y[(o + 2) * stride + r0 + l] = a2[l];
                y[(o + 3) * stride + r0 + l] = a3[l];
            }
        }
        for (int o = quads; o < out; o++) {
            float acc[LANES];
            for (int l = 0; l < LANES; l++) acc[l] = b ? b[o] : 0.0f;
            for (int i = 0; i < in; i++) {
                const float w = weight_at_(W, in, out, o, i, transpose), *xi = x + i * stride + r0;
                for (int l = 0; l < LANES; l++) acc[l] += w * xi[l];
            }
            for (int l = 0; l < LANES; l++) y[o * stride + r0 + l] = acc[l];
        }
    }
}

static inline float lane_sum(const float *v) {
    float total = 0.0f;
    for (int l = 0; l < LANES; l++) total += v[l];
    return total;
}

/* gW[o][i] = sum_r d[o][r] x[i][r], gb[o] = sum_r d[o][r] (rows past the mini-batch hold d = 0);
 * four inputs at a time share each load of d[o]. */
static void weight_gradient(const float *restrict d, const float *restrict x, float *restrict gW, float *restrict gb,
                            int in, int out, int64_t blocks, int64_t stride) {
    const int quads = in / 4 * 4;
    const int64_t n = blocks * LANES;
    for (int o = 0; o < out; o++) {
        const float *dout = d + o * stride;
        float bias[LANES] = {0};
        for (int64_t r0 = 0; r0 < n; r0 += LANES)
            for (int l = 0; l < LANES; l++) bias[l] += dout[r0 + l];
        gb[o] = lane_sum(bias);
        for (int i = 0; i < quads; i += 4) {
            const float *x0 = x + i * stride, *x1 = x0 + stride, *x2 = x1 + stride, *x3 = x2 + stride;
            float a0[LANES] = {0}, a1[LANES] = {0}, a2[LANES] = {0}, a3[LANES] = {0};
            for (int64_t r0 = 0; r0 < n; r0 += LANES)
                for (int l = 0; l < LANES; l++) {
                    const float dl = dout[r0 + l];
                    a0[l] += dl * x0[r0 + l];
                    a1[l] += dl * x1[r0 + l];
                    a2[l] += dl * x2[r0 + l];
                    a3[l] += dl * x3[r0 + l];
                }
            gW[(int64_t)o * in + i] = lane_sum(a0);
            gW[(int64_t)o * in + i + 1] = lane_sum(a1);
            gW[(int64_t)o * in + i + 2] = lane_sum(a2);
            gW[(int64_t)o * in + i + 3] = lane_sum(a3);
        }
        for (int i = quads; i < in; i++) {
            const float *xi = x + i * stride;
            float acc[LANES] = {0};
            for (int64_t r0 = 0; r0 < n; r0 += LANES)
                for (int l = 0; l < LANES; l++) acc[l] += dout[r0 + l] * xi[r0 + l];
            gW[(int64_t)o * in + i] = lane_sum(acc);
        }
    }
}

/* One optimizer step of one fold on `rows` rows (indices `index`): returns the mini-batch loss. */
static double fold_step(const Shape *s, const Scratch *scratch, float *param, float *exp_avg, float *exp_avg_sq,
                        const float *z, const float *target, const float *low, const float *high,
                        const int64_t *index, int64_t rows, const float *coef) {
    const int L = s->n_layers;
    const int32_t *w = s->widths;
    const int64_t stride = s->stride, blocks = (rows + LANES - 1) / LANES;
    float *const *act = scratch->act, *const *pre = scratch->pre;
    float *grad = scratch->grad, *delta = scratch->delta, *delta_next = scratch->delta_next;
    int64_t weight_at[MAX_LAYERS], bias_at[MAX_LAYERS];
    layer_offsets(L, w, weight_at, bias_at);

    /* Forward. The rows past the mini-batch up to the block's end are zeros: finite, and their
     * delta is 0, so they add nothing to the gradient. */
    const int in0 = w[0];
    for (int i = 0; i < in0; i++) {
        float *column = act[0] + i * stride;
        for (int64_t r = 0; r < rows; r++) column[r] = z[index[r] * in0 + i];
        for (int64_t r = rows; r < blocks * LANES; r++) column[r] = 0.0f;
    }
    for (int l = 0; l < L; l++) {
        affine(param + weight_at[l], param + bias_at[l], act[l], pre[l], w[l], w[l + 1], blocks, stride, 0);
        if (l < L - 1)
            for (int o = 0; o < w[l + 1]; o++)
                activate(s->activation, pre[l] + o * stride, act[l + 1] + o * stride, scratch->sig[l] + o * stride,
                         blocks * LANES);
    }

    /* The censored loss and its gradient at the output (one unit). */
    double loss = 0.0;
    const float *out = pre[L - 1];
    const float two_over_rows = 2.0f / (float)rows;
    for (int64_t r = 0; r < blocks * LANES; r++) {
        float e = 0.0f;
        if (r < rows) {
            const int64_t row = index[r];
            e = out[r] - target[row];
            if ((out[r] <= low[row]) || (out[r] >= high[row])) e = 0.0f;
        }
        loss += (double)e * e;
        delta[r] = e * two_over_rows;
    }
    loss /= (double)rows;

    /* Backward: the weights' gradient, then the delta of the layer below. */
    for (int l = L - 1; l >= 0; l--) {
        weight_gradient(delta, act[l], grad + weight_at[l], grad + bias_at[l], w[l], w[l + 1], blocks, stride);
        if (l == 0) break;
        /* d_below[i][r] = sum_o W[o][i] d[o][r]: W read as the transpose of an [in, out] matrix. */
        affine(param + weight_at[l], NULL, delta, delta_next, w[l + 1], w[l], blocks, stride, 1);
        for (int i = 0; i < w[l]; i++)
            activate_backward(s->activation, pre[l - 1] + i * stride, act[l] + i * stride,
                              scratch->sig[l - 1] + i * stride, delta_next + i * stride, blocks * LANES);
        float *swap = delta;
        delta = delta_next;
        delta_next = swap;
    }

    /* AdamW, with this step's coefficients. */
    const float c0 = coef[C_DECAY], c1 = coef[C_MOMENT1], c2 = coef[C_BETA2], c3 = coef[C_MOMENT2],
                c4 = coef[C_STEP_SIZE], c5 = coef[C_RMS_SCALE];
    for (int64_t p = 0; p < s->n_params; p++) {
        const float g = grad[p];
        param[p] *= c0;
        exp_avg[p] += c1 * (g - exp_avg[p]);
        exp_avg_sq[p] = exp_avg_sq[p] * c2 + c3 * (g * g);
        param[p] -= exp_avg[p] * c4 / (sqrtf(exp_avg_sq[p]) * c5 + s->eps);
    }
    return loss;
}

/* Train folds [fold_begin, fold_end) through one chunk of their epoch: mini-batches first ..
 * first + count - 1, whose rows `index` lists ([K, count * batch], row numbers into z's K *
 * row_stride rows; fold k's mini-batch j has min(batch, rows[k] - j * batch) real rows, none past
 * its epoch's end). param, exp_avg, exp_avg_sq: [K, n_params]; z: [K * row_stride, widths[0]];
 * target, low, high: [K * row_stride]; coef: [K, table_steps, 6]; steps: [K], the AdamW steps each
 * fold has taken; loss_sum, batches: [K] accumulators.
 * Returns 0, or 1 + the first fold whose loss was not finite (its parameters are then garbage). */
int tv_train_folds(int fold_begin, int fold_end, int n_layers, const int32_t *widths, int activation,
                   float *param, float *exp_avg, float *exp_avg_sq, int64_t n_params,
                   const float *z, const float *target, const float *low, const float *high,
                   const int64_t *index, const int64_t *rows, int64_t batch, int64_t first, int64_t count,
                   const float *coef, int64_t table_steps, int64_t *steps, float eps,
                   double *loss_sum, double *batches) {
    if (n_layers < 1 || n_layers > MAX_LAYERS || batch < 1) return -1;
    const int64_t stride = (batch + LANES - 1) / LANES * LANES;
    Shape s = {n_layers, activation, widths, n_params, stride, eps};
    int64_t widest = 1, activations = 0;
    for (int l = 0; l <= n_layers; l++) {
        if (widths[l] > widest) widest = widths[l];
        activations += widths[l];
    }
    /* One block per call: each layer's input, pre-activation and sigmoid, two deltas, the gradient. */
    float *block = malloc((size_t)((3 * activations + 2 * widest) * stride + n_params) * sizeof(float));
    if (!block) return -2;
    Scratch w = {.grad = block};
    float *cursor = block + n_params;
    for (int l = 0; l < n_layers; l++) {
        w.act[l] = cursor;
        cursor += (int64_t)widths[l] * stride;
        w.pre[l] = cursor;
        cursor += (int64_t)widths[l + 1] * stride;
        w.sig[l] = cursor;
        cursor += (int64_t)widths[l + 1] * stride;
    }
    w.delta = cursor;
    w.delta_next = cursor + widest * stride;

    int status = 0;
    for (int k = fold_begin; k < fold_end && !status; k++) {
        for (int64_t j = first; j < first + count; j++) {
            const int64_t start = j * batch;
            if (start >= rows[k]) break;  /* this fold's epoch is over: inactive */
            const int64_t m = rows[k] - start < batch ? rows[k] - start : batch;
            const int64_t t = steps[k] < table_steps ? steps[k] : table_steps - 1;
            const int64_t *chunk_rows = index + (int64_t)k * count * batch + (j - first) * batch;
            double loss = fold_step(&s, &w, param + k * n_params, exp_avg + k * n_params, exp_avg_sq + k * n_params,
                                    z, target, low, high, chunk_rows, m, coef + ((int64_t)k * table_steps + t) * N_COEF);
            if (!isfinite(loss)) {
                status = 1 + k;
                break;
            }
            loss_sum[k] += loss;
            batches[k] += 1.0;
            steps[k] += 1;
        }
    }
    free(block);
    return status;
}
