"""Data-parallel `peft train` over MPI: tokens/s for 1 and 2 ranks, and the share of the
step spent communicating (the adapter-gradient all-reduce and the per-step tallies).

Usage (from the repository root, after building with MPI; any python3):
    python3 bench/mpi_scaling.py [--shape smollm|small] [--batch 2] [--seq 256] [--steps 4]
        [--rank 16] [--targets all-linear] [--repeat 3]

The model is the random-weight, SmolLM-135M-shaped Llama of bench/torch_vs_peft.py
(out/bench/). Three configurations train the same global batch of 2 x --batch windows per
optimizer step, alternating, --repeat times:
  1 rank x 2 threads (--accum 2), 1 rank x 1 thread (--accum 2), 2 ranks x 1 thread (--accum 1),
  the all-reduce overlapped with the backward pass (default) and after it (--no-overlap).
Steady-state tokens/s excludes the first step. The communication share is the time in MPI
collectives over the training time, from the "comm_seconds" field of rank 0's JSON line.
Prints a Markdown table of medians and the measured gradient size.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEFT = os.path.join(ROOT, "build", "examples", "peft")
SHAPES = {"smollm": (576, 30, 9, 3, 1536, 49152), "small": (256, 4, 4, 2, 688, 4096)}


def run(cmd, env):
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit("failed: %s\n%s" % (" ".join(cmd), p.stderr[-2000:]))
    return json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="smollm", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--targets", default="all-linear")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    D, L, H, Hkv, F, V = SHAPES[a.shape]
    mdir = os.path.join(ROOT, "out", "bench", a.shape)
    os.makedirs(mdir, exist_ok=True)
    if not os.path.exists(os.path.join(mdir, "model.safetensors")):
        subprocess.run([PEFT, "init-model", "--out", mdir, "--hidden", str(D), "--layers", str(L), "--heads",
                        str(H), "--kv-heads", str(Hkv), "--ffn", str(F), "--vocab", str(V), "--seed", "1"],
                       check=True, stdout=subprocess.DEVNULL)
    data = os.path.join(ROOT, "out", "bench", "tokens-%d.bin" % V)
    n_tok = 2 * a.batch * a.seq * (a.steps + 1)
    if not os.path.exists(data) or os.path.getsize(data) < 4 * n_tok:
        subprocess.run([PEFT, "synth", "--out", data, "--vocab", str(V), "--tokens", str(max(n_tok, 1 << 16)),
                        "--seed", "2"], check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    out = os.path.join(ROOT, "out", "bench", "mpi-adapter")
    common = ["train", "--model", mdir, "--data", data, "--out", out, "--steps", str(a.steps), "--batch",
              str(a.batch), "--seq", str(a.seq), "--rank", str(a.rank), "--targets", a.targets, "--seed", "1",
              "--quiet", "--json"]
    configs = [
        ("1 rank x 2 threads", [PEFT] + common + ["--threads", "2", "--accum", "2"]),
        ("1 rank x 1 thread", [PEFT] + common + ["--threads", "1", "--accum", "2"]),
        ("2 ranks x 1 thread", ["mpirun", "-np", "2", "--bind-to", "core", PEFT] + common +
         ["--threads", "1", "--accum", "1"]),
        ("2 ranks x 1 thread, all-reduce after the backward pass",
         ["mpirun", "-np", "2", "--bind-to", "core", PEFT] + common + ["--threads", "1", "--accum", "1", "--no-overlap"]),
    ]
    res = {name: [] for name, _ in configs}
    params = 0
    for _ in range(a.repeat):
        for name, cmd in configs:
            j = run(cmd, env)
            params = j["trainable_params"]
            steady = statistics.median(j["step_seconds"][1:]) if len(j["step_seconds"]) > 1 else j["seconds"]
            tps = 2 * a.batch * a.seq / steady
            res[name].append((tps, j.get("comm_seconds", 0.0) / j["seconds"], j["loss"]))
    print("%s, %d x %d tokens per optimizer step, LoRA r=%d on %s: %d trainable parameters, "
          "gradient all-reduce %.2f MB per step\n" % (a.shape, 2 * a.batch, a.seq, a.rank, a.targets, params,
                                                        params * 4 / 1e6))
    print("| configuration | tokens/s (median of %d) | communication share | final loss |" % a.repeat)
    print("|---|---:|---:|---:|")
    for name, _ in configs:
        r = res[name]
        print("| %s | %.1f | %.2f%% | %.4f |" % (name, statistics.median(x[0] for x in r),
                                                100 * statistics.median(x[1] for x in r), r[-1][2]))


main()
