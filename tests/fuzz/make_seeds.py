#!/usr/bin/env python3
"""Write the small seed files of the fuzz corpus that are not copies of test data:
a 1-layer llama GGUF model (F32, F16 and Q8_0 tensors) and a small tokenizer.json."""
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
        out += s(v) if t == 8 else struct.pack({4: "<I", 6: "<f"}[t], v)
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


if __name__ == "__main__":
    main()
