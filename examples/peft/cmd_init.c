/* peft init-model: a random Llama (or Gemma 2 or 3) directory; peft synth: a learnable synthetic token file. */
#include <math.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = (*s += 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static double rng_normal(uint64_t *s)
{
    double u1 = ((double)(rng_next(s) >> 11) + 1.0) * 0x1.0p-53, u2 = (double)(rng_next(s) >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

struct wt {
    char name[96];
    long d0, d1; /* d1 == 0: vector */
    int norm; /* 1: a norm weight of ones; 2: a zero-centred (Gemma) one of zeros */
};

static uint16_t to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    int e = (int)((x >> 23) & 0xff) - 127 + 15;
    uint32_t man = x & 0x7fffffu;
    if (e <= 0) {
        if (e < -10)
            return (uint16_t)sign;
        man |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t h = man >> shift;
        if ((man >> (shift - 1)) & 1u)
            h++;
        return (uint16_t)(sign | h);
    }
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00u);
    uint32_t h = ((uint32_t)e << 10) | (man >> 13);
    if (man & 0x1000u)
        h++; /* round half up; carries into the exponent correctly */
    return (uint16_t)(sign | h);
}

static uint16_t to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    x += 0x7fffu + ((x >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(x >> 16);
}

int cmd_init_model(int argc, char **argv)
{
    cli_args a;
    if (args_init(&a, argc, argv))
        return 1;
    int rc = 1;
    long hidden, layers, heads, kv, ffn, vocab, seed, head_dim, window;
    const char *out = arg_str(&a, "--out", NULL), *dtype = arg_str(&a, "--dtype", "f32");
    const char *arch = arg_str(&a, "--arch", "llama");
    int untied = arg_flag(&a, "--untied");
    struct wt *w = NULL;
    FILE *f = NULL;
    char *hdr = NULL;
    if (arg_long(&a, "--hidden", 64, &hidden) || arg_long(&a, "--layers", 2, &layers) ||
        arg_long(&a, "--heads", 4, &heads) || arg_long(&a, "--kv-heads", 2, &kv) ||
        arg_long(&a, "--ffn", 172, &ffn) || arg_long(&a, "--vocab", 256, &vocab) ||
        arg_long(&a, "--seed", 0, &seed) || arg_long(&a, "--head-dim", 0, &head_dim) ||
        arg_long(&a, "--sliding-window", 512, &window) || !dtype || !arch || args_check_unused(&a))
        goto done;
    int gemma = !strcmp(arch, "gemma3") ? 3 : !strcmp(arch, "gemma2") ? 2 : 0, smol = !strcmp(arch, "smollm3");
    int granite = !strcmp(arch, "granite"), phi3 = !strcmp(arch, "phi3");
    long hd = head_dim > 0 ? head_dim : heads > 0 ? hidden / heads : 0, n = 0;
    if (!out || hidden < 2 || layers < 1 || heads < 1 || kv < 1 || heads % kv || (!head_dim && hidden % heads) ||
        hd < 2 || hd % 2 || head_dim < 0 || hd > 4096 || ffn < 1 || vocab < 4 || layers > 256 || window < 1 ||
        (!gemma && !smol && !granite && !phi3 && strcmp(arch, "llama") != 0)) {
        fprintf(stderr, "usage: peft init-model --out DIR [--arch llama|smollm3|granite|phi3|gemma2|gemma3] [--hidden 64]\n"
                        "       [--layers 2] [--heads 4] [--kv-heads 2] [--head-dim hidden/heads] [--ffn 172]\n"
                        "       [--vocab 256]"
                        " [--seed 0] [--untied] [--dtype f32|f16|bf16] [--sliding-window 512 (gemma)]\n");
        goto done;
    }
    int esize = strcmp(dtype, "f32") == 0 ? 4 : 2;
    const char *dname = esize == 4 ? "F32" : strcmp(dtype, "f16") == 0 ? "F16" : strcmp(dtype, "bf16") == 0 ? "BF16" : NULL;
    if (!dname) {
        fprintf(stderr, "peft init-model: --dtype must be f32, f16 or bf16\n");
        goto done;
    }
    if (make_dirs(out)) {
        fprintf(stderr, "peft init-model: cannot create %s: %s\n", out, strerror(errno));
        goto done;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", out);
    f = fopen(path, "w");
    if (!f) {
        perror(path);
        goto done;
    }
    char hd_json[48] = "", family[192] = "";
    if (head_dim > 0)
        snprintf(hd_json, sizeof hd_json, "\n  \"head_dim\": %ld,", head_dim);
    if (smol) /* SmolLM3: every fourth layer without RoPE */
        snprintf(family, sizeof family, "\n  \"no_rope_layer_interval\": 4,");
    else if (granite) /* Granite 3's multipliers (granite-3.3-2b's, the scores over head_dim) */
        snprintf(family, sizeof family, "\n  \"embedding_multiplier\": 12.0,\n  \"residual_multiplier\": 0.22,\n"
                 "  \"attention_multiplier\": %.9g,\n  \"logits_scaling\": 8.0,", 1.0 / (double)hd);
    else if (phi3) { /* Phi-4-mini's choices: 3/4 of each head rotated (even), LongRoPE from 4096 positions */
        long rot = hd * 3 / 4 / 2 * 2;
        int k = snprintf(family, sizeof family, "\n  \"partial_rotary_factor\": %.9g,\n  \"max_position_embeddings\""
                         ": 131072,\n  \"original_max_position_embeddings\": 4096,", (double)rot / (double)hd);
        if (rot < 2 || rot / 2 > 256 || k >= (int)sizeof family) {
            fprintf(stderr, "peft init-model: phi3 rotates 3/4 of a head: head_dim %ld is too small or too large\n", hd);
            goto done;
        }
    }
    const char *tdtype = esize == 4 ? "float32" : strcmp(dtype, "f16") == 0 ? "float16" : "bfloat16";
    if (gemma == 2) /* Gemma 2 as transformers writes its config (gemma-2-2b's choices) */
        fprintf(f,
                "{\n  \"architectures\": [\"Gemma2ForCausalLM\"],\n  \"model_type\": \"gemma2\",\n"
                "  \"hidden_size\": %ld,\n  \"intermediate_size\": %ld,\n  \"num_hidden_layers\": %ld,\n"
                "  \"num_attention_heads\": %ld,\n  \"num_key_value_heads\": %ld,\n  \"head_dim\": %ld,\n"
                "  \"vocab_size\": %ld,\n  \"max_position_embeddings\": 8192,\n  \"rms_norm_eps\": 1e-06,\n"
                "  \"rope_theta\": 10000.0,\n  \"query_pre_attn_scalar\": %ld,\n  \"sliding_window\": %ld,\n"
                "  \"attn_logit_softcapping\": 50.0,\n  \"final_logit_softcapping\": 30.0,\n"
                "  \"hidden_activation\": \"gelu_pytorch_tanh\",\n  \"hidden_act\": \"gelu_pytorch_tanh\",\n"
                "  \"tie_word_embeddings\": %s,\n  \"bos_token_id\": 2,\n  \"eos_token_id\": 1,\n"
                "  \"pad_token_id\": 0,\n  \"torch_dtype\": \"%s\"\n}\n",
                hidden, ffn, layers, heads, kv, hd, vocab, hd, window, untied ? "false" : "true", tdtype);
    else if (gemma) /* Gemma 3's text model as transformers writes its config (gemma-3-270m's choices) */
        fprintf(f,
                "{\n  \"architectures\": [\"Gemma3ForCausalLM\"],\n  \"model_type\": \"gemma3_text\",\n"
                "  \"hidden_size\": %ld,\n  \"intermediate_size\": %ld,\n  \"num_hidden_layers\": %ld,\n"
                "  \"num_attention_heads\": %ld,\n  \"num_key_value_heads\": %ld,\n  \"head_dim\": %ld,\n"
                "  \"vocab_size\": %ld,\n  \"max_position_embeddings\": 32768,\n  \"rms_norm_eps\": 1e-06,\n"
                "  \"rope_theta\": 1000000.0,\n  \"rope_local_base_freq\": 10000.0,\n  \"rope_scaling\": null,\n"
                "  \"query_pre_attn_scalar\": %ld,\n  \"sliding_window\": %ld,\n  \"sliding_window_pattern\": 6,\n"
                "  \"hidden_activation\": \"gelu_pytorch_tanh\",\n  \"attn_logit_softcapping\": null,\n"
                "  \"final_logit_softcapping\": null,\n  \"tie_word_embeddings\": %s,\n  \"bos_token_id\": 2,\n"
                "  \"eos_token_id\": 1,\n  \"pad_token_id\": 0,\n  \"torch_dtype\": \"%s\"\n}\n",
                hidden, ffn, layers, heads, kv, hd, vocab, hd, window, untied ? "false" : "true", tdtype);
    else if (phi3) { /* the LongRoPE factor lists: short ones 1, long ones rising to 32 */
        long half = hd * 3 / 4 / 2;
        fprintf(f,
                "{\n  \"architectures\": [\"Phi3ForCausalLM\"],\n  \"model_type\": \"phi3\",\n"
                "  \"hidden_size\": %ld,\n  \"intermediate_size\": %ld,\n  \"num_hidden_layers\": %ld,\n"
                "  \"num_attention_heads\": %ld,\n  \"num_key_value_heads\": %ld,\n  \"vocab_size\": %ld,\n"
                "  \"rms_norm_eps\": 1e-05,\n  \"rope_theta\": 10000.0,\n  \"sliding_window\": 262144,\n"
                "  \"tie_word_embeddings\": %s,\n  \"hidden_act\": \"silu\",\n  \"bos_token_id\": 199999,\n"
                "  \"eos_token_id\": 199999,%s%s\n  \"rope_scaling\": {\"type\": \"longrope\", \"short_factor\": [",
                hidden, ffn, layers, heads, kv, vocab, untied ? "false" : "true", hd_json, family);
        for (long i = 0; i < half; i++)
            fprintf(f, "%s1.0", i ? ", " : "");
        fprintf(f, "], \"long_factor\": [");
        for (long i = 0; i < half; i++)
            fprintf(f, "%s%.6g", i ? ", " : "", pow(32.0, (double)i / (double)(half > 1 ? half - 1 : 1)));
        fprintf(f, "]},\n  \"torch_dtype\": \"%s\"\n}\n", tdtype);
    } else
    fprintf(f,
            "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n"
            "  \"hidden_size\": %ld,\n  \"intermediate_size\": %ld,\n  \"num_hidden_layers\": %ld,\n"
            "  \"num_attention_heads\": %ld,\n  \"num_key_value_heads\": %ld,\n  \"vocab_size\": %ld,\n"
            "  \"max_position_embeddings\": 2048,\n  \"rms_norm_eps\": 1e-05,\n  \"rope_theta\": %s,\n"
            "  \"tie_word_embeddings\": %s,\n  \"hidden_act\": \"silu\",\n  \"bos_token_id\": 1,\n"
            "  \"eos_token_id\": 2,%s%s\n  \"torch_dtype\": \"%s\"\n}\n",
            smol ? "SmolLM3ForCausalLM" : granite ? "GraniteForCausalLM" : "LlamaForCausalLM", arch, hidden, ffn,
            layers, heads, kv, vocab, smol ? "2000000.0" : "10000.0", untied ? "false" : "true", hd_json, family,
            tdtype);
    if (fclose(f) != 0) {
        f = NULL;
        perror(path);
        goto done;
    }
    f = NULL;
    w = calloc((size_t)(layers * 13 + 3), sizeof *w);
    if (!w)
        goto done;
    snprintf(w[n].name, sizeof w[n].name, "model.embed_tokens.weight");
    w[n].d0 = vocab, w[n++].d1 = hidden;
    for (long l = 0; l < layers; l++) {
        static const char *lin[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
        long dims[7][2] = {{heads * hd, hidden}, {kv * hd, hidden}, {kv * hd, hidden}, {hidden, heads * hd},
                           {ffn, hidden}, {ffn, hidden}, {hidden, ffn}};
        /* Gemma's norms are zero-centred (1 + w applied): 0 is the identity, as Llama's 1 */
        static const char *norms[6] = {"input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                                       "post_feedforward_layernorm", "self_attn.q_norm", "self_attn.k_norm"};
        for (int k = 0; k < (gemma == 3 ? 6 : gemma ? 4 : 2); k++) {
            snprintf(w[n].name, sizeof w[n].name, "model.layers.%ld.%s.weight", l, norms[k]);
            w[n].d0 = k < 4 ? hidden : hd, w[n++].norm = gemma ? 2 : 1;
        }
        for (int k = 0; k < 7; k++) {
            if (phi3 && (k == 1 || k == 2 || k == 5)) /* k, v and up are rows of qkv_proj, gate_up_proj */
                continue;
            snprintf(w[n].name, sizeof w[n].name, "model.layers.%ld.%s.weight", l,
                     phi3 && k == 0 ? "self_attn.qkv_proj" : phi3 && k == 4 ? "mlp.gate_up_proj" : lin[k]);
            w[n].d0 = phi3 && k == 0 ? (heads + 2 * kv) * hd : phi3 && k == 4 ? 2 * ffn : dims[k][0];
            w[n++].d1 = dims[k][1];
        }
    }
    snprintf(w[n].name, sizeof w[n].name, "model.norm.weight");
    w[n].d0 = hidden, w[n++].norm = gemma ? 2 : 1;
    if (untied) {
        snprintf(w[n].name, sizeof w[n].name, "lm_head.weight");
        w[n].d0 = vocab, w[n++].d1 = hidden;
    }
    /* names are emitted in this order; offsets follow the same order */
    size_t cap = (size_t)n * 160 + 64, len = 0, off = 0;
    hdr = malloc(cap);
    if (!hdr)
        goto done;
    len += (size_t)snprintf(hdr + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (long i = 0; i < n; i++) {
        size_t bytes = (size_t)w[i].d0 * (size_t)(w[i].d1 ? w[i].d1 : 1) * (size_t)esize;
        if (w[i].d1)
            len += (size_t)snprintf(hdr + len, cap - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%ld,%ld],\"data_offsets\":[%zu,%zu]}",
                                    w[i].name, dname, w[i].d0, w[i].d1, off, off + bytes);
        else
            len += (size_t)snprintf(hdr + len, cap - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%ld],\"data_offsets\":[%zu,%zu]}",
                                    w[i].name, dname, w[i].d0, off, off + bytes);
        off += bytes;
    }
    len += (size_t)snprintf(hdr + len, cap - len, "}");
    while (len % 8)
        hdr[len++] = ' ';
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    f = fopen(path, "wb");
    if (!f) {
        perror(path);
        goto done;
    }
    uint8_t lenb[8];
    for (int i = 0; i < 8; i++)
        lenb[i] = (uint8_t)((uint64_t)len >> (8 * i));
    fwrite(lenb, 1, 8, f);
    fwrite(hdr, 1, len, f);
    uint64_t s = (uint64_t)seed * 7919u + 17u;
    for (long i = 0; i < n; i++) {
        size_t cnt = (size_t)w[i].d0 * (size_t)(w[i].d1 ? w[i].d1 : 1);
        for (size_t j = 0; j < cnt; j++) {
            /* std 1/sqrt(fan_in) keeps signals alive through a random model (0.02, the HF
               default, leaves a small model's residual stream all embedding); untied embeddings N(0,1) */
            double sd = i == 0 && untied ? 1.0 : 1.0 / sqrt((double)w[i].d1);
            float v = w[i].norm ? (w[i].norm == 1 ? 1.0f : 0.0f) : (float)(sd * rng_normal(&s));
            if (esize == 4) {
                fwrite(&v, 4, 1, f);
            } else {
                uint16_t h = strcmp(dtype, "f16") == 0 ? to_f16(v) : to_bf16(v);
                uint8_t b2[2] = {(uint8_t)h, (uint8_t)(h >> 8)};
                fwrite(b2, 1, 2, f);
            }
        }
    }
    if (ferror(f) || fclose(f) != 0) {
        f = NULL;
        fprintf(stderr, "peft init-model: write to %s failed\n", path);
        goto done;
    }
    f = NULL;
    printf("wrote %s (%s, hidden %ld, %ld layers, %ld heads / %ld kv of %ld, ffn %ld, vocab %ld, %s)\n", out,
           gemma == 3 ? "gemma3_text" : arch, hidden, layers, heads, kv, hd, ffn,
           vocab, dname);
    rc = 0;
done:
    if (f)
        fclose(f);
    free(hdr);
    free(w);
    args_free(&a);
    return rc;
}

int cmd_synth(int argc, char **argv)
{
    cli_args a;
    if (args_init(&a, argc, argv))
        return 1;
    int rc = 1;
    long vocab, n, seed, doc;
    const char *out = arg_str(&a, "--out", NULL);
    uint32_t *perm = NULL, *ids = NULL;
    if (arg_long(&a, "--vocab", 256, &vocab) || arg_long(&a, "--tokens", 65536, &n) ||
        arg_long(&a, "--seed", 0, &seed) || arg_long(&a, "--doc-len", 64, &doc) || args_check_unused(&a))
        goto done;
    if (!out || vocab < 8 || n < 1 || doc < 2) {
        fprintf(stderr, "usage: peft synth --out FILE [--vocab 256] [--tokens 65536] [--doc-len 64] [--seed 0]\n"
                        "Documents are BOS followed by a walk along one fixed random cycle through the\n"
                        "tokens 3..vocab-1: each token determines the next, a pattern a model can learn.\n");
        goto done;
    }
    perm = malloc((size_t)vocab * sizeof *perm);
    ids = malloc((size_t)n * sizeof *ids);
    if (!perm || !ids)
        goto done;
    uint64_t s = (uint64_t)seed * 104729u + 3u;
    long m = vocab - 3;
    uint32_t *cyc = malloc((size_t)m * sizeof *cyc);
    if (!cyc)
        goto done;
    for (long i = 0; i < m; i++)
        cyc[i] = (uint32_t)(i + 3);
    for (long i = m; i > 1; i--) {
        long j = (long)(rng_next(&s) % (uint64_t)i);
        uint32_t t = cyc[i - 1];
        cyc[i - 1] = cyc[j];
        cyc[j] = t;
    }
    for (long i = 0; i < m; i++)
        perm[cyc[i]] = cyc[(i + 1) % m];
    free(cyc);
    uint32_t cur = 0;
    for (long i = 0; i < n; i++) {
        if (i % doc == 0) {
            ids[i] = 1;
            cur = (uint32_t)(3 + rng_next(&s) % (uint64_t)m);
            continue;
        }
        ids[i] = cur;
        cur = perm[cur];
    }
    FILE *f = fopen(out, "wb");
    if (!f) {
        perror(out);
        goto done;
    }
    for (long i = 0; i < n; i++) {
        uint8_t b[4] = {(uint8_t)ids[i], (uint8_t)(ids[i] >> 8), (uint8_t)(ids[i] >> 16), (uint8_t)(ids[i] >> 24)};
        fwrite(b, 1, 4, f);
    }
    if (ferror(f) | fclose(f)) {
        fprintf(stderr, "peft synth: write to %s failed\n", out);
        goto done;
    }
    printf("wrote %s (%ld tokens, vocab %ld)\n", out, n, vocab);
    rc = 0;
done:
    free(perm);
    free(ids);
    args_free(&a);
    return rc;
}
