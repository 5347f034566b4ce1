"""Two builds of `peft`, alternated on the same training steps: the honest A/B on a noisy machine.

    python3 bench/ab_step.py OLD/examples/peft build/examples/peft [--repeat 2] [--batch 4 --seq 256]
        [-- extra train arguments]

Both train the SmolLM-135M-shaped model that bench/torch_vs_peft.py creates (run it once
first) for --steps steps, one process after the other, --repeat times; each prints the
median step time without the first (workspace first touch) and the loss, and the last line
gives the ratio of the medians. --models A B runs the first binary on model A and the second
on model B (the same binary twice compares two layouts of one model, e.g. bench/to_phi3.py's). Build an older commit with `git worktree add /tmp/old REV`
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
    ap.add_argument("--targets", default="all-linear")
    ap.add_argument("--model", default=os.path.join(ROOT, "out", "bench", "smollm"))
    ap.add_argument("--models", nargs=2, help="the first binary's model and the second's (default: --model)")
    ap.add_argument("--data", default=os.path.join(ROOT, "out", "bench", "tokens-49152.bin"))
    args = ap.parse_args(argv)
    models = args.models or [args.model, args.model]
    for mdl in models:
        if not os.path.exists(os.path.join(mdl, "model.safetensors")) and not (mdl.endswith(".gguf") and os.path.isfile(mdl)):
            sys.exit(f"no model at {mdl}: run bench/torch_vs_peft.py once first")
    med = [[], []]
    for _ in range(args.repeat):
        for i, b in enumerate(args.binaries):
            cmd = [b, "train", "--model", models[i], "--data", args.data,
                   "--out", os.path.join(ROOT, "out", "bench", f"ab-adapter{i}"), "--steps", str(args.steps),
                   "--batch", str(args.batch), "--seq", str(args.seq), "--rank", "16", "--alpha", "32",
                   "--targets", args.targets, "--threads", str(args.threads), "--lr", "1e-4", "--json",
                   "--quiet", "--log-every", "1"] + extra
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
            j = json.loads(p.stdout.strip().splitlines()[-1])
            steps = j["step_seconds"]
            m = statistics.median(steps[1:] if len(steps) > 1 else steps)
            med[i].append(m)
            print(f"{b} {models[i]}: steps {' '.join(f'{s:.3f}' for s in steps)} s, loss {j['loss']:.6f}", flush=True)
    a, b = (statistics.median(x) for x in med)
    print(f"median step: {a:.3f} s vs {b:.3f} s; second/first speed {a / b:.2f}x")


if __name__ == "__main__":
    main()
