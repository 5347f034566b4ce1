"""Checks of a `peft sweep --json` output directory (used by test_cli.sh).

usage: sweep_check.py SUMMARY_JSON OUT_DIR SEEDS [FAILED_CONFIG ...]
Asserts: every measured LoRA/DoRA configuration lands within 2% of the budget and its
saved adapter holds exactly that many parameters; fixed-size methods and failures say
why; the report, both SVG charts and metrics.jsonl are complete and well-formed.
"""
import json
import os
import struct
import sys
import xml.etree.ElementTree as ET

summary = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
out, seeds, expect_failed = sys.argv[2], int(sys.argv[3]), set(sys.argv[4:])


def safetensors_count(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    total = 0
    for name, t in header.items():
        if name in ("__metadata__", "base_model.vera_A", "base_model.vera_B"):  # VeRA's projections are frozen
            continue
        k = 1
        for d in t["shape"]:
            k *= d
        total += k
    return total


assert summary["budget"] == summary["budgets"][0] and summary["tokens_per_run"] > 0, summary
base = summary["eval_loss_base"]
measured = 0
for c in summary["configs"]:
    name = c["name"]
    if name in expect_failed:
        assert c["status"] == "failed" and c["error"], c
        continue
    if c["status"] == "not_measured":
        assert c["note"].startswith("not measured") or "does not fit" in c["note"], c
        continue
    assert c["status"] == "ok", c
    measured += 1
    budget = c["budget"]
    assert budget in summary["budgets"], c
    assert c["seeds_ok"] == seeds, c
    assert c["eval_loss_after"] < base, (c, base)  # every method learned something
    assert c["eval_loss_after_min"] <= c["eval_loss_after"] <= c["eval_loss_after_max"], c
    assert abs(c["budget_error"] - (c["trainable_params"] - budget) / budget) < 1e-5, c
    if abs(c["budget_error"]) > 0.02:  # says why it cannot match
        assert ("off the budget: one more rank" in c["note"] or "rank set by" in c["note"]
                or "fixed size" in c["note"] or "off the budget: LoKr" in c["note"]
                or "one more virtual token" in c["note"] or "one more row" in c["note"]), c
    if c["method"] in ("lora", "dora", "loha", "lokr", "vera", "prompt", "tokens"):  # prompt: its length; tokens: rows
        assert c["rank"] >= 1, c
    for s in range(seeds):
        run = os.path.join(out, "runs", name, "seed%d" % s)
        n = safetensors_count(os.path.join(run, "adapter", "adapter_model.safetensors"))
        assert n == c["trainable_params"], (name, n, c["trainable_params"])
        m = json.load(open(os.path.join(run, "metrics.json")))
        assert m["config"] == name and m["status"] == "ok" and len(m["train_loss"]) == m["steps"], m
assert measured >= 2, summary

lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
ok = [l for l in lines if l["status"] == "ok"]
assert len(ok) == measured * seeds, (len(ok), measured, seeds)
assert len([l for l in lines if l["status"] == "failed"]) == len(expect_failed) * seeds
for name in ("chart.svg", "curves.svg"):
    root = ET.parse(os.path.join(out, name)).getroot()
    assert root.tag.endswith("svg"), name
    shapes = [e for e in root.iter() if e.tag.split("}")[-1] in ("circle", "rect", "path", "polyline")]
    assert len(shapes) >= measured, (name, len(shapes))
report = open(os.path.join(out, "report.md")).read()
for c in summary["configs"]:
    assert "`%s`" % c["name"] in report or "| %s |" % c["name"] in report, c["name"]
print("sweep ok: %d configurations measured x %d seeds" % (measured, seeds))
