#!/usr/bin/env python3
"""Fine-tune a LoRA adapter from Python with a host-owned data loop.

    LIBPEFT_PATH=build/libpeft.so python3 python/examples/finetune.py MODEL_DIR TEXT_FILE OUT_DIR
(e.g. ../shared/models/stories260K ../shared/data/kjv_genesis.txt out/py-adapter)"""
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import libpeft  # noqa: E402


def main(model_dir, text_file, out_dir, steps=100, seq=128, batch=8):
    steps = int(os.environ.get("FINETUNE_STEPS", steps))
    tok = libpeft.Tokenizer(model_dir)
    ids = []
    for line in open(text_file, encoding="utf-8"):
        if line.strip():
            ids += tok.encode(line.strip())  # BOS + the verse
    windows = [ids[i:i + seq] for i in range(0, len(ids) - seq + 1, seq)]
    held_out, train = windows[-len(windows) // 10:], windows[: -len(windows) // 10]
    rng = random.Random(0)
    with libpeft.Model(model_dir) as m:
        def held_loss():
            total = count = 0
            for i in range(0, len(held_out), batch):
                s, n = m.eval(held_out[i:i + batch])
                total, count = total + s, count + n
            return total / count

        print(f"{m.attach_lora(targets='all-linear', rank=8, alpha=16)} trainable parameters, libpeft {libpeft.version()}")
        m.set_optimizer(lr=3e-3, schedule="cosine", warmup_steps=10, total_steps=steps)
        before = held_loss()
        for step in range(steps):
            r = m.step(rng.sample(train, batch))
            if (step + 1) % 20 == 0:
                print(f"step {step + 1}: loss {r.loss:.4f}")
        after = held_loss()
        m.save_adapter(out_dir)
    print(f"held-out loss {before:.4f} -> {after:.4f}; adapter saved to {out_dir}")
    with libpeft.Model(model_dir) as m:  # a fresh model with the saved adapter
        m.load_adapter(out_dir)
        reloaded = held_loss()
    print(f"reloaded adapter: held-out loss {reloaded:.4f}")
    return after < before and abs(reloaded - after) < 1e-6


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(0 if main(*sys.argv[1:]) else 1)
