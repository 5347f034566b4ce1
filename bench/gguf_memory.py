"""QLoRA on the CPU: peak memory and speed of LoRA training on the same model held as
float32 (Hugging Face directory and GGUF) and as GGUF Q8_0 and Q4_0, the quantized linear
weights kept quantized in memory and dequantized panel by panel inside the products.

Usage (from the repository root, after building; Debian's python3-numpy for the writer):
    /usr/bin/python3 bench/gguf_memory.py [--shape smollm|tiny] [--batch 4] [--seq 256] [--steps 3]
        [--threads 2] [--repeat 1]

The model is the random-weight SmolLM-135M-shaped Llama of bench/torch_vs_peft.py
(out/bench/), written as GGUF by tests/gguf_write.py (linear weights in the named type;
embeddings float32, or in the same type for the "+ embeddings" rows). Each configuration runs `peft train` (LoRA r=16 on all linear modules) in a
fresh process; peak RSS comes from the kernel's accounting of that process (wait4), tokens/s
is the steady state (first step excluded). Prints a Markdown table.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEFT = os.path.join(ROOT, "build", "examples", "peft")
SHAPES = {"smollm": (576, 30, 9, 3, 1536, 49152), "tiny": (256, 4, 4, 2, 768, 4096)}


def run_rss(cmd):
    pid = os.fork()
    if pid == 0:
        fd = os.open(os.devnull, os.O_WRONLY)
        out = os.open(cmd_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(fd, 2)
        os.execv(cmd[0], cmd)
    _, status, usage = os.wait4(pid, 0)
    if status != 0:
        sys.exit("failed (%d): %s" % (status, " ".join(cmd)))
    j = json.loads([l for l in open(cmd_out).read().splitlines() if l.startswith("{")][-1])
    return j, usage.ru_maxrss / 1024.0


def main():
    global cmd_out
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="smollm", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    D, L, H, Hkv, F, V = SHAPES[a.shape]
    bdir = os.path.join(ROOT, "out", "bench")
    mdir = os.path.join(bdir, a.shape)
    os.makedirs(mdir, exist_ok=True)
    cmd_out = os.path.join(bdir, "gguf-memory.json")
    if not os.path.exists(os.path.join(mdir, "model.safetensors")):
        subprocess.run([PEFT, "init-model", "--out", mdir, "--hidden", str(D), "--layers", str(L), "--heads",
                        str(H), "--kv-heads", str(Hkv), "--ffn", str(F), "--vocab", str(V), "--seed", "1"],
                       check=True, stdout=subprocess.DEVNULL)
    data = os.path.join(bdir, "tokens-%d.bin" % V)
    n_tok = a.batch * a.seq * (a.steps + 1)
    if not os.path.exists(data) or os.path.getsize(data) < 4 * n_tok:
        subprocess.run([PEFT, "synth", "--out", data, "--vocab", str(V), "--tokens", str(max(n_tok, 1 << 16)),
                        "--seed", "2"], check=True, stdout=subprocess.DEVNULL)
    models = [("Hugging Face F32 (safetensors)", mdir, os.path.getsize(os.path.join(mdir, "model.safetensors")))]
    for t, e in (("f32", "f32"), ("q8_0", "f32"), ("q4_0", "f32"), ("q8_0", "q8_0"), ("q4_0", "q4_0")):
        path = os.path.join(bdir, "%s-%s-%s.gguf" % (a.shape, t, e))
        if not os.path.exists(path):
            subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tests", "gguf_write.py"), mdir, path, "--type", t,
                            "--embed-type", e], check=True)
        models.append(("GGUF " + t.upper() + (" + embeddings" if e != "f32" else ""), path, os.path.getsize(path)))
    res = {name: [] for name, _, _ in models}
    for _ in range(a.repeat):
        for name, path, _ in models:
            j, rss = run_rss([PEFT, "train", "--model", path, "--data", data, "--out", os.path.join(bdir, "gguf-ad"),
                              "--steps", str(a.steps), "--batch", str(a.batch), "--seq", str(a.seq), "--rank", "16",
                              "--targets", "all-linear", "--threads", str(a.threads), "--seed", "1", "--quiet",
                              "--json"])
            st = j["step_seconds"][1:] or j["step_seconds"]
            res[name].append((a.batch * a.seq / statistics.median(st), rss, j["loss"]))
    print("%s, LoRA r=16 all-linear, %d x %d tokens, %d threads, %d steps\n" % (a.shape, a.batch, a.seq, a.threads,
                                                                               a.steps))
    print("| model file | file MiB | peak RSS MiB | tokens/s | final loss |")
    print("|---|---:|---:|---:|---:|")
    for name, _, size in models:
        r = res[name]
        print("| %s | %.0f | %.0f | %.1f | %.4f |" % (name, size / 2**20, statistics.median(x[1] for x in r),
                                                     statistics.median(x[0] for x in r), r[-1][2]))


cmd_out = None
main()
