#!/usr/bin/python3
"""Generate tests/data/tiny_phi3: a small random Phi-3 (model_type phi3) shaped as Phi-4-mini is
(partial rotary, LongRoPE, a sliding window), and the float64 PyTorch reference of LoRA, DoRA and
IA3 training steps on it.

Run with Debian's python3-torch:  /usr/bin/python3 tests/golden/make_phi3.py
The model is written from transformers' Phi3ForCausalLM equations (modeling_phi3.py): q, k and v
are the rows of one qkv_proj (q first), gate and up the rows of one gate_up_proj (gate first,
silu(gate) * up); RoPE on the first partial_rotary_factor x head_dim dimensions of each head
(rotate-half within them), with LongRoPE's frequencies theta^(-2i/d) / short_factor[i] (the
sequences here are shorter than original_max_position_embeddings) and cos, sin times the
attention factor sqrt(1 + ln(max / original) / ln(original)); the sliding-window mask
(i - j < sliding_window). PEFT adapts qkv_proj and gate_up_proj as single Linear modules. The
case files (adapter, gradients, adapter after one AdamW step, figures) are those of
make_golden.py.
"""
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_golden as mg  # noqa: E402

torch.set_default_dtype(torch.float64)
MODS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
PARENT = {"qkv_proj": "self_attn", "o_proj": "self_attn", "gate_up_proj": "mlp", "down_proj": "mlp"}
mg.PARENT.update(PARENT)  # the adapter key names of make_golden


class Cfg(mg.Cfg):
    def __init__(self, d):
        super().__init__(d)
        self.rot = int(self.hd * d.get("partial_rotary_factor", 1.0))
        rs = d["rope_scaling"]
        orig = d["original_max_position_embeddings"]
        factor = d["max_position_embeddings"] / orig
        self.mscale = math.sqrt(1 + math.log(factor) / math.log(orig)) if factor > 1 else 1.0
        self.short = torch.tensor(rs["short_factor"])
        self.window = d.get("sliding_window")


def rope(x, T, c):
    inv = 1.0 / (c.short * c.theta ** (torch.arange(0, c.rot, 2, dtype=torch.float64) / c.rot))
    fr = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    emb = torch.cat([fr, fr], -1)
    cos, sin = (emb.cos() * c.mscale)[None, :, None, :], (emb.sin() * c.mscale)[None, :, None, :]
    xr, xp = x[..., : c.rot], x[..., c.rot:]
    x1, x2 = xr[..., : c.rot // 2], xr[..., c.rot // 2:]
    return torch.cat([xr * cos + torch.cat([-x2, x1], -1) * sin, xp], -1)


def forward(c, W, tokens, labels, lora, scale):
    B, T = tokens.shape
    x = W["model.embed_tokens.weight"][tokens]

    def lin(l, m, inp):
        Wm = W[f"model.layers.{l}.{PARENT[m]}.{m}.weight"]
        ki = mg.key(l, m, "I")
        if ki in lora:  # IA3: (1, in) scales the input of a feedforward module, (out, 1) the output
            vec = lora[ki]
            return (inp * vec.view(-1)) @ Wm.T if vec.shape[0] == 1 else (inp @ Wm.T) * vec.view(-1)
        y = inp @ Wm.T
        ka = mg.key(l, m, "A")
        if ka in lora:
            A, Bm = lora[ka], lora[mg.key(l, m, "B")]
            y = y + scale * (inp @ A.T) @ Bm.T
            km = mg.key(l, m, "M")
            if km in lora:  # DoRA: the row norm of W + sBA, detached
                y = y * (lora[km] / (Wm + scale * Bm @ A).norm(dim=1).detach())
        return y

    i = torch.arange(T)
    banned = (i[None, :] > i[:, None]) | (i[:, None] - i[None, :] >= c.window)
    mask = torch.zeros(T, T).masked_fill(banned, float("-inf"))
    for l in range(c.L):
        p = f"model.layers.{l}."
        xn = mg.rmsnorm(x, W[p + "input_layernorm.weight"], c.eps)
        q, k, v = lin(l, "qkv_proj", xn).split([c.H * c.hd, c.Hkv * c.hd, c.Hkv * c.hd], -1)
        q, k = rope(q.view(B, T, c.H, c.hd), T, c), rope(k.view(B, T, c.Hkv, c.hd), T, c)
        v = v.view(B, T, c.Hkv, c.hd)
        rep = c.H // c.Hkv
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        s = q @ k.transpose(-1, -2) / math.sqrt(c.hd) + mask
        a = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, c.H * c.hd)
        h = x + lin(l, "o_proj", a)
        gate, up = lin(l, "gate_up_proj", mg.rmsnorm(h, W[p + "post_attention_layernorm.weight"], c.eps)).chunk(2, -1)
        x = h + lin(l, "down_proj", torch.nn.functional.silu(gate) * up)
    x = mg.rmsnorm(x, W["model.norm.weight"], c.eps)
    logits = x @ W["lm_head.weight"].T
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, c.V), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="mean")


def main():
    name = "tiny_phi3"
    out = os.path.join(mg.HERE, "..", "data", name)
    cfg = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 32, "intermediate_size": 40,
           "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 48,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
           "max_position_embeddings": 128, "original_max_position_embeddings": 32, "sliding_window": 5,
           "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.5, 2.5],
                            "long_factor": [2.0, 4.0, 8.0]},
           "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
           "attention_bias": False, "pad_token_id": 0}
    g = torch.Generator().manual_seed(31)
    c = Cfg(cfg)
    qkv = (c.H + 2 * c.Hkv) * c.hd
    dims = {"qkv_proj": (qkv, c.D), "o_proj": (c.D, c.H * c.hd), "gate_up_proj": (2 * c.F, c.D),
            "down_proj": (c.D, c.F)}
    W = {"model.embed_tokens.weight": torch.randn(c.V, c.D, generator=g) * 0.5,
         "model.norm.weight": 1 + 0.1 * torch.randn(c.D, generator=g),
         "lm_head.weight": torch.randn(c.V, c.D, generator=g) * 0.3}
    for l in range(c.L):
        for n in ("input_layernorm", "post_attention_layernorm"):
            W[f"model.layers.{l}.{n}.weight"] = 1 + 0.1 * torch.randn(c.D, generator=g)
        for m in MODS:
            o, i = dims[m]
            W[f"model.layers.{l}.{PARENT[m]}.{m}.weight"] = torch.randn(o, i, generator=g) / math.sqrt(i)
    W = mg.write_model(out, cfg, W)
    tokens, labels = mg.case_batch(g, c.V)
    r, alpha = 4, 8.0
    mg.forward = forward  # one_step's model
    mg.OUT = out
    for case, dora in (("all_linear", False), ("dora", True)):
        lora = {}
        for l in range(c.L):
            for m in MODS:
                lora.update(mg.lora_pair(g, dims, l, m, r))
                if dora:
                    lora[mg.key(l, m, "M")] = 1 + 0.1 * torch.randn(dims[m][0], generator=g)
        lora = {k: v.to(torch.float32).to(torch.float64) for k, v in lora.items()}
        acfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
                "target_modules": MODS, "bias": "none", "use_rslora": False, "use_dora": dora,
                "layers_to_transform": None, "init_lora_weights": True, "base_model_name_or_path": name}
        mg.write_case(case, lora, acfg, tokens, labels, 1e-2, 0.0, 0.0,
                      mg.one_step(c, W, tokens, labels, lora, alpha / r, 1e-2, 0.0, 0.0))
    # IA3: the fused modules' output vectors span q, k and v (gate and up); down_proj's input
    ia3 = {}
    for l in range(c.L):
        for m in ("qkv_proj", "gate_up_proj", "down_proj"):
            o, i = dims[m]
            ia3[mg.key(l, m, "I")] = 1 + 0.3 * torch.randn(*((1, i) if m == "down_proj" else (o, 1)), generator=g)
    ia3 = {k: v.to(torch.float32).to(torch.float64) for k, v in ia3.items()}
    acfg = {"peft_type": "IA3", "task_type": "CAUSAL_LM", "target_modules": ["qkv_proj", "gate_up_proj", "down_proj"],
            "feedforward_modules": ["down_proj"], "fan_in_fan_out": False, "init_ia3_weights": True,
            "base_model_name_or_path": name}
    mg.write_case("ia3", ia3, acfg, tokens, labels, 1e-2, 0.0, 0.0,
                  mg.one_step(c, W, tokens, labels, ia3, 1.0, 1e-2, 0.0, 0.0))
    with torch.no_grad():
        base = float(forward(c, W, tokens, labels, {}, 0.0))
    with open(os.path.join(out, "base_loss.json"), "w") as f:
        json.dump({"loss": base}, f)
    print(f"{name}: base loss {base:.6f}")


if __name__ == "__main__":
    sys.exit(main())
