// The reference side of the byte-level BPE tests: Hugging Face tokenizers itself (the Rust
// library, through its Node.js binding: `npm install tokenizers` in a scratch folder, then
// NODE_PATH=that/node_modules). Two uses:
//   node bytelevel_ref.js unicode > ref-unicode.json
//     what the reference's regular expressions call \p{L}, \p{N}, \s and the two case classes of
//     the o200k expression, [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] and [\p{Ll}\p{Lm}\p{Lo}\p{M}] (ranges),
//     the reference's NFD of every code point, and the code points its NFC reorders as
//     combining marks (its Unicode tables are older than Python's); read by
//     make_unicode_tables.py.
//   node bytelevel_ref.js encode TOKENIZER.json CORPUS.json > ids.json
//     the ids of each text of the corpus (a JSON list of strings), special tokens added as the
//     tokenizer's post-processor says, and without them.
"use strict";
const tk = require("tokenizers");
const fs = require("fs");

function ranges(list) {
  const r = [];
  for (const c of list) {
    if (r.length && r[r.length - 1][1] === c - 1) r[r.length - 1][1] = c;
    else r.push([c, c]);
  }
  return r;
}

function allCodePoints(base, count) {
  const cps = [];
  for (let c = base; c < base + count && c < 0x110000; c++) if (c < 0xd800 || c > 0xdfff) cps.push(c);
  return cps;
}

async function unicode() {
  const out = { classes: {}, nfd: {}, combining: [] };
  const classes = [["L", "\\p{L}"], ["N", "\\p{N}"], ["S", "\\s"],
    ["U", "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]"], ["W", "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]"]];
  for (const [name, pat] of classes) {
    // a Split pre-tokenizer that removes what the expression matches: the rest comes back with offsets
    const json = {
      version: "1.0", truncation: null, padding: null, added_tokens: [], normalizer: null,
      pre_tokenizer: { type: "Split", pattern: { Regex: pat }, behavior: "Removed", invert: false },
      post_processor: null, decoder: null,
      model: { type: "WordLevel", vocab: { "[UNK]": 0 }, unk_token: "[UNK]" },
    };
    const t = tk.Tokenizer.fromString(JSON.stringify(json));
    const matched = [];
    for (let base = 0; base < 0x110000; base += 0x1000) {
      const cps = allCodePoints(base, 0x1000);
      if (!cps.length) continue;
      const e = await t.encode(String.fromCodePoint(...cps));
      const kept = new Uint8Array(cps.length);
      for (const [a, b] of e.getOffsets()) for (let k = a; k < b; k++) kept[k] = 1;
      cps.forEach((c, k) => { if (!kept[k]) matched.push(c); });
    }
    out.classes[name] = ranges(matched);
  }
  const nfd = tk.nfdNormalizer();
  for (const c of allCodePoints(0, 0x110000)) {
    const s = String.fromCodePoint(c), d = nfd.normalizeString(s);
    if (d !== s) out.nfd[c] = [...d].map((x) => x.codePointAt(0));
    // a combining mark (canonical class > 0) is reordered before U+0334 (class 1) or after U+0301 (class 230)
    const before = nfd.normalizeString("a" + s + "\u0334"), after = nfd.normalizeString("a\u0301" + s);
    if (d === s && (before !== "a" + s + "\u0334" || after !== "a\u0301" + s)) out.combining.push(c);
  }
  process.stdout.write(JSON.stringify(out));
}

async function encode(tokPath, corpusPath) {
  const t = tk.Tokenizer.fromFile(tokPath);
  const corpus = JSON.parse(fs.readFileSync(corpusPath, "utf8"));
  const cases = [];
  for (const text of corpus) {
    const plain = await t.encode(text, null, { addSpecialTokens: false });
    const special = await t.encode(text, null, { addSpecialTokens: true });
    cases.push({ text, ids: plain.getIds(), ids_special: special.getIds() });
  }
  process.stdout.write(JSON.stringify(cases));
}

const [cmd, a, b] = process.argv.slice(2);
(cmd === "unicode" ? unicode() : cmd === "encode" ? encode(a, b) : Promise.reject(new Error("usage"))).catch((e) => {
  console.error(e.message);
  process.exit(1);
});
