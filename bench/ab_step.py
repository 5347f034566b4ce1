"""Two builds of `peft`, alternated on the same training steps: the honest A/B on a noisy machine.

    python3 bench/ab_step.py OLD/examples/peft build/examples/peft [--repeat 2] [--batch 4 --seq 256]
        [-- extra train arguments]

Both train the SmolLM-135M-shaped model that bench/torch_vs_peft.py creates (run it once
first) for --steps steps, one process after the other, --repeat times; each prints the
median step time without the first (workspace first touch) and the loss, and the last line
gives the ratio of the medians. Build an older commit with `git worktree add /tmp/old REV`
and `meson setup /tmp/old/build --buildtype=release && ninja -C /tmp/old/build`.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=os.path.join(ROOT, "out", "bench", "smollm"))
    ap.add_argument("--data", default=os.path.join(ROOT, "out", "bench", "tokens-49152.bin"))
    args = ap.parse_args(argv)
    if not os.path.exists(os.path.join(args.model, "model.safetensors")):
        sys.exit(f"no model at {args.model}: run bench/torch_vs_peft.py once first")
    med = {b: [] for b in args.binaries}
    for _ in range(args.repeat):
        for i, b in enumerate(args.binaries):
            cmd = [b, "train", "--model", args.model, "--data", args.data,
                   "--out", os.path.join(ROOT, "out", "bench", f"ab-adapter{i}"), "--steps", str(args.steps),
                   "--batch", str(args.batch), "--seq", str(args.seq), "--rank", "16", "--alpha", "32",
                   "--targets", "all-linear", "--threads", str(args.threads), "--lr", "1e-4", "--json",
                   "--quiet", "--log-every", "1"] + extra
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
            j = json.loads(p.stdout.strip().splitlines()[-1])
            steps = j["step_seconds"]
            m = statistics.median(steps[1:] if len(steps) > 1 else steps)
            med[b].append(m)
            print(f"{b}: steps {' '.join(f'{s:.3f}' for s in steps)} s, loss {j['loss']:.6f}", flush=True)
    a, b = (statistics.median(med[x]) for x in args.binaries)
    print(f"median step: {a:.3f} s vs {b:.3f} s; second/first speed {a / b:.2f}x")


if __name__ == "__main__":
    main()
