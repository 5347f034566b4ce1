/* Finite-difference checks of every forward/backward pair, and backends vs the reference. */
#include <math.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "../backends/cpu/gemm_bf16.h"
#include "../lib/internal.h"
#include "../lib/lora_linear.h"
#include "../lib/model.h"
#include "../lib/ops/ops.h"
#include "harness.h"

static uint64_t rs = 12345;
static float frand(void)
{
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rs >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}
static void fill(float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = scale * frand();
}
static double dotd(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}
static float maxabs(const float *a, size_t n)
{
    float m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmaxf(m, fabsf(a[i]));
    return m;
}

typedef double (*loss_fn)(void *ctx);

/* Compare analytic gradient of L w.r.t. p[0..n) with central differences. */
static int fd_check(const char *what, float *p, size_t n, const float *grad, loss_fn f, void *ctx,
                    float h, double rtol)
{
    double atol = 1e-3 * fmax(maxabs(grad, n), 1e-6);
    int bad = 0;
    size_t stride = n > 64 ? n / 64 : 1;
    for (size_t i = 0; i < n; i += stride) {
        float save = p[i];
        p[i] = save + h;
        double lp = f(ctx);
        p[i] = save - h;
        double lm = f(ctx);
        p[i] = save;
        double num = (lp - lm) / (2.0 * h);
        if (fabs(num - grad[i]) > atol + rtol * fabs(num)) {
            if (bad < 5)
                fprintf(stderr, "%s[%zu]: analytic %.7g numeric %.7g\n", what, i, grad[i], num);
            bad++;
        }
    }
    return bad;
}

/* ---- rmsnorm ---- */
enum { RN = 3, RD = 16 };
struct rms_ctx {
    float x[RN * RD], w[RD], out[RN * RD], rstd[RN], dout[RN * RD];
};
static double rms_loss(void *vp)
{
    struct rms_ctx *c = vp;
    rmsnorm_forward(NULL, c->out, c->rstd, c->x, c->w, RN, RD, 1e-5f);
    return dotd(c->out, c->dout, RN * RD);
}
TEST(rmsnorm)
{
    struct rms_ctx c;
    fill(c.x, RN * RD, 1.0f);
    fill(c.w, RD, 1.0f);
    fill(c.dout, RN * RD, 1.0f);
    float dx[RN * RD] = {0};
    rms_loss(&c);
    rmsnorm_backward(NULL, dx, c.dout, c.x, c.w, c.rstd, RN, RD);
    CHECK(fd_check("rmsnorm dx", c.x, RN * RD, dx, rms_loss, &c, 1e-2f, 1e-2) == 0);
    /* backward accumulates */
    rms_loss(&c); /* the checks left rstd at a perturbed point */
    float dx2[RN * RD];
    for (int i = 0; i < RN * RD; i++)
        dx2[i] = 1.0f;
    rmsnorm_backward(NULL, dx2, c.dout, c.x, c.w, c.rstd, RN, RD);
    for (int i = 0; i < RN * RD; i++)
        CHECK_CLOSE(dx2[i], dx[i] + 1.0f, 1e-6);
}

/* ---- rope ---- */
enum { QB = 2, QT = 5, QH = 3, QHD = 8 };
struct rope_ctx {
    float x[QB * QT * QH * QHD], y[QB * QT * QH * QHD], dout[QB * QT * QH * QHD];
    float c[QT * QHD / 2], s[QT * QHD / 2];
    int rot;
};
static double rope_loss(void *vp)
{
    struct rope_ctx *c = vp;
    memcpy(c->y, c->x, sizeof c->x);
    rope_forward(NULL, c->y, c->c, c->s, NULL, QB, QT, QH, QHD, c->rot);
    return dotd(c->y, c->dout, sizeof c->x / sizeof(float));
}
/* the whole head, then Phi-4-mini's partial rotation (the first 6 of 8 dimensions) with
   LongRoPE's short factors and attention factor */
TEST(rope)
{
    for (int partial = 0; partial < 2; partial++) {
        struct rope_ctx c;
        size_t n = sizeof c.x / sizeof(float);
        peft_config rc = {.head_dim = QHD, .rope_theta = 10000.0f};
        if (partial) {
            rc.rot_dim = 6, rc.rope_scaling = 2, rc.rope_mscale = 1.25f, rc.rope_long_from = 100;
            for (int i = 0; i < 3; i++)
                rc.rope_div[i] = 1.0f + 0.5f * (float)i, rc.rope_div_long[i] = 9.0f;
        }
        c.rot = peft__rot_dim(&rc);
        rope_tables(c.c, c.s, QT, &rc);
        fill(c.x, n, 1.0f);
        fill(c.dout, n, 1.0f);
        float dx[sizeof c.x / sizeof(float)];
        memcpy(dx, c.dout, sizeof dx);
        rope_backward(NULL, dx, c.c, c.s, NULL, QB, QT, QH, QHD, c.rot);
        CHECK(fd_check("rope dx", c.x, n, dx, rope_loss, &c, 1e-2f, 1e-3) == 0);
        /* position 0 scales by the attention factor; pair (i, i+rot/2) at position 1 rotates by
           angle theta^(-2i/rot) / div[i]; the dimensions past rot pass through */
        double ms = partial ? 1.25 : 1.0;
        rope_loss(&c);
        for (int i = 0; i < QH * QHD; i++)
            CHECK_CLOSE(c.y[i], i % QHD < c.rot ? ms * c.x[i] : c.x[i], 1e-6);
        const float *x1 = c.x + QH * QHD, *y1 = c.y + QH * QHD;
        int half = c.rot / 2;
        for (int i = 0; i < half; i++) {
            double ang = pow(10000.0, -2.0 * i / c.rot) / (partial ? 1.0 + 0.5 * i : 1.0);
            CHECK_CLOSE(y1[i], ms * (x1[i] * cos(ang) - x1[i + half] * sin(ang)), 1e-6);
            CHECK_CLOSE(y1[i + half], ms * (x1[i + half] * cos(ang) + x1[i] * sin(ang)), 1e-6);
        }
        for (int i = c.rot; i < QHD; i++)
            CHECK(y1[i] == x1[i]);
        float at[QHD];
        memcpy(at, x1, sizeof at);
        rope_at(at, 1, 1, 2, &rc); /* the inference path agrees */
        for (int i = 0; i < QHD; i++)
            CHECK_CLOSE(at[i], y1[i], 1e-6);
    }
}

/* ---- attention ---- */
enum { AB = 2, AT = 6, AH = 4, AHK = 2, AD = 4 };
struct att_ctx {
    float q[AB * AT * AH * AD], k[AB * AT * AHK * AD], v[AB * AT * AHK * AD];
    float out[AB * AT * AH * AD], lse[AB * AH * AT], scratch[4096], dout[AB * AT * AH * AD];
    const int32_t *pos;
    int window, prefix;
    float softcap;
};
static float att_softcap; /* the soft-cap of attention_case's runs (0: none) */
static double att_loss(void *vp)
{
    struct att_ctx *c = vp;
    attention_forward(NULL, c->out, c->lse, c->scratch, c->q, c->k, c->v, c->pos, AB, AT, AH, AHK, AD, c->window,
                      c->prefix, c->softcap);
    return dotd(c->out, c->dout, sizeof c->out / sizeof(float));
}
static void attention_case(const int32_t *pos, int window, int prefix, struct att_ctx *out)
{
    struct att_ctx c;
    CHECK(attention_scratch_floats(AB, AT, AHK, AD) <= sizeof c.scratch / sizeof(float));
    c.pos = pos;
    c.window = window;
    c.prefix = prefix;
    c.softcap = att_softcap;
    fill(c.q, sizeof c.q / 4, 1.0f);
    fill(c.k, sizeof c.k / 4, 1.0f);
    fill(c.v, sizeof c.v / 4, 1.0f);
    fill(c.dout, sizeof c.dout / 4, 1.0f);
    float dq[sizeof c.q / 4], dk[sizeof c.k / 4], dv[sizeof c.v / 4];
    att_loss(&c);
    attention_backward(NULL, dq, dk, dv, c.scratch, c.dout, c.q, c.k, c.v, c.out, c.lse, pos, AB, AT, AH, AHK, AD,
                       window, prefix, c.softcap);
    if (window != 1) { /* with one key per row dq and dk are zero up to rounding */
        CHECK(fd_check("attention dq", c.q, sizeof c.q / 4, dq, att_loss, &c, 1e-2f, 1e-2) == 0);
        CHECK(fd_check("attention dk", c.k, sizeof c.k / 4, dk, att_loss, &c, 1e-2f, 1e-2) == 0);
    }
    CHECK(fd_check("attention dv", c.v, sizeof c.v / 4, dv, att_loss, &c, 1e-2f, 1e-2) == 0);
    att_loss(&c); /* the outputs of the unperturbed inputs */
    /* causality: the first position attends only to itself, so its output is v[0] of its kv head */
    for (int h = 0; h < AH; h++)
        for (int d = 0; d < AD; d++)
            CHECK_CLOSE(c.out[h * AD + d], c.v[(h / (AH / AHK)) * AD + d], 1e-6);
    if ((pos && !prefix) || window == 1) /* a document's first row attends only to itself too; so does every row in a window of 1 */
        for (int r = 1; r < AB * AT; r++)
            if (window == 1 || pos[r] == 0)
                for (int h = 0; h < AH; h++)
                    for (int d = 0; d < AD; d++)
                        CHECK_CLOSE(c.out[(r * AH + h) * AD + d], c.v[(r * AHK + h / (AH / AHK)) * AD + d], 1e-6);
    if (out)
        *out = c;
}

TEST(attention_gqa) { attention_case(NULL, 0, 0, NULL); }

/* Gemma 2's soft-capped scores, cap tanh(s / cap) with a cap the scores reach: finite
   differences (also with a window and packed documents), and the outputs against the softmax
   of the capped scores computed here in double */
TEST(attention_softcap)
{
    static const int32_t pos[AB * AT] = {0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 4, 5};
    static struct att_ctx c;
    att_softcap = 0.3f;
    attention_case(pos, 2, 0, NULL);
    attention_case(NULL, 0, 0, &c);
    att_softcap = 0.0f;
    double worst = 0, spread = 0;
    for (int b = 0; b < AB; b++)
        for (int i = 0; i < AT; i++)
            for (int h = 0; h < AH; h++) {
                const float *qi = c.q + ((b * AT + i) * AH + h) * AD;
                double s[AT], mx = -1e30, sum = 0;
                for (int j = 0; j <= i; j++) {
                    const float *kj = c.k + ((b * AT + j) * AHK + h / (AH / AHK)) * AD;
                    double d = 0;
                    for (int e = 0; e < AD; e++)
                        d += (double)qi[e] * kj[e];
                    double raw = d / sqrt((double)AD);
                    s[j] = 0.3 * tanh(raw / 0.3);
                    spread = fmax(spread, fabs(raw) - fabs(s[j]));
                    mx = fmax(mx, s[j]);
                }
                for (int j = 0; j <= i; j++)
                    sum += exp(s[j] - mx);
                for (int e = 0; e < AD; e++) {
                    double o = 0;
                    for (int j = 0; j <= i; j++)
                        o += exp(s[j] - mx) / sum * c.v[((b * AT + j) * AHK + h / (AH / AHK)) * AD + e];
                    worst = fmax(worst, fabs(o - c.out[((b * AT + i) * AH + h) * AD + e]));
                }
            }
    CHECK_MSG(worst < 1e-5, "soft-capped attention: error %g", worst);
    CHECK(spread > 0.1); /* the cap bites */
}

/* A shared prefix (a soft prompt of 2 rows) seen by every packed document: gradients, and each
   document's rows equal those of the prefix and that document alone in a sequence of their own */
TEST(attention_shared_prefix)
{
    static const int32_t pos[AB * AT] = {0, 1, 2, 3, 2, 3, 0, 1, 2, 2, 3, 4};
    static struct att_ctx c;
    attention_case(pos, 0, 2, &c);
    static const int docs[4][3] = {{2, 2, 0}, {4, 2, 0}, {8, 1, 1}, {9, 3, 1}}; /* first row, rows, sequence */
    for (int k = 0; k < 4; k++) {
        enum { ST = 5 };
        float q[ST * AH * AD], kk[ST * AHK * AD], v[ST * AHK * AD], o[ST * AH * AD], lse[AH * ST];
        float scratch[4096];
        CHECK(attention_scratch_floats(1, ST, AHK, AD) <= sizeof scratch / sizeof(float));
        int n = docs[k][1], b = docs[k][2];
        for (int t = 0; t < 2 + n; t++) { /* the sequence's prefix rows, then the document's */
            int src = b * AT + (t < 2 ? t : docs[k][0] - b * AT + t - 2);
            memcpy(q + t * AH * AD, c.q + src * AH * AD, AH * AD * sizeof(float));
            memcpy(kk + t * AHK * AD, c.k + src * AHK * AD, AHK * AD * sizeof(float));
            memcpy(v + t * AHK * AD, c.v + src * AHK * AD, AHK * AD * sizeof(float));
        }
        attention_forward(NULL, o, lse, scratch, q, kk, v, NULL, 1, 2 + n, AH, AHK, AD, 0, 0, 0.0f);
        for (int t = 0; t < n; t++)
            for (int e = 0; e < AH * AD; e++)
                CHECK_CLOSE(c.out[(docs[k][0] + t) * AH * AD + e], o[(2 + t) * AH * AD + e], 1e-6);
    }
    /* with a sliding window of 3 positions the prefix leaves the window of later rows */
    attention_case(pos, 3, 2, NULL);
}

TEST(attention_packed_documents)
{
    /* rows of each sequence: documents of 2 + 4 and 3 + 3 tokens */
    static const int32_t pos[AB * AT] = {0, 1, 0, 1, 2, 3, 0, 1, 2, 0, 1, 2};
    attention_case(pos, 0, 0, NULL);
}

/* Mistral's sliding window: gradients with windows of 3 (alone and inside packed documents),
   and a window of 1 makes every row attend only to itself */
TEST(attention_sliding_window)
{
    static const int32_t pos[AB * AT] = {0, 1, 2, 3, 4, 5, 0, 1, 0, 1, 2, 3};
    attention_case(NULL, 3, 0, NULL);
    attention_case(pos, 3, 0, NULL);
    attention_case(NULL, 1, 0, NULL);
}

/* ---- swiglu ---- */
enum { SN = 40 };
struct sw_ctx {
    float g[SN], u[SN], act[SN], dout[SN];
};
static double sw_loss(void *vp)
{
    struct sw_ctx *c = vp;
    swiglu_forward(NULL, c->act, c->g, c->u, 1, SN);
    return dotd(c->act, c->dout, SN);
}
static double ge_loss(void *vp)
{
    struct sw_ctx *c = vp;
    geglu_forward(NULL, c->act, c->g, c->u, 1, SN);
    return dotd(c->act, c->dout, SN);
}
/* a gated activation's backward (0 SwiGLU, 1 GeGLU) against finite differences of its loss */
static void gated_case(struct sw_ctx *c, int gelu)
{
    fill(c->g, SN, 3.0f);
    fill(c->u, SN, 1.0f);
    fill(c->dout, SN, 1.0f);
    float dg[SN], du[SN];
    gated_backward(NULL, gelu, dg, du, c->dout, c->g, c->u, 1, SN);
    double (*loss)(void *) = gelu ? ge_loss : sw_loss;
    CHECK(fd_check(gelu ? "geglu dg" : "swiglu dg", c->g, SN, dg, loss, c, 1e-2f, 1e-2) == 0);
    CHECK(fd_check(gelu ? "geglu du" : "swiglu du", c->u, SN, du, loss, c, 1e-2f, 1e-3) == 0);
}
TEST(swiglu)
{
    struct sw_ctx c;
    gated_case(&c, 0);
}

/* GeGLU (Gemma): act = gelu_tanh(g) * u; finite differences, and the forward against tanh() in
   double, out to where tanh saturates (|g| up to 40: no NaN, no overflow) */
TEST(geglu)
{
    struct sw_ctx c;
    gated_case(&c, 1);
    float dg[SN], du[SN];
    for (int i = 0; i < SN; i++) {
        c.g[i] = -40.0f + 80.0f * (float)i / (SN - 1);
        c.u[i] = 1.0f;
    }
    geglu_forward(NULL, c.act, c.g, c.u, 1, SN);
    double worst = 0;
    for (int i = 0; i < SN; i++) {
        double g = c.g[i], want = 0.5 * g * (1.0 + tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)));
        worst = fmax(worst, fabs(c.act[i] - want) / fmax(1.0, fabs(want)));
    }
    CHECK_MSG(worst < 1e-6, "geglu forward: relative error %g", worst);
    geglu_backward(NULL, dg, du, c.dout, c.g, c.u, 1, SN);
    for (int i = 0; i < SN; i++)
        CHECK(isfinite(dg[i]) && isfinite(du[i]));
}

/* ---- cross-entropy ---- */
enum { XV = 37 };
struct xe_ctx {
    float logits[XV];
};
static double xe_loss(void *vp) { return xent_row(NULL, ((struct xe_ctx *)vp)->logits, XV, 5, 1.0f); }
TEST(cross_entropy)
{
    struct xe_ctx c;
    fill(c.logits, XV, 4.0f);
    float d[XV];
    double l = xent_row(d, c.logits, XV, 5, 1.0f);
    double lse = 0;
    for (int i = 0; i < XV; i++)
        lse += exp(c.logits[i]);
    CHECK_CLOSE(l, log(lse) - c.logits[5], 1e-6);
    CHECK(fd_check("xent dlogits", c.logits, XV, d, xe_loss, &c, 1e-2f, 1e-2) == 0);
    /* huge logits stay finite */
    for (int i = 0; i < XV; i++)
        c.logits[i] = 1e4f * (float)i;
    CHECK(isfinite(xent_row(d, c.logits, XV, 5, 1.0f)));
}

/* Gemma 2's soft-capped logits (cap 3 against logits up to about 4): the loss is that of
   cap tanh(z / cap) computed here in double, the gradient by finite differences on z */
static double xe_cap_loss(void *vp)
{
    float row[XV];
    memcpy(row, ((struct xe_ctx *)vp)->logits, sizeof row);
    return xent_row_softcap(row, XV, 5, 3.0f, 0);
}
TEST(cross_entropy_softcap)
{
    struct xe_ctx c;
    fill(c.logits, XV, 4.0f);
    float d[XV];
    memcpy(d, c.logits, sizeof d);
    double l = xent_row_softcap(d, XV, 5, 3.0f, 1), lse = 0;
    for (int i = 0; i < XV; i++)
        lse += exp(3.0 * tanh(c.logits[i] / 3.0));
    CHECK_CLOSE(l, log(lse) - 3.0 * tanh(c.logits[5] / 3.0), 1e-6);
    CHECK(fd_check("softcap xent dlogits", c.logits, XV, d, xe_cap_loss, &c, 1e-2f, 1e-2) == 0);
    for (int i = 0; i < XV; i++) /* huge logits: capped, finite */
        d[i] = 1e30f * (float)(i - 18);
    CHECK(isfinite(xent_row_softcap(d, XV, 5, 3.0f, 1)));
    for (int i = 0; i < XV; i++)
        CHECK(isfinite(d[i]));
}

/* ---- linear with LoRA (and dropout) through the CPU backend ---- */
enum { LN = 7, LIN = 12, LOUT = 9, LR = 3 };
struct lin_ctx {
    peft_model m;
    float x[LN * LIN], W[LOUT * LIN], A[LR * LIN], B[LOUT * LR], y[LN * LOUT], dout[LN * LOUT];
    float xa[LN * LR], tmp[LN * LIN], bias[LOUT];
    float l3[LIN], dl3[LIN], z[LN * LOUT], dz[LN * LOUT]; /* IA3 */
    lora_view lv;
    peft_w w;
};
static double lin_loss(void *vp)
{
    struct lin_ctx *c = vp;
    linear_forward(&c->m, c->y, c->x, &c->w, c->bias, LN, LIN, LOUT, &c->lv, c->xa, c->tmp);
    return dotd(c->y, c->dout, LN * LOUT);
}
static void lin_setup(struct lin_ctx *c)
{
    memset(c, 0, sizeof *c);
    c->m.be = peft__backend_cpu();
    peft_backend_host host = {sizeof host, 1, NULL, peft__pool_for};
    CHECK_OK(c->m.be->init(&c->m.be_ctx, &host));
    fill(c->x, sizeof c->x / 4, 1.0f);
    fill(c->W, sizeof c->W / 4, 0.5f);
    fill(c->bias, LOUT, 1.0f);
    c->w = (peft_w){.f = c->W, .rows = LOUT, .cols = LIN};
}
static void lin_case(float dropout)
{
    static struct lin_ctx c;
    lin_setup(&c);
    fill(c.A, sizeof c.A / 4, 0.5f);
    fill(c.B, sizeof c.B / 4, 0.5f);
    fill(c.dout, sizeof c.dout / 4, 1.0f);
    float dA[LR * LIN] = {0}, dB[LOUT * LR] = {0}, dx[LN * LIN], dxa[LN * LR];
    c.lv = (lora_view){.A = c.A, .B = c.B, .dA = dA, .dB = dB, .r = LR, .scale = 0.75f, .dropout = dropout,
                       .dropout_seed = 42};
    lin_loss(&c);
    linear_backward(&c.m, dx, 0.0f, c.dout, c.x, &c.w, LN, LIN, LOUT, &c.lv, c.xa, dxa, c.tmp);
    CHECK(fd_check("lora dx", c.x, sizeof c.x / 4, dx, lin_loss, &c, 1e-2f, 1e-2) == 0);
    CHECK(fd_check("lora dA", c.A, sizeof c.A / 4, dA, lin_loss, &c, 1e-2f, 1e-2) == 0);
    CHECK(fd_check("lora dB", c.B, sizeof c.B / 4, dB, lin_loss, &c, 1e-2f, 1e-2) == 0);
    c.m.be->free(c.m.be_ctx);
}
TEST(lora_linear) { lin_case(0.0f); }
TEST(lora_linear_dropout) { lin_case(0.3f); }

/* IA3 on a module with a bias: the output scaling scales the bias too (y = (W x + b) * l, as
   PEFT's base_layer(x) * l); the input scaling leaves it (y = W (x * l) + b) */
static void ia3_case(int ff)
{
    static struct lin_ctx c;
    lin_setup(&c);
    int nl = ff ? LIN : LOUT;
    for (int i = 0; i < nl; i++)
        c.l3[i] = 0.6f + 0.1f * (float)i;
    fill(c.dout, sizeof c.dout / 4, 1.0f);
    c.lv = (lora_view){.ia3 = c.l3, .dia3 = c.dl3, .ia3_ff = ff, .z = c.z, .dz = c.dz};
    lin_loss(&c);
    double worst = 0;
    for (int t = 0; t < LN; t++)
        for (int o = 0; o < LOUT; o++) {
            double acc = 0;
            for (int i = 0; i < LIN; i++)
                acc += (double)c.W[o * LIN + i] * c.x[t * LIN + i] * (ff ? c.l3[i] : 1.0f);
            double want = ff ? acc + c.bias[o] : (acc + c.bias[o]) * c.l3[o];
            worst = fmax(worst, fabs(c.y[t * LOUT + o] - want));
        }
    CHECK_MSG(worst < 1e-5, "IA3 (%s) forward off by %g", ff ? "input" : "output", worst);
    float dx[LN * LIN], dxa[LN * LR];
    linear_backward(&c.m, dx, 0.0f, c.dout, c.x, &c.w, LN, LIN, LOUT, &c.lv, c.xa, dxa, c.tmp);
    CHECK(fd_check("ia3 dx", c.x, sizeof c.x / 4, dx, lin_loss, &c, 1e-2f, 1e-2) == 0);
    CHECK(fd_check("ia3 dl", c.l3, (size_t)nl, c.dl3, lin_loss, &c, 1e-2f, 1e-2) == 0);
    c.m.be->free(c.m.be_ctx);
}
TEST(ia3_linear_bias) { ia3_case(0); }
TEST(ia3_linear_bias_feedforward) { ia3_case(1); }

TEST(dropout_mask)
{
    /* inverted dropout: kept fraction ~ 1-p, kept value 1/(1-p), deterministic */
    int kept = 0;
    for (uint64_t i = 0; i < 20000; i++) {
        float s = dropout_scale(7, i, 0.25f);
        CHECK(s == 0.0f || fabsf(s - 1.0f / 0.75f) < 1e-6f);
        kept += s != 0.0f;
        CHECK(s == dropout_scale(7, i, 0.25f));
    }
    CHECK(kept > 14700 && kept < 15300);
}

/* ---- the thread pool: every task of every job runs exactly once, whether the workers are
   watching for the next job, asleep (a pause longer than their watch), or slower than the
   caller (which then sleeps until they end) ---- */
struct pool_job {
    int32_t *out;
    int32_t tag;
    int slow_task; /* this task sleeps 2 ms; -1: none */
};

static void pool_task(void *vp, int32_t i)
{
    const struct pool_job *j = vp;
    if (i == j->slow_task)
        nanosleep(&(struct timespec){0, 2000000}, NULL);
    j->out[i] += j->tag + i;
}

TEST(thread_pool)
{
#ifdef CPU_COUNT
    /* the default thread count and the pool's watching follow the affinity mask (taskset, a
       container's cpuset), not the machine's processor count */
    cpu_set_t all, one;
    if (sched_getaffinity(0, sizeof all, &all) == 0) {
        CHECK(peft__cpu_count() == CPU_COUNT(&all));
        CPU_ZERO(&one);
        for (int c = 0; c < CPU_SETSIZE; c++)
            if (CPU_ISSET(c, &all)) {
                CPU_SET(c, &one);
                break;
            }
        CHECK(sched_setaffinity(0, sizeof one, &one) == 0);
        CHECK(peft__cpu_count() == 1);
        CHECK(sched_setaffinity(0, sizeof all, &all) == 0);
    }
#endif
    const int threads[] = {2, 3, 64}; /* 64: more threads than processors, never watching */
    for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++) {
        peft_pool *pool;
        CHECK_OK(peft__pool_create(&pool, threads[t]));
        CHECK(peft__pool_threads(pool) == threads[t]);
        int32_t out[64] = {0}, want[64] = {0};
        int jobs = threads[t] == 64 ? 300 : 20000, bad = 0;
        for (int j = 0; j < jobs; j++) {
            struct pool_job job = {out, j % 1000, j % 97 == 5 ? 1 : -1};
            int32_t n = 1 + j % 64;
            peft__pool_for(pool, n, pool_task, &job);
            for (int32_t i = 0; i < n; i++)
                want[i] += j % 1000 + i;
            bad += memcmp(out, want, sizeof out) != 0; /* all done when the call returns */
            if (j % 1000 == 999) /* long enough for every worker to fall asleep */
                nanosleep(&(struct timespec){0, 3000000}, NULL);
        }
        CHECK(bad == 0);
        peft__pool_destroy(pool);
    }
}

/* ---- every backend against a naive double-precision GEMM ---- */
static void naive(int ta, int tb, int M, int N, int K, float alpha, const float *a, int lda,
                  const float *b, int ldb, float beta, float *c, int ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int p = 0; p < K; p++)
                s += (double)(ta ? a[p * lda + i] : a[i * lda + p]) * (tb ? b[j * ldb + p] : b[p * ldb + j]);
            c[i * ldc + j] = (float)(alpha * s + (beta == 0.0f ? 0.0 : beta * c[i * ldc + j]));
        }
}

/* C before a product: random, or NaN where beta == 0 (C must not be read then) */
static void fill_c(float *c, size_t n, float beta)
{
    fill(c, n, 1.0f);
    for (size_t i = 0; beta == 0.0f && i < n; i++)
        c[i] = NAN;
}

/* be's context over a pool of `threads` threads */
static void *open_backend(const peft_backend *be, int threads, peft_pool **pool)
{
    void *ctx = NULL;
    CHECK_OK(peft__pool_create(pool, threads));
    peft_backend_host host = {sizeof host, threads, *pool, peft__pool_for};
    CHECK_OK(be->init(&ctx, &host));
    return ctx;
}

static void check_backend(const peft_backend *be, int threads)
{
    peft_pool *pool;
    void *ctx = open_backend(be, threads, &pool);
    CHECK(be->abi_version == PEFT_BACKEND_ABI_VERSION && be->struct_size <= sizeof(peft_backend));
    /* small shapes take the plain loops; N <= 16 the narrow kernel (A read in place, edge rows
       of a tile included, K in blocks of 256); M <= 16 the narrow kernel on the transposed
       product with C stored transposed; the rest the packed kernel, crossing its MC (64),
       KC (640: K in equal blocks, three for K = 1300), NC (1024), MR (8) and NR (16) block edges;
       row tasks over three packing tasks' groups of B panels (200 x 300 x 700) and column tasks
       (N >= 1024) over two k blocks and a partial row block (130 x 1100 x 700) */
    const int shapes[][3] = {{1, 1, 1},     {17, 13, 29},   {64, 8, 200},    {8, 70, 5},     {33, 65, 1},
                             {16, 16, 16},  {100, 70, 300}, {67, 1030, 260}, {129, 17, 513}, {150, 16, 600},
                             {70, 5, 1030}, {16, 70, 300},  {5, 100, 600},   {13, 17, 520},  {40, 33, 1300},
                             {200, 300, 700}, {130, 1100, 700}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int bi = 0; bi < 3; bi++) {
                    int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                    int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                    float beta = bi == 0 ? 0.0f : bi == 1 ? 1.0f : -0.5f, alpha = 0.7f;
                    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
                    float *a = malloc(na * 4), *b = malloc(nb * 4), *c1 = malloc(nc * 4), *c2 = malloc(nc * 4);
                    fill(a, na, 1.0f);
                    fill(b, nb, 1.0f);
                    fill_c(c1, nc, beta);
                    memcpy(c2, c1, nc * 4);
                    be->gemm(ctx, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c1, ldc);
                    naive(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c2, ldc);
                    int bad = 0;
                    for (int i = 0; i < M; i++)
                        for (int j = 0; j < N; j++)
                            bad += !(fabsf(c1[i * ldc + j] - c2[i * ldc + j]) <= 1e-4f * (1.0f + sqrtf((float)K)));
                    CHECK_MSG(bad == 0, "%s gemm ta=%d tb=%d M=%d N=%d K=%d beta=%g: %d wrong", be->name, ta, tb, M, N,
                              K, beta, bad);
                    free(a), free(b), free(c1), free(c2);
                }
    be->free(ctx);
    peft__pool_destroy(pool);
}

TEST(backend_cpu_gemm)
{
    check_backend(peft__backend_cpu(), 1);
    check_backend(peft__backend_cpu(), 3);
}

/* the gemm_bf16 slot against double-precision sums of A (rounded to BF16 when round_a) times
   the widened BF16 B */
static void check_backend_bf16(const peft_backend *be, int threads, int round_a)
{
    peft_pool *pool;
    void *ctx = open_backend(be, threads, &pool);
    CHECK(be->struct_size >= offsetof(peft_backend, gemm_bf16) + sizeof(void *) && be->gemm_bf16);
    /* plain loops below 16; the packed kernel's MC, KC/KP, NC and tile edges; odd K (a pair
       half padded) */
    const int shapes[][3] = {{1, 1, 1}, {5, 40, 9}, {16, 16, 16}, {17, 33, 31}, {100, 70, 300},
                             {67, 1030, 260}, {40, 48, 1027}, {130, 20, 513}, {200, 300, 700}, {130, 1100, 700}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int tb = 0; tb < 2; tb++)
            for (int bi = 0; bi < 3; bi++) {
                int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                int lda = K + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                float beta = bi == 0 ? 0.0f : bi == 1 ? 1.0f : -0.5f, alpha = 0.7f;
                size_t na = (size_t)M * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
                float *a = malloc(na * 4), *bf = malloc(nb * 4), *c1 = malloc(nc * 4), *c2 = malloc(nc * 4);
                float *ar = malloc(na * 4);
                uint16_t *bh = malloc(nb * 2);
                fill(a, na, 1.0f);
                fill(bf, nb, 1.0f);
                fill(c1, nc, 1.0f);
                for (size_t i = 0; i < nb; i++) {
                    bh[i] = peft__f32_to_bf16(bf[i]);
                    bf[i] = peft__bf16_to_f32(bh[i]);
                }
                for (size_t i = 0; i < na; i++)
                    ar[i] = round_a ? peft__bf16_to_f32(peft__f32_to_bf16(a[i])) : a[i];
                if (beta == 0.0f)
                    for (size_t i = 0; i < nc; i++)
                        c1[i] = NAN;
                memcpy(c2, c1, nc * 4);
                be->gemm_bf16(ctx, tb, M, N, K, alpha, a, lda, bh, ldb, beta, c1, ldc);
                naive(0, tb, M, N, K, alpha, ar, lda, bf, ldb, beta, c2, ldc);
                int bad = 0;
                for (int i = 0; i < M; i++)
                    for (int j = 0; j < N; j++)
                        bad += !(fabsf(c1[i * ldc + j] - c2[i * ldc + j]) <= 1e-4f * (1.0f + sqrtf((float)K)));
                CHECK_MSG(bad == 0, "%s gemm_bf16 (round_a %d) tb=%d M=%d N=%d K=%d beta=%g: %d wrong", be->name,
                          round_a, tb, M, N, K, beta, bad);
                free(a), free(ar), free(bf), free(bh), free(c1), free(c2);
            }
    be->free(ctx);
    peft__pool_destroy(pool);
}

/* gemm_sum: two products into one C (the LoRA modules' x W^T + s x_a B^T and dy W + s dx_a A)
   against the naive sums, and bit-identical to gemm for the first (with beta) then gemm for the
   second (beta 1), which the quantized and BF16 weights (one call per term) rely on to train as
   the float32 file does; first products of one and three k blocks, row and column tasks (N >=
   1024), second products of depth 1 to 40, and shapes that gemm gives the narrow kernels or the
   plain loops (M = 16, M = 8, N = 17 with B transposed), which must then go as two calls */
static void check_gemm_sum(const peft_backend *be, int threads)
{
    peft_pool *pool;
    void *ctx = open_backend(be, threads, &pool);
    CHECK(be->struct_size >= offsetof(peft_backend, gemm_sum) + sizeof(void *) && be->gemm_sum);
    const int shapes[][4] = {{100, 70, 300, 8}, {130, 1100, 700, 16}, {64, 48, 1300, 1}, {70, 300, 64, 40},
                             {20, 17, 30, 4},   {8, 40, 50, 8},     {16, 70, 300, 16}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int tb = 0; tb < 2; tb++)
            for (int bi = 0; bi < 3; bi++) {
                int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], R = shapes[s][3];
                float beta = bi == 0 ? 0.0f : bi == 1 ? 1.0f : -0.5f;
                /* term 1: A (M x K), B (N x K) or (K x N); term 2: A2 (M x R), B2 (N x R) or (R x N) */
                int lda = K + 3, ldb = (tb ? K : N) + 1, lda2 = R + 2, ldb2 = (tb ? R : N) + 5, ldc = N + 2;
                size_t na = (size_t)M * lda, nb = (size_t)(tb ? N : K) * ldb, na2 = (size_t)M * lda2,
                       nb2 = (size_t)(tb ? N : R) * ldb2, nc = (size_t)M * ldc;
                float *a = malloc(na * 4), *b = malloc(nb * 4), *a2 = malloc(na2 * 4), *b2 = malloc(nb2 * 4),
                      *c1 = malloc(nc * 4), *c2 = malloc(nc * 4), *c3 = malloc(nc * 4);
                fill(a, na, 1.0f);
                fill(b, nb, 1.0f);
                fill(a2, na2, 1.0f);
                fill(b2, nb2, 1.0f);
                fill_c(c1, nc, beta);
                memcpy(c2, c1, nc * 4);
                memcpy(c3, c1, nc * 4);
                peft_gemm_term t[2] = {{0, tb, K, 1.0f, a, lda, b, ldb}, {0, tb, R, 0.75f, a2, lda2, b2, ldb2}};
                be->gemm_sum(ctx, M, N, 2, t, beta, c1, ldc);
                be->gemm(ctx, 0, tb, M, N, K, 1.0f, a, lda, b, ldb, beta, c2, ldc);
                be->gemm(ctx, 0, tb, M, N, R, 0.75f, a2, lda2, b2, ldb2, 1.0f, c2, ldc);
                naive(0, tb, M, N, K, 1.0f, a, lda, b, ldb, beta, c3, ldc);
                naive(0, tb, M, N, R, 0.75f, a2, lda2, b2, ldb2, 1.0f, c3, ldc);
                int bad = 0, differ = 0;
                for (int i = 0; i < M; i++)
                    for (int j = 0; j < N; j++) {
                        bad += !(fabsf(c1[i * ldc + j] - c3[i * ldc + j]) <= 1e-4f * (1.0f + sqrtf((float)K)));
                        differ += memcmp(&c1[i * ldc + j], &c2[i * ldc + j], 4) != 0;
                    }
                CHECK_MSG(bad == 0 && differ == 0, "%s gemm_sum tb=%d M=%d N=%d K=%d R=%d beta=%g: %d wrong, %d not as gemms",
                          be->name, tb, M, N, K, R, beta, bad, differ);
                free(a), free(b), free(a2), free(b2), free(c1), free(c2), free(c3);
            }
    be->free(ctx);
    peft__pool_destroy(pool);
}

TEST(backend_cpu_gemm_sum)
{
    check_gemm_sum(peft__backend_cpu(), 1);
    check_gemm_sum(peft__backend_cpu(), 3);
}

/* With several threads, products narrower than 1024 columns and at least 256 rows a thread run
   as one slab of rows per thread, each packing its own op(B): the results must be those of one
   thread, bit for bit (gemm, the gemm_sum of two terms and BF16 weights, A plain and transposed,
   every beta; slabs of unequal height, 800 rows over 3 threads), and of the naive sums */
TEST(backend_cpu_gemm_slabs)
{
    const peft_backend *be = peft__backend_cpu();
    peft_pool *pool1, *pool3;
    void *one = open_backend(be, 1, &pool1), *three = open_backend(be, 3, &pool3);
    const int shapes[][3] = {{800, 100, 700}, {1024, 576, 1536}, {770, 40, 50}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int bi = 0; bi < 3; bi++) {
                int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], R = 16, tb = !ta;
                float beta = bi == 0 ? 0.0f : bi == 1 ? 1.0f : -0.5f;
                int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, lda2 = R + 2, ldc = N + 2;
                size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, na2 = (size_t)M * lda2,
                       nb2 = (size_t)N * R, nc = (size_t)M * ldc;
                float *a = malloc(na * 4), *b = malloc(nb * 4), *a2 = malloc(na2 * 4), *b2 = malloc(nb2 * 4);
                float *c[3], *want = malloc(nc * 4);
                uint16_t *bh = malloc(nb * 2);
                fill(a, na, 1.0f);
                fill(b, nb, 1.0f);
                fill(a2, na2, 1.0f);
                fill(b2, nb2, 1.0f);
                for (size_t i = 0; i < nb; i++) /* B exact in BF16, so that the BF16 products can be checked too */
                    b[i] = peft__bf16_to_f32(bh[i] = peft__f32_to_bf16(b[i]));
                fill_c(want, nc, beta);
                for (int i = 0; i < 3; i++)
                    memcpy(c[i] = malloc(nc * 4), want, nc * 4);
                naive(ta, tb, M, N, K, 0.7f, a, lda, b, ldb, beta, want, ldc);
                int bad = 0, differ = 0;
                for (int run = 0; run < 3; run++) { /* gemm, gemm_sum, gemm_bf16 */
                    if (run == 2 && ta)
                        break;
                    for (int th = 0; th < 2; th++) {
                        void *ctx = th ? three : one;
                        float *out = th ? c[1] : c[0];
                        memcpy(out, c[2], nc * 4);
                        peft_gemm_term t[2] = {{ta, tb, K, 0.7f, a, lda, b, ldb}, {0, 1, R, 0.5f, a2, lda2, b2, R}};
                        if (run == 0)
                            be->gemm(ctx, ta, tb, M, N, K, 0.7f, a, lda, b, ldb, beta, out, ldc);
                        else if (run == 1)
                            be->gemm_sum(ctx, M, N, 2, t, beta, out, ldc);
                        else
                            be->gemm_bf16(ctx, tb, M, N, K, 0.7f, a, lda, bh, ldb, beta, out, ldc);
                    }
                    for (size_t i = 0; i < nc; i++)
                        differ += memcmp(&c[0][i], &c[1][i], 4) != 0;
                    for (int i = 0; run != 1 && i < M; i++)
                        for (int j = 0; j < N; j++)
                            bad += !(fabsf(c[1][i * ldc + j] - want[i * ldc + j]) <= 1e-4f * (1.0f + sqrtf((float)K)));
                }
                CHECK_MSG(bad == 0 && differ == 0, "ta=%d M=%d N=%d K=%d beta=%g: %d wrong, %d not as one thread", ta, M,
                          N, K, beta, bad, differ);
                free(a), free(b), free(a2), free(b2), free(bh), free(want);
                for (int i = 0; i < 3; i++)
                    free(c[i]);
            }
    be->free(one);
    be->free(three);
    peft__pool_destroy(pool1);
    peft__pool_destroy(pool3);
}

TEST(backend_cpu_gemm_bf16)
{
    /* default: activations unrounded, the weights widened into the float32 kernel (and the
       reference loops for the small shapes) */
    check_backend_bf16(peft__backend_cpu(), 1, 0);
    check_backend_bf16(peft__backend_cpu(), 3, 0);
    setenv("PEFT_CPU_REFERENCE", "1", 1);
    check_backend_bf16(peft__backend_cpu(), 2, 0);
    unsetenv("PEFT_CPU_REFERENCE");
    /* PEFT_CPU_BF16_DOT=1: AVX512-BF16's dot products, activations rounded to BF16 */
    if (!gemm_bf16_native()) {
        printf("  (no AVX512-BF16 here: the BF16 dot-product kernel is not exercised)\n");
        return;
    }
    setenv("PEFT_CPU_BF16_DOT", "1", 1);
    check_backend_bf16(peft__backend_cpu(), 1, 1);
    check_backend_bf16(peft__backend_cpu(), 2, 1);
    unsetenv("PEFT_CPU_BF16_DOT");
}

TEST(fast_expf_accuracy)
{
    /* every 1/1024 over the range the kernels use, against double exp */
    double worst = 0;
    for (int i = -87 * 1024; i <= 88 * 1024; i++) {
        float x = (float)i / 1024.0f;
        double e = exp((double)x), rel = fabs((double)peft__expf(x) - e) / e;
        worst = rel > worst ? rel : worst;
    }
    CHECK_MSG(worst < 3e-7, "worst relative error %g", worst);
    /* random-ish arguments between the grid points */
    for (uint32_t u = 1; u < 200000; u++) {
        float x = (float)((u * 2654435761u) % 175000000u) / 1e6f - 87.0f;
        double e = exp((double)x);
        CHECK_MSG(fabs((double)peft__expf(x) - e) <= 3e-7 * e, "x = %.9g", x);
    }
    CHECK(peft__expf(0.0f) == 1.0f);
    CHECK(peft__expf(-88.0f) == 0.0f && peft__expf(-INFINITY) == 0.0f && peft__expf(-1e30f) == 0.0f);
    CHECK(isfinite(peft__expf(89.0f)) && isfinite(peft__expf(INFINITY)) && peft__expf(88.3f) > 1e38f);
    CHECK(isnan(peft__expf(NAN)));
}

/* the 16-lane max and sum of the softmax loops against scalar folds */
TEST(lane_reductions)
{
    float x[100];
    for (int n = 0; n <= 100; n++) {
        fill(x, (size_t)n, 3.0f);
        float m = -INFINITY;
        double s = 0;
        for (int i = 0; i < n; i++)
            m = x[i] > m ? x[i] : m, s += x[i];
        CHECK_MSG(peft__maxf(x, n, -INFINITY) == m, "n %d", n);
        CHECK_MSG(fabs(peft__sumf(x, n) - s) <= 1e-5 * (1 + n), "n %d: %g vs %g", n, peft__sumf(x, n), s);
        if (n > 40) { /* a NaN is skipped as by the scalar fold; a NaN start stays */
            x[37] = NAN;
            float m2 = -INFINITY;
            for (int i = 0; i < n; i++)
                m2 = x[i] > m2 ? x[i] : m2;
            CHECK(peft__maxf(x, n, -INFINITY) == m2);
            CHECK(isnan(peft__maxf(x, n, NAN)));
        }
    }
    CHECK(peft__maxf(x, 0, 2.5f) == 2.5f && peft__sumf(x, 0) == 0.0f);
}

TEST(backend_blis_gemm)
{
    if (!peft__backend_blis())
        SKIP("BLIS backend not built");
    check_backend(peft__backend_blis(), 1);
    check_backend(peft__backend_blis(), 2);
}


/* ---- quantized frozen weights: block formats and panel-wise products ---- */

static uint32_t q_rng = 12345;
static uint8_t rnd8(void)
{
    q_rng = q_rng * 1664525u + 1013904223u;
    return (uint8_t)(q_rng >> 24);
}

/* exact half-precision scales (bit patterns): 1, 0.5, 0.25, 0.125, -0.375, 0.0625 */
static const uint16_t halves[] = {0x3C00, 0x3800, 0x3400, 0x3000, 0xB600, 0x2C00};
static float half_val(int i) { const float v[] = {1, 0.5f, 0.25f, 0.125f, -0.375f, 0.0625f}; return v[i]; }

/* one row of `cols` weights of type t with random quants; ref receives the values, written
   element by element from the format's definition (not the library's loops) */
static size_t make_row(uint8_t *p, float *ref, uint32_t t, int cols)
{
    uint8_t *start = p;
    if (t == PEFT_GG_Q8_0 || t == PEFT_GG_Q4_0) {
        for (int b = 0; b < cols / 32; b++) {
            int hi = rnd8() % 6;
            p[0] = (uint8_t)halves[hi];
            p[1] = (uint8_t)(halves[hi] >> 8);
            int nq = t == PEFT_GG_Q8_0 ? 32 : 16;
            for (int j = 0; j < nq; j++)
                p[2 + j] = rnd8();
            for (int e = 0; e < 32; e++) {
                int q = t == PEFT_GG_Q8_0 ? (int8_t)p[2 + e] : e < 16 ? (p[2 + e] & 15) - 8 : (p[2 + e - 16] >> 4) - 8;
                ref[b * 32 + e] = half_val(hi) * (float)q;
            }
            p += 2 + nq;
        }
    } else if (t == PEFT_GG_Q4_K) {
        for (int b = 0; b < cols / 256; b++) {
            int hd = rnd8() % 6, hm = rnd8() % 6;
            p[0] = (uint8_t)halves[hd], p[1] = (uint8_t)(halves[hd] >> 8);
            p[2] = (uint8_t)halves[hm], p[3] = (uint8_t)(halves[hm] >> 8);
            for (int j = 0; j < 12 + 128; j++)
                p[4 + j] = rnd8();
            const uint8_t *sc = p + 4, *qs = p + 16;
            for (int e = 0; e < 256; e++) {
                int chunk = e / 64, within = e % 64, sub = 2 * chunk + (within >= 32), l = within % 32;
                int nib = within < 32 ? qs[chunk * 32 + l] & 15 : qs[chunk * 32 + l] >> 4;
                int scale = sub < 4 ? sc[sub] & 63 : (sc[sub + 4] & 15) | ((sc[sub - 4] >> 6) << 4);
                int mn = sub < 4 ? sc[sub + 4] & 63 : (sc[sub + 4] >> 4) | ((sc[sub] >> 6) << 4);
                ref[b * 256 + e] = half_val(hd) * (float)scale * (float)nib - half_val(hm) * (float)mn;
            }
            p += 144;
        }
    } else { /* Q6_K */
        for (int b = 0; b < cols / 256; b++) {
            for (int j = 0; j < 208; j++)
                p[j] = rnd8();
            int hd = rnd8() % 6;
            p[208] = (uint8_t)halves[hd], p[209] = (uint8_t)(halves[hd] >> 8);
            const uint8_t *ql = p, *qh = p + 128;
            const int8_t *sc = (const int8_t *)(p + 192);
            for (int e = 0; e < 256; e++) {
                int half = e / 128, r = e % 128, quarter = r / 32, l = r % 32;
                int lo = quarter == 0 ? ql[half * 64 + l] & 15 : quarter == 1 ? ql[half * 64 + l + 32] & 15
                       : quarter == 2 ? ql[half * 64 + l] >> 4 : ql[half * 64 + l + 32] >> 4;
                int hi2 = (qh[half * 32 + l] >> (2 * quarter)) & 3;
                int q = (lo | hi2 << 4) - 32;
                ref[b * 256 + e] = half_val(hd) * (float)sc[half * 8 + quarter * 2 + l / 16] * (float)q;
            }
            p += 210;
        }
    }
    return (size_t)(p - start);
}

/* The exporters' encoders: half precision rounds to nearest even (subnormals, overflow, NaN), and
   Q8_0 / Q4_0 blocks decode to within half a step of the input, the block's extreme exactly. */
TEST(quantizers_round_trip)
{
    struct {
        float f;
        uint16_t h;
    } hc[] = {{0.0f, 0x0000}, {-0.0f, 0x8000}, {1.0f, 0x3c00}, {-2.0f, 0xc000}, {65504.0f, 0x7bff},
              {65520.0f, 0x7c00}, {1e9f, 0x7c00}, {5.9604645e-08f, 0x0001}, {2.9802322e-08f, 0x0000},
              {6.1035156e-05f, 0x0400}, {1.0f + 1.0f / 2048, 0x3c00}, {1.0f + 3.0f / 2048, 0x3c02},
              {(float)INFINITY, 0x7c00}, {0.33325195f, 0x3555}};
    for (size_t i = 0; i < sizeof hc / sizeof hc[0]; i++)
        CHECK_MSG(peft__f32_to_f16(hc[i].f) == hc[i].h, "%g -> %04x, expected %04x", hc[i].f,
                  peft__f32_to_f16(hc[i].f), hc[i].h);
    CHECK((peft__f32_to_f16((float)NAN) & 0x7fff) > 0x7c00);
    for (uint32_t h = 0; h < 0x7c00; h++) /* every finite half comes back to itself */
        CHECK_MSG(peft__f32_to_f16(peft__f16_to_f32((uint16_t)h)) == h, "half %04x", h);
    enum { N = 256 };
    static float x[N], y[N];
    static uint8_t q[N * 2];
    uint32_t seed = 7;
    for (int i = 0; i < N; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * (float)(1 + i / 32);
    }
    const uint32_t types[] = {PEFT_GG_Q8_0, PEFT_GG_Q4_0, PEFT_GG_F16};
    for (int t = 0; t < 3; t++) {
        CHECK(peft__quantize(q, x, N, types[t]) == 0);
        CHECK(peft__dequant(y, q, N, types[t]) == 0);
        for (int b = 0; b < N / 32; b++) {
            float amax = 0;
            for (int i = 0; i < 32; i++)
                amax = fmaxf(amax, fabsf(x[b * 32 + i]));
            float step = types[t] == PEFT_GG_Q8_0 ? amax / 127 : types[t] == PEFT_GG_Q4_0 ? amax / 8 : amax / 1024;
            for (int i = 0; i < 32; i++) /* Q4_0 (ggml): levels -8d..7d, d signed as the extreme, so values
                                             opposite to it clip at 7/8 of its magnitude */
                CHECK_MSG(fabsf(y[b * 32 + i] - x[b * 32 + i]) <=
                              fmaxf(0.51f * step, types[t] == PEFT_GG_Q4_0 ? fabsf(x[b * 32 + i]) - 7 * step + 1e-2f * step : 0),
                          "type %u value %d: %g -> %g", types[t], b * 32 + i, x[b * 32 + i], y[b * 32 + i]);
        }
    }
    CHECK(peft__quantize(q, x, N, 3) == -1); /* Q4_1: not written */
    /* BF16: the top half rounded to nearest even (a tie goes to the even neighbour), exact for
       values it holds, within half an ulp (2^-9 relative) otherwise, NaN kept a NaN */
    const float bx[] = {1.0f, 1.00390625f /* 1 + 2^-8: a tie, to 1 */, 1.01171875f /* 1 + 3 2^-8: to 1 + 2^-6 */,
                        -3.14159265f, 1e-30f, 65504.0f, INFINITY, NAN};
    const float by[] = {1.0f, 1.0f, 1.015625f, -3.140625f, 0, 65536.0f, INFINITY, 0};
    uint8_t bq[16];
    float bd[8];
    CHECK_OK(peft__quantize(bq, bx, 8, PEFT_GG_BF16));
    CHECK_OK(peft__dequant(bd, bq, 8, PEFT_GG_BF16));
    for (int i = 0; i < 8; i++) {
        if (isnan(bx[i]))
            CHECK(isnan(bd[i]));
        else if (by[i] != 0)
            CHECK_MSG(bd[i] == by[i], "bf16(%g) = %g, expected %g", bx[i], bd[i], by[i]);
        else
            CHECK(fabsf(bd[i] - bx[i]) <= fabsf(bx[i]) * 0x1p-9f);
    }
}

/* Q4_K and Q6_K encoders: what they write decodes (by the format's own decoder) to within the
   error of a plain uniform grid of the format's levels over each sub-block (Q4_K: 16 levels per
   32 weights, Q6_K: 64 per 16; the fitted scales do better than that on Gaussian weights), the
   extremes of every sub-block included; zeros stay zero, constants stay (to f16 rounding), and
   an outlier leaves the other sub-blocks fine. */
TEST(k_quantizers_round_trip)
{
    enum { N = 256 * 64 };
    static float x[N], y[N];
    static uint8_t q[N];
    peft_rng rng;
    peft__rng_seed(&rng, 17);
    const uint32_t types[] = {PEFT_GG_Q4_K, PEFT_GG_Q6_K};
    for (int t = 0; t < 2; t++) {
        int sub = types[t] == PEFT_GG_Q4_K ? 32 : 16, levels = types[t] == PEFT_GG_Q4_K ? 15 : 63;
        for (int i = 0; i < N; i++) /* blocks of different magnitudes, some all positive */
            x[i] = (float)(peft__rng_normal(&rng) * (1 + i / 2048) * 0.02) + (i / 256 % 7 == 3 ? 0.1f : 0.0f);
        for (int i = 0; i < 256; i++)
            x[5 * 256 + i] = 0.0f; /* an all-zero block */
        for (int i = 0; i < 256; i++)
            x[6 * 256 + i] = 0.375f; /* a constant one */
        x[7 * 256 + 3] = 50.0f;      /* an outlier in its first sub-block */
        CHECK_OK(peft__quantize(q, x, N, types[t]));
        CHECK_OK(peft__dequant(y, q, N, types[t]));
        double se = 0, sg = 0;
        for (int b = 0; b < N / sub; b++) {
            float lo = 0, hi = 0; /* Q6_K's grid is symmetric about 0; Q4_K's reaches down to min(0, lo) */
            for (int i = 0; i < sub; i++) {
                lo = fminf(lo, x[b * sub + i]);
                hi = fmaxf(hi, types[t] == PEFT_GG_Q4_K ? x[b * sub + i] : fabsf(x[b * sub + i]));
            }
            if (types[t] == PEFT_GG_Q6_K)
                lo = -hi;
            float step = (hi - lo) / (float)levels;
            for (int i = 0; i < sub; i++) {
                float e = fabsf(y[b * sub + i] - x[b * sub + i]);
                se += (double)e * e;
                sg += (double)step * step / 12; /* a uniform grid's mean squared error */
                if (b / (256 / sub) == 7)
                    continue; /* the outlier's block: its small sub-blocks share 6-bit steps of a huge scale */
                CHECK_MSG(e <= 0.75f * step + 1e-3f * fabsf(x[b * sub + i]) + 1e-9f, "type %u value %d: %g -> %g (step %g)",
                          types[t], b * sub + i, x[b * sub + i], y[b * sub + i], step);
            }
        }
        CHECK_MSG(se < sg, "type %u: mean squared error %g, a uniform grid's %g", types[t], se / N, sg / N);
        for (int i = 0; i < 256; i++) {
            CHECK(y[5 * 256 + i] == 0.0f);
            CHECK(fabsf(y[6 * 256 + i] - 0.375f) <= 1e-3f * 0.375f);
        }
        CHECK(fabsf(y[7 * 256 + 3] - 50.0f) <= 0.5f);
        for (int i = 0; i < N; i++)
            CHECK(isfinite(y[i]));
    }
}

/* The embeddings and the tied lm_head of a quantized GGUF model stay as stored, quantized (the
   loss and training equal those of the dequantized values: test_golden shared_gguf_models, CLI
   gguf_quantized_matches_dequantized); with PEFT_MMAP_WEIGHTS=1, as here, in the mapped file
   itself, an F32 file's too (by default both are copied onto huge pages as they are: test_golden
   weights_on_huge_pages). */
TEST(gguf_embeddings_stay_quantized)
{
    if (!shared_dir())
        SKIP("../shared not present");
    const char *files[] = {"stories260K-q8_0.gguf", "stories260K-q4_0.gguf", "stories260K-f32.gguf"};
    const uint32_t types[] = {PEFT_GG_Q8_0, PEFT_GG_Q4_0, PEFT_GG_F32};
    for (int i = 0; i < 3; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/models/stories260K/%s", shared_dir(), files[i]);
        peft_model *m;
        setenv("PEFT_MMAP_WEIGHTS", "1", 1);
        CHECK_OK(peft_model_open(&m, path, NULL));
        unsetenv("PEFT_MMAP_WEIGHTS");
        if (!m)
            continue;
        const uint8_t *lo = m->gguf_map, *hi = lo + m->gguf_size;
        const uint8_t *e = m->embed.q ? m->embed.q : (const uint8_t *)m->embed.f;
        CHECK_MSG(e >= lo && e < hi, "%s: the embeddings are not the mapped file's", files[i]);
        CHECK(types[i] == PEFT_GG_F32 ? m->embed.f && !m->embed.q : m->embed.q && m->embed.qtype == types[i]);
        CHECK(m->embed.rows == 512 && m->embed.cols == 64);
        CHECK(m->head.q == m->embed.q && m->head.f == m->embed.f);
        peft_model_close(&m);
    }
}

TEST(quantized_weights)
{
    enum { ROWS = 40, COLS = 512, N = 5 };
    const uint32_t types[] = {PEFT_GG_Q8_0, PEFT_GG_Q4_0, PEFT_GG_Q4_K, PEFT_GG_Q6_K};
    static uint8_t q[ROWS * COLS * 2];
    static float ref[ROWS * COLS], deq[ROWS * COLS], x[N * COLS], dy[N * ROWS], y[N * ROWS], dx[N * COLS];
    peft_model m;
    memset(&m, 0, sizeof m);
    m.be = peft__backend_cpu();
    peft_backend_host host = {sizeof host, 1, NULL, peft__pool_for};
    CHECK_OK(m.be->init(&m.be_ctx, &host));
    m.qpanel_floats = 7 * COLS; /* panels of 7 rows: the last one partial */
    m.qpanel = malloc((size_t)m.qpanel_floats * sizeof(float));
    fill(x, N * COLS, 1.0f);
    fill(dy, N * ROWS, 1.0f);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        uint32_t t = types[ti];
        size_t rb = 0;
        for (int r = 0; r < ROWS; r++)
            rb = make_row(q + (size_t)r * peft__gg_row_bytes(t, COLS), ref + (size_t)r * COLS, t, COLS);
        CHECK(rb == peft__gg_row_bytes(t, COLS));
        CHECK(peft__dequant(deq, q, (uint64_t)ROWS * COLS, t) == 0);
        int same = 0;
        for (int i = 0; i < ROWS * COLS; i++)
            same += deq[i] == ref[i];
        CHECK_MSG(same == ROWS * COLS, "type %u: %d of %d values as the format defines", t, same, ROWS * COLS);
        peft_w w = {.q = q, .qtype = t, .rows = ROWS, .cols = COLS, .row_bytes = rb};
        float row[COLS];
        peft__w_rows(&m, &w, 13, 1, row);
        CHECK(memcmp(row, ref + 13 * COLS, sizeof row) == 0);
        /* y = x W^T and dx = 0.5 + dy W, panel by panel, against double sums over the reference */
        peft__gemm_xwt(&m, N, x, COLS, &w, 0.0f, y, ROWS);
        for (int i = 0; i < N * COLS; i++)
            dx[i] = 0.5f;
        peft__gemm_dyw(&m, N, dy, ROWS, &w, 1.0f, dx, COLS);
        double worst = 0;
        for (int n = 0; n < N; n++) {
            /* error relative to the sum of the terms' magnitudes (float32 accumulation) */
            for (int o = 0; o < ROWS; o++) {
                double s = 0, mag = 0;
                for (int i = 0; i < COLS; i++) {
                    s += (double)x[n * COLS + i] * ref[o * COLS + i];
                    mag += fabs((double)x[n * COLS + i] * ref[o * COLS + i]);
                }
                worst = fmax(worst, fabs(s - y[n * ROWS + o]) / fmax(1.0, mag));
            }
            for (int i = 0; i < COLS; i++) {
                double s = 0.5, mag = 0.5;
                for (int o = 0; o < ROWS; o++) {
                    s += (double)dy[n * ROWS + o] * ref[o * COLS + i];
                    mag += fabs((double)dy[n * ROWS + o] * ref[o * COLS + i]);
                }
                worst = fmax(worst, fabs(s - dx[n * COLS + i]) / fmax(1.0, mag));
            }
        }
        CHECK_MSG(worst < 1e-5, "type %u: products differ by %g", t, worst);
    }
    CHECK(peft__dequant(deq, q, 32, 99) == -1);
    CHECK(peft__gg_row_bytes(PEFT_GG_Q4_K, 100) == 0);
    free(m.qpanel);
    m.be->free(m.be_ctx);
}

static const struct h_case cases[] = {
    CASE(rmsnorm),     CASE(rope),         CASE(attention_gqa),   CASE(attention_packed_documents),
    CASE(attention_sliding_window), CASE(attention_shared_prefix), CASE(attention_softcap), CASE(swiglu), CASE(geglu),
    CASE(cross_entropy), CASE(cross_entropy_softcap), CASE(lora_linear), CASE(lora_linear_dropout), CASE(ia3_linear_bias), CASE(ia3_linear_bias_feedforward), CASE(dropout_mask), CASE(thread_pool),
    CASE(backend_cpu_gemm), CASE(backend_cpu_gemm_sum), CASE(backend_cpu_gemm_slabs), CASE(backend_cpu_gemm_bf16), CASE(fast_expf_accuracy), CASE(lane_reductions), CASE(backend_blis_gemm), CASE(quantized_weights), CASE(quantizers_round_trip),
    CASE(gguf_embeddings_stay_quantized), CASE(k_quantizers_round_trip),
};
TEST_MAIN(cases)
