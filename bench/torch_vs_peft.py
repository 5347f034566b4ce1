"""libpeft against PyTorch, side by side: one LoRA training step of the same Llama-shaped (or
Gemma-3-shaped) model.

Usage (from the repository root, after building; Debian's python3-torch):
    /usr/bin/python3 bench/torch_vs_peft.py [--shape smollm|tinyllama|small|gemma270m] [--batch 4] [--seq 256]
        [--threads 2] [--steps 4] [--rank 16] [--layers all|last:4] [--backend cpu|blis]
        [--frozen-dtype f32|bf16] [--activation-checkpointing] [--repeat 3] [--matrix]

The model is created once with `peft init-model` (random weights, Hugging Face format) under
out/bench/. Each measurement runs in a fresh process, alternately libpeft (`peft train`) and
the PyTorch reference (`--torch-worker`: the same model read from the same safetensors, the
same LoRA configuration (A kaiming-uniform, B zero, alpha = 2r), AdamW, the same token
windows), and reports steady-state tokens/s (the first step is a warm-up and is not timed),
peak RSS, and the ratio. Medians over --repeat alternations are printed as a Markdown table,
with the step's model FLOPs (step_gflop below), each side's GFLOP/s and their fraction of the
machine's float32 FMA peak, measured at the same thread count by build/bench/bench-peak.
--matrix runs the rows B x T = 4 x 256 and 1 x 2048, threads 1 and 2, backends cpu and blis
in one go (the other options apply to every row).
PyTorch is "tuned" as far as this machine allows: OPENBLAS_CORETYPE=SkylakeX on AVX-512
processors (OpenBLAS 0.3.21 does not know Zen 5 and would run a generic kernel), OMP_WAIT_POLICY
passive, jemalloc preloaded and the OpenMP OpenBLAS when those Debian packages are installed
(libjemalloc2, libopenblas0-openmp); the table says which.
"""
import argparse
import functools
import json
import math
import os
import resource
import statistics
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEFT = os.path.join(ROOT, "build", "examples", "peft")
SHAPES = {
    # hidden, layers, heads, kv heads, ffn, vocab[, architecture, head_dim]
    "smollm": (576, 30, 9, 3, 1536, 49152),
    "tinyllama": (2048, 22, 32, 4, 5632, 32000),
    "small": (256, 4, 4, 2, 688, 4096),
    "gemma270m": (640, 18, 4, 1, 2048, 262144, "gemma3", 256),  # Gemma 3 270M's text model
}
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
OPENBLAS_OMP = "/usr/lib/x86_64-linux-gnu/openblas-openmp"


def st_read(path):
    import torch
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        assert t["dtype"] == "F32", t["dtype"]
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(t["shape"])
    return out


def torch_worker(args):
    """The reference step in PyTorch; prints JSON with tokens/s and the step times."""
    import torch
    torch.set_num_threads(args.threads)
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    W = st_read(os.path.join(args.model, "model.safetensors"))
    D, L, H, Hkv = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, V, eps = cfg.get("head_dim", D // H), cfg["vocab_size"], cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta", 10000.0)
    # Gemma 3 (transformers' Gemma3ForCausalLM): embeddings times sqrt(hidden), norms (1 + w), q/k
    # norms, norms after attention and the MLP, GELU (tanh) gating, sliding layers with their own
    # RoPE base, scores times query_pre_attn_scalar^-1/2
    gemma = cfg["model_type"] == "gemma3_text"
    mods = [("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
            ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj")]
    first = L - int(args.layers.split(":")[1]) if args.layers.startswith("last:") else 0
    r, scale = args.rank, 2.0
    g = torch.Generator().manual_seed(0)
    lora = {}
    for l in range(first, L):
        for p, m in mods:
            w = W[f"model.layers.{l}.{p}.{m}.weight"]
            a = (torch.rand(r, w.shape[1], generator=g) * 2 - 1) / math.sqrt(w.shape[1])
            lora[(l, m)] = (a.requires_grad_(True), torch.zeros(w.shape[0], r, requires_grad=True))
    params = [t for ab in lora.values() for t in ab]
    opt = torch.optim.AdamW(params, lr=1e-4)
    B, T = args.batch, args.seq
    def tables(base):
        inv = 1.0 / base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        ang = torch.outer(torch.arange(T, dtype=torch.float32), inv)
        return ang.cos(), ang.sin()
    i = torch.arange(T)
    mask = torch.full((T, T), float("-inf")).triu(1)
    glob = tables(theta)
    if gemma:
        win = cfg["sliding_window"]
        local = tables(cfg.get("rope_local_base_freq", 10000.0))
        lmask = mask.masked_fill(i[:, None] - i[None, :] >= win, float("-inf"))
        sliding = [(l + 1) % cfg.get("sliding_window_pattern", 6) != 0 for l in range(L)]
        qscale = cfg.get("query_pre_attn_scalar", hd) ** -0.5
    else:
        sliding, qscale = [False] * L, hd ** -0.5

    def rope(x, cs):  # (B, T, h, hd), rotate-half pairing as Hugging Face Llama
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        c, s = cs[0][None, :, None, :], cs[1][None, :, None, :]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * ((1.0 + w) if gemma else w)

    def lin(l, p, m, x):
        y = x @ W[f"model.layers.{l}.{p}.{m}.weight"].T
        if (l, m) in lora:
            a, b = lora[(l, m)]
            y = y + scale * (x @ a.T) @ b.T
        return y

    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    tokens = torch.tensor(list(struct.unpack(f"<{B * T}I", open(args.data, "rb").read(4 * B * T))),
                          dtype=torch.long).reshape(B, T) % V

    def step():
        x = W["model.embed_tokens.weight"][tokens]
        if gemma:
            x = x * math.sqrt(D)
        for l in range(L):
            pre = f"model.layers.{l}."
            cs = local if sliding[l] else glob
            xn = norm(x, W[pre + "input_layernorm.weight"])
            q = lin(l, "self_attn", "q_proj", xn).view(B, T, H, hd)
            k = lin(l, "self_attn", "k_proj", xn).view(B, T, Hkv, hd)
            if gemma:
                q, k = norm(q, W[pre + "self_attn.q_norm.weight"]), norm(k, W[pre + "self_attn.k_norm.weight"])
            q = rope(q, cs).transpose(1, 2)
            k = rope(k, cs).repeat_interleave(H // Hkv, 2).transpose(1, 2)
            v = lin(l, "self_attn", "v_proj", xn).view(B, T, Hkv, hd).repeat_interleave(H // Hkv, 2).transpose(1, 2)
            att = ((q @ k.transpose(-1, -2)) * qscale + (lmask if sliding[l] else mask)).softmax(-1) @ v
            o = lin(l, "self_attn", "o_proj", att.transpose(1, 2).reshape(B, T, H * hd))
            if gemma:
                h = x + norm(o, W[pre + "post_attention_layernorm.weight"])
                z = norm(h, W[pre + "pre_feedforward_layernorm.weight"])
                act = torch.nn.functional.gelu(lin(l, "mlp", "gate_proj", z), approximate="tanh")
                f = lin(l, "mlp", "down_proj", act * lin(l, "mlp", "up_proj", z))
                x = h + norm(f, W[pre + "post_feedforward_layernorm.weight"])
                continue
            h = x + o
            z = norm(h, W[pre + "post_attention_layernorm.weight"])
            x = h + lin(l, "mlp", "down_proj", torch.nn.functional.silu(lin(l, "mlp", "gate_proj", z)) *
                        lin(l, "mlp", "up_proj", z))
        logits = norm(x, W["model.norm.weight"]) @ head.T
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    times, losses = [], []
    for i in range(args.steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    steady = times[1:] if len(times) > 1 else times
    print(json.dumps({"tokens_per_s": B * T / statistics.median(steady), "step_s": times, "losses": losses}))


def measured(cmd, env):
    """Run cmd; (its last stdout line as JSON, its peak RSS in MiB)."""
    code = ("import resource, subprocess, sys\n"
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "sys.stderr.write(p.stderr[-2000:] if p.returncode else '')\n"
            "print(p.stdout.strip().splitlines()[-1] if p.stdout.strip() else '{}')\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
            "sys.exit(p.returncode)\n")
    p = subprocess.run([sys.executable, "-c", code] + cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        raise RuntimeError(f"failed: {' '.join(cmd)}\n{p.stderr}")
    out, rss = p.stdout.strip().splitlines()[-2:]
    return json.loads(out), int(rss) / 1024.0


def step_gflop(cfg, B, T, rank, layers):
    """The model FLOPs of one LoRA training step (forward, backward), counted the usual way:
    2 per multiply-add of every product; the frozen linear products and the lm_head forward and
    backward (dx only: frozen weights get no gradient), the dx products only from the lowest
    adapted layer up, causal attention (the scores and weighted sums of the positions attended:
    within the sliding window on Gemma's sliding layers) forward and backward (twice the
    forward), the rank-r LoRA products (forward 2 N r (in + out), backward twice that). Activation
    checkpointing's recomputation is not counted: a step costs the same however it is run."""
    D, L, H, Hkv = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, F, V = cfg.get("head_dim", D // H), cfg["intermediate_size"], cfg["vocab_size"]
    N = B * T
    first = L - int(layers.split(":")[1]) if layers.startswith("last:") else 0
    dims = [(D, H * hd), (D, Hkv * hd), (D, Hkv * hd), (H * hd, D), (D, F), (D, F), (F, D)]  # (in, out)
    lin = sum(i * o for i, o in dims)
    lora = sum(i + o for i, o in dims)
    pattern, win = cfg.get("sliding_window_pattern", 6), cfg.get("sliding_window")
    flops = 2.0 * N * lin * L + 2.0 * N * lin * (L - first) + 4.0 * N * D * V
    flops += 6.0 * N * rank * lora * (L - first)
    for l in range(L):
        sliding = cfg["model_type"] == "gemma3_text" and (l + 1) % pattern != 0
        pairs = sum(min(t + 1, win) if sliding else t + 1 for t in range(T))
        fwd = 4.0 * B * H * hd * pairs  # scores and weighted sums
        flops += fwd + (2 * fwd if l >= first else 0)
    return flops / 1e9


@functools.lru_cache(maxsize=None)
def machine_peak(threads):
    """GFLOP/s of build/bench/bench-peak on `threads` threads, measured once a run (None if it
    is not built)."""
    exe = os.path.join(ROOT, "build", "bench", "bench-peak")
    if not os.path.exists(exe):
        return None
    p = subprocess.run([exe, str(threads)], capture_output=True, text=True)
    return json.loads(p.stdout)["gflops"] if p.returncode == 0 else None


def tuned_env(threads):
    """(libpeft's environment, PyTorch's tuned environment, the tuning's description)."""
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    tuned = []
    tenv = dict(env)
    # OpenBLAS 0.3.21 does not recognise Zen 5: left to itself it falls back to a generic
    # kernel (about 35 GFLOP/s here, against 155-190 with its AVX-512 kernel), so the tuned
    # reference names the AVX-512 core type when the processor has AVX-512
    if "avx512f" in open("/proc/cpuinfo").read():
        tenv["OPENBLAS_CORETYPE"] = "SkylakeX"
        tuned.append("OPENBLAS_CORETYPE=SkylakeX")
    for e in (env, tenv):
        e["OMP_WAIT_POLICY"] = "PASSIVE"
        e["OMP_NUM_THREADS"] = str(threads)
    if os.path.exists(JEMALLOC):
        tenv["LD_PRELOAD"] = JEMALLOC
        tenv["MALLOC_CONF"] = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
        tuned.append("jemalloc")
    if os.path.isdir(OPENBLAS_OMP):
        tenv["LD_LIBRARY_PATH"] = OPENBLAS_OMP
        tuned.append("OpenMP OpenBLAS")
    return env, tenv, tuned


def run_row(args, mdir, data, cfg, batch, seq, threads, backend):
    """One row of the table: --repeat alternations of libpeft and PyTorch at one configuration."""
    env, tenv, tuned = tuned_env(threads)
    peft_cmd = [PEFT, "train", "--model", mdir, "--data", data, "--out", os.path.join(ROOT, "out", "bench", "adapter"),
                "--steps", str(args.steps), "--batch", str(batch), "--seq", str(seq), "--rank",
                str(args.rank), "--alpha", str(2 * args.rank), "--targets", "all-linear", "--layers", args.layers,
                "--threads", str(threads), "--backend", backend, "--frozen-dtype", args.frozen_dtype, "--lr", "1e-4",
                "--json", "--quiet", "--log-every", "1"] + (["--activation-checkpointing"] if args.activation_checkpointing else [])
    torch_cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", "--model", mdir, "--data", data,
                 "--batch", str(batch), "--seq", str(seq), "--threads", str(threads), "--steps",
                 str(args.steps), "--rank", str(args.rank), "--layers", args.layers]
    res = {"peft": [], "torch": []}
    for _ in range(args.repeat):
        j, rss = measured(peft_cmd, env)
        # steady state: the first step (workspace first touch) is excluded as for PyTorch
        steps = j.get("step_seconds") or []
        tps = (batch * seq / statistics.median(steps[1:])) if len(steps) > 1 else j["tokens_per_s"]
        res["peft"].append((tps, rss))
        j, rss = measured(torch_cmd, tenv)
        res["torch"].append((j["tokens_per_s"], rss))
    p_tps = statistics.median(t for t, _ in res["peft"])
    t_tps = statistics.median(t for t, _ in res["torch"])
    p_rss = max(r for _, r in res["peft"])
    t_rss = max(r for _, r in res["torch"])
    gflop = step_gflop(cfg, batch, seq, args.rank, args.layers)
    p_gfs, t_gfs = gflop * p_tps / (batch * seq), gflop * t_tps / (batch * seq)
    peak = machine_peak(threads)
    frac = (lambda g: f"{100 * g / peak:.0f}%") if peak else (lambda g: "-")
    print(f"| {args.shape} | {batch}x{seq} | {threads} | {args.layers} | r={args.rank} | "
          f"{backend}{', bf16 W' if args.frozen_dtype == 'bf16' else ''}"
          f"{', ckpt' if args.activation_checkpointing else ''} | {p_tps:.1f} | {t_tps:.1f} | {p_tps / t_tps:.2f}x | "
          f"{p_rss:.0f} | {t_rss:.0f} | {gflop:.0f} | {p_gfs:.0f} ({frac(p_gfs)}) | {t_gfs:.0f} ({frac(t_gfs)}) | "
          f"{peak or '-'} | {', '.join(tuned) or 'untuned'} |", flush=True)
    print(json.dumps({"peft": res["peft"], "torch": res["torch"]}), file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="smollm", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--layers", default="all")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--frozen-dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--matrix", action="store_true",
                    help="every row of B x T 4x256 and 1x2048, threads 1 and 2, backends cpu and blis")
    ap.add_argument("--torch-worker", action="store_true")
    ap.add_argument("--model")
    ap.add_argument("--data")
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args)
    D, L, H, Hkv, F, V = SHAPES[args.shape][:6]
    shape = SHAPES[args.shape]
    extra = ["--arch", shape[6], "--head-dim", str(shape[7])] if len(shape) > 6 else []
    mdir = os.path.join(ROOT, "out", "bench", args.shape)
    os.makedirs(mdir, exist_ok=True)
    if not os.path.exists(os.path.join(mdir, "model.safetensors")):
        subprocess.run([PEFT, "init-model", "--out", mdir, "--hidden", str(D), "--layers", str(L), "--heads", str(H),
                        "--kv-heads", str(Hkv), "--ffn", str(F), "--vocab", str(V), "--seed", "1"] + extra, check=True,
                       stdout=subprocess.DEVNULL)
    cfg = json.load(open(os.path.join(mdir, "config.json")))
    rows = [(args.batch, args.seq, args.threads, args.backend)]
    if args.matrix:
        rows = [(b, t, n, be) for b, t in ((4, 256), (1, 2048)) for n in (1, 2) for be in ("cpu", "blis")]
    data = os.path.join(ROOT, "out", "bench", f"tokens-{V}.bin")
    n_tok = max(b * t for b, t, _, _ in rows) * (args.steps + 1)
    if not os.path.exists(data) or os.path.getsize(data) < 4 * n_tok:
        subprocess.run([PEFT, "synth", "--out", data, "--vocab", str(V), "--tokens", str(max(n_tok, 1 << 16)),
                        "--seed", "2"], check=True, stdout=subprocess.DEVNULL)
    print("| shape | B x T | threads | LoRA layers | rank | backend | libpeft tok/s | PyTorch tok/s | ratio | "
          "libpeft peak MiB | PyTorch peak MiB | GFLOP a step | libpeft GFLOP/s (of peak) | PyTorch GFLOP/s (of peak) | "
          "measured peak GFLOP/s | PyTorch tuning |")
    print("|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|", flush=True)
    failed = 0
    for batch, seq, threads, backend in rows:
        try:
            run_row(args, mdir, data, cfg, batch, seq, threads, backend)
        except RuntimeError as e:  # e.g. a build without the BLIS backend: the other rows still run
            print(f"| {args.shape} | {batch}x{seq} | {threads} | {args.layers} | r={args.rank} | {backend} | "
                  f"did not run: {str(e).splitlines()[-1][:80]} |", flush=True)
            print(e, file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
