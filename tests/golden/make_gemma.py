#!/usr/bin/python3
"""Generate tests/data/tiny_gemma3 and tests/data/tiny_gemma2: small random Gemma 3 text
(model_type gemma3_text) and Gemma 2 models, and the float64 PyTorch reference of one LoRA
training step on each.

Run with Debian's python3-torch:  /usr/bin/python3 tests/golden/make_gemma.py
The models are written from transformers' Gemma3ForCausalLM and Gemma2ForCausalLM equations
(modeling_gemma3.py, modeling_gemma2.py): embeddings times sqrt(hidden); RMSNorm as
x * rsqrt(mean(x^2) + eps) * (1 + w) with zero-centred weights; a norm after attention and after
the MLP, each before its residual; GELU (tanh) gating; scores times query_pre_attn_scalar^-1/2;
sliding layers (i - j < sliding_window). Gemma 3: per-head q/k norms, the sliding layers with
their own RoPE base and no scaling, every sliding_window_pattern-th layer global with rope_theta
and rope_scaling. Gemma 2: every other layer global, one RoPE base, the scores and the final
logits soft-capped (cap tanh(x / cap)). The case files (adapter, gradients, adapter after one
AdamW step, figures) are those of make_golden.py.
"""
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_golden as mg  # noqa: E402

torch.set_default_dtype(torch.float64)

CFG = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 32,
       "intermediate_size": 40, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
       "head_dim": 12, "vocab_size": 48, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
       "rope_local_base_freq": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 2.0},
       "query_pre_attn_scalar": 16, "sliding_window": 5, "sliding_window_pattern": 2,
       "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
       "hidden_activation": "gelu_pytorch_tanh", "attn_logit_softcapping": None, "final_logit_softcapping": None,
       "attention_bias": False, "tie_word_embeddings": True, "bos_token_id": 2, "eos_token_id": [1, 6],
       "pad_token_id": 0, "max_position_embeddings": 512}


CFG2 = {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_size": 32,
        "intermediate_size": 40, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 12, "vocab_size": 48, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "query_pre_attn_scalar": 16, "sliding_window": 5, "attn_logit_softcapping": 2.0,
        "final_logit_softcapping": 3.0, "hidden_activation": "gelu_pytorch_tanh", "hidden_act": "gelu_pytorch_tanh",
        "attention_bias": False, "tie_word_embeddings": True, "bos_token_id": 2, "eos_token_id": [1, 107],
        "pad_token_id": 0, "max_position_embeddings": 512}


class Cfg(mg.Cfg):
    def __init__(self, d):
        super().__init__(d)
        self.v2 = d["model_type"] == "gemma2"
        self.qk_norm = not self.v2
        self.local_theta = d.get("rope_local_base_freq", self.theta)
        self.factor = (d.get("rope_scaling") or {}).get("factor", 1.0)
        self.qpas = d["query_pre_attn_scalar"]
        self.window = d["sliding_window"]
        self.attn_cap = d.get("attn_logit_softcapping")
        self.final_cap = d.get("final_logit_softcapping")
        if self.v2:  # transformers' Gemma 2: the even layers slide
            self.sliding = [l % 2 == 0 for l in range(self.L)]
        else:
            self.sliding = [t == "sliding_attention" for t in d["layer_types"]]


def norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w)


def rope(x, T, hd, theta, factor):
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)) / factor
    fr = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    emb = torch.cat([fr, fr], -1)
    cos, sin = emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def forward(c, W, tokens, labels, lora, scale):
    B, T = tokens.shape
    # tuned norms (LN tuning's key, or LoRA's modules_to_save) replace the base ones: w itself,
    # zero-centred, applied as 1 + w like the base weights
    W = dict(W)
    for k in list(W):
        for tk in (mg.norm_key(k), "base_model.model." + k):
            if tk in lora:
                W[k] = lora[tk]

    def lin(l, m, inp):
        y = inp @ W[f"model.layers.{l}.{mg.PARENT[m]}.{m}.weight"].T
        ka = mg.key(l, m, "A")
        if ka in lora:
            y = y + scale * (inp @ lora[ka].T) @ lora[mg.key(l, m, "B")].T
        return y

    x = W["model.embed_tokens.weight"][tokens] * math.sqrt(c.D)
    i = torch.arange(T)
    causal = i[:, None] >= i[None, :]
    for l in range(c.L):
        p = f"model.layers.{l}."
        allowed = causal & (i[:, None] - i[None, :] < c.window) if c.sliding[l] else causal
        mask = torch.zeros(T, T).masked_fill(~allowed, float("-inf"))
        theta, factor = (c.local_theta, 1.0) if c.sliding[l] and not c.v2 else (c.theta, c.factor)
        xn = norm(x, W[p + "input_layernorm.weight"], c.eps)
        q = lin(l, "q_proj", xn).view(B, T, c.H, c.hd)
        k = lin(l, "k_proj", xn).view(B, T, c.Hkv, c.hd)
        v = lin(l, "v_proj", xn).view(B, T, c.Hkv, c.hd)
        if c.qk_norm:
            q = norm(q, W[p + "self_attn.q_norm.weight"], c.eps)
            k = norm(k, W[p + "self_attn.k_norm.weight"], c.eps)
        q, k = rope(q, T, c.hd, theta, factor), rope(k, T, c.hd, theta, factor)
        rep = c.H // c.Hkv
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        s = q @ k.transpose(-1, -2) * c.qpas ** -0.5
        if c.attn_cap:
            s = c.attn_cap * torch.tanh(s / c.attn_cap)
        s = s + mask
        a = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, c.H * c.hd)
        h = x + norm(lin(l, "o_proj", a), W[p + "post_attention_layernorm.weight"], c.eps)
        z = norm(h, W[p + "pre_feedforward_layernorm.weight"], c.eps)
        g, u = lin(l, "gate_proj", z), lin(l, "up_proj", z)
        f = lin(l, "down_proj", torch.nn.functional.gelu(g, approximate="tanh") * u)
        x = h + norm(f, W[p + "post_feedforward_layernorm.weight"], c.eps)
    x = norm(x, W["model.norm.weight"], c.eps)
    logits = x @ W["model.embed_tokens.weight"].T
    if c.final_cap:
        logits = c.final_cap * torch.tanh(logits / c.final_cap)
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, c.V), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="mean")


NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")


def make(cfg, name, seed):
    out = os.path.join(mg.HERE, "..", "data", name)
    g = torch.Generator().manual_seed(seed)
    c = Cfg(cfg)
    W = {"model.embed_tokens.weight": torch.randn(c.V, c.D, generator=g) * 0.3,
         "model.norm.weight": 0.2 * torch.randn(c.D, generator=g)}
    dims = {"q_proj": (c.H * c.hd, c.D), "k_proj": (c.Hkv * c.hd, c.D), "v_proj": (c.Hkv * c.hd, c.D),
            "o_proj": (c.D, c.H * c.hd), "gate_proj": (c.F, c.D), "up_proj": (c.F, c.D), "down_proj": (c.D, c.F)}
    for l in range(c.L):
        for n in NORMS:
            W[f"model.layers.{l}.{n}.weight"] = 0.2 * torch.randn(c.D, generator=g)
        for n in ("q_norm", "k_norm") if c.qk_norm else ():
            W[f"model.layers.{l}.self_attn.{n}.weight"] = 0.2 * torch.randn(c.hd, generator=g)
        for m in mg.MODS:
            o, i = dims[m]
            W[f"model.layers.{l}.{mg.PARENT[m]}.{m}.weight"] = torch.randn(o, i, generator=g) / math.sqrt(i)
    W = mg.write_model(out, cfg, W)
    tokens, labels = mg.case_batch(g, c.V)
    r, alpha = 4, 8.0
    lora = {}
    for l in range(c.L):
        for m in mg.MODS:
            lora.update(mg.lora_pair(g, dims, l, m, r))
    lora = {k: v.to(torch.float32).to(torch.float64) for k, v in lora.items()}
    acfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
            "target_modules": mg.MODS, "bias": "none", "use_rslora": False, "use_dora": False,
            "layers_to_transform": None, "init_lora_weights": True, "base_model_name_or_path": name}
    mg.forward = forward  # one_step's model
    mg.OUT = out
    mg.write_case("all_linear", lora, acfg, tokens, labels, 1e-2, 0.0, 0.0,
                  mg.one_step(c, W, tokens, labels, lora, alpha / r, 1e-2, 0.0, 0.0))
    # the base model's loss alone (no adapter), for the evaluation test
    with torch.no_grad():
        base = float(forward(c, W, tokens, labels, {}, 0.0))
    with open(os.path.join(out, "base_loss.json"), "w") as f:
        json.dump({"loss": base}, f)
    print(f"{name}: base loss {base:.6f}")

    # LN tuning of all four norms of every layer and the final one, with weight decay (on w, the
    # zero-centred parameter, as PyTorch decays it)
    names = [f"model.layers.{l}.{n}.weight" for l in range(c.L) for n in NORMS] + ["model.norm.weight"]
    lnt = {mg.norm_key(n): (W[n] + 0.1 * torch.randn(c.D, generator=g)).to(torch.float32).to(torch.float64)
           for n in names}
    acfg = {"peft_type": "LN_TUNING", "task_type": "CAUSAL_LM", "target_modules": list(NORMS) + ["norm"],
            "base_model_name_or_path": name}
    mg.write_case("norms_all", lnt, acfg, tokens, labels, 1e-2, 0.1, 0.0,
                  mg.one_step(c, W, tokens, labels, lnt, 1.0, 1e-2, 0.1, 0.0))
    # LoRA on the last layer with Gemma's norms after attention and the MLP trained alongside
    # (modules_to_save)
    lora = {}
    for m in mg.MODS:
        lora.update(mg.lora_pair(g, dims, c.L - 1, m, r))
    for n in ("post_attention_layernorm", "post_feedforward_layernorm"):
        k = f"model.layers.{c.L - 1}.{n}.weight"
        lora["base_model.model." + k] = W[k] + 0.1 * torch.randn(c.D, generator=g)
    lora = {k: v.to(torch.float32).to(torch.float64) for k, v in lora.items()}
    acfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
            "target_modules": mg.MODS, "bias": "none", "use_rslora": False, "use_dora": False,
            "layers_to_transform": [c.L - 1], "init_lora_weights": True, "base_model_name_or_path": name,
            "modules_to_save": [f"model.layers.{c.L - 1}.post_attention_layernorm",
                                f"model.layers.{c.L - 1}.post_feedforward_layernorm"]}
    mg.write_case("lora_post_norms", lora, acfg, tokens, labels, 1e-2, 0.0, 0.0,
                  mg.one_step(c, W, tokens, labels, lora, alpha / r, 1e-2, 0.0, 0.0))
    if not c.qk_norm:
        return
    # LN tuning of the q/k norms (one head_dim weight each, applied to every head), zero-centred
    names = [f"model.layers.{l}.self_attn.{n}.weight" for l in range(c.L) for n in ("q_norm", "k_norm")]
    lnt = {mg.norm_key(n): (W[n] + 0.1 * torch.randn(c.hd, generator=g)).to(torch.float32).to(torch.float64)
           for n in names}
    acfg = {"peft_type": "LN_TUNING", "task_type": "CAUSAL_LM", "target_modules": ["q_norm", "k_norm"],
            "base_model_name_or_path": name}
    mg.write_case("qk_norms", lnt, acfg, tokens, labels, 1e-2, 0.1, 0.0,
                  mg.one_step(c, W, tokens, labels, lnt, 1.0, 1e-2, 0.1, 0.0))


def make_multimodal():
    """tests/data/tiny_gemma3_mm: tiny_gemma3 as a multimodal checkpoint (model_type gemma3,
    Gemma3ForConditionalGeneration) as the Hub's are saved: the text model under
    "language_model.model.", a vision tower and projector beside it (small, random; not used by
    a text model), text_config without the keys that are Gemma3TextConfig's defaults."""
    src = os.path.join(mg.HERE, "..", "data", "tiny_gemma3")
    out = os.path.join(mg.HERE, "..", "data", "tiny_gemma3_mm")
    W = mg.st_read(os.path.join(src, "model.safetensors"))
    g = torch.Generator().manual_seed(37)
    T = {"language_model." + k: torch.as_tensor(v) for k, v in W.items()}
    T["vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.randn(16, 3, 2, 2, generator=g)
    T["vision_tower.vision_model.post_layernorm.weight"] = torch.randn(16, generator=g)
    T["multi_modal_projector.mm_input_projection_weight"] = torch.randn(16, 32, generator=g)
    T["multi_modal_projector.mm_soft_emb_norm.weight"] = torch.randn(16, generator=g)
    text = {k: v for k, v in CFG.items() if k not in ("architectures", "rms_norm_eps", "rope_local_base_freq",
                                                       "hidden_activation", "tie_word_embeddings", "bos_token_id",
                                                       "eos_token_id", "pad_token_id", "attention_bias",
                                                       "attn_logit_softcapping", "final_logit_softcapping")}
    cfg = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "boi_token_index": 40,
           "eoi_token_index": 41, "image_token_index": 42, "mm_tokens_per_image": 4, "eos_token_id": [1, 6],
           "text_config": text,
           "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 16, "image_size": 4,
                             "patch_size": 2, "num_hidden_layers": 0, "num_attention_heads": 2,
                             "intermediate_size": 32}}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    mg.st_write(os.path.join(out, "model.safetensors"), T, {"format": "pt"})


def main():
    make(CFG, "tiny_gemma3", 35)
    make(CFG2, "tiny_gemma2", 36)
    make_multimodal()


if __name__ == "__main__":
    sys.exit(main())
