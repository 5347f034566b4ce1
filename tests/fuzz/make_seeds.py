#!/usr/bin/env python3
"""Write the small seed files of the fuzz corpus that are not copies of test data:
a 1-layer llama GGUF model (F32, F16 and Q8_0 tensors), a small tokenizer.json and a small
SentencePiece model (tokenizer.model: ModelProto with pieces of each type and a trainer spec)."""
import json
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def gguf(path, kvs, tensors):
    out = bytearray(b"GGUF") + struct.pack("<IQQ", 3, len(tensors), len(kvs))

    def s(x):
        return struct.pack("<Q", len(x.encode())) + x.encode()
    for k, (t, v) in kvs.items():
        out += s(k) + struct.pack("<I", t)
        if t == 9:  # (element type, values): strings or int32
            et, vals = v
            out += struct.pack("<IQ", et, len(vals))
            out += b"".join(s(x) if et == 8 else struct.pack("<i", x) for x in vals)
        else:
            out += s(v) if t == 8 else struct.pack({4: "<I", 6: "<f", 7: "<B"}[t], v)
    off, blobs = 0, []
    for name, ne, typ, data in tensors:
        out += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", typ, off)
        blobs.append(data)
        off += (len(data) + 31) // 32 * 32
    out += b"\0" * ((32 - len(out) % 32) % 32)
    for b in blobs:
        out += b + b"\0" * ((32 - len(b) % 32) % 32)
    open(path, "wb").write(out)


def f32(n, rng):
    return struct.pack(f"<{n}f", *[rng.uniform(-0.5, 0.5) for _ in range(n)])


def f16(n, rng):
    return struct.pack(f"<{n}e", *[rng.uniform(-0.5, 0.5) for _ in range(n)])


def q8(n, rng):
    out = b""
    for _ in range(n // 32):
        out += struct.pack("<e", 0.01) + bytes(rng.randrange(256) for _ in range(32))
    return out


def main():
    rng = random.Random(1)
    D, F, V, H, KV = 32, 64, 16, 2, 1
    hd = D // H
    kvs = {"general.architecture": (8, "llama"), "llama.embedding_length": (4, D), "llama.block_count": (4, 1),
           "llama.feed_forward_length": (4, F), "llama.attention.head_count": (4, H),
           "llama.attention.head_count_kv": (4, KV), "llama.rope.freq_base": (6, 10000.0),
           "llama.attention.layer_norm_rms_epsilon": (6, 1e-5)}
    ts = [("token_embd.weight", [D, V], 0, f32(D * V, rng)), ("output_norm.weight", [D], 0, f32(D, rng)),
          ("blk.0.attn_norm.weight", [D], 0, f32(D, rng)), ("blk.0.ffn_norm.weight", [D], 0, f32(D, rng)),
          ("blk.0.attn_q.weight", [D, D], 8, q8(D * D, rng)), ("blk.0.attn_k.weight", [D, KV * hd], 1, f16(D * KV * hd, rng)),
          ("blk.0.attn_v.weight", [D, KV * hd], 0, f32(D * KV * hd, rng)), ("blk.0.attn_output.weight", [D, D], 0, f32(D * D, rng)),
          ("blk.0.ffn_gate.weight", [D, F], 8, q8(D * F, rng)), ("blk.0.ffn_up.weight", [D, F], 1, f16(D * F, rng)),
          ("blk.0.ffn_down.weight", [F, D], 8, q8(F * D, rng))]
    gguf(os.path.join(HERE, "corpus", "gguf", "tiny.gguf"), kvs, ts)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(256):
        vocab[f"<0x{i:02X}>"] = len(vocab)
    for p in ["\u2581", "a", "b", "c", "ab", "\u2581a", "\u2581ab", "bc"]:
        vocab[p] = len(vocab)
    tok = {"version": "1.0", "added_tokens": [{"id": 1, "content": "<s>", "special": True}],
           "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                            {"type": "Replace", "pattern": {"String": " "},
                                                             "content": "\u2581"}]},
           "pre_tokenizer": None, "decoder": None,
           "model": {"type": "BPE", "byte_fallback": True, "unk_token": "<unk>", "vocab": vocab,
                     "merges": ["a b", "\u2581 a", "\u2581a b", "b c"]}}
    with open(os.path.join(HERE, "corpus", "tokenizer", "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    # a byte-level BPE (GPT-2 alphabet, Qwen2's split) as the GGUF export writes it
    split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")
    bl = {"version": "1.0", "added_tokens": [{"id": 6, "content": "<|endoftext|>", "special": True}],
          "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
              {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": False},
              {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
          "decoder": {"type": "ByteLevel"},
          "model": {"type": "BPE", "vocab": {"\u0120": 0, "a": 1, "b": 2, "ab": 3, "\u0120a": 4, "\u0120ab": 5},
                    "merges": [["a", "b"], ["\u0120", "a"], ["\u0120a", "b"]]}}
    with open(os.path.join(HERE, "corpus", "tokenizer", "bytelevel.json"), "w") as f:
        json.dump(bl, f)
    # the o200k expression (GPT-4o, gpt-oss): case classes, attached contractions
    o200k = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
             r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
             r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| "
             r"?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    ob = json.loads(json.dumps(bl))
    ob["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = o200k
    ob["model"]["ignore_merges"] = True
    with open(os.path.join(HERE, "corpus", "tokenizer", "o200k.json"), "w") as f:
        json.dump(ob, f)
    # the same vocabulary as llama.cpp's converter writes it (tokenizer.ggml.model "gpt2"), NFC by "qwen2"
    toks = sorted(bl["model"]["vocab"], key=bl["model"]["vocab"].get) + ["<|endoftext|>"]
    gguf(os.path.join(HERE, "corpus", "tokenizer", "bytelevel.gguf"),
         {"tokenizer.ggml.model": (8, "gpt2"), "tokenizer.ggml.pre": (8, "qwen2"),
          "tokenizer.ggml.tokens": (9, (8, toks)), "tokenizer.ggml.token_type": (9, (5, [1] * 6 + [3])),
          "tokenizer.ggml.merges": (9, (8, [a + " " + b for a, b in bl["model"]["merges"]])),
          "tokenizer.ggml.eos_token_id": (4, 6), "tokenizer.ggml.add_bos_token": (7, 0)}, [])
    # a 1-layer gemma3 GGUF model: the post-attention/post-feedforward norms, q/k norms, the window
    kvs = {"general.architecture": (8, "gemma3"), "gemma3.embedding_length": (4, D), "gemma3.block_count": (4, 1),
           "gemma3.feed_forward_length": (4, F), "gemma3.attention.head_count": (4, H),
           "gemma3.attention.head_count_kv": (4, KV), "gemma3.attention.key_length": (4, hd),
           "gemma3.attention.value_length": (4, hd), "gemma3.rope.freq_base": (6, 1e6),
           "gemma3.attention.sliding_window": (4, 4), "gemma3.attention.layer_norm_rms_epsilon": (6, 1e-6)}
    ts = [("token_embd.weight", [D, V], 8, q8(D * V, rng)), ("output_norm.weight", [D], 0, f32(D, rng))]
    for n in ("attn_norm", "ffn_norm", "post_attention_norm", "post_ffw_norm"):
        ts.append((f"blk.0.{n}.weight", [D], 0, f32(D, rng)))
    for n in ("attn_q_norm", "attn_k_norm"):
        ts.append((f"blk.0.{n}.weight", [hd], 0, f32(hd, rng)))
    ts += [("blk.0.attn_q.weight", [D, D], 0, f32(D * D, rng)), ("blk.0.attn_k.weight", [D, KV * hd], 0, f32(D * KV * hd, rng)),
           ("blk.0.attn_v.weight", [D, KV * hd], 0, f32(D * KV * hd, rng)), ("blk.0.attn_output.weight", [D, D], 0, f32(D * D, rng)),
           ("blk.0.ffn_gate.weight", [D, F], 0, f32(D * F, rng)), ("blk.0.ffn_up.weight", [D, F], 1, f16(D * F, rng)),
           ("blk.0.ffn_down.weight", [F, D], 8, q8(F * D, rng))]
    gguf(os.path.join(HERE, "corpus", "gguf", "gemma3.gguf"), kvs, ts)
    # the same layer as gemma2 (no q/k norms; soft-caps)
    kvs2 = {k.replace("gemma3.", "gemma2."): v for k, v in kvs.items()}
    kvs2.update({"general.architecture": (8, "gemma2"), "gemma2.attn_logit_softcapping": (6, 50.0),
                 "gemma2.final_logit_softcapping": (6, 30.0)})
    gguf(os.path.join(HERE, "corpus", "gguf", "gemma2.gguf"), kvs2, [t for t in ts if "_q_norm" not in t[0] and "_k_norm" not in t[0]])
    # a 1-layer phi3 GGUF model: attn_qkv, ffn_up of 2 x F, partial rotary, LongRoPE factor tensors
    kvs3 = {"general.architecture": (8, "phi3"), "phi3.embedding_length": (4, D), "phi3.block_count": (4, 1),
            "phi3.feed_forward_length": (4, F), "phi3.attention.head_count": (4, H),
            "phi3.attention.head_count_kv": (4, KV), "phi3.rope.freq_base": (6, 1e4),
            "phi3.rope.dimension_count": (4, hd // 2), "phi3.rope.scaling.attn_factor": (6, 1.19),
            "phi3.rope.scaling.original_context_length": (4, 8), "phi3.attention.sliding_window": (4, 4),
            "phi3.attention.layer_norm_rms_epsilon": (6, 1e-5)}
    ts3 = [("token_embd.weight", [D, V], 0, f32(D * V, rng)), ("output_norm.weight", [D], 0, f32(D, rng)),
           ("blk.0.attn_norm.weight", [D], 0, f32(D, rng)), ("blk.0.ffn_norm.weight", [D], 0, f32(D, rng)),
           ("blk.0.attn_qkv.weight", [D, D + 2 * KV * hd], 8, q8(D * (D + 2 * KV * hd), rng)),
           ("blk.0.attn_output.weight", [D, D], 0, f32(D * D, rng)),
           ("blk.0.ffn_up.weight", [D, 2 * F], 1, f16(D * 2 * F, rng)), ("blk.0.ffn_down.weight", [F, D], 8, q8(F * D, rng)),
           ("rope_factors_long.weight", [hd // 4], 0, struct.pack("<4f", 2.0, 4.0, 6.0, 8.0)),
           ("rope_factors_short.weight", [hd // 4], 0, struct.pack("<4f", 1.0, 1.5, 2.0, 2.5))]
    gguf(os.path.join(HERE, "corpus", "gguf", "phi3.gguf"), kvs3, ts3)
    with open(os.path.join(HERE, "corpus", "json", "gemma2_config.json"), "w") as f:
        json.dump({"model_type": "gemma2", "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 3,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12, "vocab_size": 48,
                   "query_pre_attn_scalar": 16, "sliding_window": 5, "attn_logit_softcapping": 50.0,
                   "final_logit_softcapping": 30.0, "hidden_activation": "gelu_pytorch_tanh"}, f)
    # Gemma 3's config.json (transformers 5's rope_parameters form)
    with open(os.path.join(HERE, "corpus", "json", "gemma3_config.json"), "w") as f:
        json.dump({"model_type": "gemma3_text", "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 3,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12, "vocab_size": 48,
                   "query_pre_attn_scalar": 16, "sliding_window": 5, "eos_token_id": [1, 6],
                   "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
                   "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                                       "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}, f)
    # a multimodal Gemma 3: the text model's config in text_config, transformers' defaults for the rest
    with open(os.path.join(HERE, "corpus", "json", "gemma3_mm_config.json"), "w") as f:
        json.dump({"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
                   "eos_token_id": [1, 106],
                   "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                                   "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                                   "sliding_window": 1024},
                   "vision_config": {"model_type": "siglip_vision_model"}}, f)
    # SmolLM3 (RoPE left out of every fourth layer) with transformers 5's rope_parameters
    with open(os.path.join(HERE, "corpus", "json", "smollm3_config.json"), "w") as f:
        json.dump({"model_type": "smollm3", "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 4,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 48,
                   "no_rope_layers": [1, 1, 1, 0], "rope_parameters": {"rope_type": "default", "rope_theta": 2e6}}, f)
    # Granite's multipliers
    with open(os.path.join(HERE, "corpus", "json", "granite_config.json"), "w") as f:
        json.dump({"model_type": "granite", "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 48, "embedding_multiplier": 12.0,
                   "residual_multiplier": 0.22, "attention_multiplier": 0.0078125, "logits_scaling": 8.0}, f)
    # Phi-3 (Phi-4-mini's shape): partial rotary, LongRoPE's factor lists, a sliding window
    with open(os.path.join(HERE, "corpus", "json", "phi3_config.json"), "w") as f:
        json.dump({"model_type": "phi3", "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 48,
                   "partial_rotary_factor": 0.75, "max_position_embeddings": 128,
                   "original_max_position_embeddings": 32, "sliding_window": 5,
                   "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.5, 2.5],
                                    "long_factor": [2.0, 4.0, 8.0]}}, f)
    # a phi3 GGUF LoRA (attn_qkv and ffn_up, as llama.cpp's converter names Phi-3's fused modules)
    r2, R = random.Random(2), 2
    gguf(os.path.join(HERE, "corpus", "gguf_lora", "phi3_qkv_gate_up.gguf"),
         {"general.architecture": (8, "phi3"), "general.type": (8, "adapter"), "adapter.type": (8, "lora"),
          "adapter.lora.alpha": (6, 4.0)},
         [("blk.0.attn_qkv.weight.lora_a", [D, R], 0, f32(D * R, r2)),
          ("blk.0.attn_qkv.weight.lora_b", [R, D + 2 * KV * hd], 0, f32(R * (D + 2 * KV * hd), r2)),
          ("blk.0.ffn_up.weight.lora_a", [D, R], 0, f32(D * R, r2)),
          ("blk.0.ffn_up.weight.lora_b", [R, 2 * F], 0, f32(R * 2 * F, r2))])
    os.makedirs(os.path.join(HERE, "corpus", "spm"), exist_ok=True)
    with open(os.path.join(HERE, "corpus", "spm", "tokenizer.model"), "wb") as f:
        f.write(spm([("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), ("<0x41>", 0.0, 6),
                     ("\u2581a", 0.0, 1), ("b", -1.0, 1), ("<user>", 0.0, 4)]))


def spm(pieces):
    """SentencePiece's ModelProto: field 1 pieces {1: text, 2: score, 3: type}, field 2 a trainer spec"""
    def varint(n):
        out = bytearray()
        while True:
            out.append((n & 127) | (128 if n > 127 else 0))
            n >>= 7
            if not n:
                return bytes(out)
    out = b""
    for text, score, typ in pieces:
        t = text.encode()
        body = b"\x0a" + varint(len(t)) + t + b"\x15" + struct.pack("<f", score) + b"\x18" + varint(typ)
        out += b"\x0a" + varint(len(body)) + body
    trainer = b"\x18" + varint(len(pieces)) + b"\x62\x03bpe"
    return out + b"\x12" + varint(len(trainer)) + trainer


if __name__ == "__main__":
    main()
