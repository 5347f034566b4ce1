/* JSON and safetensors: round trips and malformed/hostile inputs. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../lib/internal.h"
#include "../lib/fsutil.h"
#include "../lib/json.h"
#include "../lib/safetensors.h"
#include "harness.h"

static int parse(const char *s)
{
    json_doc *d = NULL;
    int rc = json_parse(&d, s, strlen(s), "test");
    json_free(d);
    return rc;
}

TEST(json_valid)
{
    json_doc *d;
    const char *s = "{\"a\": [1, -2.5e3, true, false, null, \"x\\u00e9\\ud83d\\ude00\\n\"], \"b\": {}}";
    CHECK_OK(json_parse(&d, s, strlen(s), "t"));
    const json_value *a = json_get(json_root(d), "a");
    CHECK(a && a->type == JSON_ARRAY && a->length == 6);
    CHECK(a->items[0].is_integer && a->items[0].number == 1);
    CHECK(!a->items[1].is_integer && a->items[1].number == -2500);
    CHECK(a->items[2].boolean == 1 && a->items[4].type == JSON_NULL);
    CHECK(strcmp(a->items[5].string, "x\xc3\xa9\xf0\x9f\x98\x80\n") == 0);
    CHECK(json_get(json_root(d), "b")->type == JSON_OBJECT);
    CHECK(json_get(json_root(d), "missing") == NULL);
    json_free(d);
}

TEST(json_malformed)
{
    const char *bad[] = {
        "", "{", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "[01]", "[1.]", "[.5]", "[1e]", "\"abc",
        "\"\\x\"", "\"\\ud800\"", "\"\\udc00x\"", "[\"\x01\"]", "tru", "nul", "{} {}", "[1] x",
        "{\"a\":1,\"a\":2}", "\"\xff\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\\u0000\"", "[1e999]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = parse(bad[i]);
        CHECK_MSG(rc == PEFT_EFORMAT, "case %zu (%s) gave %d", i, bad[i], rc);
    }
    CHECK(strstr(peft_last_error(), "test: invalid JSON at byte") != NULL);
}

TEST(json_deep_nesting)
{
    char *s = malloc(200001);
    memset(s, '[', 100000);
    memset(s + 100000, ']', 100000);
    s[200000] = 0;
    CHECK(parse(s) == PEFT_EFORMAT);
    CHECK(strstr(peft_last_error(), "nesting too deep") != NULL);
    s[JSON_MAX_DEPTH - 1] = 0; /* exactly at the limit minus one: fine */
    char ok[2 * JSON_MAX_DEPTH + 1];
    memset(ok, '[', JSON_MAX_DEPTH - 1);
    memset(ok + JSON_MAX_DEPTH - 1, ']', JSON_MAX_DEPTH - 1);
    ok[2 * JSON_MAX_DEPTH - 2] = 0;
    CHECK(parse(ok) == 0);
    free(s);
}

/* ---- safetensors ---- */

static char tmpdir[64];

static const char *tmp(const char *name)
{
    static char buf[4][256];
    static int k;
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/peft-fmt-XXXXXX");
        if (!mkdtemp(tmpdir))
            return NULL;
    }
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static void write_raw(const char *path, const char *header, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    uint64_t hl = strlen(header);
    unsigned char lb[8];
    for (int i = 0; i < 8; i++)
        lb[i] = (unsigned char)(hl >> (8 * i));
    fwrite(lb, 1, 8, f);
    fwrite(header, 1, hl, f);
    if (n)
        fwrite(data, 1, n, f);
    fclose(f);
}

TEST(safetensors_round_trip)
{
    float a[6] = {1, 2, 3, 4, 5, 6}, b[3] = {-1, 0.5f, 1e-30f};
    st_out_tensor ts[2] = {{"z.weight", 2, {2, 3}, a}, {"a.bias", 1, {3}, b}};
    const char *k[] = {"format"}, *v[] = {"pt"};
    const char *p = tmp("rt.safetensors");
    CHECK_OK(st_write(p, ts, 2, k, v, 1));
    st_file *f;
    CHECK_OK(st_open(&f, p));
    CHECK(f->n_tensors == 2);
    const st_tensor *t = st_find(f, "z.weight");
    CHECK(t && t->n_dims == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->dtype == ST_F32);
    float r[6];
    CHECK_OK(st_read_f32(f, t, r, 6));
    CHECK(memcmp(r, a, sizeof a) == 0);
    t = st_find(f, "a.bias");
    CHECK_OK(st_read_f32(f, t, r, 3));
    CHECK(memcmp(r, b, sizeof b) == 0);
    CHECK(f->metadata && strcmp(json_get(f->metadata, "format")->string, "pt") == 0);
    /* the header is padded to a multiple of 8 and sorted by name */
    CHECK((f->data - (const uint8_t *)f->map) % 8 == 0);
    CHECK(strstr((const char *)f->map + 8, "\"a.bias\"") < strstr((const char *)f->map + 8, "\"z.weight\""));
    st_close(f);
}

TEST(safetensors_half_types)
{
    /* F16: 1.0 = 0x3c00, -2.0 = 0xc000, 2^-24 (subnormal) = 0x0001; BF16: 1.0 = 0x3f80 */
    uint16_t h[3] = {0x3c00, 0xc000, 0x0001}, bf[2] = {0x3f80, 0xc0a0};
    unsigned char d[10];
    memcpy(d, h, 6);
    memcpy(d + 6, bf, 4);
    write_raw(tmp("half.safetensors"),
              "{\"h\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]},"
              "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[6,10]}}",
              d, 10);
    st_file *f;
    CHECK_OK(st_open(&f, tmp("half.safetensors")));
    float r[3];
    CHECK_OK(st_read_f32(f, st_find(f, "h"), r, 3));
    CHECK(r[0] == 1.0f && r[1] == -2.0f && r[2] == ldexpf(1.0f, -24));
    CHECK_OK(st_read_f32(f, st_find(f, "b"), r, 2));
    CHECK(r[0] == 1.0f && r[1] == -5.0f);
    st_close(f);
}

static int open_rc(const char *header, size_t data_bytes)
{
    static unsigned char zeros[4096];
    write_raw(tmp("bad.safetensors"), header, zeros, data_bytes);
    st_file *f = NULL;
    int rc = st_open(&f, tmp("bad.safetensors"));
    st_close(f);
    return rc;
}

TEST(safetensors_malformed)
{
    struct {
        const char *header;
        size_t data;
        int code;
        const char *msg;
    } cases[] = {
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, PEFT_EFORMAT, "past end of file"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, PEFT_EFORMAT, "trailing bytes"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, PEFT_EFORMAT, "shape x dtype"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, PEFT_EFORMAT, "leave a hole"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, PEFT_EFORMAT, "overlap"},
        {"{\"t\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, PEFT_EUNSUPPORTED, "unknown dtype"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
         PEFT_EFORMAT, "overflows"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,8]}}", 8, PEFT_EFORMAT, "bad shape"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, PEFT_EFORMAT, "bad data_offsets"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, PEFT_EFORMAT, "bad data_offsets"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, PEFT_EFORMAT, "duplicate key"},
        {"[1,2]", 0, PEFT_EFORMAT, "not a JSON object"},
        {"{\"__metadata__\":{\"format\":1}}", 0, PEFT_EFORMAT, "not a string"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]", 8, PEFT_EFORMAT, "invalid JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = open_rc(cases[i].header, cases[i].data);
        CHECK_MSG(rc == cases[i].code && strstr(peft_last_error(), cases[i].msg),
                  "case %zu: rc %d, message '%s'", i, rc, peft_last_error());
    }
}

TEST(safetensors_truncated_and_huge_header)
{
    FILE *f = fopen(tmp("short.safetensors"), "wb");
    fwrite("\x10\x00\x00", 1, 3, f);
    fclose(f);
    st_file *s = NULL;
    CHECK(st_open(&s, tmp("short.safetensors")) == PEFT_EFORMAT);
    CHECK(strstr(peft_last_error(), "truncated"));
    /* header length past the end */
    f = fopen(tmp("past.safetensors"), "wb");
    fwrite("\x00\x01\x00\x00\x00\x00\x00\x00{}", 1, 10, f);
    fclose(f);
    CHECK(st_open(&s, tmp("past.safetensors")) == PEFT_EFORMAT);
    CHECK(strstr(peft_last_error(), "past the end"));
    /* absurd header length */
    f = fopen(tmp("huge.safetensors"), "wb");
    fwrite("\xff\xff\xff\xff\xff\xff\xff\xff{}", 1, 10, f);
    fclose(f);
    CHECK(st_open(&s, tmp("huge.safetensors")) == PEFT_EFORMAT);
    CHECK(strstr(peft_last_error(), "exceeds the limit"));
    CHECK(st_open(&s, tmp("does-not-exist")) == PEFT_ENOTFOUND);
    CHECK(s == NULL);
}

/* Every truncation of a valid file is rejected cleanly. */
TEST(safetensors_every_truncation)
{
    float a[4] = {1, 2, 3, 4};
    st_out_tensor ts[1] = {{"w", 2, {2, 2}, a}};
    const char *p = tmp("full.safetensors");
    CHECK_OK(st_write(p, ts, 1, NULL, NULL, 0));
    size_t n;
    char *buf;
    CHECK_OK(peft__read_file(&buf, &n, p, 1 << 20));
    for (size_t len = 0; len < n; len++) {
        FILE *f = fopen(tmp("cut.safetensors"), "wb");
        fwrite(buf, 1, len, f);
        fclose(f);
        st_file *s = NULL;
        int rc = st_open(&s, tmp("cut.safetensors"));
        CHECK_MSG(rc == PEFT_EFORMAT && s == NULL, "length %zu: rc %d", len, rc);
    }
    free(buf);
}

#include "peft/peft.h"

static int open_gguf_bytes(const void *d, size_t n)
{
    FILE *f = fopen(tmp("bad.gguf"), "wb");
    fwrite(d, 1, n, f);
    fclose(f);
    peft_model *m = NULL;
    int rc = peft_model_open(&m, tmp("bad.gguf"), NULL);
    peft_model_close(&m);
    return rc;
}

TEST(gguf_hostile_headers)
{
    unsigned char h[64] = "GGUF";
    uint32_t v = 3;
    uint64_t big = 1ull << 60, zero = 0;
    memcpy(h + 4, &v, 4);
    memcpy(h + 8, &big, 8); /* absurd tensor count */
    memcpy(h + 16, &zero, 8);
    CHECK(open_gguf_bytes(h, 40) == PEFT_EFORMAT && strstr(peft_last_error(), "absurd counts"));
    memcpy(h + 8, &zero, 8);
    uint64_t one = 1, klen = 1ull << 50;
    memcpy(h + 16, &one, 8); /* one key whose string length runs past the end */
    memcpy(h + 24, &klen, 8);
    CHECK(open_gguf_bytes(h, 40) == PEFT_EFORMAT && strstr(peft_last_error(), "truncated"));
    v = 2;
    memcpy(h + 4, &v, 4);
    CHECK(open_gguf_bytes(h, 40) == PEFT_EUNSUPPORTED);
    h[0] = 'X';
    CHECK(open_gguf_bytes(h, 40) != 0); /* no magic: neither GGUF nor a model directory */
    /* a key with an unknown value type */
    unsigned char k[64] = "GGUF";
    v = 3;
    memcpy(k + 4, &v, 4);
    memcpy(k + 8, &zero, 8);
    memcpy(k + 16, &one, 8);
    uint64_t kl = 1;
    memcpy(k + 24, &kl, 8);
    k[32] = 'a';
    uint32_t bad_type = 77;
    memcpy(k + 33, &bad_type, 4);
    CHECK(open_gguf_bytes(k, 48) == PEFT_EFORMAT && strstr(peft_last_error(), "unknown value type"));
}

TEST(gguf_every_truncation)
{
    const char *s = shared_dir();
    if (!s)
        SKIP("../shared not present");
    char path[4200];
    snprintf(path, sizeof path, "%s/models/stories260K/stories260K-q8_0.gguf", s);
    size_t n;
    char *buf;
    CHECK_OK(peft__read_file(&buf, &n, path, 16u << 20));
    if (!buf)
        return;
    int crashes = 0;
    for (size_t len = 0; len < n; len += len < 16000 ? 97 : 7919) {
        int rc = open_gguf_bytes(buf, len);
        crashes += rc == 0;
    }
    CHECK(crashes == 0); /* every truncation is an error, never a crash or a success */
    CHECK(open_gguf_bytes(buf, n) == 0);
    free(buf);
}

/* ---- chat templates: golden renderings by Jinja2 (tests/golden/make_chat_golden.py) ---- */

static peft_tokenizer *stories_tokenizer(void)
{
    const char *sh = shared_dir();
    if (!sh)
        return NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s/models/stories260K", sh);
    peft_tokenizer *t = NULL;
    CHECK_OK(peft_tokenizer_open(&t, path));
    return t;
}

TEST(chat_templates_match_jinja2)
{
    peft_tokenizer *tok = stories_tokenizer(); /* bos_token "<s>", eos_token "</s>" */
    if (!tok)
        SKIP("../shared not present");
    char *text;
    size_t len;
    CHECK_OK(peft__read_file(&text, &len, test_data("chat_golden.json"), 1u << 22));
    json_doc *d = NULL;
    CHECK_OK(json_parse(&d, text, len, "chat_golden.json"));
    free(text);
    const json_value *root = json_root(d), *tm = json_get(root, "templates"), *cv = json_get(root, "conversations");
    const json_value *cases = json_get(root, "cases");
    CHECK(cases && cases->length >= 60);
    int checked = 0, errors = 0;
    for (size_t i = 0; cases && i < cases->length; i++) {
        const json_value *c = &cases->items[i];
        const char *tname = json_get(c, "template")->string, *cname = json_get(c, "conversation")->string;
        int agp = json_get(c, "add_generation_prompt")->boolean;
        const json_value *conv = json_get(cv, cname), *want = json_get(c, "text"), *err = json_get(c, "error");
        peft_chat_message msgs[16];
        for (size_t k = 0; k < conv->length && k < 16; k++) {
            msgs[k].role = json_get(&conv->items[k], "role")->string;
            msgs[k].content = json_get(&conv->items[k], "content")->string;
        }
        static char buf[1 << 16];
        size_t n = 0;
        int rc = peft_chat_render(tok, json_get(tm, tname)->string, msgs, conv->length, agp, buf, sizeof buf, &n);
        if (want) {
            CHECK_MSG(rc == 0 && n == want->length && memcmp(buf, want->string, n) == 0,
                      "%s/%s/%d: rc %d (%s)\n got: [%.*s]\nwant: [%s]", tname, cname, agp, rc, peft_last_error(),
                      rc ? 0 : (int)n, buf, want->string);
        } else {
            CHECK_MSG(rc == PEFT_EINVAL && strstr(peft_last_error(), err->string), "%s/%s: rc %d, %s", tname, cname,
                      rc, peft_last_error());
            errors++;
        }
        checked++;
    }
    CHECK(checked == (int)cases->length && errors >= 8);
    json_free(d);
    peft_tokenizer_close(&tok);
}

static int render(const char *tmpl, char *buf, size_t cap)
{
    peft_chat_message m[2] = {{"user", "hi"}, {"assistant", "yo"}};
    size_t n;
    return peft_chat_render(NULL, tmpl, m, 2, 0, buf, cap, &n);
}

TEST(chat_template_errors_and_sizing)
{
    char buf[256];
    /* what is not implemented is refused, never rendered differently */
    CHECK(render("{% macro f() %}x{% endmacro %}", buf, sizeof buf) == PEFT_EUNSUPPORTED);
    CHECK(render("{% set x = 1 %}{% set x.a = 2 %}", buf, sizeof buf) == PEFT_EUNSUPPORTED); /* not a namespace */
    CHECK(render("{{ 'a' | tojson(indent=2) }}", buf, sizeof buf) == PEFT_EUNSUPPORTED);
    CHECK(render("{{ namespace(1) }}", buf, sizeof buf) == PEFT_EUNSUPPORTED);
    CHECK(render("{{ 'ab'[::0] }}", buf, sizeof buf) == PEFT_EUNSUPPORTED); /* Python: a zero step is an error */
    CHECK(render("{{ f(a=1, 2) }}", buf, sizeof buf) == PEFT_EFORMAT);
    /* namespaces carry state out of loops; slices with steps as Python's */
    CHECK(render("{% set ns = namespace(n=0, s='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
                 "{% set ns.s = ns.s ~ m.role[0] %}{% endfor %}{{ ns.n }}{{ ns.s }}{{ ns.z is defined }}",
                 buf, sizeof buf) == PEFT_OK &&
          !strcmp(buf, "2uaFalse"));
    CHECK(render("{% for m in messages[::-1] %}{{ m.role }}{% endfor %}{{ 'abcdef'[::2] }}{{ 'abcdef'[4:1:-1] }}"
                 "{{ 'héllo'[::-1] }}{{ 'abc'[5::-1] }}{{ 'abc'[:-5:-1] }}{{ 'abc'[-9::2] }}",
                 buf, sizeof buf) == PEFT_OK &&
          !strcmp(buf, "assistantuseraceedcolléhcbacbaac"));
    CHECK(render("{% for a, b in x %}{% endfor %}", buf, sizeof buf) == PEFT_EUNSUPPORTED);
    CHECK(render("{{ 1.5 }}", buf, sizeof buf) == PEFT_EUNSUPPORTED);
    CHECK(render("{{ messages | map(attribute='role') }}", buf, sizeof buf) == PEFT_EUNSUPPORTED);
    /* case mapping as Python's: full mappings that grow the string threefold, the final sigma */
    CHECK(render("{{ 'ß' | upper }}{{ 'ℌ' | lower }}{{ 'և' | upper }}", buf, sizeof buf) == PEFT_OK &&
          !strcmp(buf, "SSℌԵՒ"));
    CHECK(render("{{ 'ΐΐΐ' | upper }}", buf, sizeof buf) == PEFT_OK && /* U+0390: U+0399 U+0308 U+0301 */
          !strcmp(buf, "\u0399\u0308\u0301\u0399\u0308\u0301\u0399\u0308\u0301"));
    CHECK(render("{{ 'ΟΔΟΣ ΣΑ' | lower }}{{ 'Աև' | lower }}{{ 'aß'.title() }}", buf, sizeof buf) == PEFT_OK &&
          !strcmp(buf, "οδος σαաևAß"));
    /* malformed */
    CHECK(render("{% for m in messages %}", buf, sizeof buf) == PEFT_EFORMAT);
    CHECK(render("{{ 'unterminated }}", buf, sizeof buf) == PEFT_EFORMAT);
    CHECK(render("{% if %}x{% endif %}", buf, sizeof buf) == PEFT_EFORMAT);
    CHECK(render("{% endfor %}", buf, sizeof buf) != PEFT_OK);
    CHECK(render("{{ messages[0]. }}", buf, sizeof buf) == PEFT_EFORMAT);
    CHECK(render("{{ x.y }}", buf, sizeof buf) == PEFT_EFORMAT); /* attribute of an undefined value */
    CHECK(render("{{ 1 % 0 }}", buf, sizeof buf) == PEFT_EINVAL);
    CHECK(render("{{ raise_exception('no system role') }}", buf, sizeof buf) == PEFT_EINVAL);
    CHECK(strstr(peft_last_error(), "no system role") != NULL);
    /* deep nesting is bounded */
    char deep[64 * 20 + 64 * 12 + 8];
    size_t k = 0;
    for (int i = 0; i < 70; i++)
        k += (size_t)snprintf(deep + k, sizeof deep - k, "{%% if 1 %%}");
    for (int i = 0; i < 70 && k < sizeof deep - 16; i++)
        k += (size_t)snprintf(deep + k, sizeof deep - k, "{%% endif %%}");
    CHECK(render(deep, buf, sizeof buf) != PEFT_OK);
    /* sizing: cap 0 reports the length, a short buffer is PEFT_ERANGE */
    peft_chat_message m[1] = {{"user", "hello"}};
    size_t n = 0;
    CHECK(peft_chat_render(NULL, "{{ messages[0].content }}!", m, 1, 0, NULL, 0, &n) == PEFT_ERANGE && n == 6);
    CHECK(peft_chat_render(NULL, "{{ messages[0].content }}!", m, 1, 0, buf, 6, &n) == PEFT_ERANGE);
    CHECK_OK(peft_chat_render(NULL, "{{ messages[0].content }}!", m, 1, 0, buf, 7, &n));
    CHECK(strcmp(buf, "hello!") == 0);
    /* no template anywhere */
    CHECK(peft_chat_render(NULL, NULL, m, 1, 0, buf, sizeof buf, &n) == PEFT_ENOTFOUND);
}

TEST(chat_template_from_tokenizer_config)
{
    const char *sh = shared_dir();
    if (!sh)
        SKIP("../shared not present");
    char dir[] = "/tmp/peft-chat-XXXXXX", cmd[8400], path[4300];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(cmd, sizeof cmd, "cp %s/models/stories260K/tokenizer.json %s/", sh, dir);
    CHECK(system(cmd) == 0);
    for (int form = 0; form < 2; form++) {
        snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
        FILE *f = fopen(path, "w");
        CHECK(f != NULL);
        if (form == 0)
            fputs("{\"bos_token\": {\"content\": \"<B>\"}, \"eos_token\": \"<E>\", \"chat_template\": "
                  "\"{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}\"}",
                  f);
        else
            fputs("{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"tools\"}, {\"name\": \"default\", "
                  "\"template\": \"{{ bos_token }}{{ messages | length }}\"}]}",
                  f);
        fclose(f);
        peft_tokenizer *t;
        CHECK_OK(peft_tokenizer_open(&t, dir));
        CHECK(peft_tokenizer_chat_template(t) != NULL);
        peft_chat_message m[2] = {{"user", "hi"}, {"assistant", "yo"}};
        char buf[256];
        size_t n;
        CHECK_OK(peft_chat_render(t, NULL, m, 2, 1, buf, sizeof buf, &n));
        /* without bos_token/eos_token in the config, the vocabulary's BOS piece */
        CHECK_MSG(!strcmp(buf, form == 0 ? "<B>[user] hi<E>[assistant] yo<E>" : "<s>2"), "form %d: %s", form, buf);
        peft_tokenizer_close(&t);
    }
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

static const struct h_case cases[] = {
    CASE(json_valid), CASE(json_malformed), CASE(json_deep_nesting), CASE(safetensors_round_trip),
    CASE(safetensors_half_types), CASE(safetensors_malformed), CASE(safetensors_truncated_and_huge_header),
    CASE(safetensors_every_truncation), CASE(gguf_hostile_headers), CASE(gguf_every_truncation),
    CASE(chat_templates_match_jinja2), CASE(chat_template_errors_and_sizing), CASE(chat_template_from_tokenizer_config),
};
TEST_MAIN(cases)
