#!/usr/bin/python3
"""A Llama-family Hugging Face model rewritten in Phi-3's layout: q, k, v concatenated into one
qkv_proj and gate, up into one gate_up_proj (rows in that order), model_type phi3 with RoPE on the
whole head and no scaling, so the two directories compute the same model.

    /usr/bin/python3 bench/to_phi3.py out/bench/smollm out/bench/smollm-phi3

Used to measure the fused products against the separate ones (bench/ab_step.py --models).
Reads and writes F32 safetensors with tests/gguf_write.py's numpy reader and writer (one file,
as bench/torch_vs_peft.py writes it).
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from gguf_write import st_read, st_write  # noqa: E402


def main():
    src, dst = sys.argv[1], sys.argv[2]
    cfg = json.load(open(os.path.join(src, "config.json")))
    t = st_read(os.path.join(src, "model.safetensors"))
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
    st_write(os.path.join(dst, "model.safetensors"), out)


if __name__ == "__main__":
    main()
