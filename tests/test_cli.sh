#!/bin/sh
# The `peft` tool as scripts drive it. Usage: test_cli.sh PEFT_BINARY CASE
# Exit 0 pass, 1 fail, 77 skip.
set -u
PEFT=$1
CASE=$2
SRC=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${PEFT_SHARED:-$SRC/../shared}
T=$(mktemp -d /tmp/peft-cli-XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# json FILE EXPR: evaluate a Python expression over the last line's JSON object `j`
json() { python3 -c "import json,sys; j=json.loads(open('$1', errors='replace').read().strip().splitlines()[-1]); sys.exit(0 if ($2) else 1)"; }

setup_tiny() {
    "$PEFT" init-model --out "$T/model" --hidden 48 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --vocab 64 --seed 3 "$@" >/dev/null || fail "init-model"
    "$PEFT" synth --out "$T/data.bin" --vocab 64 --tokens 20000 --doc-len 32 --seed 5 >/dev/null || fail "synth"
}

case "$CASE" in
train_learns_synthetic)
    setup_tiny --untied
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/ad" --holdout 0.1 --steps 80 --batch 8 --seq 32 \
        --rank 8 --alpha 16 --lr 1e-2 --targets all-linear --seed 1 --threads 2 --json >"$T/out.json" 2>"$T/err" || { cat "$T/err"; fail "train"; }
    cat "$T/out.json"
    json "$T/out.json" "j['loss'] > 0 and j['tokens'] == 80*8*32 and j['tokens_per_s'] > 0 and j['steps'] == 80" || fail "json fields"
    json "$T/out.json" "j['eval_loss_after'] < 0.5 * j['eval_loss_before']" || fail "held-out loss did not drop enough"
    test -f "$T/ad/adapter_model.safetensors" -a -f "$T/ad/adapter_config.json" || fail "adapter files"
    "$PEFT" eval --model "$T/model" --data "$T/data.bin" --seq 32 --json >"$T/base.json" || fail "eval base"
    "$PEFT" eval --model "$T/model" --adapter "$T/ad" --data "$T/data.bin" --seq 32 --json >"$T/ad.json" || fail "eval adapter"
    python3 -c "import json; a=json.loads(open('$T/base.json').read().splitlines()[-1]); b=json.loads(open('$T/ad.json').read().splitlines()[-1]); assert b['loss'] < 0.5*a['loss'], (a, b); assert a['tokens'] == b['tokens'] == (20000//32)*31" || fail "eval with adapter"
    ;;
deterministic_and_thread_independent)
    setup_tiny --dtype bf16
    for run in a b; do
        "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/$run" --steps 6 --batch 4 --seq 32 --rank 4 \
            --targets q,v,down --layers last:1 --dropout 0.1 --seed 9 --threads 1 --quiet || fail "train $run"
    done
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/c" --steps 6 --batch 4 --seq 32 --rank 4 \
        --targets q,v,down --layers last:1 --dropout 0.1 --seed 9 --threads 2 --quiet || fail "train c"
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/d" --steps 6 --batch 4 --seq 32 --rank 4 \
        --targets q,v,down --layers last:1 --dropout 0.1 --seed 10 --threads 2 --quiet || fail "train d"
    cmp "$T/a/adapter_model.safetensors" "$T/b/adapter_model.safetensors" || fail "same seed differs"
    cmp "$T/a/adapter_model.safetensors" "$T/c/adapter_model.safetensors" || fail "thread count changes the result"
    cmp -s "$T/a/adapter_model.safetensors" "$T/d/adapter_model.safetensors" && fail "seed has no effect"
    grep -q '"layers_to_transform": \[' "$T/a/adapter_config.json" || fail "layers_to_transform"
    ;;
frozen_bf16_train_eval)
    # --frozen-dtype bf16: the frozen weights held in BFloat16; training and evaluation work as
    # with float32 weights, to BF16 rounding, and a bad value is refused by name
    setup_tiny
    for fd in f32 bf16; do
        "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/$fd" --holdout 0.1 --steps 30 --batch 8 --seq 32 \
            --rank 4 --lr 1e-2 --targets all-linear --seed 1 --threads 2 --frozen-dtype $fd --json >"$T/$fd.json" 2>"$T/err" ||
            { cat "$T/err"; fail "train $fd"; }
        "$PEFT" eval --model "$T/model" --adapter "$T/$fd" --data "$T/data.bin" --seq 32 --frozen-dtype $fd --json \
            >"$T/e$fd.json" || fail "eval $fd"
    done
    python3 -c "
import json
r = {k: json.loads(open('$T/' + k + '.json').read().splitlines()[-1]) for k in ('f32', 'bf16', 'ef32', 'ebf16')}
assert r['bf16']['eval_loss_after'] < 0.7 * r['bf16']['eval_loss_before'], r['bf16']
for a, b, k in (('f32', 'bf16', 'eval_loss_after'), ('ef32', 'ebf16', 'loss')):
    assert r[a][k] != r[b][k] and abs(r[a][k] - r[b][k]) < 2e-2 * r[a][k], (k, r[a][k], r[b][k])
" || fail "bf16 frozen weights vs f32"
    "$PEFT" eval --model "$T/model" --data "$T/data.bin" --seq 32 --frozen-dtype fp8 >"$T/out" 2>"$T/err" && fail "fp8 accepted"
    grep -q "frozen_dtype 'fp8'" "$T/err" || { cat "$T/err"; fail "no message naming fp8"; }
    ;;
activation_checkpointing_train)
    # --activation-checkpointing: the same adapter bit for bit, and less peak memory (a model
    # of 8 layers, 4 x 128 tokens: the stored activations dominate)
    "$PEFT" init-model --out "$T/model" --hidden 128 --layers 8 --heads 4 --kv-heads 2 --ffn 384 --vocab 256 --seed 3 >/dev/null || fail "init-model"
    "$PEFT" synth --out "$T/data.bin" --vocab 256 --tokens 20000 --seed 5 >/dev/null || fail "synth"
    for run in plain ckpt; do
        flag=; [ $run = ckpt ] && flag=--activation-checkpointing
        python3 -c "import resource, subprocess, sys; r = subprocess.run(sys.argv[2:]).returncode; open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(r)" \
            "$T/$run.rss" "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/$run" \
            --steps 4 --batch 4 --seq 128 --rank 4 --targets all-linear --dropout 0.1 --seed 2 --threads 2 $flag --quiet ||
            fail "train $run"
    done
    cmp "$T/plain/adapter_model.safetensors" "$T/ckpt/adapter_model.safetensors" || fail "checkpointing changed the adapter"
    echo "peak RSS KiB: $(cat "$T/plain.rss") without, $(cat "$T/ckpt.rss") with checkpointing"
    [ "$(tail -1 "$T/ckpt.rss")" -lt "$(tail -1 "$T/plain.rss")" ] || fail "no memory saved"
    ;;
resume_from_adapter)
    setup_tiny
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/a" --steps 30 --batch 8 --seq 32 --lr 1e-2 --rank 4 \
        --targets all-linear --quiet --json >"$T/a.json" || fail "train"
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/b" --init-adapter "$T/a" --steps 30 --batch 8 --seq 32 \
        --lr 1e-2 --quiet --json >"$T/b.json" || fail "resume"
    python3 -c "import json; a=json.loads(open('$T/a.json').read().splitlines()[-1]); b=json.loads(open('$T/b.json').read().splitlines()[-1]); assert b['loss'] < a['loss'], (a, b)" || fail "resumed training did not continue"
    ;;
info_counts)
    setup_tiny
    "$PEFT" info --model "$T/model" --rank 4 --targets q,k,v,o --layers first:1 --json >"$T/info" || fail "info"
    cat "$T/info"
    # q: 4*(48+48), k, v: 4*(48+24), o: 4*(48+48) for one layer
    json "$T/info" "j['trainable'] == 4*(96+72+72+96) and j['layers'] == 2 and j['hidden'] == 48 and j['kv_heads'] == 2" || fail "counts"
    grep -q "q_proj" "$T/info" || fail "table"
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/a" --steps 1 --batch 2 --seq 16 --quiet || fail "train"
    "$PEFT" info --model "$T/model" --adapter "$T/a" >"$T/info2" || fail "info --adapter"
    grep -q "trainable parameters" "$T/info2" || fail "adapter count"
    # budget solver: q,v on 2 layers costs 2 * ((48+48) + (48+24)) = 336 per unit of rank
    "$PEFT" info --model "$T/model" --targets q,v --budget 3400 --json >"$T/b" || fail "budget"
    json "$T/b" "j['rank'] == 10 and j['trainable'] == 3360" || fail "budget rank"
    "$PEFT" merge --model "$T/model" --adapter "$T/a" --out "$T/merged" >/dev/null || fail "merge"
    "$PEFT" eval --model "$T/merged" --data "$T/data.bin" --seq 16 --json >"$T/e1" || fail "eval merged"
    "$PEFT" eval --model "$T/model" --adapter "$T/a" --data "$T/data.bin" --seq 16 --json >"$T/e2" || fail "eval adapter"
    python3 -c "import json; a=json.loads(open('$T/e1').read().splitlines()[-1]); b=json.loads(open('$T/e2').read().splitlines()[-1]); assert abs(a['loss']-b['loss']) < 1e-4, (a, b)" || fail "merged model loss differs"
    ;;
errors_exit_nonzero)
    setup_tiny
    # nested output directories are created; an impossible one is a clear error
    "$PEFT" init-model --out "$T/a/b/model" --hidden 32 --layers 1 --heads 4 --kv-heads 2 --ffn 64 --vocab 64 >/dev/null \
        && [ -f "$T/a/b/model/config.json" ] || fail "init-model into nested directories"
    "$PEFT" init-model --out /proc/peft-nope/model 2>"$T/e0" && fail "impossible directory accepted"
    grep -q "cannot create" "$T/e0" || fail "message for an impossible directory"
    "$PEFT" eval --model "$T/nope" --data "$T/data.bin" --seq 16 2>"$T/e1" && fail "missing model accepted"
    grep -q "config.json" "$T/e1" || fail "message for a missing model"
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/x" --targets q,zz 2>"$T/e2" && fail "bad targets accepted"
    grep -q "unknown module 'zz'" "$T/e2" || fail "message for bad targets"
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/x" --bogus 1 2>"$T/e3" && fail "unknown flag accepted"
    printf 'abc' >"$T/odd.bin"
    "$PEFT" eval --model "$T/model" --data "$T/odd.bin" --seq 16 2>"$T/e4" && fail "odd-sized token file accepted"
    grep -q "multiple of 4" "$T/e4" || fail "message for odd token file"
    printf '\377\377\0\0' >"$T/big.bin"
    "$PEFT" eval --model "$T/model" --data "$T/big.bin" --seq 1 2>/dev/null && fail "seq 1 accepted"
    "$PEFT" eval --model "$T/model" --data "$T/big.bin" --seq 2 2>"$T/e5" && fail "out-of-vocabulary token accepted"
    grep -q "outside the model's vocabulary" "$T/e5" || fail "message for a bad token"
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/x" --layers 9 2>"$T/e6" && fail "bad layers accepted"
    grep -q "out of range" "$T/e6" || fail "message for bad layers"
    "$PEFT" frobnicate 2>/dev/null && fail "unknown command accepted"
    true
    ;;
genesis_heldout_loss_drops)
    [ -f "$SHARED/models/stories260K/config.json" ] || { echo "SKIP: ../shared not present"; exit 77; }
    "$PEFT" train --model "$SHARED/models/stories260K" --data "$SHARED/data/kjv_genesis.stories260K.u32.bin" \
        --out "$T/gen" --holdout 0.1 --steps 150 --batch 8 --seq 128 --rank 8 --alpha 16 --lr 3e-3 \
        --targets all-linear --schedule cosine --warmup 10 --seed 1 --json >"$T/g.json" 2>"$T/err" || { cat "$T/err"; fail "train"; }
    cat "$T/g.json"
    json "$T/g.json" "j['eval_loss_before'] > 4.0 and j['eval_loss_after'] < j['eval_loss_before'] - 1.5" || fail "Genesis held-out loss did not drop clearly"
    ;;
checkpoint_resume_after_sigkill)
    setup_tiny
    common="--model $T/model --data $T/data.bin --steps 10 --batch 4 --seq 32 --rank 4 --targets all-linear
            --dropout 0.1 --lr 1e-2 --warmup 3 --schedule cosine --accum 2 --seed 4 --threads 2 --quiet"
    # shellcheck disable=SC2086
    "$PEFT" train $common --out "$T/straight" --checkpoint-every 5 || fail "straight run"
    # shellcheck disable=SC2086
    PEFT_TEST_KILL_AFTER_STEP=6 "$PEFT" train $common --out "$T/killed" --checkpoint-every 3
    st=$?
    [ "$st" -eq 137 ] || fail "the run was not killed (exit $st)"
    test -f "$T/killed/optimizer.safetensors" || fail "no checkpoint before the kill"
    # shellcheck disable=SC2086
    "$PEFT" train $common --out "$T/killed" --checkpoint-every 3 --resume "$T/killed" 2>"$T/err" || { cat "$T/err"; fail "resume"; }
    cmp "$T/straight/adapter_model.safetensors" "$T/killed/adapter_model.safetensors" || fail "resumed run differs from the uninterrupted one"
    # a checkpoint directory is also a plain adapter
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/x" --steps 1 --quiet --init-adapter "$T/killed" >/dev/null || fail "init-adapter from a checkpoint"
    ;;
gguf_lora_export_matches_llama_cpp)
    [ -f "$SHARED/models/stories260K/config.json" ] || { echo "SKIP: ../shared not present"; exit 77; }
    M=$SHARED/models/stories260K
    "$PEFT" convert --model "$M" --adapter "$M/reference/ref_adapter" --out "$T/ref.gguf" >/dev/null || fail "convert"
    python3 "$SRC/tests/gguf_check.py" same-lora "$T/ref.gguf" "$M/reference/ref_adapter.gguf" || fail "differs from llama.cpp's conversion"
    python3 "$SRC/tests/gguf_check.py" lora "$T/ref.gguf" || fail "structure"
    # rsLoRA and DoRA-free training straight to GGUF
    setup_tiny
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/both" --steps 3 --batch 2 --seq 16 --rank 4 \
        --rslora --targets all-linear --format both --quiet || fail "train --format both"
    test -f "$T/both/adapter.gguf" -a -f "$T/both/adapter_model.safetensors" || fail "both formats"
    python3 "$SRC/tests/gguf_check.py" lora "$T/both/adapter.gguf" || fail "structure (rslora)"
    ;;
convert_without_the_model)
    [ -f "$SHARED/models/stories260K/config.json" ] || { echo "SKIP: ../shared not present"; exit 77; }
    M=$SHARED/models/stories260K
    "$PEFT" convert --adapter "$M/reference/ref_adapter" --out "$T/free.gguf" --n-heads 8 --n-kv-heads 4 >/dev/null ||
        fail "PEFT to GGUF without the model"
    python3 "$SRC/tests/gguf_check.py" same-lora "$T/free.gguf" "$M/reference/ref_adapter.gguf" || fail "differs from llama.cpp's conversion"
    "$PEFT" convert --adapter "$M/reference/ref_adapter.gguf" --out "$T/back" --n-heads 8 --n-kv-heads 4 --n-layers 5 >/dev/null ||
        fail "GGUF to PEFT without the model"
    cmp "$T/back/adapter_model.safetensors" "$M/reference/ref_adapter/adapter_model.safetensors" || fail "tensors differ from PEFT's file"
    grep -q '"layers_to_transform": null' "$T/back/adapter_config.json" || fail "layers_to_transform"
    # with the model: head and layer counts from it, and the result checked against it
    "$PEFT" convert --adapter "$M/reference/ref_adapter.gguf" --out "$T/back2" --model "$M" >/dev/null || fail "GGUF to PEFT with --model"
    cmp "$T/back/adapter_model.safetensors" "$T/back2/adapter_model.safetensors" || fail "--model differs"
    "$PEFT" eval --model "$M" --adapter "$T/back2" --data "$SHARED/data/tinystories_sample.stories260K.u32.bin" --seq 128 --json >"$T/e1" || fail "eval converted"
    "$PEFT" eval --model "$M" --adapter "$M/reference/ref_adapter" --data "$SHARED/data/tinystories_sample.stories260K.u32.bin" --seq 128 --json >"$T/e2" || fail "eval original"
    [ "$(grep '^{' "$T/e1" | sed 's/, "seconds".*//')" = "$(grep '^{' "$T/e2" | sed 's/, "seconds".*//')" ] || fail "the converted adapter evaluates differently"
    "$PEFT" convert --adapter "$M/reference/ref_adapter.gguf" --out "$T/nohead" 2>"$T/err" && fail "converted without head counts"
    grep -q "head counts" "$T/err" || fail "no message naming the head counts"
    test ! -e "$T/nohead" || fail "a directory was left behind"
    ;;
qwen_families)
    # Qwen2 (q/k/v biases, tied embeddings), Qwen3 (per-head q/k norms, head_dim 12 with hidden 32)
    # and Llama with attention and MLP biases: the GGUF file (as llama.cpp lays it out: q/k rows and
    # biases permuted for llama only) gives the Hugging Face loss; LoRA trained on either is the
    # same; its GGUF LoRA is written for the family and converts back (qwen: without head counts); merged
    # exports (from the HF and the GGUF base, as a directory and as GGUF, the GGUF made from the HF
    # directory with a byte-level BPE tokenizer.json) keep biases and norms
    /usr/bin/python3 -c "import numpy" 2>/dev/null || { echo "skip: no numpy for /usr/bin/python3"; exit 77; }
    "$PEFT" synth --out "$T/d.bin" --vocab 48 --tokens 4000 --doc-len 32 --seed 4 >/dev/null || fail "synth"
    loss() { grep '^{' "$1" | sed 's/.*"loss": \([0-9.]*\).*/\1/'; }
    # a byte-level BPE tokenizer.json (GPT-2's byte alphabet, Qwen2's or Llama 3's split)
    bpe() {
        python3 - "$1" "$2" <<'PY'
import json, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
shutil.copytree(src, dst)
re_n = r"\p{N}" if "qwen" in src else r"\p{N}{1,3}"
split = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|" + re_n + r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
vocab = {c: i for i, c in enumerate("\u0120abcdefghijklmnopqrstuvwxyz")}
merges = [["\u0120", "a"], ["a", "b"], ["\u0120", "ab"], ["c", "d"]]
for a, b in merges:
    vocab[a + b] = len(vocab)
added = [{"id": len(vocab), "content": "<|endoftext|>", "special": True}, {"id": len(vocab) + 1, "content": "<tool>", "special": False}]
json.dump({"version": "1.0", "added_tokens": added,
           "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": False},
                                                                   {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
           "decoder": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": vocab, "merges": merges}}, open(dst + "/tokenizer.json", "w"))
json.dump({"eos_token": "<|endoftext|>", "chat_template": "{{ messages }}"}, open(dst + "/tokenizer_config.json", "w"))
PY
    }
    for f in qwen2 qwen3 llama_bias; do
        arch=$f; [ $f = llama_bias ] && arch=llama
        M=$SRC/tests/data/tiny_$f
        /usr/bin/python3 "$SRC/tests/gguf_write.py" "$M" "$T/$f.gguf" --type f32 || fail "gguf_write $f"
        "$PEFT" eval --model "$M" --data "$T/d.bin" --seq 32 --json >"$T/e_hf" || fail "eval $f"
        "$PEFT" eval --model "$T/$f.gguf" --data "$T/d.bin" --seq 32 --json >"$T/e_gg" || fail "eval $f gguf"
        [ "$(loss "$T/e_hf")" = "$(loss "$T/e_gg")" ] || fail "$f: GGUF loss $(loss "$T/e_gg") != HF $(loss "$T/e_hf")"
        "$PEFT" info --model "$T/$f.gguf" | grep -q "$arch" || fail "$f: info names the architecture"
        for src in hf gg; do
            mdl=$M; [ $src = gg ] && mdl=$T/$f.gguf
            "$PEFT" train --model "$mdl" --data "$T/d.bin" --out "$T/ad-$f-$src" --steps 3 --batch 2 --seq 32 --rank 4 \
                --targets all-linear --format both --seed 5 --threads 2 --quiet || fail "train $f on $src"
        done
        python3 "$SRC/tests/st_close.py" "$T/ad-$f-hf/adapter_model.safetensors" "$T/ad-$f-gg/adapter_model.safetensors" 1e-5 ||
            fail "$f: training on GGUF differs"
        python3 -c "
import sys; sys.path.insert(0, '$SRC/tests'); import gguf_check
kv, ts = gguf_check.read('$T/ad-$f-hf/adapter.gguf')
assert kv['general.architecture'][1] == '$arch', kv['general.architecture']" || fail "$f: GGUF LoRA architecture"
        heads=""; [ $arch = llama ] && heads="--model $M" # llama's q/k rows are permuted per head
        # shellcheck disable=SC2086
        "$PEFT" convert --adapter "$T/ad-$f-hf/adapter.gguf" --out "$T/back-$f" $heads >/dev/null || fail "$f: convert back"
        cmp "$T/back-$f/adapter_model.safetensors" "$T/ad-$f-hf/adapter_model.safetensors" || fail "$f: GGUF LoRA round trip"
        "$PEFT" eval --model "$M" --adapter "$T/ad-$f-hf" --data "$T/d.bin" --seq 32 --json >"$T/e_ad" || fail "eval adapter"
        for src in hf gg; do
            mdl=$M; [ $src = gg ] && mdl=$T/$f.gguf
            "$PEFT" merge --model "$mdl" --adapter "$T/ad-$f-hf" --out "$T/merged-$f-$src" >/dev/null || fail "merge $f from $src"
            "$PEFT" eval --model "$T/merged-$f-$src" --data "$T/d.bin" --seq 32 --json >"$T/e_m" || fail "eval merged $src"
            python3 -c "a, b = float('$(loss "$T/e_m")'), float('$(loss "$T/e_ad")'); assert abs(a - b) <= 1e-5 * b, (a, b)" ||
                fail "$f: merged ($src) loss differs from base + adapter"
        done
        bpe "$M" "$T/tok-$f" || fail "tokenizer.json"
        "$PEFT" merge --model "$T/tok-$f" --adapter "$T/ad-$f-hf" --out "$T/mg-$f.gguf" >/dev/null || fail "merge $f as GGUF from HF"
        "$PEFT" eval --model "$T/mg-$f.gguf" --data "$T/d.bin" --seq 32 --json >"$T/e_m" || fail "eval merged GGUF"
        python3 -c "a, b = float('$(loss "$T/e_m")'), float('$(loss "$T/e_ad")'); assert abs(a - b) <= 1e-5 * b, (a, b)" ||
            fail "$f: merged GGUF (from HF) loss differs from base + adapter"
        python3 -c "
import json, sys; sys.path.insert(0, '$SRC/tests'); import gguf_check
kv, ts = gguf_check.read('$T/mg-$f.gguf', True)
tj = json.load(open('$T/tok-$f/tokenizer.json'))
g = lambda k: kv[k][1]
assert g('general.architecture') == '$arch' and g('tokenizer.ggml.model') == 'gpt2'
assert g('tokenizer.ggml.pre') == ('llama-bpe' if '$arch' == 'llama' else 'qwen2'), g('tokenizer.ggml.pre')
toks = g('tokenizer.ggml.tokens'); types = g('tokenizer.ggml.token_type')
assert len(toks) == 48 and toks[:27] == list(tj['model']['vocab'])[:27] and toks[31] == '<|endoftext|>' and toks[32] == '<tool>'
assert types[30] == 1 and types[31] == 3 and types[32] == 4 and toks[47] == '[PAD47]' and types[47] == 5
assert g('tokenizer.ggml.merges') == [a + ' ' + b for a, b in tj['model']['merges']]
assert g('tokenizer.ggml.eos_token_id') == 31 and g('tokenizer.chat_template') == '{{ messages }}'
assert 'tokenizer.ggml.scores' not in kv and any(n == 'blk.0.attn_q.bias' for n, _, _, _ in ts) == ('$f' != 'qwen3')
" || fail "$f: the GGUF vocabulary"
    done
    sed -i 's/p{N}|/p{N}{1,2}|/' "$T/tok-qwen2/tokenizer.json"
    "$PEFT" merge --model "$T/tok-qwen2" --out "$T/unknown.gguf" 2>"$T/err" && fail "an unknown pre-tokenizer was accepted"
    grep -q "convert_hf_to_gguf" "$T/err" || { cat "$T/err"; fail "message"; }
    [ ! -e "$T/unknown.gguf" ] || fail "a refused export left a file"
    # IA3 on Qwen2's biased k and v (PEFT's default targets there): the output scaling scales the
    # bias; the merged model, from the Hugging Face directory and from GGUF, computes base + adapter
    M=$SRC/tests/data/tiny_qwen2
    "$PEFT" train --model "$M" --data "$T/d.bin" --out "$T/ia3" --method ia3 --targets k,v,down --steps 3 --batch 2 \
        --seq 32 --lr 0.05 --seed 5 --quiet || fail "IA3 on the biased k, v of Qwen2"
    "$PEFT" eval --model "$M" --adapter "$T/ia3" --data "$T/d.bin" --seq 32 --json >"$T/e_ad" || fail "eval IA3"
    for src in hf gg; do
        mdl=$M; [ $src = gg ] && mdl=$T/qwen2.gguf
        "$PEFT" merge --model "$mdl" --adapter "$T/ia3" --out "$T/merged-ia3-$src" >/dev/null || fail "merge IA3 from $src"
        "$PEFT" eval --model "$T/merged-ia3-$src" --data "$T/d.bin" --seq 32 --json >"$T/e_m" || fail "eval merged IA3"
        python3 -c "a, b = float('$(loss "$T/e_m")'), float('$(loss "$T/e_ad")'); assert abs(a - b) <= 1e-5 * b, (a, b)" ||
            fail "IA3: merged ($src) loss differs from base + adapter"
    done
    # PEFT's bias option: every q/k/v bias trained with LoRA on q, v of one layer; the config says
    # so, the merged model computes base + adapter; a bad mode is refused
    "$PEFT" train --model "$M" --data "$T/d.bin" --out "$T/lb" --targets q,v --layers 1 --rank 4 --bias all --steps 3 \
        --batch 2 --seq 32 --lr 0.02 --seed 5 --quiet || fail "train --bias all"
    grep -q '"bias": "all"' "$T/lb/adapter_config.json" || fail "--bias all: adapter_config.json"
    "$PEFT" eval --model "$M" --adapter "$T/lb" --data "$T/d.bin" --seq 32 --json >"$T/e_ad" || fail "eval --bias all"
    "$PEFT" merge --model "$M" --adapter "$T/lb" --out "$T/merged-lb" >/dev/null || fail "merge --bias all"
    "$PEFT" eval --model "$T/merged-lb" --data "$T/d.bin" --seq 32 --json >"$T/e_m" || fail "eval merged --bias all"
    python3 -c "a, b = float('$(loss "$T/e_m")'), float('$(loss "$T/e_ad")'); assert abs(a - b) <= 1e-5 * b, (a, b)" ||
        fail "--bias all: merged loss differs from base + adapter"
    # info: the biases as a row of their own (3 layers x q, k, v: 3 x 64), not in the modules' rows
    "$PEFT" info --model "$M" --targets q,v --layers 1 --rank 4 --bias all >"$T/info" || fail "info --bias all"
    grep -Eq "q_proj +256" "$T/info" && grep -Eq "biases +192" "$T/info" && grep -Eq "total +640" "$T/info" ||
        { cat "$T/info"; fail "info --bias all: rows"; }
    "$PEFT" train --model "$M" --data "$T/d.bin" --out "$T/lbx" --bias some --steps 1 --quiet 2>"$T/err" &&
        fail "--bias some was accepted"
    grep -q "lora_only" "$T/err" || fail "--bias: no message naming the modes"
    ;;
merged_gguf_export)
    # base + adapter as a GGUF file from stories260K's F32, Q8_0 and Q4_0 files: the base's keys and
    # untouched tensors (norms, embeddings) copied byte for byte; the loss of base + adapter, exactly
    # for F32 output, within the requantization error for the base's own type
    [ -f "$SHARED/models/stories260K/config.json" ] || { echo "SKIP: ../shared not present"; exit 77; }
    M=$SHARED/models/stories260K
    D=$SHARED/data/tinystories_sample.stories260K.u32.bin
    loss() { "$PEFT" eval --model "$@" --data "$D" --seq 128 --json | grep '^{' | sed 's/.*"loss": \([0-9.]*\).*/\1/'; }
    for q in f32 q8_0 q4_0; do
        ref=$(loss "$M/stories260K-$q.gguf" --adapter "$M/reference/ref_adapter")
        for ty in same f32; do
            "$PEFT" merge --model "$M/stories260K-$q.gguf" --adapter "$M/reference/ref_adapter" --out "$T/m-$q-$ty.gguf" \
                --type $ty >/dev/null || fail "merge $q as $ty"
            re='attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down'
            [ $ty = f32 ] && re="$re|token_embd|output.weight" # every matrix converted
            python3 "$SRC/tests/gguf_check.py" merged "$M/stories260K-$q.gguf" "$T/m-$q-$ty.gguf" "$re" >/dev/null ||
                fail "$q as $ty: structure"
            got=$(loss "$T/m-$q-$ty.gguf")
            tol=1e-6; [ $ty = same ] && [ $q = q8_0 ] && tol=5e-3; [ $ty = same ] && [ $q = q4_0 ] && tol=6e-2
            python3 -c "a, b = $got, $ref; assert abs(a - b) <= $tol * b, (a, b)" || fail "$q as $ty: loss $got, base + adapter $ref"
        done
    done
    ;;
merged_gguf_from_hf_base)
    # a GGUF file made from the Hugging Face stories260K directory: without an adapter it is
    # llama.cpp's own stories260K-f32.gguf (every key but the name, every tensor byte for byte: q/k
    # rows permuted as the converter does, the vocabulary from tokenizer.model); without
    # tokenizer.model, from tokenizer.json, the same keys (SentencePiece's scores rebuilt from the
    # merges); with the reference adapter: the loss and greedy text of base + adapter, other tensors
    # untouched; as F16 / Q8_0 the loss within their rounding; a bad tokenizer is refused cleanly
    [ -f "$SHARED/models/stories260K/config.json" ] || { echo "SKIP: ../shared not present"; exit 77; }
    M=$SHARED/models/stories260K
    D=$SHARED/data/tinystories_sample.stories260K.u32.bin
    loss() { "$PEFT" eval --model "$@" --data "$D" --seq 128 --max-windows 100 --json | grep '^{' | sed 's/.*"loss": \([0-9.]*\).*/\1/'; }
    "$PEFT" merge --model "$M" --out "$T/plain.gguf" --name stories260K >/dev/null || fail "HF -> GGUF"
    python3 "$SRC/tests/gguf_check.py" same-model "$M/stories260K-f32.gguf" "$T/plain.gguf" || fail "not llama.cpp's file"
    mkdir -p "$T/nosp" && cp "$M"/*.json "$M/model.safetensors" "$T/nosp/" || fail "copy"
    "$PEFT" merge --model "$T/nosp" --out "$T/nosp.gguf" >/dev/null || fail "HF (tokenizer.json) -> GGUF"
    python3 "$SRC/tests/gguf_check.py" same-model "$M/stories260K-f32.gguf" "$T/nosp.gguf" || fail "tokenizer.json: keys differ"
    "$PEFT" tokenize --tokenizer "$T/nosp.gguf" --in "$SHARED/data/tinystories_sample.txt" --out "$T/ids.bin" 2>/dev/null || fail "tokenize"
    cmp "$T/ids.bin" "$D" || fail "the written vocabulary tokenizes differently"
    A=$M/reference/ref_adapter
    ref=$(loss "$M" --adapter "$A")
    "$PEFT" merge --model "$M" --adapter "$A" --out "$T/m.gguf" >/dev/null || fail "merge"
    python3 "$SRC/tests/gguf_check.py" same-model "$M/stories260K-f32.gguf" "$T/m.gguf" 'attn_|ffn_(gate|up|down)' >/dev/null ||
        fail "merged: structure"
    got=$(loss "$T/m.gguf")
    python3 -c "a, b = $got, $ref; assert abs(a - b) <= 1e-6 * b, (a, b)" || fail "merged loss $got, base + adapter $ref"
    g() { "$PEFT" generate --model "$@" --prompt "Once upon" --temperature 0 --max-tokens 40 --json | grep '^{' | sed 's/"seconds.*//'; }
    [ "$(g "$T/m.gguf")" = "$(g "$M" --adapter "$A")" ] || fail "greedy text of the merged GGUF differs"
    for ty in f16:1e-4 bf16:3e-3 q8_0:5e-3; do
        "$PEFT" merge --model "$M" --adapter "$A" --out "$T/m-${ty%%:*}.gguf" --type "${ty%%:*}" >/dev/null || fail "merge as $ty"
        got=$(loss "$T/m-${ty%%:*}.gguf")
        python3 -c "a, b = $got, $ref; assert abs(a - b) <= ${ty#*:} * b, (a, b)" || fail "$ty: loss $got, base + adapter $ref"
    done
    mkdir -p "$T/bad" && cp "$M"/*.json "$M/model.safetensors" "$T/bad/" && head -c 1000 "$M/tokenizer.model" >"$T/bad/tokenizer.model"
    "$PEFT" merge --model "$T/bad" --out "$T/bad.gguf" 2>"$T/err" && fail "a truncated tokenizer.model was accepted"
    grep -q "tokenizer.model" "$T/err" || { cat "$T/err"; fail "message"; }
    rm "$T/bad/tokenizer.model" "$T/bad/tokenizer.json"
    "$PEFT" merge --model "$T/bad" --out "$T/bad.gguf" 2>"$T/err" && fail "no tokenizer was accepted"
    grep -q "tokenizer" "$T/err" || { cat "$T/err"; fail "message"; }
    ls "$T" | grep -q "bad.gguf" && fail "a refused export left a file"
    ;;
valgrind_train_eval)
    command -v valgrind >/dev/null 2>&1 || { echo "SKIP: valgrind not installed"; exit 77; }
    setup_tiny
    vg="valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite,indirect"
    $vg "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/vg" --steps 2 --batch 2 --seq 16 \
        --targets all-linear --threads 2 --checkpoint-every 1 --quiet || fail "valgrind: train"
    $vg "$PEFT" eval --model "$T/model" --adapter "$T/vg" --data "$T/data.bin" --seq 16 --max-windows 4 >/dev/null ||
        fail "valgrind: eval"
    $vg "$PEFT" info --model "$T/model" --budget 5000 --targets q,v >/dev/null || fail "valgrind: info"
    ;;
bytelevel_text_training)
    # a model whose tokenizer is byte-level BPE (Qwen3's first 4096 pieces, NFC, Qwen2's split): plain
    # text in, the held-out loss falls, generation decodes; tokenizer.json and its GGUF copy give the same ids
    "$PEFT" init-model --out "$T/m" --hidden 48 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --vocab 4122 --seed 3 >/dev/null ||
        fail "init-model"
    cp "$SRC/tests/data/bytelevel/qwen3/"* "$T/m/"
    python3 - "$T/t.txt" <<'PY'
import random, sys
r = random.Random(4)
names, things = ["Lily", "Tom", "Mia", "Ben"], ["ball", "cat", "kite", "café", "日本"]
with open(sys.argv[1], "w") as f:
    for i in range(600):
        n, t = r.choice(names), r.choice(things)
        f.write(f"{n} has a {t}. {n} likes the {t} and plays with the {t} every day.\n")
PY
    "$PEFT" train --model "$T/m" --data "$T/t.txt" --out "$T/ad" --holdout 0.1 --steps 300 --batch 4 --seq 32 --rank 8 \
        --lr 1e-2 --targets all-linear --seed 1 --threads 2 --json >"$T/out.json" 2>"$T/err" || { cat "$T/err"; fail "train"; }
    json "$T/out.json" "j['eval_loss_after'] < 0.35 * j['eval_loss_before']" || { cat "$T/out.json"; fail "held-out loss did not drop"; }
    "$PEFT" tokenize --tokenizer "$T/m" --in "$T/t.txt" --out "$T/a.bin" >/dev/null || fail "tokenize (tokenizer.json)"
    "$PEFT" tokenize --tokenizer "$SRC/tests/data/bytelevel/qwen3.gguf" --in "$T/t.txt" --out "$T/b.bin" >/dev/null ||
        fail "tokenize (GGUF)"
    cmp "$T/a.bin" "$T/b.bin" || fail "tokenizer.json and GGUF vocabularies tokenize differently"
    "$PEFT" generate --model "$T/m" --adapter "$T/ad" --prompt "Mia has a" --max-tokens 12 --temperature 0 >"$T/gen" ||
        fail "generate"
    # the continuation (after the prompt) speaks the data's language
    sed "s/^Mia has a//" "$T/gen" | grep -q " likes" || { cat "$T/gen"; fail "generation"; }
    # chat data through Qwen3's own template: its special tokens are single ids, the loss on the answers
    python3 -c "
import json
with open('$T/chat.jsonl', 'w') as f:
    for i in range(40):
        f.write(json.dumps({'messages': [{'role': 'user', 'content': f'What is {i} plus 1?'},
                                         {'role': 'assistant', 'content': f'<think>\\nadd\\n</think>\\n\\n{i + 1}.'}]}) + '\\n')"
    "$PEFT" train --model "$T/m" --data "$T/chat.jsonl" --chat-template "$SRC/tests/data/chat/qwen3.jinja" --out "$T/ad2" \
        --steps 4 --batch 2 --seq 48 --rank 4 --json --quiet >"$T/chat.json" 2>"$T/err" || { cat "$T/err"; fail "chat train"; }
    json "$T/chat.json" "j['loss'] > 0 and j['tokens'] > 0" || fail "chat training"
    "$PEFT" tokenize --tokenizer "$T/m" --chat-template "$SRC/tests/data/chat/qwen3.jinja" --in "$T/chat.jsonl" \
        --out "$T/chat.bin" >/dev/null 2>"$T/err" || { cat "$T/err"; fail "chat tokenize"; }
    python3 -c "
import struct
ids = struct.unpack('<%dI' % (len(open('$T/chat.bin', 'rb').read()) // 4), open('$T/chat.bin', 'rb').read())
assert ids.count(4097) == 80 and ids.count(4098) == 80, (ids.count(4097), ids.count(4098))  # <|im_start|>, <|im_end|>
" || fail "chat ids"
    ;;
text_data_matches_token_files)
    [ -f "$SHARED/models/stories260K/config.json" ] || { echo "SKIP: ../shared not present"; exit 77; }
    M=$SHARED/models/stories260K
    "$PEFT" tokenize --tokenizer "$M" --in "$SHARED/data/tinystories_sample.txt" --out "$T/ts.bin" 2>/dev/null || fail "tokenize txt"
    cmp "$T/ts.bin" "$SHARED/data/tinystories_sample.stories260K.u32.bin" || fail "TinyStories ids differ from the reference"
    "$PEFT" tokenize --tokenizer "$M" --in "$SHARED/data/kjv_genesis.txt" --doc-split line --out "$T/g.bin" 2>/dev/null || fail "tokenize lines"
    cmp "$T/g.bin" "$SHARED/data/kjv_genesis.stories260K.u32.bin" || fail "Genesis ids differ from the reference"
    # eval on the text file equals eval on the token file: with document boundaries
    # (packed verses attend only within themselves) and without (--cross-doc)
    same() { [ "$(tail -1 "$1" | sed 's/"seconds.*//')" = "$(tail -1 "$2" | sed 's/"seconds.*//')" ]; }
    G=$SHARED/data/kjv_genesis
    "$PEFT" eval --model "$M" --data "$G.txt" --doc-split line --seq 128 --max-windows 40 --json >"$T/a" || fail "eval txt"
    "$PEFT" eval --model "$M" --data "$G.stories260K.u32.bin" --split-at-bos --seq 128 --max-windows 40 --json >"$T/b" || fail "eval bin"
    same "$T/a" "$T/b" || fail "text and token-file evals differ (document boundaries)"
    "$PEFT" eval --model "$M" --data "$G.txt" --doc-split line --cross-doc --seq 128 --max-windows 40 --json >"$T/c" || fail "eval txt"
    "$PEFT" eval --model "$M" --data "$G.stories260K.u32.bin" --seq 128 --max-windows 40 --json >"$T/d" || fail "eval bin"
    same "$T/c" "$T/d" || fail "text and token-file evals differ (no boundaries)"
    same "$T/a" "$T/c" && fail "document boundaries change nothing"
    "$PEFT" tokenize --tokenizer "$M/stories260K-q4_0.gguf" --in "$SHARED/data/tinystories_sample.txt" --out "$T/tsg.bin" 2>/dev/null || fail "tokenize with a GGUF vocabulary"
    cmp "$T/tsg.bin" "$SHARED/data/tinystories_sample.stories260K.u32.bin" || fail "GGUF vocabulary ids differ from the reference"
    ids=$("$PEFT" tokenize --tokenizer "$M" --text "Once upon a time")
    [ "$ids" = "1 403 407 261 378" ] || fail "ids of a short text: $ids"
    [ "$("$PEFT" tokenize --tokenizer "$M" --decode "$ids")" = "Once upon a time" ] || fail "decode"
    ;;
generate_greedy_reference)
    [ -f "$SHARED/models/stories260K/config.json" ] || { echo "SKIP: ../shared not present"; exit 77; }
    "$PEFT" generate --model "$SHARED/models/stories260K" --prompt "" --temperature 0 --max-tokens 60 --json >"$T/g" || fail "generate"
    json "$T/g" "j['text'].startswith('Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high')" || { cat "$T/g"; fail "greedy text differs from the reference"; }
    # a GGUF file alone: its weights and its vocabulary
    "$PEFT" generate --model "$SHARED/models/stories260K/stories260K-f32.gguf" --prompt "" --temperature 0 --max-tokens 60 --json >"$T/gg" || fail "generate from GGUF"
    json "$T/gg" "j['text'].startswith('Once upon a time, there was a little girl named Lily.')" || { cat "$T/gg"; fail "GGUF greedy text"; }
    "$PEFT" generate --model "$SHARED/models/stories260K" --prompt "Once upon a time" --temperature 0.8 --top-k 40 --top-p 0.9 --seed 3 --max-tokens 30 --json >"$T/s1" || fail "sample"
    "$PEFT" generate --model "$SHARED/models/stories260K" --prompt "Once upon a time" --temperature 0.8 --top-k 40 --top-p 0.9 --seed 3 --max-tokens 30 --json >"$T/s2" || fail "sample"
    cmp "$T/s1" "$T/s2" || fail "sampling with a seed is not reproducible"
    ;;
instruction_tuning_exact_match)
    [ -f "$SHARED/models/stories260K/config.json" ] || { echo "SKIP: ../shared not present"; exit 77; }
    M=$SHARED/models/stories260K
    D=$SRC/tests/data/instruct.jsonl
    "$PEFT" eval --model "$M" --data "$D" --pad --seq 48 --exact-match --json >"$T/before" || fail "eval before"
    "$PEFT" train --model "$M" --data "$D" --pad --seq 48 --out "$T/ad" --steps 100 --batch 4 --lr 3e-3 --rank 8 \
        --targets all-linear --seed 0 --quiet || fail "train"
    "$PEFT" eval --model "$M" --adapter "$T/ad" --data "$D" --pad --seq 48 --exact-match --json >"$T/after" || fail "eval after"
    tail -1 "$T/before"; tail -1 "$T/after"
    json "$T/before" "j['exact_match'] <= 0.1 and j['examples'] == 20" || fail "base model already answers"
    json "$T/after" "j['exact_match'] >= 0.9" || fail "tuned model does not answer"
    "$PEFT" generate --model "$M" --adapter "$T/ad" --prompt "Q: What does the cow say? A:" --temperature 0 --max-tokens 12 \
        --compare --json >"$T/c" || fail "generate --compare"
    json "$T/c" "j['text'].startswith(' The cow says moo.') and not j['text_without_adapter'].startswith(' The cow says moo.')" || fail "compare"
    ;;
sweep_budget_report_resume)
    [ -f "$SHARED/models/stories260K/config.json" ] || { echo "SKIP: ../shared not present"; exit 77; }
    M=$SHARED/models/stories260K
    cat >"$T/configs.txt" <<'CFG'
# name      flags as for peft train
qv_hi_lr    --targets q,v --lr-ratio 3     # solved rank, three times the learning rate
explode     --targets q,v --lr 1e9         # rejected by the optimizer: reported, the sweep goes on
CFG
    set -- sweep --model "$M" --train "$SHARED/data/kjv_genesis.txt" --forget "$SHARED/data/tinystories_sample.txt" \
        --budget 12000 --out "$T/sw" --steps 6 --batch 4 --seq 64 --eval-windows 6 --seeds 2 --threads 2 \
        --families attn_qv,attn_qkvo,mlp,late_half,norms,ia3,dora,embed_lora,vera,lokr,prompt,embed_rows --config "$T/configs.txt"
    "$PEFT" "$@" --json >"$T/s1.json" 2>"$T/err1" || { cat "$T/err1"; fail "sweep"; }
    cat "$T/err1"
    python3 "$SRC/tests/sweep_check.py" "$T/s1.json" "$T/sw" 2 explode || fail "sweep outputs"
    json "$T/s1.json" "[c['name'] for c in j['configs'] if c['status'] == 'not_measured'] == []" || fail "every family measured"
    json "$T/s1.json" "[c['rank'] for c in j['configs'] if c['name'] == 'embed_rows'] == [188]" || fail "rows for the budget"
    json "$T/s1.json" "[c['rank'] for c in j['configs'] if c['name'] == 'prompt'] == [188]" || fail "prompt length for the budget"
    json "$T/s1.json" "j['forget_loss_base'] > 0 and all(c['forgetting'] is not None for c in j['configs'] if c['status'] == 'ok')" || fail "forgetting"
    grep -q '"rank_pattern"' "$T/sw/runs/attn_qv/seed0/adapter/adapter_config.json" || fail "solved ranks not in the adapter config"
    # resume: finished runs are kept, a lost one is redone, the numbers are the same
    rm "$T/sw/runs/mlp/seed1/result.txt"
    "$PEFT" "$@" --json >"$T/s2.json" 2>"$T/err2" || { cat "$T/err2"; fail "resumed sweep"; }
    [ "$(grep -c 'done before' "$T/err2")" -eq 27 ] || { cat "$T/err2"; fail "resume did not keep the finished runs"; }
    python3 -c "
import json
a = json.loads(open('$T/s1.json').read().splitlines()[-1]); b = json.loads(open('$T/s2.json').read().splitlines()[-1])
key = lambda j: {c['name']: (c['status'], c['eval_loss_after'], c['trainable_params']) for c in j['configs']}
assert key(a) == key(b), (key(a), key(b))" || fail "resumed sweep differs"
    # an interrupted sweep (SIGINT) continues where it stopped
    rm -rf "$T/sw/runs/dora" "$T/sw/runs/ia3"
    "$PEFT" "$@" >/dev/null 2>"$T/err3" &
    pid=$!
    while ! grep -q "dora" "$T/err3" && kill -0 $pid 2>/dev/null; do sleep 0.05; done
    kill -INT $pid; wait $pid
    sleep 0.2
    "$PEFT" "$@" --json >"$T/s3.json" 2>"$T/err3b" || { cat "$T/err3b"; fail "sweep after SIGINT"; }
    python3 "$SRC/tests/sweep_check.py" "$T/s3.json" "$T/sw" 2 explode || fail "sweep outputs after SIGINT"
    # other settings in the same directory are refused
    "$PEFT" "$@" --lr 2e-3 >/dev/null 2>"$T/err4" && fail "changed settings accepted"
    grep -q "other settings" "$T/err4" || fail "message"
    # several budgets: every family at each, one line per family in the chart
    "$PEFT" sweep --model "$M" --train "$SHARED/data/kjv_genesis.txt" --budget 4000,12000 --out "$T/sw2" --steps 4 \
        --batch 4 --seq 64 --eval-windows 4 --threads 2 --families attn_qv,mlp_down,embed_lora --json >"$T/b.json" 2>"$T/errb" \
        || { cat "$T/errb"; fail "sweep over budgets"; }
    python3 "$SRC/tests/sweep_check.py" "$T/b.json" "$T/sw2" 1 || fail "sweep over budgets: outputs"
    json "$T/b.json" "j['budgets'] == [4000, 12000] and sorted(c['name'] for c in j['configs']) == sorted(f + '@' + str(b) for f in ('attn_qv', 'mlp_down', 'embed_lora') for b in (4000, 12000))" || fail "budget grid"
    [ "$(grep -c '<polyline' "$T/sw2/chart.svg")" -eq 3 ] || fail "one line per family"
    "$PEFT" sweep --model "$M" --train x --budget 5,5 --out "$T/sw3" 2>/dev/null && fail "a budget twice accepted"
    ;;
chat_template_instruction_tuning)
    # the instruction task as conversations: {"messages": [...]} rendered with a chat template
    [ -f "$SHARED/models/stories260K/config.json" ] || { echo "SKIP: ../shared not present"; exit 77; }
    M=$SHARED/models/stories260K
    Z=$SRC/tests/data/chat/zephyr.jinja
    python3 - "$SRC/tests/data/instruct.jsonl" "$T/chat.jsonl" <<'PY' || fail "convert"
import json, sys
with open(sys.argv[2], "w") as out:
    for line in open(sys.argv[1]):
        j = json.loads(line)
        q = j["prompt"][len("Q: "):-len(" A:")]
        out.write(json.dumps({"id": 1, "messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": j["completion"].strip()}]}) + "\n")
PY
    "$PEFT" eval --model "$M" --data "$T/chat.jsonl" --chat-template "$Z" --pad --seq 64 --exact-match --json >"$T/before" || fail "eval before"
    # the loss is on the assistant turns only: tokens(conversation) - tokens(up to the assistant's header)
    python3 - "$PEFT" "$M" "$T/chat.jsonl" "$T/before" <<'PY' || fail "assistant-only loss mask"
import json, subprocess, sys
peft, model, data, before = sys.argv[1:]
def n(text):
    out = subprocess.run([peft, "tokenize", "--tokenizer", model, "--text", text, "--no-bos"], capture_output=True,
                         text=True, check=True).stdout.split()
    return len(out)
want = 0
for line in open(data):
    m = json.loads(line)["messages"]
    pre = "<|user|>\n" + m[0]["content"] + "</s>\n<|assistant|>\n"
    want += n(pre + m[1]["content"] + "</s>\n") - n(pre)
got = json.loads(open(before).read().splitlines()[-1])["tokens"]
assert got == want, (got, want)
PY
    "$PEFT" train --model "$M" --data "$T/chat.jsonl" --chat-template "$Z" --pad --seq 64 --out "$T/ad" --steps 100 --batch 4 \
        --lr 3e-3 --rank 8 --targets all-linear --seed 0 --quiet || fail "train"
    "$PEFT" eval --model "$M" --adapter "$T/ad" --data "$T/chat.jsonl" --chat-template "$Z" --pad --seq 64 --exact-match --json >"$T/after" || fail "eval after"
    tail -1 "$T/before"; tail -1 "$T/after"
    json "$T/before" "j['exact_match'] <= 0.1 and j['examples'] == 20" || fail "base model already answers"
    json "$T/after" "j['exact_match'] >= 0.9" || fail "tuned model does not answer"
    "$PEFT" generate --model "$M" --adapter "$T/ad" --prompt "What does the cow say?" --chat --chat-template "$Z" \
        --temperature 0 --max-tokens 12 --compare --json >"$T/c" || fail "generate --chat"
    json "$T/c" "j['text'].startswith('The cow says moo.') and not j['text_without_adapter'].startswith('The cow says moo.')" || fail "chat generation"
    # a conversation without an assistant turn, or a model without a template, is refused
    echo '{"messages": [{"role": "user", "content": "hi"}]}' >"$T/bad.jsonl"
    "$PEFT" eval --model "$M" --data "$T/bad.jsonl" --chat-template "$Z" --seq 16 2>/dev/null && fail "no assistant turn accepted"
    "$PEFT" eval --model "$M" --data "$T/chat.jsonl" --seq 64 2>"$T/err" && fail "no template accepted"
    grep -q "no chat template" "$T/err" || { cat "$T/err"; fail "message"; }
    ;;
sweep_readme_example)
    # the README's sweep, and the conclusions the README draws from it
    [ -f "$SHARED/models/stories260K/config.json" ] || { echo "SKIP: ../shared not present"; exit 77; }
    M=$SHARED/models/stories260K
    "$PEFT" sweep --model "$M" --train "$SHARED/data/kjv_genesis.txt" --forget "$SHARED/data/tinystories_sample.txt" \
        --budget 20000 --out "$T/sw" --steps 100 --batch 8 --seq 64 --lr 2e-3 --schedule cosine --warmup 10 --seeds 2 \
        --eval-windows 64 --threads 2 --json >"$T/s.json" 2>"$T/err" || { cat "$T/err"; fail "sweep"; }
    cat "$T/err"
    python3 "$SRC/tests/sweep_check.py" "$T/s.json" "$T/sw" 2 || fail "sweep outputs"
    python3 -c "
import json
j = json.loads(open('$T/s.json').read().splitlines()[-1])
c = {x['name']: x for x in j['configs']}
better = lambda a, b: c[a]['eval_loss_after_max'] < c[b]['eval_loss_after_min']
assert better('all_linear', 'attn_qv') and better('mlp', 'attn_qkvo'), 'all-linear and MLP beat attention'
assert better('attn_qkvo', 'attn_qv'), 'q,k,v,o at a lower rank beats q,v'
assert better('late_half', 'early_half'), 'late layers beat early ones'
assert better('loraplus', 'all_linear'), 'LoRA+ learns fastest'
assert c['loraplus']['forgetting'] > 2 * c['all_linear']['forgetting'], 'LoRA+ forgets most'
assert c['norms']['forgetting'] < 0.2 * c['all_linear']['forgetting'], 'norm tuning forgets least'
assert better('vera', 'all_linear'), 'VeRA is the best use of a small budget'
assert better('embed_lora_1x', 'embed_lora') and better('all_linear', 'loha'), 'embeddings at 0.1x learn little; LoHa trails'
assert better('attn_qv', 'prompt') and c['prompt']['forgetting'] > c['all_linear']['forgetting'], 'a soft prompt trails LoRA and forgets more'
assert better('embed_lora', 'embed_rows') and c['embed_rows']['forgetting'] < 0.1 * c['all_linear']['forgetting'], 'rows at 0.1x learn least, forget least'
" || fail "a README conclusion does not hold"
    ;;
mpi_two_ranks_equal_one_process)
    # mpirun -np 2 with --accum 2 takes the micro-batches one process takes with --accum 4
    command -v mpirun >/dev/null || { echo "skip: no mpirun (apt-get install openmpi-bin)"; exit 77; }
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
    # one machine: without ssh, Open MPI's default launcher refuses to start
    command -v ssh >/dev/null || command -v rsh >/dev/null || export OMPI_MCA_plm=isolated
    setup_tiny
    common="--model $T/model --data $T/data.bin --steps 6 --batch 4 --seq 32 --rank 4 --targets all-linear \
        --dropout 0.1 --lr 1e-2 --seed 9 --threads 1 --holdout 0.1 --json"
    # shellcheck disable=SC2086
    "$PEFT" train $common --out "$T/one" --accum 4 >"$T/one.json" 2>"$T/one.err" || { cat "$T/one.err"; fail "one process"; }
    # shellcheck disable=SC2086
    timeout 300 mpirun -np 2 "$PEFT" train $common --out "$T/two" --accum 2 >"$T/two.json" 2>"$T/two.err"
    rc=$?
    if grep -q "built without MPI" "$T/two.err"; then echo "skip: peft built without MPI"; exit 77; fi
    [ $rc -eq 0 ] || { cat "$T/two.err"; fail "mpirun -np 2"; }
    cat "$T/two.json"
    [ "$(grep -c '^{' "$T/two.json")" -eq 1 ] || fail "only rank 0 prints the JSON line"
    json "$T/two.json" "j['ranks'] == 2 and j['tokens'] == 6*4*4*32 and 0 <= j['comm_seconds'] < j['seconds']" || fail "json fields"
    python3 -c "import json; a=json.loads(open('$T/one.json').read().splitlines()[-1]); b=json.loads(open('$T/two.json').read().splitlines()[-1]); assert abs(a['loss']-b['loss']) < 1e-5 and abs(a['eval_loss_after']-b['eval_loss_after']) < 1e-5 and a['eval_loss_before'] == b['eval_loss_before'], (a, b)" || fail "losses differ"
    python3 "$SRC/tests/st_close.py" "$T/one/adapter_model.safetensors" "$T/two/adapter_model.safetensors" 1e-5 || fail "adapters differ"
    # the all-reduce after the backward pass instead of overlapped with it: the same sums
    # shellcheck disable=SC2086
    timeout 300 mpirun -np 2 "$PEFT" train $common --out "$T/two-after" --accum 2 --no-overlap >"$T/after.json" 2>"$T/after.err" ||
        { cat "$T/after.err"; fail "mpirun --no-overlap"; }
    cmp "$T/two/adapter_model.safetensors" "$T/two-after/adapter_model.safetensors" || fail "overlapped and plain all-reduce differ"
    # a failure on one rank (its data file is missing) stops every rank, and nothing is written
    timeout 120 mpirun -np 1 "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/bad" --steps 50 --seq 32 --threads 1 : \
        -np 1 "$PEFT" train --model "$T/model" --data "$T/missing.bin" --out "$T/bad" --steps 50 --seq 32 --threads 1 >"$T/bad.out" 2>&1
    rc=$?
    cat "$T/bad.out"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "a failed rank did not stop the job (exit $rc)"
    grep -q "rank 1 of 2 failed" "$T/bad.out" || fail "message naming the failed rank"
    [ ! -e "$T/bad/adapter_model.safetensors" ] || fail "an adapter was written"
    ;;
lora_extras_train_info)
    setup_tiny
    # LoRA on q, v and lm_head, the embeddings trained in full at 0.1x, the final norm too
    "$PEFT" info --model "$T/model" --rank 4 --targets q,v,lm_head --modules-to-save embed_tokens --train-norms final \
        --json >"$T/info" || fail "info"
    cat "$T/info"
    grep -q "embed (full) *3072" "$T/info" || fail "info: the embeddings' row (64 x 48)"
    grep -q "norms *48" "$T/info" || fail "info: the final norm's row"
    # q 2 x 4(48+48), v 2 x 4(48+24), lm_head 4(48+64), embeddings 64 x 48, final norm 48
    json "$T/info" "j['trainable'] == 2*4*96 + 2*4*72 + 4*112 + 3072 + 48" || fail "info: total"
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/ad" --holdout 0.1 --steps 40 --batch 8 --seq 32 \
        --rank 4 --lr 1e-2 --targets q,v,lm_head --modules-to-save embed_tokens --train-norms final \
        --embed-lr-ratio 0.1 --norm-lr-ratio 0.5 --json >"$T/out.json" 2>"$T/err" || { cat "$T/err"; fail "train"; }
    json "$T/out.json" "j['trainable_params'] == 2*4*96 + 2*4*72 + 4*112 + 3072 + 48 and j['eval_loss_after'] < j['eval_loss_before']" \
        || fail "train json"
    grep -q '"modules_to_save": \[' "$T/ad/adapter_config.json" && grep -q '"model.norm"' "$T/ad/adapter_config.json" \
        && grep -q '"lm_head"' "$T/ad/adapter_config.json" || fail "adapter_config.json"
    "$PEFT" eval --model "$T/model" --adapter "$T/ad" --data "$T/data.bin" --seq 32 --json >"$T/ev.json" || fail "eval"
    # a regular expression picks modules (layer 1's q only: 4 x (48 + 48))
    "$PEFT" info --model "$T/model" --rank 4 --target-regex 'model\.layers\.1\.self_attn\.q_proj' --json >"$T/re" \
        || fail "info --target-regex"
    json "$T/re" "j['trainable'] == 4*96" || fail "info --target-regex count"
    # PEFT's exclude_modules: layer 1's q left out of q,v (a list of names), layer 0 (an expression)
    "$PEFT" info --model "$T/model" --rank 4 --targets q,v --exclude-modules model.layers.1.self_attn.q_proj --json \
        >"$T/ex" || fail "info --exclude-modules"
    json "$T/ex" "j['trainable'] == 4*96 + 2*4*72" || fail "--exclude-modules count"
    "$PEFT" info --model "$T/model" --rank 4 --targets q,v --exclude-regex 'model\.layers\.0\..*' --json >"$T/ex" \
        || fail "info --exclude-regex"
    json "$T/ex" "j['trainable'] == 4*96 + 4*72" || fail "--exclude-regex count"
    "$PEFT" info --model "$T/model" --rank 4 --targets q,v --exclude-regex 'x' --exclude-modules q_proj 2>/dev/null \
        && fail "--exclude-modules with --exclude-regex accepted"
    # --method embeddings: LoRA on embed_tokens, A (4, 64) and B (48, 4)
    "$PEFT" info --model "$T/model" --rank 4 --method embeddings --json >"$T/em" || fail "info --method embeddings"
    json "$T/em" "j['trainable'] == 4*(64+48)" || fail "--method embeddings count"
    # token rows: trained, saved, and refused by the GGUF export with a reason
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/tok" --steps 5 --batch 4 --seq 32 --rank 4 \
        --targets q --token-indices 1,2,3 --quiet || fail "train token rows"
    grep -q '"trainable_token_indices"' "$T/tok/adapter_config.json" || fail "trainable_token_indices"
    "$PEFT" convert --model "$T/model" --adapter "$T/tok" --out "$T/tok.gguf" 2>"$T/err" && fail "GGUF export of token rows"
    grep -q "token rows" "$T/err" || fail "GGUF refusal message"
    # IA3 and VeRA train modules_to_save and norms alongside too: counted apart, saved
    "$PEFT" info --model "$T/model" --method ia3 --modules-to-save embed_tokens --train-norms final >"$T/ia3info" \
        || fail "info ia3 extras"
    grep -q "embed (full) *3072" "$T/ia3info" && grep -q "norms  *48" "$T/ia3info" && grep -q "total  *3408" "$T/ia3info" \
        || { cat "$T/ia3info"; fail "info: ia3 extras"; }
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/ia3x" --steps 3 --batch 4 --seq 32 --method vera \
        --rank 4 --modules-to-save embed_tokens --train-norms final --quiet || fail "train vera extras"
    grep -q '"model.norm"' "$T/ia3x/adapter_config.json" && grep -q '"VERA"' "$T/ia3x/adapter_config.json" \
        || fail "vera modules_to_save"
    # rows of lm_head: refused on this tied model (its rows are the embedding rows); on an
    # untied one saved in PEFT's dict form {"embed_tokens": [...], "lm_head": [...]}
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/bad" --steps 1 --targets q --head-token-indices 4 \
        2>"$T/err" && fail "lm_head rows on a tied model"
    grep -q "tied" "$T/err" || fail "tied lm_head rows message"
    "$PEFT" init-model --out "$T/untied" --hidden 48 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --vocab 64 --seed 3 \
        --untied >/dev/null || fail "init-model --untied"
    "$PEFT" info --model "$T/untied" --rank 4 --targets q --token-indices 1,2,3 --head-token-indices 4,5 >"$T/info2" \
        || fail "info head rows"
    grep -q "head rows  *96" "$T/info2" && grep -q "token rows  *144" "$T/info2" || { cat "$T/info2"; fail "info: head rows"; }
    "$PEFT" train --model "$T/untied" --data "$T/data.bin" --out "$T/hr" --steps 5 --batch 4 --seq 32 --rank 4 \
        --targets q --token-indices 1,2,3 --head-token-indices 4,5 --quiet || fail "train head rows"
    python3 -c "
import json, sys
c = json.load(open(sys.argv[1]))
assert c['trainable_token_indices'] == {'embed_tokens': [1, 2, 3], 'lm_head': [4, 5]}, c" "$T/hr/adapter_config.json" \
        || fail "dict-form trainable_token_indices"
    "$PEFT" eval --model "$T/untied" --adapter "$T/hr" --data "$T/data.bin" --seq 32 --max-windows 10 >/dev/null \
        || fail "eval head rows"
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/bad" --steps 1 --targets q --modules-to-save wte \
        2>"$T/err" && fail "unknown modules_to_save"
    grep -q "unknown name 'wte'" "$T/err" || fail "modules_to_save message"
    ;;
pissa_convert_to_lora)
    setup_tiny
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/ad" --steps 20 --batch 8 --seq 32 --rank 4 \
        --lr 5e-3 --targets all-linear --init pissa --convert-to-lora "$T/plain" --quiet || fail "train"
    grep -q '"init_lora_weights": "pissa"' "$T/ad/adapter_config.json" || fail "pissa config"
    grep -q '"r": 8' "$T/plain/adapter_config.json" && grep -q '"init_lora_weights": true' "$T/plain/adapter_config.json" \
        || fail "converted config"
    # the PiSSA adapter (residual base recomputed) and the plain LoRA on the original base agree
    "$PEFT" eval --model "$T/model" --adapter "$T/ad" --data "$T/data.bin" --seq 32 --json >"$T/a.json" || fail "eval pissa"
    "$PEFT" eval --model "$T/model" --adapter "$T/plain" --data "$T/data.bin" --seq 32 --json >"$T/b.json" || fail "eval plain"
    python3 -c "import json; a=json.loads(open('$T/a.json').read().splitlines()[-1]); b=json.loads(open('$T/b.json').read().splitlines()[-1]); assert abs(a['loss'] - b['loss']) < 1e-4 * a['loss'], (a, b)" || fail "converted adapter differs"
    "$PEFT" convert --model "$T/model" --adapter "$T/plain" --out "$T/plain.gguf" >/dev/null || fail "GGUF of the converted adapter"
    ;;
prompt_tuning_genesis)
    # a soft prompt of 16 tokens started from a text's embeddings, trained on Genesis: the
    # held-out loss drops, PEFT's PROMPT_TUNING files, and every command that loads it
    [ -f "$SHARED/models/stories260K/config.json" ] || { echo "SKIP: ../shared not present"; exit 77; }
    M="$SHARED/models/stories260K"
    "$PEFT" info --model "$M" --method prompt --budget 1000 >"$T/info" || fail "info"
    grep -q "15 virtual tokens" "$T/info" && grep -q "prompt  *960" "$T/info" || { cat "$T/info"; fail "info count"; }
    "$PEFT" train --model "$M" --data "$SHARED/data/kjv_genesis.txt" --out "$T/pt" --method prompt \
        --num-virtual-tokens 16 --prompt-init text --prompt-init-text "In the beginning God created" --lr 3e-2 \
        --steps 40 --batch 4 --seq 128 --holdout 0.1 --seed 1 --json >"$T/t.json" 2>"$T/err" || { cat "$T/err"; fail "train"; }
    json "$T/t.json" "j['trainable_params'] == 1024 and j['eval_loss_after'] < j['eval_loss_before'] - 0.3" || { cat "$T/t.json"; fail "loss"; }
    for f in '"peft_type": "PROMPT_TUNING"' '"num_virtual_tokens": 16' '"token_dim": 64' '"prompt_tuning_init": "TEXT"' \
             '"prompt_tuning_init_text": "In the beginning God created"' '"num_layers": 5'; do
        grep -qF "$f" "$T/pt/adapter_config.json" || fail "adapter_config.json lacks $f"
    done
    "$PEFT" eval --model "$M" --data "$SHARED/data/kjv_genesis.txt" --seq 128 --json >"$T/e0" || fail "eval base"
    "$PEFT" eval --model "$M" --adapter "$T/pt" --data "$SHARED/data/kjv_genesis.txt" --seq 128 --json >"$T/e1" || fail "eval prompt"
    python3 -c "import json; a, b = (json.loads(open('$T/' + n).read().splitlines()[-1]) for n in ('e0', 'e1')); assert b['loss'] < a['loss'] - 0.3 and b['tokens'] > a['tokens'], (a, b)" || fail "eval with the prompt"
    "$PEFT" generate --model "$M" --adapter "$T/pt" --prompt "And God said" --max-tokens 16 --temperature 0 --compare >"$T/gen" || fail "generate"
    "$PEFT" info --model "$M" --adapter "$T/pt" | grep -q "1024 trainable" || fail "info --adapter"
    "$PEFT" merge --model "$M" --adapter "$T/pt" --out "$T/merged" 2>"$T/err" && fail "a soft prompt was merged"
    grep -q "soft prompt" "$T/err" || { cat "$T/err"; fail "merge message"; }
    [ ! -e "$T/merged/model.safetensors" ] || fail "merge left a file"
    "$PEFT" convert --model "$M" --adapter "$T/pt" --out "$T/pt.gguf" 2>"$T/err" && fail "a soft prompt became GGUF"
    grep -q "prompt tuning" "$T/err" || { cat "$T/err"; fail "convert message"; }
    ;;
trainable_tokens_train)
    # --method tokens: only the rows of --token-indices move; PEFT's TRAINABLE_TOKENS files
    setup_tiny
    "$PEFT" info --model "$T/model" --method tokens --token-indices 1,2,3 | grep -q "token rows  *144" || fail "info"
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/tk" --method tokens --token-indices 5,6,7,8 \
        --steps 20 --batch 4 --seq 32 --lr 5e-2 --json >"$T/t.json" 2>"$T/err" || { cat "$T/err"; fail "train"; }
    json "$T/t.json" "j['trainable_params'] == 4 * 48" || fail "count"
    grep -q '"peft_type": "TRAINABLE_TOKENS"' "$T/tk/adapter_config.json" || fail "config"
    "$PEFT" eval --model "$T/model" --data "$T/data.bin" --seq 32 --json >"$T/e0" || fail "eval base"
    "$PEFT" eval --model "$T/model" --adapter "$T/tk" --data "$T/data.bin" --seq 32 --json >"$T/e1" || fail "eval rows"
    python3 -c "import json; a, b = (json.loads(open('$T/' + n).read().splitlines()[-1])['loss'] for n in ('e0', 'e1')); assert b < a, (a, b)" || fail "rows learned nothing"
    "$PEFT" merge --model "$T/model" --adapter "$T/tk" --out "$T/merged" >/dev/null || fail "merge"
    "$PEFT" eval --model "$T/merged" --data "$T/data.bin" --seq 32 --json >"$T/e2" || fail "eval merged"
    python3 -c "import json; a, b = (json.loads(open('$T/' + n).read().splitlines()[-1])['loss'] for n in ('e1', 'e2')); assert abs(a - b) < 1e-5 * a, (a, b)" || fail "merged differs"
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/bad" --method tokens --token-indices 5,5 --steps 1 \
        --batch 1 --seq 32 2>"$T/err" && fail "a token listed twice"
    grep -q "listed twice" "$T/err" || fail "message"
    ;;
combine_adapters)
    # PEFT's add_weighted_adapter from the command line: cat with weights 1, 0 is the first
    # adapter, a full-rank svd is the cat, the result is a PEFT LoRA directory
    setup_tiny
    for s in 1 2; do
        "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/a$s" --steps 15 --batch 4 --seq 32 --rank 2 \
            --targets q,v --lr 1e-2 --seed $s --quiet || fail "train $s"
    done
    ev() { "$PEFT" eval --model "$T/model" --adapter "$1" --data "$T/data.bin" --seq 32 --max-windows 40 --json | tail -1; }
    "$PEFT" combine --model "$T/model" --adapters "$T/a1,$T/a2" --weights 1,0 --out "$T/c10" >/dev/null || fail "combine cat"
    "$PEFT" combine --model "$T/model" --adapters "$T/a1,$T/a2" --weights 0.6,0.4 --out "$T/cat" >/dev/null || fail "combine cat 2"
    "$PEFT" combine --model "$T/model" --adapters "$T/a1,$T/a2" --weights 0.6,0.4 --combination svd --svd-rank 4 \
        --out "$T/svd" >/dev/null || fail "combine svd"
    "$PEFT" combine --model "$T/model" --adapters "$T/a1,$T/a2" --weights 0.6,0.4 --combination linear --out "$T/lin" \
        >/dev/null || fail "combine linear"
    # at density 1 (nothing pruned) dare_linear is linear and magnitude_prune_svd is svd; ties runs
    "$PEFT" combine --model "$T/model" --adapters "$T/a1,$T/a2" --weights 0.6,0.4 --combination dare_linear --density 1 \
        --out "$T/dl" >/dev/null || fail "combine dare_linear"
    "$PEFT" combine --model "$T/model" --adapters "$T/a1,$T/a2" --weights 0.6,0.4 --combination magnitude_prune_svd \
        --density 1 --svd-rank 4 --out "$T/mps" >/dev/null || fail "combine magnitude_prune_svd"
    "$PEFT" combine --model "$T/model" --adapters "$T/a1,$T/a2" --weights 0.6,0.4 --combination ties --density 0.5 \
        --majority-sign frequency --out "$T/ties" >/dev/null || fail "combine ties"
    "$PEFT" combine --model "$T/model" --adapters "$T/a1,$T/a2" --combination ties --majority-sign most \
        --out "$T/bad" 2>/dev/null && fail "--majority-sign most accepted"
    grep -q '"r": 4' "$T/cat/adapter_config.json" && grep -q '"lora_alpha": 4' "$T/cat/adapter_config.json" || fail "cat config"
    grep -q '"r": 2' "$T/lin/adapter_config.json" || fail "linear config"
    python3 -c "
import json, sys
e = {k: json.loads(v)['loss'] for k, v in zip(sys.argv[1::2], sys.argv[2::2])}
assert abs(e['c10'] - e['a1']) < 1e-5 * e['a1'], e
assert abs(e['svd'] - e['cat']) < 1e-4 * e['cat'], e
assert abs(e['cat'] - e['a1']) > 1e-4 and abs(e['lin'] - e['cat']) > 1e-5, e
assert e['dl'] == e['lin'] and abs(e['mps'] - e['svd']) < 1e-5 * e['svd'], e
assert abs(e['ties'] - e['lin']) > 1e-6, e" \
        c10 "$(ev "$T/c10")" a1 "$(ev "$T/a1")" cat "$(ev "$T/cat")" svd "$(ev "$T/svd")" lin "$(ev "$T/lin")" \
        dl "$(ev "$T/dl")" mps "$(ev "$T/mps")" ties "$(ev "$T/ties")" || fail "combined losses"
    "$PEFT" train --model "$T/model" --data "$T/data.bin" --out "$T/r3" --steps 2 --batch 4 --seq 32 --rank 3 --quiet || fail "train r3"
    "$PEFT" combine --model "$T/model" --adapters "$T/a1,$T/r3" --combination linear --out "$T/bad" 2>"$T/err" && fail "linear over two ranks"
    grep -q "one rank" "$T/err" || { cat "$T/err"; fail "message"; }
    [ ! -e "$T/bad" ] || fail "a failed combination left a directory"
    ;;
gguf_quantized_matches_dequantized)
    # a GGUF model whose linear weights are Q4_K, Q6_K, Q8_0 and Q4_0 (one type per layer) and
    # whose embeddings and lm_head are Q4_K, written by tests/gguf_write.py, kept quantized in
    # memory: its loss, and training on it with each method family (the embeddings and lm_head
    # adapted, trained in full or by rows too), equal the same model with the stored values as
    # float32
    /usr/bin/python3 -c "import numpy" 2>/dev/null || { echo "skip: no numpy for /usr/bin/python3 (apt-get install python3-numpy)"; exit 77; }
    "$PEFT" init-model --out "$T/hf" --hidden 256 --layers 4 --heads 4 --kv-heads 2 --ffn 512 --vocab 64 --untied --seed 3 >/dev/null || fail "init-model"
    "$PEFT" synth --out "$T/data.bin" --vocab 64 --tokens 8192 --doc-len 32 --seed 5 >/dev/null || fail "synth"
    /usr/bin/python3 "$SRC/tests/gguf_write.py" "$T/hf" "$T/m.gguf" --type q4_k,q6_k,q8_0,q4_0 --embed-type q4_k \
        --dequantized "$T/deq" || fail "gguf_write"
    "$PEFT" info --model "$T/m.gguf" --json >"$T/info" || fail "info"
    json "$T/info" "j['weights_dtype'] == 'mixed'" || { cat "$T/info"; fail "weights dtype"; }
    "$PEFT" eval --model "$T/m.gguf" --data "$T/data.bin" --seq 32 --json >"$T/eq" || fail "eval gguf"
    "$PEFT" eval --model "$T/deq" --data "$T/data.bin" --seq 32 --json >"$T/ef" || fail "eval float"
    "$PEFT" eval --model "$T/hf" --data "$T/data.bin" --seq 32 --json >"$T/eo" || fail "eval original"
    python3 -c "import json; q, f, o = (json.loads(open('$T/' + n).read().splitlines()[-1])['loss'] for n in ('eq', 'ef', 'eo')); assert abs(q - f) <= 1e-5 * f and abs(q - o) < 0.02 * o, (q, f, o)" || fail "losses"
    for meth in "lora --targets all-linear" "dora --targets q,v,down" "loha --targets q,o,up" "ia3" \
        "lora --targets q,v,embed,lm_head" "lora --targets q --token-indices 3,9 --head-token-indices 4" \
        "lora --targets q --modules-to-save embed_tokens,lm_head" "tokens --token-indices 1,2,60"; do
        name=$(echo "$meth" | tr -d ' ,-')
        for mdl in m.gguf deq; do
            # shellcheck disable=SC2086
            "$PEFT" train --model "$T/$mdl" --data "$T/data.bin" --out "$T/ad-$name-$mdl" --steps 4 --batch 4 --seq 32 \
                --method $meth --lr 1e-2 --seed 3 --threads 2 --quiet || fail "train $name on $mdl"
        done
        python3 "$SRC/tests/st_close.py" "$T/ad-$name-m.gguf/adapter_model.safetensors" "$T/ad-$name-deq/adapter_model.safetensors" 1e-4 ||
            fail "$name trained on the quantized model differs"
    done
    # the adapter trained on the quantized base, loaded onto each
    "$PEFT" eval --model "$T/m.gguf" --adapter "$T/ad-loratargetsalllinear-m.gguf" --data "$T/data.bin" --seq 32 --json >"$T/ea" || fail "eval adapter"
    "$PEFT" eval --model "$T/deq" --adapter "$T/ad-loratargetsalllinear-m.gguf" --data "$T/data.bin" --seq 32 --json >"$T/eb" || fail "eval adapter float"
    python3 -c "import json; a, b = (json.loads(open('$T/' + n).read().splitlines()[-1])['loss'] for n in ('ea', 'eb')); assert abs(a - b) <= 1e-5 * b, (a, b)" || fail "adapter on the quantized base"
    # merged as GGUF: in the base's own types (the Q4_K and Q6_K layers requantized as Q4_K and
    # Q6_K), and every matrix as Q4_K, Q6_K or Q4_0; the losses of base + adapter within each type's
    # error (this adapter changes the embeddings and lm_head a lot: 4.65 -> 2.78), Q4_K's below Q4_0's
    A=$T/ad-loratargetsqvembedlm_head-m.gguf
    "$PEFT" eval --model "$T/m.gguf" --adapter "$A" --data "$T/data.bin" --seq 32 --json >"$T/er" || fail "eval base + adapter"
    for ty in same:3e-2 q6_k:3e-3 q4_k:3e-2 q4_0:5e-2; do
        "$PEFT" merge --model "$T/m.gguf" --adapter "$A" --out "$T/mg.gguf" --type "${ty%%:*}" >/dev/null || fail "merge as $ty"
        want=same; [ "${ty%%:*}" = q4_k ] && want=12; [ "${ty%%:*}" = q6_k ] && want=14; [ "${ty%%:*}" = q4_0 ] && want=2
        re='attn_q|attn_v|token_embd|output.weight'; [ $want = same ] || re='weight' # every matrix converted
        python3 "$SRC/tests/gguf_check.py" merged "$T/m.gguf" "$T/mg.gguf" "$re" "$want" >/dev/null ||
            fail "merged as $ty: structure"
        "$PEFT" eval --model "$T/mg.gguf" --data "$T/data.bin" --seq 32 --json >"$T/em-${ty%%:*}" || fail "eval merged $ty"
        python3 -c "import json; a, b = (json.loads(open('$T/' + n).read().splitlines()[-1])['loss'] for n in ('em-${ty%%:*}', 'er')); assert abs(a - b) <= ${ty#*:} * b, (a, b)" ||
            fail "merged as $ty: loss differs from base + adapter"
    done
    python3 -c "import json; k, o, r = (json.loads(open('$T/' + n).read().splitlines()[-1])['loss'] for n in ('em-q4_k', 'em-q4_0', 'er')); assert abs(k - r) < abs(o - r), (k, o, r)" ||
        fail "Q4_K requantization is no better than Q4_0's"
    ;;
rope_scaling_llama3_and_linear)
    # Llama 3's "llama3" RoPE scaling and "linear" scaling read from config.json (transformers'
    # formula) give the losses of the same model as GGUF, where llama.cpp's converter stores
    # them as rope_freqs.weight divisors and llama.rope.scaling.*; and they change the loss
    /usr/bin/python3 -c "import numpy" 2>/dev/null || { echo "skip: no numpy for /usr/bin/python3 (apt-get install python3-numpy)"; exit 77; }
    "$PEFT" init-model --out "$T/plain" --hidden 128 --layers 2 --heads 2 --kv-heads 1 --ffn 256 --vocab 64 --seed 3 >/dev/null || fail "init-model"
    "$PEFT" synth --out "$T/data.bin" --vocab 64 --tokens 8192 --doc-len 64 --seed 5 >/dev/null || fail "synth"
    "$PEFT" eval --model "$T/plain" --data "$T/data.bin" --seq 64 --json >"$T/e_plain" || fail "eval plain"
    for kind in llama3 linear; do
        mkdir -p "$T/$kind" && cp "$T/plain/model.safetensors" "$T/$kind/" || fail "copy"
        python3 -c "
import json
c = json.load(open('$T/plain/config.json'))
c['rope_scaling'] = {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                     'original_max_position_embeddings': 32} if '$kind' == 'llama3' else {'type': 'linear', 'factor': 4.0}
json.dump(c, open('$T/$kind/config.json', 'w'), indent=2)" || fail "config"
        /usr/bin/python3 "$SRC/tests/gguf_write.py" "$T/$kind" "$T/$kind.gguf" --type f32 || fail "gguf_write $kind"
        "$PEFT" eval --model "$T/$kind" --data "$T/data.bin" --seq 64 --json >"$T/e_hf" || fail "eval $kind"
        "$PEFT" eval --model "$T/$kind.gguf" --data "$T/data.bin" --seq 64 --json >"$T/e_gg" || fail "eval $kind gguf"
        python3 -c "import json; a, b, p = (json.loads(open('$T/' + n).read().splitlines()[-1])['loss'] for n in ('e_hf', 'e_gg', 'e_plain')); assert abs(a - b) <= 1e-6 * a and abs(a - p) > 1e-4 * p, (a, b, p)" ||
            fail "$kind: config.json and GGUF disagree, or the scaling has no effect"
        "$PEFT" train --model "$T/$kind.gguf" --data "$T/data.bin" --out "$T/ad-$kind" --steps 3 --batch 2 --seq 64 --quiet || fail "train $kind"
    done
    python3 -c "
import json
c = json.load(open('$T/plain/config.json')); c['rope_scaling'] = {'rope_type': 'yarn', 'factor': 4.0}
json.dump(c, open('$T/linear/config.json', 'w'))" || fail "config"
    "$PEFT" eval --model "$T/linear" --data "$T/data.bin" --seq 64 2>"$T/err" && fail "yarn accepted"
    grep -q 'rope_scaling type "yarn" is not supported' "$T/err" || { cat "$T/err"; fail "message for yarn"; }
    ;;
gemma_init_and_train)
    # init-model --arch gemma3 / gemma2 (a sliding window shorter than the windows trained on;
    # every sixth / other layer global; gemma2's soft-caps) / smollm3 (every fourth layer without
    # RoPE): LoRA on every linear module learns the synthetic task, and so does tuning Gemma 3's
    # norms around the MLP
    "$PEFT" synth --out "$T/data.bin" --vocab 300 --tokens 20000 --doc-len 64 --seed 5 >/dev/null || fail "synth"
    for a in gemma3 gemma2 smollm3; do
        "$PEFT" init-model --arch $a --out "$T/$a" --hidden 64 --layers 7 --heads 4 --kv-heads 1 --head-dim 32 \
            --ffn 128 --vocab 300 --sliding-window 8 --seed 2 >/dev/null || fail "init-model $a"
        grep -q "\"model_type\": \"$([ $a = gemma3 ] && echo gemma3_text || echo $a)\"" "$T/$a/config.json" ||
            fail "config.json $a"
        "$PEFT" train --model "$T/$a" --data "$T/data.bin" --out "$T/ad-$a" --holdout 0.1 --steps 60 --batch 8 \
            --seq 64 --lr 1e-2 --targets all-linear --json >"$T/out.json" 2>"$T/err" || { cat "$T/err"; fail "train $a"; }
        json "$T/out.json" "j['eval_loss_after'] < 0.6 * j['eval_loss_before']" || fail "$a: held-out loss did not drop"
        before=$(python3 -c "import json; print(json.loads(open('$T/out.json').read().splitlines()[-1])['eval_loss_before'])")
        "$PEFT" eval --model "$T/$a" --adapter "$T/ad-$a" --data "$T/data.bin" --seq 64 --json >"$T/e" || fail "eval $a"
        json "$T/e" "j['loss'] < 0.6 * $before" || fail "$a: eval with the adapter"
    done
    # init-model --arch granite: Granite 3's multipliers in config.json, and training lowers the loss
    "$PEFT" init-model --arch granite --out "$T/granite" --hidden 64 --layers 4 --heads 4 --kv-heads 2 --ffn 128 \
        --vocab 300 --seed 2 >/dev/null || fail "init-model granite"
    grep -q '"residual_multiplier": 0.22' "$T/granite/config.json" || fail "config.json granite"
    "$PEFT" train --model "$T/granite" --data "$T/data.bin" --out "$T/ad-granite" --holdout 0.1 --steps 30 --batch 8 \
        --seq 64 --lr 1e-2 --targets all-linear --json >"$T/out.json" 2>"$T/err" || { cat "$T/err"; fail "train granite"; }
    json "$T/out.json" "j['eval_loss_after'] < 0.95 * j['eval_loss_before']" || fail "granite: held-out loss did not drop"
    # Gemma's norms around the MLP tuned (LN tuning): the loss drops; PEFT's module names
    "$PEFT" train --model "$T/gemma3" --data "$T/data.bin" --out "$T/ad-norms" --holdout 0.1 --steps 30 --batch 8 \
        --seq 64 --lr 1e-2 --method norms --train-norms pre_feedforward,post_feedforward --json >"$T/out.json" \
        2>"$T/err" || { cat "$T/err"; fail "train norms"; }
    json "$T/out.json" "j['eval_loss_after'] < 0.95 * j['eval_loss_before'] and j['trainable_params'] == 2 * 7 * 64" ||
        fail "norms: held-out loss did not drop"
    python3 -c "
import json
c = json.load(open('$T/ad-norms/adapter_config.json'))
assert c['peft_type'] == 'LN_TUNING' and c['target_modules'] == ['pre_feedforward_layernorm', 'post_feedforward_layernorm'], c" ||
        fail "norms: adapter_config.json"
    "$PEFT" init-model --arch gemma3 --out "$T/bad" --hidden 64 --heads 4 --head-dim 3 2>"$T/err" && fail "odd head_dim"
    grep -q usage "$T/err" || fail "usage"
    ;;
gemma3_gguf | gemma2_gguf | smollm3_gguf | granite_gguf)
    # Gemma 3 and Gemma 2 as llama.cpp's converter writes them (norms stored as 1 + w,
    # post-attention and post-feedforward norms, <arch>.attention.sliding_window, gemma2's
    # soft-caps; llama.cpp fixes every sixth (gemma3) or other (gemma2) layer global and gemma3's
    # sliding layers' RoPE base at 10000), SmolLM3 (q/k rows permuted as llama's; llama.cpp
    # leaves RoPE out of every fourth layer) and Granite (its four multipliers as
    # granite.embedding_scale, residual_scale, attention.scale and logit_scale; q/k permuted): the
    # loss of the Hugging Face model, an adapter trained on the GGUF file applies to it, merged
    # GGUFs from the GGUF base and from the Hugging Face directory, a merged Hugging Face
    # directory from the GGUF base
    if [ "$CASE" = gemma3_gguf ]; then
        G=tiny_gemma3 ARCH=gemma3 MT=gemma3_text
        UPD="del c['layer_types']; c.update(sliding_window_pattern=6, query_pre_attn_scalar=c['head_dim'], rope_scaling=None)"
    elif [ "$CASE" = gemma2_gguf ]; then
        G=tiny_gemma2 ARCH=gemma2 MT=gemma2 UPD="c.update(query_pre_attn_scalar=c['head_dim'])"
    elif [ "$CASE" = smollm3_gguf ]; then
        G=tiny_smollm3 ARCH=smollm3 MT=smollm3 UPD="pass"
    else
        G=tiny_granite ARCH=granite MT=granite UPD="pass"
    fi
    /usr/bin/python3 -c "import numpy" 2>/dev/null || { echo "skip: no numpy for /usr/bin/python3 (apt-get install python3-numpy)"; exit 77; }
    mkdir -p "$T/hf" && ln -s "$SRC/tests/data/$G/model.safetensors" "$T/hf/" || fail "link"
    python3 -c "
import json
c = json.load(open('$SRC/tests/data/$G/config.json'))
$UPD
json.dump(c, open('$T/hf/config.json', 'w'), indent=2)" || fail "config"
    /usr/bin/python3 "$SRC/tests/gguf_write.py" "$T/hf" "$T/g.gguf" --type f32 || fail "gguf_write"
    /usr/bin/python3 "$SRC/tests/gguf_write.py" "$T/hf" "$T/q.gguf" --type f32 --embed-type q8_0 --dequantized "$T/deq" ||
        fail "gguf_write q8_0"
    "$PEFT" synth --out "$T/data.bin" --vocab 48 --tokens 4096 --doc-len 32 --seed 5 >/dev/null || fail "synth"
    "$PEFT" info --model "$T/g.gguf" | grep -q "architecture *$ARCH" || fail "info"
    for m in hf g.gguf q.gguf deq; do
        "$PEFT" eval --model "$T/$m" --data "$T/data.bin" --seq 32 --json >"$T/e_$m" || fail "eval $m"
    done
    python3 -c "
import json
l = {n: json.loads(open('$T/e_' + n).read().splitlines()[-1])['loss'] for n in ('hf', 'g.gguf', 'q.gguf', 'deq')}
assert abs(l['hf'] - l['g.gguf']) <= 1e-6 * l['hf'] and abs(l['q.gguf'] - l['deq']) <= 1e-6 * l['deq'], l
assert l['q.gguf'] != l['hf'], l" || fail "GGUF and Hugging Face losses differ"
    "$PEFT" train --model "$T/g.gguf" --data "$T/data.bin" --out "$T/ad" --format both --steps 4 --batch 4 --seq 32 \
        --rank 4 --lr 1e-2 --targets all-linear --quiet || fail "train on GGUF"
    "$PEFT" eval --model "$T/g.gguf" --adapter "$T/ad" --data "$T/data.bin" --seq 32 --json >"$T/a_g" || fail "eval g+ad"
    "$PEFT" eval --model "$T/hf" --adapter "$T/ad" --data "$T/data.bin" --seq 32 --json >"$T/a_hf" || fail "eval hf+ad"
    "$PEFT" merge --model "$T/g.gguf" --adapter "$T/ad" --out "$T/merged.gguf" >/dev/null || fail "merge to GGUF"
    "$PEFT" eval --model "$T/merged.gguf" --data "$T/data.bin" --seq 32 --json >"$T/a_m" || fail "eval merged"
    # the merged model written as GGUF from the Hugging Face directory (its vocabulary beside it;
    # SentencePiece-style, so add_space_prefix false as llama.cpp writes Gemma's) computes the same
    printf '%s' '{"model": {"type": "BPE", "vocab": {"<unk>": 0, "a": 1, "b": 2, "ab": 3}, "merges": ["a b"]}}' \
        >"$T/hf/tokenizer.json"
    "$PEFT" merge --model "$T/hf" --adapter "$T/ad" --out "$T/from_hf.gguf" >/dev/null || fail "merge HF to GGUF"
    "$PEFT" eval --model "$T/from_hf.gguf" --data "$T/data.bin" --seq 32 --json >"$T/a_fh" || fail "eval from_hf"
    case $ARCH in gemma*) grep -q "tokenizer.ggml.add_space_prefix" "$T/from_hf.gguf" || fail "add_space_prefix" ;; esac
    # and as a Hugging Face directory from the GGUF base (config.json written for gemma3_text,
    # the norms zero-centred again)
    "$PEFT" merge --model "$T/g.gguf" --adapter "$T/ad" --out "$T/hf_from_gguf" >/dev/null || fail "merge GGUF to HF"
    grep -q "\"model_type\": \"$MT\"" "$T/hf_from_gguf/config.json" || fail "config.json of the GGUF base"
    "$PEFT" eval --model "$T/hf_from_gguf" --data "$T/data.bin" --seq 32 --json >"$T/a_fg" || fail "eval hf_from_gguf"
    # the llama.cpp LoRA file names the architecture and computes the same
    grep -q $ARCH "$T/ad/adapter.gguf" || fail "adapter.gguf architecture"
    "$PEFT" convert --adapter "$T/ad/adapter.gguf" --out "$T/back" --model "$T/hf" >/dev/null || fail "convert back"
    "$PEFT" eval --model "$T/hf" --adapter "$T/back" --data "$T/data.bin" --seq 32 --json >"$T/a_gg" ||
        fail "eval the GGUF adapter converted back"
    python3 -c "
import json
l = [json.loads(open('$T/' + n).read().splitlines()[-1])['loss'] for n in ('a_g', 'a_hf', 'a_m', 'a_gg', 'a_fh', 'a_fg', 'e_hf')]
assert max(abs(l[0] - x) for x in l[1:6]) <= 1e-5 * l[0] and l[0] < l[6], l" || fail "the adapter does not carry over"
    ;;
phi3_train_merge)
    # Phi-3 (Phi-4-mini's shape): LoRA on the fused qkv_proj and gate_up_proj named as PEFT names
    # them, trained; the adapter names them; info counts them as one row each; the merged model's
    # loss is the adapter's; IA3 on qkv_proj trains too
    M=$SRC/tests/data/tiny_phi3
    "$PEFT" synth --out "$T/d.bin" --vocab 48 --tokens 6000 --doc-len 16 --seed 4 >/dev/null || fail "synth"
    loss() { grep '^{' "$1" | sed 's/.*"loss": \([0-9.]*\).*/\1/'; }
    "$PEFT" train --model "$M" --data "$T/d.bin" --out "$T/ad" --steps 30 --batch 4 --seq 16 --rank 4 --lr 1e-2 \
        --targets qkv_proj,gate_up_proj --seed 1 --threads 2 --json >"$T/tr" 2>"$T/err" || { cat "$T/err"; fail "train"; }
    grep -q '"qkv_proj"' "$T/ad/adapter_config.json" && grep -q '"gate_up_proj"' "$T/ad/adapter_config.json" &&
        ! grep -q '"q_proj"' "$T/ad/adapter_config.json" || { cat "$T/ad/adapter_config.json"; fail "target names"; }
    "$PEFT" info --model "$M" --targets q,up --rank 4 >"$T/info" || fail "info"
    grep -Eq "qkv_proj +1152" "$T/info" && grep -Eq "gate_up_proj +1344" "$T/info" && grep -Eq "total +2496" "$T/info" ||
        { cat "$T/info"; fail "info rows"; }
    "$PEFT" eval --model "$M" --data "$T/d.bin" --seq 16 --json >"$T/e0" || fail "eval base"
    "$PEFT" eval --model "$M" --adapter "$T/ad" --data "$T/d.bin" --seq 16 --json >"$T/e1" || fail "eval adapter"
    python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); assert b < 0.9 * a, (a, b)" \
        "$(loss "$T/e0")" "$(loss "$T/e1")" || fail "the adapter did not learn: $(loss "$T/e0") -> $(loss "$T/e1")"
    "$PEFT" merge --model "$M" --adapter "$T/ad" --out "$T/merged" >/dev/null || fail "merge"
    "$PEFT" eval --model "$T/merged" --data "$T/d.bin" --seq 16 --json >"$T/e2" || fail "eval merged"
    python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); assert abs(a - b) < 1e-4 * a, (a, b)" \
        "$(loss "$T/e1")" "$(loss "$T/e2")" || fail "merged $(loss "$T/e2") != adapter $(loss "$T/e1")"
    # the GGUF LoRA as llama.cpp's converter writes phi3's (attn_qkv, ffn_up; no permutation), from
    # the model and without it, and back to the same PEFT tensors
    "$PEFT" convert --model "$M" --adapter "$T/ad" --out "$T/ad.gguf" >/dev/null || fail "convert with the model"
    "$PEFT" convert --adapter "$T/ad" --arch phi3 --out "$T/free.gguf" >/dev/null || fail "convert without the model"
    cmp "$T/ad.gguf" "$T/free.gguf" || fail "the two conversions differ"
    python3 "$SRC/tests/gguf_check.py" lora "$T/ad.gguf" || fail "GGUF LoRA structure"
    strings "$T/ad.gguf" | grep -q "blk.0.attn_qkv.weight.lora_a" && strings "$T/ad.gguf" | grep -q "blk.2.ffn_up.weight.lora_b" ||
        fail "phi3 tensor names"
    "$PEFT" convert --adapter "$T/ad.gguf" --out "$T/back" --model "$M" >/dev/null || fail "GGUF to PEFT"
    cmp "$T/back/adapter_model.safetensors" "$T/ad/adapter_model.safetensors" || fail "tensors differ after the round trip"
    grep -q '"qkv_proj"' "$T/back/adapter_config.json" || fail "round trip target names"
    # init-model --arch phi3 (Phi-4-mini's layout: fused modules, partial rotary, LongRoPE) learns
    "$PEFT" init-model --out "$T/ip" --arch phi3 --hidden 64 --layers 2 --ffn 96 --vocab 64 >/dev/null || fail "init phi3"
    "$PEFT" synth --out "$T/d64.bin" --vocab 64 --tokens 20000 --doc-len 32 --seed 5 >/dev/null || fail "synth 64"
    "$PEFT" train --model "$T/ip" --data "$T/d64.bin" --out "$T/ipa" --holdout 0.1 --steps 60 --batch 8 --seq 32 \
        --rank 8 --lr 1e-2 --targets all-linear --threads 2 --json >"$T/ip.json" 2>"$T/err" || { cat "$T/err"; fail "train phi3"; }
    json "$T/ip.json" "j['eval_loss_after'] < 0.5 * j['eval_loss_before']" || { cat "$T/ip.json"; fail "phi3 did not learn"; }
    # a sweep's budget match raises some fused modules a rank (rank_pattern keys of qkv_proj)
    "$PEFT" sweep --model "$M" --train "$T/d.bin" --eval "$T/d.bin" --budget 3000 --out "$T/sw" --families attn_qv \
        --steps 2 --batch 2 --seq 16 --eval-windows 2 >/dev/null 2>"$T/err" || { cat "$T/err"; fail "sweep"; }
    json "$T/sw/metrics.jsonl" "abs(j['budget_error']) < 0.02 and j['rank_max'] == j['rank'] + 1" ||
        { cat "$T/sw/metrics.jsonl"; fail "sweep budget on the fused modules"; }
    "$PEFT" train --model "$M" --data "$T/d.bin" --out "$T/ia3" --method ia3 --targets qkv_proj,down --feedforward down \
        --steps 5 --batch 2 --seq 16 --threads 2 >/dev/null 2>"$T/err" || { cat "$T/err"; fail "train ia3"; }
    grep -q '"qkv_proj"' "$T/ia3/adapter_config.json" || fail "ia3 target names"
    # as GGUF (llama.cpp's phi3: attn_qkv, ffn_up of 2 x intermediate, rope.dimension_count, the
    # LongRoPE factors as tensors): F32 gives the Hugging Face loss, below and past
    # original_max_position_embeddings (32); an adapter trained on the F16 file applies to the
    # model of its values
    /usr/bin/python3 -c "import numpy" 2>/dev/null || { echo "skip: no numpy for /usr/bin/python3"; exit 77; }
    /usr/bin/python3 "$SRC/tests/gguf_write.py" "$M" "$T/f32.gguf" --type f32 || fail "gguf_write f32"
    /usr/bin/python3 "$SRC/tests/gguf_write.py" "$M" "$T/f16.gguf" --type f16 --dequantized "$T/f16hf" || fail "gguf_write f16"
    for seq in 16 40; do
        "$PEFT" eval --model "$M" --data "$T/d.bin" --seq $seq --json >"$T/e_hf" || fail "eval hf $seq"
        "$PEFT" eval --model "$T/f32.gguf" --data "$T/d.bin" --seq $seq --json >"$T/e_gg" || fail "eval gguf $seq"
        [ "$(loss "$T/e_hf")" = "$(loss "$T/e_gg")" ] || fail "seq $seq: GGUF loss $(loss "$T/e_gg") != HF $(loss "$T/e_hf")"
    done
    "$PEFT" info --model "$T/f16.gguf" | grep -q "phi3" || fail "info names the architecture"
    "$PEFT" train --model "$T/f16.gguf" --data "$T/d.bin" --out "$T/adg" --steps 10 --batch 2 --seq 16 --threads 2 \
        --targets all-linear >/dev/null 2>"$T/err" || { cat "$T/err"; fail "train on GGUF"; }
    "$PEFT" eval --model "$T/f16.gguf" --adapter "$T/adg" --data "$T/d.bin" --seq 16 --json >"$T/e_a" || fail "eval a"
    "$PEFT" eval --model "$T/f16hf" --adapter "$T/adg" --data "$T/d.bin" --seq 16 --json >"$T/e_b" || fail "eval b"
    [ "$(loss "$T/e_a")" = "$(loss "$T/e_b")" ] || fail "adapter on GGUF $(loss "$T/e_a") != on HF $(loss "$T/e_b")"
    # merged into the F32 GGUF base: the merged Hugging Face model's loss
    "$PEFT" merge --model "$T/f32.gguf" --adapter "$T/ad" --out "$T/m.gguf" >/dev/null || fail "merge into GGUF"
    "$PEFT" eval --model "$T/m.gguf" --data "$T/d.bin" --seq 16 --json >"$T/e3" || fail "eval merged GGUF"
    python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); assert abs(a - b) < 1e-4 * a, (a, b)" \
        "$(loss "$T/e2")" "$(loss "$T/e3")" || fail "merged GGUF $(loss "$T/e3") != merged HF $(loss "$T/e2")"
    # and from the GGUF base to a Hugging Face directory (its config.json: Phi3Config's LongRoPE keys)
    "$PEFT" merge --model "$T/f32.gguf" --adapter "$T/ad" --out "$T/mg" >/dev/null || fail "merge GGUF to HF"
    grep -q '"type": "longrope"' "$T/mg/config.json" && grep -q '"partial_rotary_factor": 0.75' "$T/mg/config.json" ||
        { cat "$T/mg/config.json"; fail "config.json of the merged GGUF base"; }
    "$PEFT" eval --model "$T/mg" --data "$T/d.bin" --seq 16 --json >"$T/e4" || fail "eval merged from GGUF"
    python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); assert abs(a - b) < 1e-4 * a, (a, b)" \
        "$(loss "$T/e2")" "$(loss "$T/e4")" || fail "merged from GGUF $(loss "$T/e4") != merged HF $(loss "$T/e2")"
    ;;
*)
    echo "unknown case $CASE" >&2
    exit 1
    ;;
esac
echo "ok $CASE"
