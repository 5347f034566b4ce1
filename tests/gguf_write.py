#!/usr/bin/env python3
"""Write a Hugging Face Llama directory (config.json + F32 model.safetensors, e.g. from
`peft init-model`) as a GGUF v3 model file with the linear weights quantized, the way
llama.cpp lays it out (tensor names, ne order, q/k rows permuted for its RoPE), and,
optionally, a Hugging Face directory holding exactly the values the quantized file
represents (so a loss computed from the GGUF file can be compared with one computed from
float weights). Needs numpy (Debian's python3-numpy; /usr/bin/python3).

    gguf_write.py HF_DIR OUT.gguf --type f32|q8_0|q4_0|q4_k|q6_k[,TYPE...] [--embed-type TYPE]
                  [--dequantized DIR]

With several types, the linear weights of layer i use type i mod len(types). --embed-type
(f32 by default) is the type of token_embd.weight and output.weight. The quantizers
are plain (round to nearest per block, scales from the block's range): any valid encoding
is a fair test of a reader, whose output is defined by the format alone. A config.json
"rope_scaling" is written as llama.cpp's converter writes it: "linear" as
llama.rope.scaling.type/factor, "llama3" as the rope_freqs.weight tensor of divisors."""
import math
import argparse
import json
import os
import struct
import sys

import numpy as np

GG = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "q4_k": 12, "q6_k": 14}
BLOCK = {"f32": 1, "f16": 1, "q4_0": 32, "q8_0": 32, "q4_k": 256, "q6_k": 256}


def st_read(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (name, t["dtype"])
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").reshape(t["shape"]).copy()
    return out


def st_write(path, tensors):
    header, off, blobs = {}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
        blobs.append(a.tobytes())
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def f16(x):
    return np.asarray(x, dtype=np.float32).astype("<f2")


def q8_0(w):
    b = w.reshape(-1, 32)
    d = f16(np.abs(b).max(axis=1) / 127.0)
    df = d.astype(np.float32)
    q = np.where(df[:, None] > 0, np.round(b / np.where(df > 0, df, 1)[:, None]), 0).clip(-127, 127).astype(np.int8)
    out = np.empty((len(b), 34), dtype=np.uint8)
    out[:, :2] = d.view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.tobytes(), (df[:, None] * q).reshape(w.shape)


def q4_0(w):
    b = w.reshape(-1, 32)
    idx = np.abs(b).argmax(axis=1)
    mx = b[np.arange(len(b)), idx]
    d = f16(mx / -8.0)
    df = d.astype(np.float32)
    inv = np.where(df != 0, 1.0 / np.where(df != 0, df, 1), 0)
    q = np.clip((b * inv[:, None] + 8.5).astype(np.int32), 0, 15)
    out = np.empty((len(b), 18), dtype=np.uint8)
    out[:, :2] = d.view(np.uint8).reshape(-1, 2)
    out[:, 2:] = (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)
    return out.tobytes(), (df[:, None] * (q - 8)).reshape(w.shape)


def q4_k(w):
    blocks, vals = [], []
    for sb in w.reshape(-1, 256):
        sub = sb.reshape(8, 32)
        lo = np.minimum(sub.min(axis=1), 0.0)
        scale = (sub.max(axis=1) - lo) / 15.0
        d = f16(scale.max() / 63.0)
        dmin = f16((-lo).max() / 63.0)
        dd, dm = float(d.astype(np.float32)), float(dmin.astype(np.float32))
        sc = np.clip(np.round(scale / dd) if dd > 0 else np.zeros(8), 0, 63).astype(np.int32)
        mn = np.clip(np.round(-lo / dm) if dm > 0 else np.zeros(8), 0, 63).astype(np.int32)
        step = dd * sc
        q = np.where(step[:, None] > 0, np.round((sub + dm * mn[:, None]) / np.where(step > 0, step, 1)[:, None]), 0)
        q = np.clip(q, 0, 15).astype(np.int32)
        s12 = np.zeros(12, dtype=np.int32)
        for j in range(4):
            s12[j] = sc[j] | ((sc[j + 4] >> 4) << 6)
            s12[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6)
            s12[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4)
        qs = np.zeros(128, dtype=np.int32)
        for c in range(4):
            qs[c * 32:(c + 1) * 32] = q[2 * c] | (q[2 * c + 1] << 4)
        blocks.append(d.tobytes() + dmin.tobytes() + s12.astype(np.uint8).tobytes() + qs.astype(np.uint8).tobytes())
        vals.append((np.float32(dd) * sc[:, None].astype(np.float32) * q.astype(np.float32)
                     - np.float32(dm) * mn[:, None].astype(np.float32)).reshape(-1))
    return b"".join(blocks), np.concatenate(vals).reshape(w.shape)


def q6_k(w):
    blocks, vals = [], []
    for sb in w.reshape(-1, 256):
        sub = sb.reshape(16, 16)
        scale = np.abs(sub).max(axis=1) / 31.0
        d = f16(np.abs(scale).max() / 127.0)
        dd = float(d.astype(np.float32))
        sc = np.clip(np.round(scale / dd) if dd > 0 else np.zeros(16), -128, 127).astype(np.int32)
        step = dd * sc
        q = np.where(step[:, None] != 0, np.round(sub / np.where(step != 0, step, 1)[:, None]), 0)
        L = (np.clip(q, -32, 31).astype(np.int32) + 32).reshape(-1)
        ql = np.zeros(128, dtype=np.int32)
        qh = np.zeros(64, dtype=np.int32)
        for h in range(2):
            j = 128 * h
            for l in range(32):
                ql[64 * h + l] = (L[j + l] & 15) | ((L[j + l + 64] & 15) << 4)
                ql[64 * h + l + 32] = (L[j + l + 32] & 15) | ((L[j + l + 96] & 15) << 4)
                qh[32 * h + l] = ((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4)
                                  | ((L[j + l + 96] >> 4) << 6))
        blocks.append(ql.astype(np.uint8).tobytes() + qh.astype(np.uint8).tobytes()
                      + sc.astype(np.int8).tobytes() + d.tobytes())
        vals.append((np.float32(dd) * np.repeat(sc, 16).astype(np.float32) * (L - 32).astype(np.float32)))
    return b"".join(blocks), np.concatenate(vals).reshape(w.shape)


def encode(w, kind):
    if kind == "f32":
        return w.astype("<f4").tobytes(), w
    if kind == "f16":
        h = f16(w)
        return h.tobytes(), h.astype(np.float32)
    return {"q8_0": q8_0, "q4_0": q4_0, "q4_k": q4_k, "q6_k": q6_k}[kind](w)


def permute(w, heads):
    """llama.cpp's convert: rows of each head from rotate-half to interleaved order"""
    r = w.shape[0]
    return w.reshape(heads, 2, r // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, heads):
    r = w.shape[0]
    return w.reshape(heads, r // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gg_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf_dir")
    ap.add_argument("out")
    ap.add_argument("--type", default="q8_0")
    ap.add_argument("--embed-type", default="f32", choices=sorted(GG))
    ap.add_argument("--dequantized", help="also write a Hugging Face directory of the values stored")
    a = ap.parse_args()
    kinds = a.type.split(",")
    cfg = json.load(open(os.path.join(a.hf_dir, "config.json")))
    st = st_read(os.path.join(a.hf_dir, "model.safetensors"))
    D, L, H = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    Hkv = cfg.get("num_key_value_heads", H)
    F = cfg["intermediate_size"]
    tied = "lm_head.weight" not in st
    arch = cfg.get("model_type", "llama")
    if arch == "mistral":  # llama.cpp converts Mistral as the llama architecture
        arch = "llama"
    if arch == "gemma3_text":
        arch = "gemma3"
    assert arch in ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "smollm3", "granite", "phi3"), arch
    gemma = arch in ("gemma2", "gemma3")
    shift = 1.0 if gemma else 0.0  # llama.cpp's converter stores Gemma's norms as 1 + w
    permuted = arch in ("llama", "smollm3", "granite")  # qwen2/3, gemma2/3 use the NeoX RoPE: HF's order
    if D % BLOCK[a.embed_type]:
        sys.exit("hidden size %d is not a multiple of %s's block" % (D, a.embed_type))
    tensors = [("token_embd.weight", st["model.embed_tokens.weight"], a.embed_type, "model.embed_tokens.weight"),
               ("output_norm.weight", st["model.norm.weight"] + shift, "f32", "model.norm.weight")]
    if not tied:
        tensors.append(("output.weight", st["lm_head.weight"], a.embed_type, "lm_head.weight"))
    lin = [("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
           ("attn_output", "self_attn.o_proj"), ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"),
           ("ffn_down", "mlp.down_proj")]
    if arch == "phi3":  # llama.cpp's Phi3MiniModel keeps the fused modules: attn_qkv, ffn_up (gate, then up)
        lin = [("attn_qkv", "self_attn.qkv_proj"), ("attn_output", "self_attn.o_proj"), ("ffn_up", "mlp.gate_up_proj"),
               ("ffn_down", "mlp.down_proj")]
    for i in range(L):
        p = "model.layers.%d." % i
        norms = [("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")]
        if gemma:
            norms = [("attn_norm", "input_layernorm"), ("ffn_norm", "pre_feedforward_layernorm"),
                     ("post_attention_norm", "post_attention_layernorm"),
                     ("post_ffw_norm", "post_feedforward_layernorm")]
        if arch in ("qwen3", "gemma3"):
            norms += [("attn_q_norm", "self_attn.q_norm"), ("attn_k_norm", "self_attn.k_norm")]
        for g, h in norms:
            tensors.append(("blk.%d.%s.weight" % (i, g), st[p + h + ".weight"] + shift, "f32", p + h + ".weight"))
        for g, h in lin:
            if p + h + ".bias" in st:  # q/k biases permuted as their rows (llama.cpp's converter)
                bias = st[p + h + ".bias"]
                if g in ("attn_q", "attn_k") and permuted:
                    bias = permute(bias, H if g == "attn_q" else Hkv)
                tensors.append(("blk.%d.%s.bias" % (i, g), bias, "f32", p + h + ".bias"))
            w = st[p + h + ".weight"]
            if g == "attn_q" and permuted:
                w = permute(w, H)
            elif g == "attn_k" and permuted:
                w = permute(w, Hkv)
            kind = kinds[i % len(kinds)]
            if w.shape[1] % BLOCK[kind]:
                sys.exit("%s: row length %d is not a multiple of %s's block" % (h, w.shape[1], kind))
            tensors.append(("blk.%d.%s.weight" % (i, g), w, kind, p + h + ".weight"))
    kv = [("general.architecture", 8, gg_string(arch)), ("general.alignment", 4, struct.pack("<I", 32)),
          (arch + ".context_length", 4, struct.pack("<I", cfg.get("max_position_embeddings", 2048))),
          (arch + ".embedding_length", 4, struct.pack("<I", D)), (arch + ".block_count", 4, struct.pack("<I", L)),
          (arch + ".feed_forward_length", 4, struct.pack("<I", F)),
          (arch + ".attention.head_count", 4, struct.pack("<I", H)),
          (arch + ".attention.head_count_kv", 4, struct.pack("<I", Hkv)),
          (arch + ".rope.freq_base", 6, struct.pack("<f", cfg.get("rope_theta", 10000.0))),
          (arch + ".attention.layer_norm_rms_epsilon", 6, struct.pack("<f", cfg.get("rms_norm_eps", 1e-5)))]
    if gemma or (arch == "phi3" and cfg.get("sliding_window")):
        kv += [(arch + ".attention.sliding_window", 4, struct.pack("<I", cfg["sliding_window"]))]
    if arch == "gemma2":
        kv += [("gemma2.attn_logit_softcapping", 6, struct.pack("<f", cfg["attn_logit_softcapping"])),
               ("gemma2.final_logit_softcapping", 6, struct.pack("<f", cfg["final_logit_softcapping"]))]
    # Granite's multipliers, as llama.cpp's converter renames them (written when given)
    for hk, gk in (("embedding_multiplier", "embedding_scale"), ("residual_multiplier", "residual_scale"),
                   ("attention_multiplier", "attention.scale"), ("logits_scaling", "logit_scale")):
        if arch == "granite" and cfg.get(hk):
            kv += [(arch + "." + gk, 6, struct.pack("<f", cfg[hk]))]
    if arch == "phi3":
        hd = cfg.get("head_dim", D // H)
        kv += [(arch + ".rope.dimension_count", 4, struct.pack("<I", int(hd * cfg.get("partial_rotary_factor", 1.0))))]
    if "head_dim" in cfg:
        kv += [(arch + ".attention.key_length", 4, struct.pack("<I", cfg["head_dim"])),
               (arch + ".attention.value_length", 4, struct.pack("<I", cfg["head_dim"]))]
    rs = cfg.get("rope_scaling") or {}
    rtype = rs.get("rope_type", rs.get("type"))
    if rtype == "linear":
        kv += [(arch + ".rope.scaling.type", 8, gg_string("linear")),
               (arch + ".rope.scaling.factor", 6, struct.pack("<f", rs["factor"]))]
    elif rtype == "llama3":  # llama.cpp's convert_hf_to_gguf.py, LlamaModel.generate_extra_tensors
        hd = cfg.get("head_dim", D // H)
        base = cfg.get("rope_theta", 10000.0)
        factor, lo, hi = rs.get("factor", 8.0), rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
        old = rs.get("original_max_position_embeddings", 8192)
        freqs = 1.0 / (base ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
        factors = []
        for f in freqs:
            wavelen = 2 * math.pi / f
            if wavelen < old / hi:
                factors.append(1.0)
            elif wavelen > old / lo:
                factors.append(factor)
            else:
                smooth = (old / wavelen - lo) / (hi - lo)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        tensors.append(("rope_freqs.weight", np.array(factors, dtype=np.float32), "f32", None))
    elif rtype in ("longrope", "su"):  # Phi3MiniModel: the factor lists as tensors, the attention factor
        orig = cfg["original_max_position_embeddings"]
        scale = cfg["max_position_embeddings"] / orig
        af = rs.get("attention_factor") or (math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0)
        kv += [(arch + ".rope.scaling.attn_factor", 6, struct.pack("<f", af)),
               (arch + ".rope.scaling.original_context_length", 4, struct.pack("<I", orig))]
        tensors.append(("rope_factors_long.weight", np.array(rs["long_factor"], dtype=np.float32), "f32", None))
        tensors.append(("rope_factors_short.weight", np.array(rs["short_factor"], dtype=np.float32), "f32", None))
    elif rtype not in (None, "default"):
        sys.exit("rope_scaling %s: not written" % rtype)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for k, t, v in kv:
        head += gg_string(k) + struct.pack("<I", t) + v
    blobs, off, deq = [], 0, {}
    for name, w, kind, hf in tensors:
        data, values = encode(w, kind)
        head += gg_string(name) + struct.pack("<I", w.ndim)
        head += b"".join(struct.pack("<Q", n) for n in reversed(w.shape))
        head += struct.pack("<IQ", GG[kind], off)
        pad = (32 - len(data) % 32) % 32
        blobs.append(data + b"\0" * pad)
        off += len(data) + pad
        if (".attn_q.weight" in name or ".attn_q.bias" in name) and permuted:
            values = unpermute(values, H)
        elif (".attn_k.weight" in name or ".attn_k.bias" in name) and permuted:
            values = unpermute(values, Hkv)
        if hf:
            deq[hf] = values - shift if "norm" in name else values
    head += b"\0" * ((32 - len(head) % 32) % 32)
    with open(a.out, "wb") as f:
        f.write(head)
        for b in blobs:
            f.write(b)
    if a.dequantized:
        os.makedirs(a.dequantized, exist_ok=True)
        st_write(os.path.join(a.dequantized, "model.safetensors"), deq)
        with open(os.path.join(a.dequantized, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)


if __name__ == "__main__":  # bench/to_phi3.py imports st_read and st_write
    main()
