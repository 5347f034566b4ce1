/* Several adapters on one model through the public API: named adapters loaded, switched,
   deleted, and combined (PEFT's add_weighted_adapter: linear, cat, svd, TIES, DARE,
   magnitude prune), with their refusals. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api_helpers.h"
#include "harness.h"
#include "peft/peft.h"

/* Train a LoRA of rank r on targets/layers for 15 steps on batch seed, save it into a new directory. */
static char *trained_lora(uint32_t targets, const char *layers, int r, uint32_t seed, int dora)
{
    peft_model *m = open_tiny(2);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = targets;
    o.layers = layers;
    o.rank = r;
    o.alpha = 3.0f * (float)r;
    o.use_dora = dora;
    o.seed = seed;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 2e-2));
    int32_t tok[32];
    make_batch(tok, 32, seed);
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 16, NULL};
    for (int i = 0; i < 15; i++)
        CHECK_OK(peft_step(m, &b, NULL));
    char *d = mktmp();
    CHECK_OK(peft_save_adapter(m, d, NULL));
    peft_model_close(&m);
    return d;
}

static double loss_of(peft_model *m, const char *name)
{
    CHECK_OK(peft_adapter_set(m, name));
    return eval_loss(m);
}

/* Several adapters on one model: load, switch (each keeps its optimizer state), delete, and
   PEFT's weighted combinations checked against their formulas and against each other. */
TEST(several_adapters)
{
    char *da = trained_lora(PEFT_TARGET_Q | PEFT_TARGET_V, NULL, 2, 5, 0);
    char *db = trained_lora(PEFT_TARGET_V | PEFT_TARGET_O, "1-2", 3, 6, 0);
    char *dc = trained_lora(PEFT_TARGET_Q | PEFT_TARGET_V, NULL, 2, 7, 0);
    char *dd = trained_lora(PEFT_TARGET_Q, NULL, 2, 8, 1);
    peft_model *m = open_tiny(2), *one = open_tiny(1);
    double base = eval_loss(m), la, lb;
    CHECK_OK(peft_load_adapter(one, da));
    la = eval_loss(one);
    peft_detach(one);
    CHECK_OK(peft_load_adapter(one, db));
    lb = eval_loss(one);
    peft_detach(one);
    CHECK_OK(peft_adapter_load(m, da, "a"));
    CHECK_OK(peft_adapter_load(m, db, "b"));
    CHECK_OK(peft_adapter_load(m, dc, "c"));
    CHECK_OK(peft_adapter_load(m, dd, "d"));
    CHECK(peft_adapter_load(m, da, "a") == PEFT_EINVAL);
    CHECK(peft_adapter_load(m, da, "bad name") == PEFT_EINVAL);
    CHECK(peft_adapter_load(m, "/nonexistent", "e") != PEFT_OK);
    const char *names[16];
    int32_t n, active;
    CHECK_OK(peft_adapter_list(m, names, 8, &n, &active));
    CHECK(n == 4 && !active && !strcmp(names[0], "a") && !strcmp(names[3], "d"));
    CHECK(eval_loss(m) == base); /* loading activates nothing */
    CHECK(loss_of(m, "a") == la);
    CHECK(loss_of(m, "b") == lb);
    CHECK(peft_adapter_set(m, "zz") == PEFT_ENOTFOUND);
    CHECK_OK(peft_adapter_list(m, names, 8, &n, &active));
    CHECK(n == 4 && active && !strcmp(names[0], "b"));
    CHECK(loss_of(m, NULL) == base);

    /* each adapter keeps its optimizer state: two updates of a, none of b */
    int32_t tok[32];
    make_batch(tok, 32, 9);
    peft_batch bt = {PEFT_BATCH_VERSION, tok, NULL, 2, 16, NULL};
    double st;
    CHECK_OK(peft_adapter_set(m, "a"));
    CHECK_OK(peft_step(m, &bt, NULL));
    CHECK_OK(peft_step(m, &bt, NULL));
    CHECK_OK(peft_adapter_set(m, "b"));
    CHECK_OK(peft_opt_get(m, PEFT_OPT_STEP, &st));
    CHECK(st == 0);
    CHECK_OK(peft_adapter_set(m, "a"));
    CHECK_OK(peft_opt_get(m, PEFT_OPT_STEP, &st));
    CHECK(st == 2);
    la = eval_loss(m);

    /* identities: cat(a; 1) = a, cat(a, a; .5, .5) = a, linear(a, a; .25, .25) = a, svd(a) = a */
    static const struct {
        const char *name;
        int comb, rank;
        double w0, w1;
        int two;
    } same[] = {{"cat1", PEFT_COMBINE_CAT, 0, 1.0, 0, 0},
                {"cat2", PEFT_COMBINE_CAT, 0, 0.5, 0.5, 1},
                {"lin2", PEFT_COMBINE_LINEAR, 0, 0.25, 0.25, 1},
                {"svd1", PEFT_COMBINE_SVD, 0, 1.0, 0, 0}};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        const char *src[2] = {"a", "a"};
        double w[2] = {same[i].w0, same[i].w1};
        CHECK_OK(peft_adapter_combine(m, src, w, same[i].two ? 2 : 1, same[i].name, same[i].comb, same[i].rank));
        CHECK_MSG(fabs(loss_of(m, same[i].name) - la) < 2e-5, "%s: %.7f vs %.7f", same[i].name, eval_loss(m), la);
    }
    /* cat keeps every delta: the rank-5 SVD of a + b is the same model; a rank-2 one is not */
    const char *ab[2] = {"a", "b"};
    const double w11[2] = {1.0, 1.0}, w37[2] = {0.3, 0.7};
    CHECK_OK(peft_adapter_combine(m, ab, w11, 2, "ab_cat", PEFT_COMBINE_CAT, 0));
    CHECK_OK(peft_adapter_combine(m, ab, w11, 2, "ab_svd5", PEFT_COMBINE_SVD, 5));
    CHECK_OK(peft_adapter_combine(m, ab, w11, 2, "ab_svd3", PEFT_COMBINE_SVD, 0));
    double lcat = loss_of(m, "ab_cat");
    CHECK(fabs(lcat - la) > 1e-3 && fabs(lcat - lb) > 1e-3);
    CHECK_CLOSE(loss_of(m, "ab_svd5"), lcat, 2e-5);
    peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
    CHECK_OK(peft_model_get_info(m, &info));
    CHECK(!strcmp(info.adapter_type, "LORA"));
    CHECK(fabs(loss_of(m, "ab_svd3") - lcat) > 1e-6);
    /* the union of the modules (q, v in all layers; o in layers 1-2): a regular expression */
    char *dcat = mktmp();
    CHECK_OK(peft_adapter_set(m, "ab_cat"));
    CHECK_OK(peft_save_adapter(m, dcat, NULL));
    size_t len;
    char *cfg = read_text(dcat, "adapter_config.json", &len);
    CHECK(cfg && strstr(cfg, "\"r\": 5") && strstr(cfg, "\"lora_alpha\": 5") && strstr(cfg, "model\\\\.layers\\\\.1\\\\.self_attn\\\\.o_proj"));
    free(cfg);
    CHECK_OK(peft_load_adapter(one, dcat));
    CHECK(eval_loss(one) == lcat);
    peft_detach(one);

    /* linear, by its formula: A = sum sqrt(w s) A_i, B = sum sqrt(w s) B_i (a, c: same modules) */
    const char *ac[2] = {"a", "c"};
    CHECK_OK(peft_adapter_combine(m, ac, w37, 2, "ac_lin", PEFT_COMBINE_LINEAR, 0));
    float *pa, *pc, *pl;
    size_t na, nc, nl;
    float *copy_a, *copy_c;
    CHECK_OK(peft_adapter_set(m, "a"));
    CHECK_OK(peft_param_buffer(&pa, &na, m));
    copy_a = malloc(na * sizeof *copy_a);
    memcpy(copy_a, pa, na * sizeof *pa);
    CHECK_OK(peft_adapter_set(m, "c"));
    CHECK_OK(peft_param_buffer(&pc, &nc, m));
    copy_c = malloc(nc * sizeof *copy_c);
    memcpy(copy_c, pc, nc * sizeof *pc);
    CHECK_OK(peft_adapter_set(m, "ac_lin"));
    CHECK_OK(peft_param_buffer(&pl, &nl, m));
    CHECK(na == nc && nc == nl);
    double s = 3.0, worst = 0; /* alpha 3 r over rank r */
    for (size_t i = 0; i < nl; i++)
        worst = fmax(worst, fabs(pl[i] - (sqrt(0.3 * s) * copy_a[i] + sqrt(0.7 * s) * copy_c[i])));
    CHECK_MSG(worst < 1e-5, "linear combination off by %g", worst);
    free(copy_a);
    free(copy_c);

    /* refusals: linear over ranks 2 and 3, a negative linear weight, DoRA, unknown names, a name taken */
    CHECK(peft_adapter_combine(m, ab, w11, 2, "x1", PEFT_COMBINE_LINEAR, 0) == PEFT_EINVAL);
    const double wneg[2] = {-1.0, 1.0};
    CHECK(peft_adapter_combine(m, ac, wneg, 2, "x2", PEFT_COMBINE_LINEAR, 0) == PEFT_EINVAL);
    const char *ad[2] = {"a", "d"};
    CHECK(peft_adapter_combine(m, ad, w11, 2, "x3", PEFT_COMBINE_CAT, 0) == PEFT_EUNSUPPORTED);
    const char *az[2] = {"a", "zz"};
    CHECK(peft_adapter_combine(m, az, w11, 2, "x4", PEFT_COMBINE_CAT, 0) == PEFT_ENOTFOUND);
    CHECK(peft_adapter_combine(m, ab, w11, 2, "a", PEFT_COMBINE_CAT, 0) == PEFT_EINVAL);
    CHECK(peft_adapter_combine(m, ab, w11, 2, "x5", PEFT_COMBINE_SVD, 40) == PEFT_EINVAL);
    CHECK_OK(peft_adapter_list(m, names, 0, &n, &active));
    CHECK(n == 4 + 4 + 3 + 1);

    /* merged: no switching; delete the active one and an inactive one; attaching names "default" */
    CHECK_OK(peft_merge_adapter(m));
    CHECK(peft_adapter_set(m, "a") == PEFT_ESTATE);
    CHECK_OK(peft_unmerge_adapter(m));
    CHECK_OK(peft_adapter_delete(m, "ac_lin"));
    CHECK_OK(peft_adapter_delete(m, "cat1"));
    CHECK(peft_adapter_delete(m, "cat1") == PEFT_ENOTFOUND);
    CHECK_OK(peft_adapter_list(m, names, 0, &n, &active));
    CHECK(n == 10 && !active);
    CHECK(eval_loss(m) == base);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    CHECK_OK(peft_adapter_list(m, names, 16, &n, &active));
    CHECK(active && !strcmp(names[0], "default"));
    CHECK_OK(peft_adapter_set(m, "b"));
    CHECK(peft_attach_lora(m, &o, NULL) == PEFT_ESTATE);
    peft_model_close(&m);
    peft_model_close(&one);
}

/* A copy of the active adapter's parameters (adapter `name` made active). */
static float *params_of(peft_model *m, const char *name, size_t *n)
{
    float *p;
    if (peft_adapter_set(m, name) || peft_param_buffer(&p, n, m))
        return NULL;
    float *c = malloc(*n * sizeof *c);
    memcpy(c, p, *n * sizeof *p);
    return c;
}

/* DARE's random masks (the deterministic merges are checked against PyTorch in test_golden), svd
   clamping, and the settings refused. a combined with itself: every value of the result is one of
   the few the kept/dropped patterns allow. */
TEST(combine_dare_clamp_and_refusals)
{
    char *da = trained_lora(PEFT_TARGET_Q | PEFT_TARGET_V, NULL, 4, 5, 0);
    char *db = trained_lora(PEFT_TARGET_V | PEFT_TARGET_O, "1-2", 3, 6, 0);
    peft_model *m = open_tiny(2);
    CHECK_OK(peft_adapter_load(m, da, "a"));
    CHECK_OK(peft_adapter_load(m, db, "b"));
    const char *aa[2] = {"a", "a"}, *ab[2] = {"a", "b"};
    const double w[2] = {0.25, 0.5}, s = 3.0; /* alpha 3 r */
    const double g0 = sqrt(w[0] * s), g1 = sqrt(w[1] * s);
    peft_combine_options o = PEFT_COMBINE_OPTIONS_INIT;
    o.combination = PEFT_COMBINE_DARE_LINEAR;
    o.density = 0.5;
    o.seed = 11;
    CHECK_OK(peft_adapter_combine_ex(m, aa, w, 2, "dl", &o));
    CHECK_OK(peft_adapter_combine_ex(m, aa, w, 2, "dl_again", &o));
    o.seed = 12;
    CHECK_OK(peft_adapter_combine_ex(m, aa, w, 2, "dl_other", &o));
    o.combination = PEFT_COMBINE_DARE_TIES;
    CHECK_OK(peft_adapter_combine_ex(m, aa, w, 2, "dt", &o));
    size_t n, n2, n3, n4, n5;
    float *pa = params_of(m, "a", &n), *pl = params_of(m, "dl", &n2), *pl2 = params_of(m, "dl_again", &n3);
    float *po = params_of(m, "dl_other", &n4), *pt = params_of(m, "dt", &n5);
    CHECK(pa && pl && pl2 && po && pt && n == n2 && n == n3 && n == n4 && n == n5);
    size_t kept = 0, odd = 0, odd_ties = 0, nz = 0;
    for (size_t i = 0; pa && pl && pt && i < n; i++) {
        double x = pa[i], y = pl[i], tol = 1e-5 * fabs(x) + 1e-9;
        if (x == 0)
            continue;
        nz++;
        /* linear: 0, 2 g0 x, 2 g1 x, 2 (g0 + g1) x; ties (signs agree): the kept ones' mean */
        if (!(fabs(y) <= tol || fabs(y - 2 * g0 * x) <= tol || fabs(y - 2 * g1 * x) <= tol ||
              fabs(y - 2 * (g0 + g1) * x) <= 3 * tol))
            odd++;
        double t = pt[i];
        if (!(fabs(t) <= tol || fabs(t - 2 * g0 * x) <= tol || fabs(t - 2 * g1 * x) <= tol ||
              fabs(t - (g0 + g1) * x) <= 3 * tol))
            odd_ties++;
        kept += fabs(y) > tol;
    }
    CHECK_MSG(odd == 0 && odd_ties == 0, "dare values outside the kept/dropped patterns: %zu, %zu", odd, odd_ties);
    /* P(kept) = 1 - 0.25: within 5 standard deviations */
    double frac = (double)kept / (double)nz, sd = sqrt(0.75 * 0.25 / (double)nz);
    CHECK_MSG(fabs(frac - 0.75) < 5 * sd, "dare kept %.3f of %zu values", frac, nz);
    CHECK(pl && pl2 && po && !memcmp(pl, pl2, n * sizeof *pl)); /* the seed decides */
    CHECK(pl && po && memcmp(pl, po, n * sizeof *pl) != 0);
    free(pa), free(pl), free(pl2), free(po), free(pt);

    /* svd_clamp: every value of B and A within the quantile; q = 1 changes nothing */
    o = (peft_combine_options)PEFT_COMBINE_OPTIONS_INIT;
    o.svd_rank = 3;
    CHECK_OK(peft_adapter_combine_ex(m, ab, w, 2, "sv", &o));
    o.svd_clamp = 1.0;
    CHECK_OK(peft_adapter_combine_ex(m, ab, w, 2, "sv1", &o));
    o.svd_clamp = 0.5;
    CHECK_OK(peft_adapter_combine_ex(m, ab, w, 2, "sv5", &o));
    float *ps = params_of(m, "sv", &n), *p1 = params_of(m, "sv1", &n2), *p5 = params_of(m, "sv5", &n3);
    CHECK(ps && p1 && p5 && n == n2 && n == n3);
    double big = 0, big5 = 0;
    size_t changed = 0, beyond = 0;
    for (size_t i = 0; ps && p1 && p5 && i < n; i++) {
        big = fmax(big, fabs(ps[i]));
        big5 = fmax(big5, fabs(p5[i]));
        changed += p5[i] != ps[i];
        beyond += fabs(p1[i]) > big; /* q = 1 clamps to the largest value: negatives below -max only */
    }
    CHECK(big5 < big && changed > 0 && beyond == 0);
    free(ps), free(p1), free(p5);

    /* refusals: bad settings, an old entry point for a new merge, one rank for ties */
    const double wneg[2] = {-0.5, 1.0};
    o = (peft_combine_options)PEFT_COMBINE_OPTIONS_INIT;
    o.combination = PEFT_COMBINE_TIES;
    o.density = 1.5;
    CHECK(peft_adapter_combine_ex(m, aa, w, 2, "x", &o) == PEFT_EINVAL);
    o.density = 0.5;
    o.majority_sign = 2;
    CHECK(peft_adapter_combine_ex(m, aa, w, 2, "x", &o) == PEFT_EINVAL);
    o.majority_sign = PEFT_SIGN_FREQUENCY;
    CHECK(peft_adapter_combine_ex(m, ab, w, 2, "x", &o) == PEFT_EINVAL); /* ranks 4 and 3 */
    CHECK(peft_adapter_combine_ex(m, aa, wneg, 2, "x", &o) == PEFT_EINVAL);
    o.combination = PEFT_COMBINE_TIES_SVD; /* svd family: any ranks, any weights */
    CHECK_OK(peft_adapter_combine_ex(m, ab, wneg, 2, "x", &o));
    o.combination = 11;
    CHECK(peft_adapter_combine_ex(m, aa, w, 2, "y", &o) == PEFT_EINVAL);
    o.combination = PEFT_COMBINE_TIES;
    o.version = 99;
    CHECK(peft_adapter_combine_ex(m, aa, w, 2, "y", &o) == PEFT_EINVAL);
    CHECK(peft_adapter_combine(m, aa, w, 2, "y", PEFT_COMBINE_TIES, 0) == PEFT_EINVAL);
    CHECK(strstr(peft_last_error(), "peft_adapter_combine_ex") != NULL);
    CHECK_OK(peft_adapter_combine_ex(m, aa, w, 2, "y", NULL)); /* NULL: PEFT's default svd */
    peft_model_close(&m);
}

static const struct h_case cases[] = {
    CASE(several_adapters),
    CASE(combine_dare_clamp_and_refusals),
};

TEST_MAIN(cases)
