#!/bin/sh
# The README's main job: build libpeft and the `peft` tool, fine-tune a LoRA adapter
# and show it working (held-out loss before and after, and the adapter files).
#   With ../shared/models/stories260K present (or MODEL=dir DATA=tokens.bin): trains
#   stories260K on the Book of Genesis and evaluates on held-out verses.
#   Otherwise: creates a small random Llama and a synthetic task it visibly learns.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
[ -f build/build.ninja ] || meson setup build -Dbuildtype=release >/dev/null
ninja -C build >/dev/null
PEFT=./build/examples/peft
OUT=${OUT:-out/demo}
mkdir -p "$OUT"
SHARED=${SHARED:-../shared}
if [ -z "${MODEL:-}" ] && [ -f "$SHARED/models/stories260K/config.json" ]; then
    MODEL=$SHARED/models/stories260K
    DATA=$SHARED/data/kjv_genesis.stories260K.u32.bin
    STEPS=${STEPS:-300} SEQ=128 LR=3e-3
    echo "== stories260K (TinyStories Llama) fine-tuned on the Book of Genesis"
elif [ -z "${MODEL:-}" ]; then
    MODEL=$OUT/random-llama
    DATA=$OUT/synthetic.bin
    STEPS=${STEPS:-150} SEQ=32 LR=1e-2
    echo "== no model given: a random Llama learns a synthetic next-token pattern"
    $PEFT init-model --out "$MODEL" --hidden 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 --vocab 96 --seed 1
    $PEFT synth --out "$DATA" --vocab 96 --tokens 40000 --doc-len 32 --seed 2
else
    : "${DATA:?set DATA to a uint32 token file for MODEL}"
    STEPS=${STEPS:-300} SEQ=${SEQ:-128} LR=${LR:-1e-3}
fi
$PEFT info --model "$MODEL" --rank 8 --targets all-linear
echo
$PEFT train --model "$MODEL" --data "$DATA" --out "$OUT/adapter" --holdout 0.1 --steps "$STEPS" \
    --batch 8 --seq "$SEQ" --rank 8 --alpha 16 --lr "$LR" --targets all-linear --schedule cosine \
    --warmup 20 --eval-every 100 --seed 1 --json | tee "$OUT/train.json"
echo
echo "== the saved adapter (Hugging Face PEFT format)"
ls -l "$OUT/adapter"
python3 - "$OUT/train.json" <<'PY'
import json, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
b, a = j["eval_loss_before"], j["eval_loss_after"]
print(f"held-out loss {b:.4f} -> {a:.4f} (perplexity {2.718281828**b:.2f} -> {2.718281828**a:.2f}), "
      f"{j['tokens_per_s']:.0f} training tokens/s")
PY
