#!/usr/bin/python3
"""A Llama-family Hugging Face model rewritten in Phi-3's layout: q, k, v concatenated into one
qkv_proj and gate, up into one gate_up_proj (rows in that order), model_type phi3 with RoPE on the
whole head and no scaling, so the two directories compute the same model.

    /usr/bin/python3 bench/to_phi3.py out/bench/smollm out/bench/smollm-phi3

Used to measure the fused products against the separate ones (bench/ab_step.py --models).
Reads and writes F32 safetensors with numpy (one file, as bench/torch_vs_peft.py writes it).
"""
import json
import os
import struct
import sys

import numpy as np


def main():
    src, dst = sys.argv[1], sys.argv[2]
    cfg = json.load(open(os.path.join(src, "config.json")))
    raw = open(os.path.join(src, "model.safetensors"), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    t = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        a, b = v["data_offsets"]
        t[k] = np.frombuffer(data[a:b], dtype=np.float32).reshape(v["shape"])
    out = {}
    for k, v in t.items():
        if ".self_attn.q_proj." in k:
            p = k.replace(".q_proj.", ".{}.")
            out[k.replace(".q_proj.", ".qkv_proj.")] = np.concatenate([t[p.format(x)] for x in ("q_proj", "k_proj", "v_proj")])
        elif ".mlp.gate_proj." in k:
            p = k.replace(".gate_proj.", ".{}.")
            out[k.replace(".gate_proj.", ".gate_up_proj.")] = np.concatenate([t[p.format(x)] for x in ("gate_proj", "up_proj")])
        elif not any(x in k for x in (".k_proj.", ".v_proj.", ".up_proj.")):
            out[k] = v
    cfg.update({"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "rope_scaling": None})
    os.makedirs(dst, exist_ok=True)
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=2)
    hdr, off = {}, 0
    for k in sorted(out):
        hdr[k] = {"dtype": "F32", "shape": list(out[k].shape), "data_offsets": [off, off + out[k].nbytes]}
        off += out[k].nbytes
    h = json.dumps(hdr).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(os.path.join(dst, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for k in sorted(out):
            f.write(np.ascontiguousarray(out[k]).tobytes())


if __name__ == "__main__":
    main()
