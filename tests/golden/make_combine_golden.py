#!/usr/bin/python3
"""PyTorch references for peft_adapter_combine_ex (PEFT's add_weighted_adapter merges).

Run with Debian's python3-torch:  /usr/bin/python3 tests/golden/make_combine_golden.py
It writes tests/data/tiny/combine/: two LoRA adapters for the tiny model (a: q, v in every
layer, r 4, alpha 8; b: q, v, o in layer 1 and q in layer 0, r 4, alpha 4, rsLoRA) and, per
combination, the expected result, written from the formulas of PEFT's merge_utils.py and
LoraModel.add_weighted_adapter (float64):
  ties, magnitude_prune, dare_linear (density 1), ties_frequency: the new lora_A / lora_B
  (the merge applied to the A's and to the B's with weights sqrt(w s));
  ties_svd, magnitude_prune_svd: the pruned, elected, weighted delta before truncation under
  "<module>.full" and its rank-r truncation (U S V^T) under "<module>.delta".
libpeft applies each adapter's scale once in the svd family (the deltas s B A with weights w);
PEFT's code multiplies the weight by the scale a second time (valid_weights = w s on
get_delta_weight, which holds s already). Both adapters here are chosen so that this differs
(s = 2 and 2, the weights 0.7 and 1.3): the reference follows libpeft's documented rule.
"""
import json
import math
import os

import torch

from make_golden import st_write

torch.set_default_dtype(torch.float64)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data", "tiny", "combine")
PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn"}
DENSITY = 0.5
WEIGHTS = [0.7, 1.3]


def key(layer, mod, ab):
    return f"base_model.model.model.layers.{layer}.{PARENT[mod]}.{mod}.lora_{ab}.weight"


def adapter(gen, mods, r, alpha, rslora, dim=32, kv=16):
    out = {}
    for layer, mod in mods:
        o = kv if mod in ("k_proj", "v_proj") else dim
        out[key(layer, mod, "A")] = (torch.randn(r, dim, generator=gen) * 0.3).float().double()
        out[key(layer, mod, "B")] = (torch.randn(o, r, generator=gen) * 0.3).float().double()
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "use_rslora": rslora,
           "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True,
           "target_modules": "|".join(f"model\\.layers\\.{l}\\.{PARENT[m]}\\.{m}" for l, m in mods),
           "base_model_name_or_path": None, "inference_mode": True}
    return out, cfg, (alpha / math.sqrt(r) if rslora else alpha / r)


# ---- merge_utils.py's formulas ----
def magnitude_prune_one(t, density):
    k = int(density * t.numel())
    mask = torch.zeros(t.numel())
    mask[torch.topk(t.abs().reshape(-1), k=k, largest=True)[1]] = 1
    return t * mask.reshape(t.shape)


def merge(tensors, weights, density, prune, ties, method="total"):
    if prune and density < 1:
        tensors = [magnitude_prune_one(t, density) for t in tensors]
    st = torch.stack(tensors)
    w = torch.tensor(weights).reshape(-1, *([1] * (st.dim() - 1)))
    if not ties:
        return (st * w).sum(0)
    sign = st.sign()
    mag = st.sum(0) if method == "total" else sign.sum(0)
    mask = sign == torch.where(mag >= 0, 1.0, -1.0)
    return (st * w * mask).sum(0) / torch.clamp(mask.sum(0), min=1.0)


def main():
    gen = torch.Generator().manual_seed(20261130)
    a_mods = [(l, m) for l in range(3) for m in ("q_proj", "v_proj")]
    b_mods = [(0, "q_proj"), (1, "q_proj"), (1, "v_proj"), (1, "o_proj")]
    a, a_cfg, sa = adapter(gen, a_mods, 4, 8, False)
    b, b_cfg, sb = adapter(gen, b_mods, 4, 4, True)
    for name, t, c in (("a", a, a_cfg), ("b", b, b_cfg)):
        os.makedirs(os.path.join(OUT, name), exist_ok=True)
        st_write(os.path.join(OUT, name, "adapter_model.safetensors"), {k: v.float() for k, v in t.items()},
                 {"format": "pt"})
        with open(os.path.join(OUT, name, "adapter_config.json"), "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)
    union = sorted(set(a_mods) | set(b_mods))
    srcs = [(a, sa, WEIGHTS[0]), (b, sb, WEIGHTS[1])]
    cases = {"ties": (DENSITY, True, True, "total"), "magnitude_prune": (DENSITY, True, False, "total"),
             "dare_linear": (1.0, False, False, "total"), "ties_frequency": (DENSITY, True, True, "frequency")}
    for case, (density, prune, ties, method) in cases.items():
        out = {}
        for layer, mod in union:
            here = [(t, s, w) for t, s, w in srcs if key(layer, mod, "A") in t]
            ws = [math.sqrt(w * s) for _, s, w in here]
            for ab in "AB":
                out[key(layer, mod, ab)] = merge([t[key(layer, mod, ab)] for t, _, _ in here], ws, density, prune,
                                                 ties, method).float()
        st_write(os.path.join(OUT, case + ".safetensors"), out)
    for case, (prune, ties) in {"ties_svd": (True, True), "magnitude_prune_svd": (True, False)}.items():
        out = {}
        for layer, mod in union:
            here = [(t, s, w) for t, s, w in srcs if key(layer, mod, "A") in t]
            deltas = [s * t[key(layer, mod, "B")] @ t[key(layer, mod, "A")] for t, s, _ in here]
            full = merge(deltas, [w for _, _, w in here], DENSITY, prune, ties)
            U, S, Vh = torch.linalg.svd(full)
            r = 4
            stem = f"base_model.model.model.layers.{layer}.{PARENT[mod]}.{mod}"
            out[stem + ".full"] = full.float()
            out[stem + ".delta"] = ((U[:, :r] * S[:r]) @ Vh[:r]).float()
        st_write(os.path.join(OUT, case + ".safetensors"), out)
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump({"density": DENSITY, "weights": WEIGHTS, "rank": 4}, f, indent=1)
    print("combine: a, b and", ", ".join(list(cases) + ["ties_svd", "magnitude_prune_svd"]))


if __name__ == "__main__":
    main()
