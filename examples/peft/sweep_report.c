/*
 * peft sweep's outputs: the terminal table, report.md, chart.svg (held-out loss against
 * trainable parameters), curves.svg (training loss per step) and metrics.jsonl. The SVG
 * is written by hand: no plotting dependency, viewable in any browser.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sweep.h"

typedef struct agg {
    int cfg, ok, failed;
    double mean, lo, hi, forget, tps, peak;
    double *curve; /* mean training loss per step over the seeds that finished */
    int n_curve;
    const char *error;
} agg;

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static const sweep_report *sort_report; /* for by_loss: qsort has no context argument */

static int by_loss(const void *x, const void *y)
{
    const agg *a = x, *b = y;
    uint64_t ba = sort_report->cfg[a->cfg].budget, bb = sort_report->cfg[b->cfg].budget;
    if (ba != bb)
        return ba < bb ? -1 : 1;
    if (!a->ok != !b->ok)
        return a->ok ? -1 : 1;
    if (a->ok && a->mean != b->mean)
        return a->mean < b->mean ? -1 : 1;
    return a->cfg - b->cfg;
}

static void aggregate(const sweep_report *r, agg *g, int i)
{
    memset(g, 0, sizeof *g);
    g->cfg = i;
    g->lo = INFINITY;
    g->hi = -INFINITY;
    double tps[1000];
    int nt = 0, nf = 0;
    for (long s = 0; s < r->seeds; s++) {
        const run_result *x = &r->runs[(size_t)i * (size_t)r->seeds + (size_t)s];
        if (x->status == 1) {
            g->failed++;
            if (!g->error)
                g->error = x->error;
        }
        if (x->status != 0)
            continue;
        g->ok++;
        g->mean += x->eval_after;
        g->lo = fmin(g->lo, x->eval_after);
        g->hi = fmax(g->hi, x->eval_after);
        if (isfinite(x->forget_after)) {
            g->forget += x->forget_after;
            nf++;
        }
        if (nt < 1000)
            tps[nt++] = x->tps;
        g->peak = fmax(g->peak, x->peak_mib);
        if (!g->curve && x->n_train > 0) {
            g->curve = calloc((size_t)x->n_train, sizeof *g->curve);
            g->n_curve = g->curve ? x->n_train : 0;
        }
        for (int k = 0; k < g->n_curve && k < x->n_train; k++)
            g->curve[k] += x->train_loss[k];
    }
    if (g->ok) {
        g->mean /= g->ok;
        for (int k = 0; k < g->n_curve; k++)
            g->curve[k] /= g->ok;
    }
    g->forget = nf ? g->forget / nf : NAN;
    if (nt) {
        qsort(tps, (size_t)nt, sizeof *tps, cmp_double);
        g->tps = nt % 2 ? tps[nt / 2] : 0.5 * (tps[nt / 2 - 1] + tps[nt / 2]);
    }
}

static void fmt_num(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.6f", v);
    else
        fputs("null", f);
}

static const char *const palette[10] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                        "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

static void svg_escape(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '<')
            fputs("&lt;", f);
        else if (*s == '>')
            fputs("&gt;", f);
        else if (*s == '&')
            fputs("&amp;", f);
        else if (*s == '"')
            fputs("&quot;", f);
        else
            fputc(*s, f);
    }
}

/* "Nice" axis ticks covering [lo, hi]. */
static double tick_step(double lo, double hi, int want)
{
    double raw = (hi - lo) / want, p = pow(10, floor(log10(raw))), m = raw / p;
    return (m < 1.5 ? 1 : m < 3 ? 2 : m < 7 ? 5 : 10) * p;
}

#define W 760
#define H 460
#define ML 70
#define MR 190
#define MT 40
#define MB 60

static void svg_begin(FILE *f, const char *title, const char *xlabel, const char *ylabel)
{
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
            "font-family=\"sans-serif\" font-size=\"12\">\n"
            "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n<text x=\"%d\" y=\"22\" font-size=\"15\" "
            "text-anchor=\"middle\">",
            W, H, W, H, W, H, (ML + W - MR) / 2);
    svg_escape(f, title);
    fprintf(f, "</text>\n<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">", (ML + W - MR) / 2, H - 15);
    svg_escape(f, xlabel);
    fprintf(f, "</text>\n<text x=\"16\" y=\"%d\" text-anchor=\"middle\" transform=\"rotate(-90 16 %d)\">",
            (MT + H - MB) / 2, (MT + H - MB) / 2);
    svg_escape(f, ylabel);
    fprintf(f, "</text>\n<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#444\"/>\n", ML,
            MT, W - ML - MR, H - MT - MB);
}

static double map(double v, double lo, double hi, double a, double b) { return a + (v - lo) / (hi - lo) * (b - a); }

static void y_axis(FILE *f, double lo, double hi)
{
    double st = tick_step(lo, hi, 6);
    for (double t = ceil(lo / st) * st; t <= hi + 1e-12; t += st) {
        double y = map(t, lo, hi, H - MB, MT);
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>", ML, y, W - MR, y);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", ML - 6, y + 4, t);
    }
}

/* A marker whose color and shape tell the k-th configuration apart (10 colors x 3 shapes). */
static void marker(FILE *f, double x, double y, int k, const char *col)
{
    int shape = k / 10 % 3;
    if (shape == 0)
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"%s\"/>", x, y, col);
    else if (shape == 1)
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"9\" height=\"9\" fill=\"%s\"/>", x - 4.5, y - 4.5, col);
    else
        fprintf(f, "<path d=\"M%.1f %.1fl6 6-6 6-6-6z\" fill=\"%s\"/>", x, y - 6, col);
}

static int chart_params(const sweep_report *r, const agg *g, int n, FILE *f)
{
    double xlo = INFINITY, xhi = -INFINITY, ylo = r->base_eval, yhi = r->base_eval;
    for (int i = 0; i < n; i++) {
        if (!g[i].ok)
            continue;
        double p = (double)r->cfg[g[i].cfg].params;
        xlo = fmin(xlo, p);
        xhi = fmax(xhi, p);
        ylo = fmin(ylo, g[i].lo);
        yhi = fmax(yhi, g[i].hi);
    }
    if (!isfinite(xlo))
        return 0;
    int logx = xhi / xlo > 20;
    double a = logx ? log10(xlo) : xlo, b = logx ? log10(xhi) : xhi;
    double pad = (b - a) * 0.08 + (logx ? 0.05 : xlo * 0.05 + 1);
    a -= pad;
    b += pad;
    double ypad = (yhi - ylo) * 0.08 + 1e-3;
    ylo -= ypad;
    yhi += ypad;
    char title[200];
    if (r->n_budgets > 1)
        snprintf(title, sizeof title, "Held-out loss against trainable parameters (budgets %s)", r->budgets);
    else
        snprintf(title, sizeof title, "Held-out loss at a budget of %llu trainable parameters",
                 (unsigned long long)r->budget);
    svg_begin(f, title, logx ? "trainable parameters (log scale)" : "trainable parameters", "eval loss after training");
    y_axis(f, ylo, yhi);
    if (logx) {
        for (int e = (int)floor(a); e <= (int)ceil(b); e++)
            for (int m = 1; m < 10; m++) {
                double v = log10(m * pow(10, e));
                if (v < a || v > b)
                    continue;
                double x = map(v, a, b, ML, W - MR);
                fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"%s\"/>", x, MT, x, H - MB,
                        m == 1 ? "#ccc" : "#f0f0f0");
                if (m == 1 || m == 2 || m == 5)
                    fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>\n", x, H - MB + 16,
                            m * pow(10, e));
            }
    } else {
        double st = tick_step(a, b, 6);
        for (double t = ceil(a / st) * st; t <= b; t += st) {
            double x = map(t, a, b, ML, W - MR);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>", x, MT, x, H - MB);
            fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>\n", x, H - MB + 16, t);
        }
    }
    double by = map(r->base_eval, ylo, yhi, H - MB, MT);
    fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#888\" stroke-dasharray=\"6 4\"/>"
               "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" fill=\"#666\">base model %.4f</text>\n",
            ML, by, W - MR, by, W - MR - 4, by - 5, r->base_eval);
    /* one color (and marker shape) per family; a family measured at several budgets is a line */
    const char *fams[256];
    int nf = 0;
    for (int i = 0; i < n; i++) {
        const sweep_cfg *c = &r->cfg[g[i].cfg];
        int seen = 0;
        for (int j = 0; j < nf && !seen; j++)
            seen = !strcmp(fams[j], c->family);
        if (g[i].ok && !seen && nf < 256)
            fams[nf++] = c->family;
    }
    for (int k = 0; k < nf; k++) {
        const char *col = palette[k % 10];
        double px[64], py[64], best = INFINITY;
        int np = 0;
        for (int i = 0; i < n; i++) { /* g is sorted by budget: points in budget order */
            const sweep_cfg *c = &r->cfg[g[i].cfg];
            if (!g[i].ok || strcmp(c->family, fams[k]) != 0)
                continue;
            double p = (double)c->params, x = map(logx ? log10(p) : p, a, b, ML, W - MR);
            double y = map(g[i].mean, ylo, yhi, H - MB, MT);
            if (g[i].ok > 1)
                fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>", x,
                        map(g[i].lo, ylo, yhi, H - MB, MT), x, map(g[i].hi, ylo, yhi, H - MB, MT), col);
            fputs("<g>", f);
            marker(f, x, y, k, col);
            fputs("<title>", f);
            svg_escape(f, c->name);
            fprintf(f, ": %llu parameters, eval loss %.4f</title></g>\n", (unsigned long long)c->params, g[i].mean);
            if (np < 64) {
                px[np] = x;
                py[np++] = y;
            }
            best = g[i].mean; /* at the largest budget */
        }
        if (np > 1) {
            fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.2\" points=\"", col);
            for (int j = 0; j < np; j++)
                fprintf(f, "%.1f,%.1f ", px[j], py[j]);
            fputs("\"/>\n", f);
        }
        int ly = MT + 8 + 16 * k;
        marker(f, W - MR + 14, ly, k, col);
        fprintf(f, "<text x=\"%d\" y=\"%d\">", W - MR + 24, ly + 4);
        svg_escape(f, fams[k]);
        fprintf(f, " %.3f</text>\n", best);
    }
    fputs("</svg>\n", f);
    return 0;
}

static int chart_curves(const sweep_report *r, const agg *g, int n, FILE *f)
{
    double ylo = INFINITY, yhi = -INFINITY;
    long steps = 0;
    /* the curves are smoothed (exponential moving average, 0.9) so the configurations separate */
    double **sm = calloc((size_t)n, sizeof *sm);
    if (!sm)
        return -1;
    for (int i = 0; i < n; i++) {
        if (!g[i].ok || !g[i].n_curve || !(sm[i] = malloc((size_t)g[i].n_curve * sizeof **sm)))
            continue;
        double e = NAN;
        for (int k = 0; k < g[i].n_curve; k++) {
            double v = g[i].curve[k];
            if (isfinite(v))
                e = isfinite(e) ? 0.9 * e + 0.1 * v : v;
            sm[i][k] = e;
            if (isfinite(e)) {
                ylo = fmin(ylo, e);
                yhi = fmax(yhi, e);
            }
        }
        if (g[i].n_curve > steps)
            steps = g[i].n_curve;
    }
    if (!isfinite(ylo) || steps < 1) {
        for (int i = 0; i < n; i++)
            free(sm[i]);
        free(sm);
        return 0;
    }
    double pad = (yhi - ylo) * 0.05 + 1e-3;
    ylo -= pad;
    yhi += pad;
    svg_begin(f, "Training loss (moving average) per optimizer step", "step", "training loss");
    y_axis(f, ylo, yhi);
    double st = tick_step(0, (double)steps, 6);
    for (double t = 0; t <= (double)steps; t += st) {
        double x = map(t, 0, (double)steps, ML, W - MR);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>\n", x, H - MB + 16, t);
    }
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (!sm[i])
            continue;
        const char *col = palette[k % 10];
        const char *dash = k >= 10 ? " stroke-dasharray=\"5 3\"" : "";
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\"%s points=\"", col, dash);
        for (int s = 0; s < g[i].n_curve; s++)
            if (isfinite(sm[i][s]))
                fprintf(f, "%.1f,%.1f ", map(s + 1, 0, (double)steps, ML, W - MR), map(sm[i][s], ylo, yhi, H - MB, MT));
        fputs("\"><title>", f);
        svg_escape(f, r->cfg[g[i].cfg].name);
        fputs("</title></polyline>\n", f);
        int ly = MT + 8 + 16 * k;
        fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2\"%s/><text x=\"%d\" y=\"%d\">",
                W - MR + 8, ly, W - MR + 22, ly, col, dash, W - MR + 26, ly + 4);
        svg_escape(f, r->cfg[g[i].cfg].name);
        fputs("</text>\n", f);
        k++;
    }
    fputs("</svg>\n", f);
    for (int i = 0; i < n; i++)
        free(sm[i]);
    free(sm);
    return 0;
}

/* Build a file's text through a memory stream, then write it atomically. */
typedef int (*writer)(const sweep_report *, const agg *, int, FILE *);

static int emit(const sweep_report *r, const agg *g, int n, const char *name, writer w)
{
    char *text = NULL, path[4200];
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return -1;
    int e = w(r, g, n, f);
    e |= fclose(f) != 0;
    snprintf(path, sizeof path, "%s/%s", r->out, name);
    if (!e && write_file_atomic(path, text, len)) {
        fprintf(stderr, "peft sweep: cannot write %s\n", path);
        e = -1;
    }
    free(text);
    return e ? -1 : 0;
}

static void run_json(FILE *f, const sweep_report *r, const sweep_cfg *c, long s, const run_result *x)
{
    fputs("{\"config\": ", f);
    json_string(f, c->name);
    fputs(", \"family\": ", f);
    json_string(f, c->family);
    fprintf(f, ", \"seed\": %ld, \"method\": \"%s\", \"flags\": ", r->seed0 + s, c->method);
    json_string(f, c->flags);
    fprintf(f, ", \"status\": \"%s\", \"error\": ", x->status ? "failed" : "ok");
    json_string(f, x->error);
    fprintf(f, ", \"trainable_params\": %llu, \"budget\": %llu, \"budget_error\": %.6f, \"rank\": %d, \"rank_max\": %d",
            (unsigned long long)c->params, (unsigned long long)c->budget, c->budget_err, c->rank, c->rank_hi);
    fprintf(f, ", \"steps\": %ld, \"tokens\": %llu, \"seconds\": %.3f, \"tokens_per_s\": %.1f, \"peak_rss_mib\": %.1f",
            r->steps, (unsigned long long)x->tokens, x->seconds, x->tps, x->peak_mib);
    fputs(", \"eval_loss_before\": ", f);
    fmt_num(f, r->base_eval);
    fputs(", \"eval_loss_after\": ", f);
    fmt_num(f, x->eval_after);
    fputs(", \"forget_loss_before\": ", f);
    fmt_num(f, r->forget ? r->base_forget : NAN);
    fputs(", \"forget_loss_after\": ", f);
    fmt_num(f, x->forget_after);
    fputs(", \"train_loss\": [", f);
    for (int k = 0; k < x->n_train; k++) {
        if (k)
            fputs(", ", f);
        fmt_num(f, x->train_loss[k]);
    }
    fputs("], \"eval_curve\": [", f);
    for (int k = 0; k < x->n_eval; k++) {
        fprintf(f, "%s[%.0f, ", k ? ", " : "", x->eval_step[k]);
        fmt_num(f, x->eval_loss[k]);
        fputc(']', f);
    }
    fputs("]}\n", f);
}

static int write_jsonl(const sweep_report *r, const agg *g, int n, FILE *f)
{
    (void)g;
    (void)n;
    for (int i = 0; i < r->n_cfg; i++)
        for (long s = 0; s < r->seeds; s++) {
            const run_result *x = &r->runs[(size_t)i * (size_t)r->seeds + (size_t)s];
            if (x->status >= 0)
                run_json(f, r, &r->cfg[i], s, x);
        }
    return 0;
}

static void loss_cell(char *buf, size_t n, const agg *g)
{
    if (g->ok > 1)
        snprintf(buf, n, "%.4f (%.4f-%.4f)", g->mean, g->lo, g->hi);
    else
        snprintf(buf, n, "%.4f", g->mean);
}

static void rank_cell(char *buf, size_t n, const sweep_cfg *c)
{
    if (c->kind == KIND_PROMPT) /* the prompt length */
        snprintf(buf, n, "%dv", c->rank);
    else if (c->kind == KIND_TOKENS) /* the number of embedding rows */
        snprintf(buf, n, "%d rows", c->rank);
    else if (c->kind != KIND_LORA && c->kind != KIND_VERA)
        snprintf(buf, n, "-");
    else if (c->rank_hi > c->rank)
        snprintf(buf, n, "%d-%d", c->rank, c->rank_hi);
    else
        snprintf(buf, n, "%d", c->rank);
}

static int write_md(const sweep_report *r, const agg *g, int n, FILE *f)
{
    fprintf(f, "# peft sweep: %s\n\n", r->model);
    if (r->n_budgets > 1)
        fprintf(f, "Every configuration is trained at each budget (%s trainable parameters; NAME@BUDGET)", r->budgets);
    else
        fprintf(f, "Every configuration trains %llu trainable parameters (the budget", (unsigned long long)r->budget);
    fprintf(f,
            "; the rank, a soft prompt's length in virtual tokens (Nv) or a number of embedding rows, is solved per "
            "configuration) for the same %ld steps x %ld sequences x %ld tokens = %llu tokens of `%s`, "
            "learning rate %g (%s), ",
            r->steps, r->batch, r->seq, (unsigned long long)r->tokens_per_run, r->train,
            r->lr, r->schedule);
    if (r->seeds > 1)
        fprintf(f, "seeds %ld-%ld (the loss is the mean, the range in brackets).", r->seed0, r->seed0 + r->seeds - 1);
    else
        fprintf(f, "seed %ld.", r->seed0);
    fprintf(f, " Held-out loss on %s (%llu tokens).", r->eval ? r->eval : "a held-out part of the training file",
            (unsigned long long)r->eval_tokens);
    if (r->forget)
        fprintf(f, " Forgetting: loss on `%s` after minus before (base %.4f); lower is better.", r->forget, r->base_forget);
    fprintf(f, "\n\nBase model: eval loss %.4f (perplexity %.3f).\n\n", r->base_eval, exp(r->base_eval));
    fputs("| # | configuration | method | trainable | vs budget | rank | tokens/s | peak MiB | eval loss "
          "before | eval loss after | gain per M params |",
          f);
    fputs(r->forget ? " forgetting |\n" : "\n", f);
    fputs("|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|", f);
    fputs(r->forget ? "---:|\n" : "\n", f);
    int rank = 0;
    for (int i = 0; i < n; i++) {
        const sweep_cfg *c = &r->cfg[g[i].cfg];
        if (!c->available)
            continue;
        char rk[32], loss[64];
        rank_cell(rk, sizeof rk, c);
        if (!g[i].ok) {
            fprintf(f, "| - | %s | %s | %llu | %+.1f%% | %s | | | %.4f | failed: %s | |%s\n", c->name, c->method,
                    (unsigned long long)c->params, 100 * c->budget_err, rk, r->base_eval, g[i].error ? g[i].error : "",
                    r->forget ? " |" : "");
            continue;
        }
        loss_cell(loss, sizeof loss, &g[i]);
        fprintf(f, "| %d | %s | %s | %llu | %+.1f%% | %s | %.0f | %.1f | %.4f | %s | %.3f |", ++rank, c->name, c->method,
                (unsigned long long)c->params, 100 * c->budget_err, rk, g[i].tps, g[i].peak, r->base_eval, loss,
                (r->base_eval - g[i].mean) / ((double)c->params / 1e6));
        if (r->forget)
            fprintf(f, " %+.4f |", g[i].forget - r->base_forget);
        fputc('\n', f);
    }
    int notes = 0;
    for (int i = 0; i < r->n_cfg; i++)
        if (r->cfg[i].note[0] || r->cfg[i].available == 0) {
            if (!notes++)
                fputs("\nNotes:\n\n", f);
            fprintf(f, "- `%s`: %s\n", r->cfg[i].name, r->cfg[i].note);
        }
    for (int i = 0; i < n; i++)
        if (g[i].failed && g[i].ok) {
            if (!notes++)
                fputs("\nNotes:\n\n", f);
            fprintf(f, "- `%s`: %d of %ld seeds failed: %s\n", r->cfg[g[i].cfg].name, g[i].failed, r->seeds, g[i].error);
        }
    fputs("\nConfigurations (flags as for `peft train`; the solved ranks are in each run's "
          "`adapter/adapter_config.json`):\n\n",
          f);
    for (int i = 0; i < r->n_cfg; i++)
        if (r->cfg[i].available)
            fprintf(f, "- `%s`%s: `%s` (%s)\n", r->cfg[i].name, r->cfg[i].user ? " (config file)" : "",
                    r->cfg[i].flags[0] ? r->cfg[i].flags : "(defaults)", r->cfg[i].plan);
    fputs("\n![held-out loss against trainable parameters](chart.svg)\n\n![training loss](curves.svg)\n\n"
          "Per-run metrics: `metrics.jsonl`; adapters, logs and results: `runs/NAME/seedS/`.\n",
          f);
    (void)n;
    return 0;
}

int sweep_write_report(const sweep_report *r, int quiet, int json)
{
    agg *g = calloc((size_t)r->n_cfg, sizeof *g);
    if (!g)
        return -1;
    for (int i = 0; i < r->n_cfg; i++)
        aggregate(r, &g[i], i);
    sort_report = r;
    qsort(g, (size_t)r->n_cfg, sizeof *g, by_loss);
    int e = emit(r, g, r->n_cfg, "report.md", write_md) || emit(r, g, r->n_cfg, "chart.svg", chart_params) ||
            emit(r, g, r->n_cfg, "curves.svg", chart_curves) || emit(r, g, r->n_cfg, "metrics.jsonl", write_jsonl);
    /* each run's own metrics.json */
    for (int i = 0; i < r->n_cfg && !e; i++)
        for (long s = 0; s < r->seeds && !e; s++) {
            const run_result *x = &r->runs[(size_t)i * (size_t)r->seeds + (size_t)s];
            if (x->status < 0)
                continue;
            char *text = NULL, path[4200];
            size_t len = 0;
            FILE *f = open_memstream(&text, &len);
            if (!f)
                e = -1;
            else {
                run_json(f, r, &r->cfg[i], s, x);
                fclose(f);
                snprintf(path, sizeof path, "%s/runs/%s/seed%ld/metrics.json", r->out, r->cfg[i].name, r->seed0 + s);
                e = write_file_atomic(path, text, len);
            }
            free(text);
        }
    int nw = 14;
    for (int i = 0; i < r->n_cfg; i++)
        if ((int)strlen(r->cfg[i].name) > nw)
            nw = (int)strlen(r->cfg[i].name);
    if (!quiet) {
        fprintf(stderr, "\n%-3s %-*s %-6s %10s %7s %7s %9s %8s %9s %9s %10s%s\n", "#", nw, "configuration", "method",
                "trainable", "budget", "rank", "tokens/s", "peak MiB", "before", "after", "gain/Mpar",
                r->forget ? "  forgetting" : "");
        int rank = 0;
        for (int i = 0; i < r->n_cfg; i++) {
            const sweep_cfg *c = &r->cfg[g[i].cfg];
            if (!c->available)
                continue;
            char rk[32];
            rank_cell(rk, sizeof rk, c);
            if (!g[i].ok) {
                fprintf(stderr, "%-3s %-*s %-6s %10llu %+6.1f%% %7s  failed: %s\n", "-", nw, c->name, c->method,
                        (unsigned long long)c->params, 100 * c->budget_err, rk, g[i].error ? g[i].error : "");
                continue;
            }
            fprintf(stderr, "%-3d %-*s %-6s %10llu %+6.1f%% %7s %9.0f %8.1f %9.4f %9.4f %10.3f", ++rank, nw, c->name,
                    c->method, (unsigned long long)c->params, 100 * c->budget_err, rk, g[i].tps, g[i].peak,
                    r->base_eval, g[i].mean, (r->base_eval - g[i].mean) / ((double)c->params / 1e6));
            if (r->forget)
                fprintf(stderr, "  %+10.4f", g[i].forget - r->base_forget);
            fputc('\n', stderr);
        }
        for (int i = 0; i < r->n_cfg; i++)
            if (r->cfg[i].note[0])
                fprintf(stderr, "note: %s: %s\n", r->cfg[i].name, r->cfg[i].note);
        fprintf(stderr, "report: %s/report.md, %s/chart.svg, %s/curves.svg, %s/metrics.jsonl\n", r->out, r->out,
                r->out, r->out);
    }
    if (json && !e) {
        printf("{\"budget\": %llu, \"budgets\": [%s], \"tokens_per_run\": %llu, \"eval_loss_base\": ",
               (unsigned long long)r->budget, r->budgets, (unsigned long long)r->tokens_per_run);
        fmt_num(stdout, r->base_eval);
        fputs(", \"forget_loss_base\": ", stdout);
        fmt_num(stdout, r->forget ? r->base_forget : NAN);
        fputs(", \"report\": ", stdout);
        char rp[4200];
        snprintf(rp, sizeof rp, "%s/report.md", r->out);
        json_string(stdout, rp);
        fputs(", \"configs\": [", stdout);
        for (int i = 0; i < r->n_cfg; i++) {
            const sweep_cfg *c = &r->cfg[g[i].cfg];
            fputs(i ? ", {\"name\": " : "{\"name\": ", stdout);
            json_string(stdout, c->name);
            fputs(", \"family\": ", stdout);
            json_string(stdout, c->family);
            printf(", \"budget\": %llu", (unsigned long long)c->budget);
            fprintf(stdout, ", \"method\": \"%s\", \"status\": \"%s\", \"trainable_params\": %llu, \"budget_error\": %.6f, "
                            "\"rank\": %d, \"rank_max\": %d, \"seeds_ok\": %d, \"seeds_failed\": %d, \"eval_loss_after\": ",
                    c->method, !c->available ? "not_measured" : g[i].ok ? "ok" : "failed", (unsigned long long)c->params,
                    c->budget_err, c->rank, c->rank_hi, g[i].ok, g[i].failed);
            fmt_num(stdout, g[i].ok ? g[i].mean : NAN);
            fputs(", \"eval_loss_after_min\": ", stdout);
            fmt_num(stdout, g[i].ok ? g[i].lo : NAN);
            fputs(", \"eval_loss_after_max\": ", stdout);
            fmt_num(stdout, g[i].ok ? g[i].hi : NAN);
            fputs(", \"forgetting\": ", stdout);
            fmt_num(stdout, g[i].ok && r->forget ? g[i].forget - r->base_forget : NAN);
            fputs(", \"gain_per_mparam\": ", stdout);
            fmt_num(stdout, g[i].ok && c->params ? (r->base_eval - g[i].mean) / ((double)c->params / 1e6) : NAN);
            fprintf(stdout, ", \"tokens_per_s\": %.1f, \"peak_rss_mib\": %.1f, \"note\": ", g[i].tps, g[i].peak);
            json_string(stdout, c->note);
            fputs(", \"error\": ", stdout);
            json_string(stdout, g[i].error ? g[i].error : "");
            fputc('}', stdout);
        }
        fputs("]}\n", stdout);
    }
    for (int i = 0; i < r->n_cfg; i++)
        free(g[i].curve);
    free(g);
    return e ? -1 : 0;
}
