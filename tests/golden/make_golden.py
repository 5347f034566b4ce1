#!/usr/bin/python3
"""Generate the PyTorch golden files the C tests compare against.

Run with Debian's python3-torch:  /usr/bin/python3 tests/golden/make_golden.py
It writes tests/data/tiny/ (a small random Llama in Hugging Face format) and, per
case, an initial PEFT LoRA adapter plus the float64 reference of one training step:
loss, gradients of every adapter tensor, the adapter after one AdamW step (with
clipping and weight decay) and the loss after it. The model here is written from
the Hugging Face LlamaForCausalLM equations (DESIGN.md section 3), in float64.
When ../shared is present the same code is checked against its reference figures.
"""
import json
import math
import os
import struct
import sys

import torch

torch.set_default_dtype(torch.float64)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data", "tiny")
SHARED = os.path.join(HERE, "..", "..", "..", "shared")
MODS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PARENT = {m: ("self_attn" if m in MODS[:4] else "mlp") for m in MODS}


# ---- safetensors (F32) without the safetensors package ----
def st_write(path, tensors, metadata=None):
    names = sorted(tensors)
    header, off, blobs = {}, 0, []
    for n in names:
        t = tensors[n].detach().to(torch.float32).contiguous()
        b = t.numpy().tobytes()
        header[n] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def st_read(path):
    import numpy as np
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        assert v["dtype"] == "F32"
        arr = np.frombuffer(data[a:b], dtype=np.float32).reshape(v["shape"])
        out[k] = torch.tensor(arr.copy(), dtype=torch.float64)
    return out


# ---- the model ----
class Cfg:
    def __init__(self, d):
        self.D = d["hidden_size"]
        self.F = d["intermediate_size"]
        self.L = d["num_hidden_layers"]
        self.H = d["num_attention_heads"]
        self.Hkv = d.get("num_key_value_heads", self.H)
        self.hd = d.get("head_dim", self.D // self.H)
        self.V = d["vocab_size"]
        self.eps = d.get("rms_norm_eps", 1e-6)
        self.theta = d.get("rope_theta", 10000.0)
        self.tied = d.get("tie_word_embeddings", False)
        # Qwen2: biases on q, k, v; Qwen3: RMSNorm over each head of q and k before RoPE
        self.bias = ["q_proj", "k_proj", "v_proj"] if d.get("model_type") == "qwen2" else \
            ["q_proj", "k_proj", "v_proj", "o_proj"] if d.get("attention_bias", False) else []
        if d.get("mlp_bias", False):
            self.bias += ["gate_proj", "up_proj", "down_proj"]
        self.qk_norm = d.get("model_type") == "qwen3"
        # SmolLM3: no_rope_layers (1: RoPE, 0: none), else RoPE left out of every
        # no_rope_layer_interval-th layer
        self.rope_layers = [1] * self.L
        # Granite: embeddings times embedding_multiplier, scores times attention_multiplier (in place of
        # 1/sqrt(head_dim)), the attention and MLP outputs times residual_multiplier, logits / logits_scaling
        self.granite = d.get("model_type") == "granite"
        self.emb_mul = d.get("embedding_multiplier", 1.0) if self.granite else 1.0
        self.attn_mul = d.get("attention_multiplier", 1.0) if self.granite else None
        self.res_mul = d.get("residual_multiplier", 1.0) if self.granite else 1.0
        self.logit_div = d.get("logits_scaling", 1.0) if self.granite else 1.0
        if d.get("model_type") == "smollm3":
            k = d.get("no_rope_layer_interval", 4)
            self.rope_layers = d.get("no_rope_layers") or [int((i + 1) % k != 0) for i in range(self.L)]


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, T, hd, theta):
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    fr = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    emb = torch.cat([fr, fr], -1)
    cos, sin = emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    rot = torch.cat([-x2, x1], -1)
    return x * cos + rot * sin


def key(l, m, ab):
    if ab == "I":
        return f"base_model.model.model.layers.{l}.{PARENT[m]}.{m}.ia3_l"
    if ab == "M":
        return f"base_model.model.model.layers.{l}.{PARENT[m]}.{m}.lora_magnitude_vector"
    return f"base_model.model.model.layers.{l}.{PARENT[m]}.{m}.lora_{ab}.weight"


EMBED_A = "base_model.model.model.embed_tokens.lora_embedding_A"
EMBED_B = "base_model.model.model.embed_tokens.lora_embedding_B"


def norm_key(name):
    # "model.layers.0.input_layernorm.weight" -> the LN_TUNING adapter key
    return "base_model.model." + name[: -len(".weight")] + ".ln_tuning_layers.weight"


HEAD_A = "base_model.model.lm_head.lora_A.weight"
HEAD_B = "base_model.model.lm_head.lora_B.weight"
TOK_DELTA = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"
TOKEN_IDX = [3, 7, 11]
PROMPT = "prompt_embeddings"
TOK_ONLY = "base_model.model.model.embed_tokens.trainable_tokens_delta"  # PEFT TRAINABLE_TOKENS
HEAD_TOK = "base_model.model.lm_head.token_adapter.trainable_tokens_delta"  # {"lm_head": [...]}
HEAD_IDX = [0, 5, 40, 47]


def forward(c, W, tokens, labels, lora, scale):
    B, T = tokens.shape
    W = dict(W)
    for k in list(W):  # modules_to_save: the trained copy replaces the module's weight
        if "base_model.model." + k in lora:
            W[k] = lora["base_model.model." + k]
    for tk in (TOK_DELTA, TOK_ONLY):  # PEFT's trainable tokens: the rows are replaced (index_copy)
        if tk in lora:
            W["model.embed_tokens.weight"] = W["model.embed_tokens.weight"].index_copy(
                0, torch.tensor(TOKEN_IDX), lora[tk])
    x = W["model.embed_tokens.weight"][tokens]
    if PROMPT in lora:  # PEFT prompt tuning: the soft prompt first, its labels -100, positions shifted
        P = lora[PROMPT].shape[0]
        x = torch.cat([lora[PROMPT].unsqueeze(0).expand(B, P, c.D), x], 1)
        labels = torch.cat([torch.full((B, P), -100, dtype=labels.dtype), labels], 1)
        T = T + P
    if EMBED_A in lora:  # PEFT: embedding(x, A^T) @ B^T * scaling, on the input lookup only
        x = x + scale * lora[EMBED_A].T[tokens] @ lora[EMBED_B].T
    for k in list(W):
        if norm_key(k) in lora:  # LN tuning: the trained norm weight replaces the base one
            W[k] = lora[norm_key(k)]
    if c.granite:
        x = x * c.emb_mul

    def lin(l, m, inp):
        Wm = W[f"model.layers.{l}.{PARENT[m]}.{m}.weight"]
        ki = key(l, m, "I")
        bias = W.get(f"model.layers.{l}.{PARENT[m]}.{m}.bias")
        pb = f"base_model.model.model.layers.{l}.{PARENT[m]}.{m}."  # a trained bias (PEFT's bias option)
        bias = lora.get(pb + "base_layer.bias", lora.get(pb + "bias", bias))
        if ki in lora:  # IA3: (1, in) scales the input of feedforward modules, (out, 1) the output,
            vec = lora[ki]  # bias included (PEFT scales base_layer(x))
            if vec.shape[0] == 1:
                y = (inp * vec.view(-1)) @ Wm.T
                return y if bias is None else y + bias
            y = inp @ Wm.T if bias is None else inp @ Wm.T + bias
            return y * vec.view(-1)
        y = inp @ Wm.T
        if bias is not None:
            y = y + bias
        kh = f"base_model.model.model.layers.{l}.{PARENT[m]}.{m}.hada_"
        if kh + "w1_a" in lora:  # LoHa: delta W = s (w1_a w1_b) * (w2_a w2_b)
            dW = scale * (lora[kh + "w1_a"] @ lora[kh + "w1_b"]) * (lora[kh + "w2_a"] @ lora[kh + "w2_b"])
            return y + inp @ dW.T
        kk = f"base_model.model.model.layers.{l}.{PARENT[m]}.{m}.lokr_"
        if kk + "w1" in lora:  # LoKr: delta W = s kron(w1, w2) (w2 = w2_a w2_b when factored)
            w2 = lora[kk + "w2"] if kk + "w2" in lora else lora[kk + "w2_a"] @ lora[kk + "w2_b"]
            rr = lora_ranks[(l, m)]
            return y + inp @ (LOKR_ALPHA / rr * torch.kron(lora[kk + "w1"], w2)).T
        kb = f"base_model.model.model.layers.{l}.{PARENT[m]}.{m}.vera_lambda_b"
        if kb in lora:  # VeRA: lambda_b * (B[:out] (lambda_d * (A[:, :in] x)))
            A, Bm = lora["base_model.vera_A"], lora["base_model.vera_B"]
            lb, ld = lora[kb], lora[kb[:-1] + "d"]
            i, o = Wm.shape[1], Wm.shape[0]
            return y + lb * ((ld * (inp @ A[:, :i].T)) @ Bm[:o].T)
        ka = key(l, m, "A")
        if ka in lora:
            A, Bm = lora[ka], lora[key(l, m, "B")]
            y = y + scale * (inp @ A.T) @ Bm.T
            km = key(l, m, "M")
            if km in lora:
                # PEFT DoRA: the row norm of W + sBA is detached (a constant in backward)
                norm = (Wm + scale * Bm @ A).norm(dim=1).detach()
                y = y * (lora[km] / norm)
        return y

    mask = torch.full((T, T), float("-inf")).triu(1)
    for l in range(c.L):
        p = f"model.layers.{l}."
        xn = rmsnorm(x, W[p + "input_layernorm.weight"], c.eps)
        q = lin(l, "q_proj", xn).view(B, T, c.H, c.hd)
        k = lin(l, "k_proj", xn).view(B, T, c.Hkv, c.hd)
        v = lin(l, "v_proj", xn).view(B, T, c.Hkv, c.hd)
        if c.qk_norm:
            q = rmsnorm(q, W[p + "self_attn.q_norm.weight"], c.eps)
            k = rmsnorm(k, W[p + "self_attn.k_norm.weight"], c.eps)
        if c.rope_layers[l]:
            q, k = rope(q, T, c.hd, c.theta), rope(k, T, c.hd, c.theta)
        rep = c.H // c.Hkv
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if c.granite:
            s = q @ k.transpose(-1, -2) * c.attn_mul + mask
        else:
            s = q @ k.transpose(-1, -2) / math.sqrt(c.hd) + mask
        a = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, c.H * c.hd)
        h = x + c.res_mul * lin(l, "o_proj", a)
        z = rmsnorm(h, W[p + "post_attention_layernorm.weight"], c.eps)
        g, u = lin(l, "gate_proj", z), lin(l, "up_proj", z)
        x = h + c.res_mul * lin(l, "down_proj", torch.nn.functional.silu(g) * u)
    x = rmsnorm(x, W["model.norm.weight"], c.eps)
    head = W["model.embed_tokens.weight"] if c.tied or "lm_head.weight" not in W else W["lm_head.weight"]
    if HEAD_TOK in lora:  # trainable rows of an untied lm_head (PEFT's dict form)
        head = head.index_copy(0, torch.tensor(HEAD_IDX), lora[HEAD_TOK])
    logits = x @ head.T
    if HEAD_A in lora:  # LoRA on lm_head
        logits = logits + scale * (x @ lora[HEAD_A].T) @ lora[HEAD_B].T
    if c.granite:
        logits = logits / c.logit_div
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, c.V), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="mean")


FROZEN = ("base_model.vera_A", "base_model.vera_B")  # VeRA's shared projections are not trained


def one_step(c, W, tokens, labels, lora0, scale, lr, wd, clip, betas=(0.9, 0.999), eps=1e-8):
    lora = {k: v.clone().requires_grad_(k not in FROZEN) for k, v in lora0.items()}
    trained = [v for k, v in lora.items() if k not in FROZEN]
    loss = forward(c, W, tokens, labels, lora, scale)
    loss.backward()
    grads = {k: v.grad.clone() for k, v in lora.items() if k not in FROZEN}
    gnorm = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
    # biases without weight decay, as the Hugging Face Trainer groups them
    decayed = [v for k, v in lora.items() if k not in FROZEN and not k.endswith(".bias")]
    biases = [v for k, v in lora.items() if k not in FROZEN and k.endswith(".bias")]
    groups = [{"params": decayed, "weight_decay": wd}] + ([{"params": biases, "weight_decay": 0.0}] if biases else [])
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(trained, clip)
    opt.step()
    with torch.no_grad():
        after = {k: v.detach().clone() for k, v in lora.items()}
        loss2 = forward(c, W, tokens, labels, after, scale)
    return float(loss), gnorm, grads, after, float(loss2)


def make_tiny():
    g = torch.Generator().manual_seed(1234)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
           "intermediate_size": 40, "num_hidden_layers": 3, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 48, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
           "bos_token_id": 1, "eos_token_id": 2}
    c = Cfg(cfg)
    W = {"model.embed_tokens.weight": torch.randn(c.V, c.D, generator=g) * 0.5,
         "model.norm.weight": 1 + 0.1 * torch.randn(c.D, generator=g),
         "lm_head.weight": torch.randn(c.V, c.D, generator=g) * 0.3}
    dims = {"q_proj": (c.H * c.hd, c.D), "k_proj": (c.Hkv * c.hd, c.D), "v_proj": (c.Hkv * c.hd, c.D),
            "o_proj": (c.D, c.H * c.hd), "gate_proj": (c.F, c.D), "up_proj": (c.F, c.D), "down_proj": (c.D, c.F)}
    for l in range(c.L):
        W[f"model.layers.{l}.input_layernorm.weight"] = 1 + 0.1 * torch.randn(c.D, generator=g)
        W[f"model.layers.{l}.post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(c.D, generator=g)
        for m in MODS:
            o, i = dims[m]
            W[f"model.layers.{l}.{PARENT[m]}.{m}.weight"] = torch.randn(o, i, generator=g) / math.sqrt(i)
    # round the weights to float32 so the file and the reference hold the same numbers
    W = {k: v.to(torch.float32).to(torch.float64) for k, v in W.items()}
    return cfg, c, W, dims


CASES = [
    # name, targets, layers (None = all), r, alpha, rslora, lr, wd, clip, dora
    ("all_linear", MODS, None, 4, 8.0, False, 1e-2, 0.0, 0.0, False),
    ("qv_down_last_rslora", ["q_proj", "v_proj", "down_proj"], [2], 2, 4.0, True, 5e-3, 0.1, 0.05, False),
    ("dora_qkvo_up", ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"], [0, 2], 3, 6.0, False, 1e-2, 0.0, 0.0, True),
]


NORM_CASES = [
    # LN tuning of both norms in layers 1 and 2 and the final norm: rank -1 marks it
    ("norms_last2_final", [], [1, 2], -1, 0.0, False, 1e-2, 0.0, 0.0, False),
]

EMBED_CASES = [
    # LoRA on the token embeddings with q and v (iterated last: the other cases' draws stay put)
    ("embed_qv", ["q_proj", "v_proj", "embed_tokens"], None, 3, 6.0, False, 1e-2, 0.0, 0.0, False),
]

VERA_CASES = [
    # VeRA on q, v (out 16 < 32: B sliced) and down (in 40: A as wide as the widest input) of layers 1, 2;
    # rank -2 marks VeRA, the rank itself is in the name's table below
    ("vera_qv_down", ["q_proj", "v_proj", "down_proj"], [1, 2], -2, 0.0, False, 1e-2, 0.0, 0.0, False),
]
VERA_RANK = 6

LOHA_CASES = [
    # LoHa on q, o and up of layers 0 and 2, r 3, alpha 6; rank -3 marks LoHa
    ("loha_qo_up", ["q_proj", "o_proj", "up_proj"], [0, 2], -3, 6.0, False, 1e-2, 0.0, 0.0, False),
]
LOHA_RANK = 3

LOKR_CASES = [
    # LoKr on q, v and gate of layers 1 and 2, r 2 (gate r 4 through rank_pattern: a full w2); rank -4 marks it
    ("lokr_qv_gate", ["q_proj", "v_proj", "gate_proj"], [1, 2], -4, 4.0, False, 1e-2, 0.0, 0.0, False),
]
LOKR_ALPHA = 4.0

EXTRA_CASES = [
    # beyond the linear modules (rank -5 marks them): q, v and lm_head LoRA with the embeddings and
    # the final norm trained in full; v LoRA with trainable token rows and lm_head in full
    ("extras_head_embed_norm", ["q_proj", "v_proj", "lm_head"], None, -5, 4.0, False, 1e-2, 0.0, 0.0, False),
    ("extras_tokens_head", ["v_proj"], [1, 2], -5, 4.0, False, 1e-2, 0.0, 0.0, False),
]
EXTRA_RANK = 2

INIT_CASES = [
    # PiSSA and OLoRA initialisation (rank -6): the adapter file holds the initial factors (B moved
    # a little), the base becomes the residual W - s B0 A0 that the library must recompute
    ("pissa_qv_down", ["q_proj", "v_proj", "down_proj"], None, -6, 4.0, False, 1e-2, 0.0, 0.0, False),
    ("olora_qv_down", ["q_proj", "v_proj", "down_proj"], [0, 2], -6, 4.0, False, 1e-2, 0.0, 0.0, False),
]
lora_ranks = {}

PROMPT_CASES = [
    # prompt tuning (rank -7): 5 virtual tokens before each row
    ("prompt_5", [], None, -7, 0.0, False, 1e-2, 0.0, 0.0, False),
]
PROMPT_LEN = 5

TOKEN_CASES = [
    # trainable tokens alone (rank -8): rows 3, 7, 11 of the (untied) embeddings
    ("tokens_rows", [], None, -8, 0.0, False, 1e-2, 0.0, 0.0, False),
]

HEAD_ROW_CASES = [
    # LoRA on q, v with trainable rows of the embeddings and of the untied lm_head (rank -9):
    # trainable_token_indices {"embed_tokens": TOKEN_IDX, "lm_head": HEAD_IDX}
    ("extras_head_rows", ["q_proj", "v_proj"], None, -9, 4.0, False, 1e-2, 0.0, 0.0, False),
]


def factorization(dim):
    """LyCORIS's factorization (factor -1): the divisor pair m <= n nearest the square root."""
    m, n = 1, dim
    while m < n:
        new_m = m + 1
        while dim % new_m:
            new_m += 1
        new_n = dim // new_m
        if new_m + new_n > m + n:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)

IA3_CASES = [
    # IA3 on k, v (output scaling) and down (input scaling) of layers 1 and 2: rank 0 marks IA3
    ("ia3_kv_down", ["k_proj", "v_proj", "down_proj"], [1, 2], 0, 0.0, False, 1e-2, 0.0, 0.0, False),
]


def lora_pair(g, dims, l, m, r):
    """PEFT-shaped A (kaiming-uniform-like) and non-zero B of module m in layer l, drawn from g."""
    o, i = dims[m]
    return {key(l, m, "A"): (torch.rand(r, i, generator=g) * 2 - 1) / math.sqrt(i),
            key(l, m, "B"): torch.randn(o, r, generator=g) * 0.1}


def write_model(out, cfg, W):
    """A model directory: config.json and model.safetensors of W rounded to float32; returns the
    rounded weights (in float64, as the reference computes)."""
    W = {k: v.to(torch.float32).to(torch.float64) for k, v in W.items()}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    st_write(os.path.join(out, "model.safetensors"), W, {"format": "pt"})
    return W


def case_batch(g, V):
    """The 2 x 12 batch of a family's cases, drawn from g: labels the tokens, the first three masked."""
    tokens = torch.randint(0, V, (2, 12), generator=g)
    labels = tokens.clone()
    labels[0, :3] = -100
    return tokens, labels


def write_case(name, lora, acfg, tokens, labels, lr, wd, clip, result):
    """The initial adapter, the reference gradients, the adapter after the step, and the figures."""
    loss, gnorm, grads, after, loss2 = result
    B, T = tokens.shape
    d = os.path.join(OUT, name)
    os.makedirs(os.path.join(d, "adapter"), exist_ok=True)
    st_write(os.path.join(d, "adapter", "adapter_model.safetensors"), lora, {"format": "pt"})
    with open(os.path.join(d, "adapter", "adapter_config.json"), "w") as f:
        json.dump(acfg, f, indent=2, sort_keys=True)
    st_write(os.path.join(d, "grads.safetensors"), grads)
    st_write(os.path.join(d, "after.safetensors"), after)
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump({"tokens": tokens.flatten().tolist(), "labels": labels.flatten().tolist(),
                   "n_seq": B, "seq_len": T, "lr": lr, "weight_decay": wd, "grad_clip": clip,
                   "loss": loss, "grad_norm": gnorm, "loss_after": loss2}, f, indent=1)
    print(f"{name}: loss {loss:.6f} grad_norm {gnorm:.6f} loss_after {loss2:.6f}")


def make_family(model_type, seed, extra):
    """A tiny model of another family: Qwen2 (q/k/v biases, tied embeddings), Qwen3 (q/k norms,
    head_dim larger than hidden / heads)."""
    g = torch.Generator().manual_seed(seed)
    cfg = {"architectures": [{"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                              "llama": "LlamaForCausalLM", "smollm3": "SmolLM3ForCausalLM",
                              "granite": "GraniteForCausalLM"}[model_type]],
           "model_type": model_type, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 3,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 48,
           "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False, "hidden_act": "silu",
           "bos_token_id": 1, "eos_token_id": 2, "use_sliding_window": False}
    cfg.update(extra)
    c = Cfg(cfg)
    W = {"model.embed_tokens.weight": torch.randn(c.V, c.D, generator=g) * 0.5,
         "model.norm.weight": 1 + 0.1 * torch.randn(c.D, generator=g)}
    if not c.tied:
        W["lm_head.weight"] = torch.randn(c.V, c.D, generator=g) * 0.3
    dims = {"q_proj": (c.H * c.hd, c.D), "k_proj": (c.Hkv * c.hd, c.D), "v_proj": (c.Hkv * c.hd, c.D),
            "o_proj": (c.D, c.H * c.hd), "gate_proj": (c.F, c.D), "up_proj": (c.F, c.D), "down_proj": (c.D, c.F)}
    for l in range(c.L):
        W[f"model.layers.{l}.input_layernorm.weight"] = 1 + 0.1 * torch.randn(c.D, generator=g)
        W[f"model.layers.{l}.post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(c.D, generator=g)
        for m in MODS:
            o, i = dims[m]
            W[f"model.layers.{l}.{PARENT[m]}.{m}.weight"] = torch.randn(o, i, generator=g) / math.sqrt(i)
            if m in c.bias:
                W[f"model.layers.{l}.{PARENT[m]}.{m}.bias"] = 0.5 * torch.randn(o, generator=g)
        if c.qk_norm:
            for n in ("q_norm", "k_norm"):
                W[f"model.layers.{l}.self_attn.{n}.weight"] = 1 + 0.2 * torch.randn(c.hd, generator=g)
    W = {k: v.to(torch.float32).to(torch.float64) for k, v in W.items()}
    return cfg, c, W, dims, g


def families():
    """tests/data/tiny_qwen2, tiny_qwen3, tiny_llama_bias (Llama's attention_bias and mlp_bias),
    tiny_smollm3 (4 layers, the last without RoPE, as llama.cpp fixes it) and tiny_granite (its four
    multipliers): a model each and one LoRA training step on it."""
    global OUT
    base = OUT
    for model_type, seed, extra in (("qwen2", 7, {"tie_word_embeddings": True}),
                                    ("qwen3", 8, {"head_dim": 12, "attention_bias": False}),
                                    ("llama", 9, {"attention_bias": True, "mlp_bias": True}),
                                    ("smollm3", 10, {"num_hidden_layers": 4, "no_rope_layers": [1, 1, 1, 0],
                                                     "rope_theta": 2000000.0, "tie_word_embeddings": True}),
                                    ("granite", 11, {"embedding_multiplier": 2.0, "residual_multiplier": 0.5,
                                                     "attention_multiplier": 0.2, "logits_scaling": 3.0,
                                                     "tie_word_embeddings": True, "rope_theta": 10000.0})):
        cfg, c, W, dims, g = make_family(model_type, seed, extra)
        if model_type in ("llama", "smollm3", "granite"):
            del cfg["use_sliding_window"]
        if model_type == "granite":  # (head_dim: hidden / heads, as Granite's configs leave it out)
            del cfg["head_dim"]
        if model_type == "llama":
            model_type = "llama_bias"
        OUT = os.path.join(os.path.dirname(base), "tiny_" + model_type)
        W = write_model(OUT, cfg, W)
        tokens, labels = case_batch(g, c.V)
        r, alpha = 4, 8.0
        lora = {}
        for l in range(c.L):
            for m in MODS:
                lora.update(lora_pair(g, dims, l, m, r))
        lora = {k: v.to(torch.float32).to(torch.float64) for k, v in lora.items()}
        acfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
                "target_modules": MODS, "bias": "none", "use_rslora": False, "use_dora": False,
                "layers_to_transform": None, "init_lora_weights": True, "base_model_name_or_path": "tiny_" + model_type}
        write_case("all_linear", lora, acfg, tokens, labels, 1e-2, 0.0, 0.0,
                   one_step(c, W, tokens, labels, lora, alpha / r, 1e-2, 0.0, 0.0))
        if model_type == "qwen3":  # modules_to_save ["norm"]: PEFT matches it as a suffix, so every norm,
            lora = {}  # the q/k norms included, is trained beside LoRA on q and v
            for l in range(c.L):
                for m in ("q_proj", "v_proj"):
                    lora.update(lora_pair(g, dims, l, m, r))
            for k in W:
                if k.endswith("norm.weight"):
                    lora["base_model.model." + k] = W[k] + 0.1 * torch.randn(W[k].shape, generator=g)
            lora = {k: v.to(torch.float32).to(torch.float64) for k, v in lora.items()}
            acfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
                    "target_modules": ["q_proj", "v_proj"], "bias": "none", "use_rslora": False, "use_dora": False,
                    "layers_to_transform": None, "init_lora_weights": True, "modules_to_save": ["norm"],
                    "base_model_name_or_path": "tiny_" + model_type}
            write_case("lora_norm_all", lora, acfg, tokens, labels, 1e-2, 0.1, 0.0,
                       one_step(c, W, tokens, labels, lora, alpha / r, 1e-2, 0.1, 0.0))
        if model_type == "qwen2":  # PEFT's bias option: "all" (every q/k/v bias) and "lora_only"
            for name, targets, layers, mode in (("bias_all_qv", ["q_proj", "v_proj"], [1], "all"),
                                                ("bias_lora_only_kv", ["k_proj", "v_proj"], [0], "lora_only")):
                lora = {}
                for l in layers:
                    for m in targets:
                        lora.update(lora_pair(g, dims, l, m, r))
                for l in range(c.L):
                    for m in ["q_proj", "k_proj", "v_proj"]:
                        adapted = l in layers and m in targets
                        if mode == "all" or adapted:  # the base bias moved a little: the file's values are used
                            b = W[f"model.layers.{l}.{PARENT[m]}.{m}.bias"] + 0.1 * torch.randn(dims[m][0], generator=g)
                            lora[f"base_model.model.model.layers.{l}.{PARENT[m]}.{m}." +
                                 ("base_layer.bias" if adapted else "bias")] = b
                lora = {k: v.to(torch.float32).to(torch.float64) for k, v in lora.items()}
                acfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha,
                        "lora_dropout": 0.0, "target_modules": targets, "bias": mode, "use_rslora": False,
                        "use_dora": False, "layers_to_transform": layers, "init_lora_weights": True,
                        "base_model_name_or_path": "tiny_" + model_type}
                write_case(name, lora, acfg, tokens, labels, 1e-2, 0.1, 0.0,
                           one_step(c, W, tokens, labels, lora, alpha / r, 1e-2, 0.1, 0.0))
        if model_type == "llama_bias":  # IA3 on every (biased) module: the output scaling scales the bias too
            lora = {}
            for l in range(c.L):
                for m in MODS:
                    o, i = dims[m]
                    shape = (1, i) if m == "down_proj" else (o, 1)
                    lora[key(l, m, "I")] = 1 + 0.3 * torch.randn(*shape, generator=g)
            lora = {k: v.to(torch.float32).to(torch.float64) for k, v in lora.items()}
            acfg = {"peft_type": "IA3", "task_type": "CAUSAL_LM", "target_modules": MODS,
                    "feedforward_modules": ["down_proj"], "fan_in_fan_out": False, "init_ia3_weights": True,
                    "base_model_name_or_path": "tiny_" + model_type}
            write_case("ia3_all", lora, acfg, tokens, labels, 1e-2, 0.0, 0.0,
                       one_step(c, W, tokens, labels, lora, 1.0, 1e-2, 0.0, 0.0))
    OUT = base


def main():
    os.makedirs(OUT, exist_ok=True)
    cfg, c, W, dims = make_tiny()
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    st_write(os.path.join(OUT, "model.safetensors"), W, {"format": "pt"})
    g = torch.Generator().manual_seed(99)
    B, T = 2, 12
    tokens = torch.randint(0, c.V, (B, T), generator=g)
    labels = tokens.clone()
    labels[0, :4] = -100  # a masked prompt
    labels[1, 7] = -100
    for name, targets, layers, r, alpha, rslora, lr, wd, clip, dora in CASES + IA3_CASES + NORM_CASES + EMBED_CASES + VERA_CASES + LOHA_CASES + LOKR_CASES + EXTRA_CASES + INIT_CASES + PROMPT_CASES + TOKEN_CASES + HEAD_ROW_CASES:
        if r == -1:  # LN tuning
            lora = {}
            names = [f"model.layers.{l}.{n}.weight" for l in layers for n in ("input_layernorm", "post_attention_layernorm")]
            for n in names + ["model.norm.weight"]:
                lora[norm_key(n)] = W[n] * (1 + 0.1 * torch.randn(c.D, generator=g))
            lora = {k: v.to(torch.float32).to(torch.float64) for k, v in lora.items()}
            tm = [n[: -len(".weight")] for n in names] + ["model.norm"]
            acfg = {"peft_type": "LN_TUNING", "task_type": "CAUSAL_LM", "target_modules": tm,
                    "base_model_name_or_path": "tiny"}
            write_case(name, lora, acfg, tokens, labels, lr, wd, clip,
                       one_step(c, W, tokens, labels, lora, 1.0, lr, wd, clip))
            continue
        if r == -9:  # LoRA + embedding rows + lm_head rows
            r = EXTRA_RANK
            scale = alpha / r
            lora = {}
            for l in range(c.L):
                for m in targets:
                    lora.update(lora_pair(g, dims, l, m, r))
            lora[TOK_DELTA] = W["model.embed_tokens.weight"][TOKEN_IDX] + 0.1 * torch.randn(3, c.D, generator=g)
            lora[HEAD_TOK] = W["lm_head.weight"][HEAD_IDX] + 0.1 * torch.randn(len(HEAD_IDX), c.D, generator=g)
            lora = {k: v.to(torch.float32).to(torch.float64) for k, v in lora.items()}
            acfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
                    "target_modules": targets, "bias": "none", "use_rslora": False, "use_dora": False,
                    "layers_to_transform": None, "init_lora_weights": True, "base_model_name_or_path": "tiny",
                    "trainable_token_indices": {"embed_tokens": TOKEN_IDX, "lm_head": HEAD_IDX}}
            write_case(name, lora, acfg, tokens, labels, lr, wd, clip,
                       one_step(c, W, tokens, labels, lora, scale, lr, wd, clip))
            continue
        if r == -8:  # trainable tokens alone
            rows = W["model.embed_tokens.weight"][TOKEN_IDX] + 0.2 * torch.randn(3, c.D, generator=g, dtype=torch.float64)
            lora = {TOK_ONLY: rows.to(torch.float32).to(torch.float64)}
            acfg = {"peft_type": "TRAINABLE_TOKENS", "task_type": "CAUSAL_LM", "token_indices": TOKEN_IDX,
                    "target_modules": ["embed_tokens"], "init_weights": True, "base_model_name_or_path": "tiny"}
            write_case(name, lora, acfg, tokens, labels, lr, wd, clip,
                       one_step(c, W, tokens, labels, lora, 1.0, lr, wd, clip))
            continue
        if r == -7:  # prompt tuning
            lora = {PROMPT: (0.5 * torch.randn(PROMPT_LEN, c.D, generator=g)).to(torch.float32).to(torch.float64)}
            acfg = {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": PROMPT_LEN,
                    "token_dim": c.D, "num_transformer_submodules": 1, "num_attention_heads": c.H,
                    "num_layers": c.L, "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None,
                    "tokenizer_name_or_path": None, "base_model_name_or_path": "tiny", "inference_mode": True}
            write_case(name, lora, acfg, tokens, labels, lr, wd, clip,
                       one_step(c, W, tokens, labels, lora, 1.0, lr, wd, clip))
            continue
        if r == -6:  # PiSSA / OLoRA (PEFT's pissa_init / olora_init)
            r = 2
            scale = alpha / r
            kind = name.split("_")[0]
            lora, Wres = {}, dict(W)
            for l in range(c.L):
                if layers is not None and l not in layers:
                    continue
                for m in targets:
                    wn = f"model.layers.{l}.{PARENT[m]}.{m}.weight"
                    Wm = W[wn].to(torch.float64)
                    if kind == "pissa":
                        V, S, Uh = torch.linalg.svd(Wm, full_matrices=False)
                        Sr = S[:r] / scale
                        A0 = torch.diag(torch.sqrt(Sr)) @ Uh[:r]
                        B0 = V[:, :r] @ torch.diag(torch.sqrt(Sr))
                    else:
                        Q, R = torch.linalg.qr(Wm)
                        A0, B0 = R[:r].contiguous(), Q[:, :r].contiguous()
                    Wres[wn] = Wm - scale * B0 @ A0
                    lora[key(l, m, "A")] = A0
                    lora[key(l, m, "B")] = B0 + 0.05 * torch.randn(B0.shape, generator=g, dtype=torch.float64)
            lora = {k: v.to(torch.float32).to(torch.float64) for k, v in lora.items()}
            acfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
                    "target_modules": targets, "bias": "none", "use_rslora": False, "use_dora": False,
                    "layers_to_transform": layers, "init_lora_weights": kind, "base_model_name_or_path": "tiny"}
            write_case(name, lora, acfg, tokens, labels, lr, wd, clip,
                       one_step(c, Wres, tokens, labels, lora, scale, lr, wd, clip))
            continue
        if r == -5:  # LoRA with lm_head, modules_to_save, token rows
            r = EXTRA_RANK
            scale = alpha / r
            lora = {}
            for l in range(c.L):
                if layers is not None and l not in layers:
                    continue
                for m in targets:
                    if m == "lm_head":
                        continue
                    lora.update(lora_pair(g, dims, l, m, r))
            acfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
                    "target_modules": targets, "bias": "none", "use_rslora": False, "use_dora": False,
                    "layers_to_transform": layers, "init_lora_weights": True, "base_model_name_or_path": "tiny"}
            if "lm_head" in targets:
                lora[HEAD_A] = (torch.rand(r, c.D, generator=g) * 2 - 1) / math.sqrt(c.D)
                lora[HEAD_B] = torch.randn(c.V, r, generator=g) * 0.1
                lora["base_model.model.model.embed_tokens.weight"] = \
                    W["model.embed_tokens.weight"] * (1 + 0.1 * torch.randn(c.V, c.D, generator=g))
                lora["base_model.model.model.norm.weight"] = W["model.norm.weight"] * (1 + 0.1 * torch.randn(c.D, generator=g))
                acfg["modules_to_save"] = ["embed_tokens", "model.norm"]
            else:
                lora[TOK_DELTA] = W["model.embed_tokens.weight"][TOKEN_IDX] + 0.1 * torch.randn(3, c.D, generator=g)
                lora["base_model.model.lm_head.weight"] = W["lm_head.weight"] + 0.05 * torch.randn(c.V, c.D, generator=g)
                acfg["modules_to_save"] = ["lm_head"]
                acfg["trainable_token_indices"] = TOKEN_IDX
            lora = {k: v.to(torch.float32).to(torch.float64) for k, v in lora.items()}
            write_case(name, lora, acfg, tokens, labels, lr, wd, clip,
                       one_step(c, W, tokens, labels, lora, scale, lr, wd, clip))
            continue
        if r == -4:  # LoKr
            lora = {}
            for l in layers:
                for m in targets:
                    rr = 4 if m == "gate_proj" else 2
                    lora_ranks[(l, m)] = rr
                    o, i = dims[m]
                    ol, ok = factorization(o)
                    im, inn = factorization(i)
                    p = f"base_model.model.model.layers.{l}.{PARENT[m]}.{m}.lokr_"
                    lora[p + "w1"] = 0.5 * torch.randn(ol, im, generator=g)  # non-zero: every gradient exercised
                    if 2 * rr >= max(ok, inn):
                        lora[p + "w2"] = (torch.rand(ok, inn, generator=g) * 2 - 1) / math.sqrt(inn)
                    else:
                        lora[p + "w2_a"] = (torch.rand(ok, rr, generator=g) * 2 - 1) / math.sqrt(rr)
                        lora[p + "w2_b"] = (torch.rand(rr, inn, generator=g) * 2 - 1) / math.sqrt(inn)
            lora = {k: v.to(torch.float32).to(torch.float64) for k, v in lora.items()}
            acfg = {"peft_type": "LOKR", "task_type": "CAUSAL_LM", "r": 2, "alpha": alpha, "target_modules": targets,
                    "layers_to_transform": layers, "rank_pattern": {"gate_proj": 4}, "alpha_pattern": {},
                    "rank_dropout": 0.0, "module_dropout": 0.0, "decompose_both": False, "decompose_factor": -1,
                    "use_effective_conv2d": False, "init_weights": True, "base_model_name_or_path": "tiny"}
            write_case(name, lora, acfg, tokens, labels, lr, wd, clip,
                       one_step(c, W, tokens, labels, lora, 1.0, lr, wd, clip))
            continue
        if r == -3:  # LoHa
            r = LOHA_RANK
            lora = {}
            for l in layers:
                for m in targets:
                    o, i = dims[m]
                    p = f"base_model.model.model.layers.{l}.{PARENT[m]}.{m}.hada_"
                    lora[p + "w1_a"] = (torch.rand(o, r, generator=g) * 2 - 1) / math.sqrt(r)
                    lora[p + "w1_b"] = (torch.rand(r, i, generator=g) * 2 - 1) / math.sqrt(i)
                    lora[p + "w2_a"] = (torch.rand(o, r, generator=g) * 2 - 1) / math.sqrt(r)
                    lora[p + "w2_b"] = 0.3 * torch.randn(r, i, generator=g)  # non-zero: every gradient exercised
            lora = {k: v.to(torch.float32).to(torch.float64) for k, v in lora.items()}
            acfg = {"peft_type": "LOHA", "task_type": "CAUSAL_LM", "r": r, "alpha": alpha, "target_modules": targets,
                    "layers_to_transform": layers, "rank_dropout": 0.0, "module_dropout": 0.0,
                    "use_effective_conv2d": False, "init_weights": True, "base_model_name_or_path": "tiny"}
            write_case(name, lora, acfg, tokens, labels, lr, wd, clip,
                       one_step(c, W, tokens, labels, lora, alpha / r, lr, wd, clip))
            continue
        if r == -2:  # VeRA
            r = VERA_RANK
            sel = [(l, m) for l in layers for m in targets]
            max_in = max(dims[m][1] for _, m in sel)
            max_out = max(dims[m][0] for _, m in sel)
            lora = {"base_model.vera_A": (torch.rand(r, max_in, generator=g) * 2 - 1) * math.sqrt(6 / max_in),
                    "base_model.vera_B": (torch.rand(max_out, r, generator=g) * 2 - 1) * math.sqrt(6 / r)}
            for l, m in sel:
                p = f"base_model.model.model.layers.{l}.{PARENT[m]}.{m}.vera_lambda_"
                lora[p + "d"] = 0.1 + 0.3 * torch.randn(r, generator=g)
                lora[p + "b"] = 0.2 * torch.randn(dims[m][0], generator=g)
            lora = {k: v.to(torch.float32).to(torch.float64) for k, v in lora.items()}
            acfg = {"peft_type": "VERA", "task_type": "CAUSAL_LM", "r": r, "target_modules": targets,
                    "layers_to_transform": layers, "d_initial": 0.1, "projection_prng_key": 0,
                    "save_projection": True, "vera_dropout": 0.0, "bias": "none", "base_model_name_or_path": "tiny"}
            write_case(name, lora, acfg, tokens, labels, lr, wd, clip,
                       one_step(c, W, tokens, labels, lora, 1.0, lr, wd, clip))
            continue
        if r == 0:  # IA3
            lora = {}
            for l in range(c.L):
                if layers is not None and l not in layers:
                    continue
                for m in targets:
                    o, i = dims[m]
                    shape = (1, i) if m == "down_proj" else (o, 1)
                    lora[key(l, m, "I")] = 1 + 0.3 * torch.randn(*shape, generator=g)
            lora = {k: v.to(torch.float32).to(torch.float64) for k, v in lora.items()}
            tm = targets if layers is None else [f"model.layers.{l}.{PARENT[m]}.{m}" for l in layers for m in targets]
            acfg = {"peft_type": "IA3", "task_type": "CAUSAL_LM", "target_modules": tm,
                    "feedforward_modules": ["down_proj"], "fan_in_fan_out": False, "init_ia3_weights": True,
                    "base_model_name_or_path": "tiny"}
            write_case(name, lora, acfg, tokens, labels, lr, wd, clip,
                       one_step(c, W, tokens, labels, lora, 1.0, lr, wd, clip))
            continue
        lora = {}
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        for l in range(c.L):
            if layers is not None and l not in layers:
                continue
            for m in targets:
                if m == "embed_tokens":
                    continue
                lora.update(lora_pair(g, dims, l, m, r))
                if dora:
                    Wm = W[f"model.layers.{l}.{PARENT[m]}.{m}.weight"]
                    base = (Wm + scale * lora[key(l, m, "B")] @ lora[key(l, m, "A")]).norm(dim=1)
                    lora[key(l, m, "M")] = base * (1 + 0.2 * torch.randn(dims[m][0], generator=g))
        if "embed_tokens" in targets:  # non-zero A so that every gradient is exercised
            lora[EMBED_A] = torch.randn(r, c.V, generator=g) * 0.3
            lora[EMBED_B] = torch.randn(c.D, r, generator=g) * 0.3
        lora = {k: v.to(torch.float32).to(torch.float64) for k, v in lora.items()}
        acfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha,
                "lora_dropout": 0.0, "target_modules": targets, "bias": "none", "use_rslora": rslora,
                "use_dora": dora,
                "layers_to_transform": layers, "init_lora_weights": True, "base_model_name_or_path": "tiny"}
        write_case(name, lora, acfg, tokens, labels, lr, wd, clip,
                   one_step(c, W, tokens, labels, lora, scale, lr, wd, clip))

    families()

    # self-check of this reference model against ../shared (written with HF transformers)
    sdir = os.path.join(SHARED, "models", "stories260K")
    if os.path.isdir(sdir):
        import numpy as np
        with open(os.path.join(sdir, "config.json")) as f:
            sc = Cfg(json.load(f))
        SW = st_read(os.path.join(sdir, "model.safetensors"))
        toks = np.fromfile(os.path.join(SHARED, "data", "tinystories_sample.stories260K.u32.bin"), dtype="<u4")
        t = torch.tensor(toks[:4 * 64].astype("int64")).view(4, 64)
        ref = st_read(os.path.join(sdir, "reference", "ref_adapter", "adapter_model.safetensors"))
        loss = forward(sc, SW, t, t, ref, 8.0 / 4)
        one = forward(sc, SW, t[:1, :].new_tensor(toks[:128].astype("int64")).view(1, 128),
                      t.new_tensor(toks[:128].astype("int64")).view(1, 128), {}, 1.0)
        print(f"shared check: batch loss {float(loss):.6f} (reference 1.862228), "
              f"first-128 base loss {float(one):.6f} (reference 1.431879)")
        assert abs(float(loss) - 1.8622275590896606) < 1e-6
        assert abs(float(one) - 1.431879) < 1e-5


if __name__ == "__main__":
    sys.exit(main())
