#!/bin/sh
# Tokenizer throughput: libpeft (peft tokenize) vs SentencePiece (Debian's
# python3-sentencepiece, C++ core) on the same text, one thread each, same run.
#   sh bench/tokenize.sh [COPIES]   (default 50 copies of ../shared/data/tinystories_sample.txt)
set -eu
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
N=${1:-50}
T=$(mktemp -d /tmp/peft-bench-XXXXXX)
trap 'rm -rf "$T"' EXIT
[ -f build/build.ninja ] || meson setup build -Dbuildtype=release >/dev/null
ninja -C build >/dev/null
for i in $(seq 1 "$N"); do cat "$SHARED/data/tinystories_sample.txt"; echo; done >"$T/text.txt"
MB=$(python3 -c "import os; print(os.path.getsize('$T/text.txt') / 1e6)")
for run in 1 2 3; do
    s=$(date +%s.%N)
    ./build/examples/peft tokenize --tokenizer "$SHARED/models/stories260K" --in "$T/text.txt" --out "$T/ids.bin" 2>/dev/null
    e=$(date +%s.%N)
    echo "libpeft run $run: $(python3 -c "print(f'{$MB / ($e - $s):.1f}')") MB/s"
done
if /usr/bin/python3 -c "import sentencepiece" 2>/dev/null; then
    /usr/bin/python3 - "$T/text.txt" "$SHARED/models/stories260K/tokenizer.model" "$T/ids.bin" <<'PY'
import sys, time, array
import sentencepiece as spm
text, model, ours = sys.argv[1:4]
sp = spm.SentencePieceProcessor(model_file=model)
docs = [d.strip() for d in open(text, encoding="utf-8").read().split("\n\n") if d.strip()]
mb = sum(len(d.encode()) for d in docs) / 1e6
for run in (1, 2, 3):
    t = time.perf_counter()
    ids = [[1] + x for x in sp.encode(docs)]
    dt = time.perf_counter() - t
    print(f"sentencepiece run {run}: {mb / dt:.1f} MB/s")
flat = array.array("I", [i for d in ids for i in d])
mine = array.array("I"); mine.frombytes(open(ours, "rb").read())
print("identical ids:", flat == mine)
PY
fi
# Byte-level BPE (BYTELEVEL=DIR, a tokenizer.json directory such as Qwen3's): libpeft against
# Hugging Face tokenizers itself (the Rust library; NODE_PATH=.../node_modules holding npm's
# `tokenizers`), one thread each (RAYON_NUM_THREADS=1), same paragraphs, ids compared.
if [ -n "${BYTELEVEL:-}" ]; then
    for run in 1 2 3; do
        s=$(date +%s.%N)
        ./build/examples/peft tokenize --tokenizer "$BYTELEVEL" --in "$T/text.txt" --out "$T/bl.bin" 2>/dev/null
        e=$(date +%s.%N)
        echo "libpeft byte-level run $run: $(python3 -c "print(f'{$MB / ($e - $s):.1f}')") MB/s"
    done
    if command -v node >/dev/null && node -e 'require("tokenizers")' 2>/dev/null; then
        RAYON_NUM_THREADS=1 node - "$BYTELEVEL/tokenizer.json" "$T/text.txt" "$T/bl.bin" <<'JS'
const { Tokenizer } = require("tokenizers");
const fs = require("fs");
const [tok, text, ours] = process.argv.slice(2);
(async () => {
  const t = Tokenizer.fromFile(tok);
  const docs = fs.readFileSync(text, "utf8").split("\n\n").map((d) => d.trim()).filter((d) => d);
  const mb = docs.reduce((a, d) => a + Buffer.byteLength(d), 0) / 1e6;
  let ids = [];
  for (let run = 1; run <= 3; run++) {
    const t0 = process.hrtime.bigint();
    const enc = await t.encodeBatch(docs, { addSpecialTokens: true });
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    console.log(`hf tokenizers run ${run}: ${(mb / s).toFixed(1)} MB/s`);
    ids = enc.map((e) => e.getIds());
  }
  const mine = new Uint32Array(fs.readFileSync(ours).buffer.slice(0));
  const flat = ids.flat();
  console.log("identical ids:", flat.length === mine.length && flat.every((v, i) => v === mine[i]));
})();
JS
    fi
fi
