#!/usr/bin/env python3
"""Tests of the ctypes binding (plain python3; pytest not needed):
   LIBPEFT_PATH=build/libpeft.so python3 python/test_libpeft.py [TEST]"""
import array
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import libpeft  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(os.environ.get("PEFT_TEST_DATA", os.path.join(HERE, "..", "tests", "data")), "tiny")
SHARED = os.path.join(HERE, "..", "..", "shared")


def batch(seed, b=4, t=16, v=48):
    rows, x = [], seed
    for _ in range(b):
        row = []
        for _ in range(t):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            row.append(x % v)
        rows.append(row)
    return rows


def test_train_save_load():
    with libpeft.Model(TINY, threads=2) as m:
        info = m.info
        assert info["architecture"] == "llama" and info["n_layers"] == 3 and info["vocab_size"] == 48
        assert m.count_lora(targets="all-linear", rank=4) == 5280
        n = m.attach_lora(targets="all-linear", rank=4, alpha=8, init="gaussian", seed=1)
        assert n == 5280 and m.info["n_trainable"] == 5280
        m.set_optimizer(lr=2e-2, schedule="cosine", warmup_steps=2, total_steps=30)
        assert abs(m.get_optimizer("lr") - 2e-2) < 1e-12
        data = batch(5)
        first = m.step(data)
        for _ in range(29):
            last = m.step(data)
        assert last.loss < 0.6 * first.loss, (first, last)
        assert last.step == 30 and last.updated and last.tokens == 4 * 15
        s1, t1 = m.eval(data)
        with tempfile.TemporaryDirectory() as d:
            m.save_adapter(d)
            assert sorted(os.listdir(d)) == ["adapter_config.json", "adapter_model.safetensors"]
            with libpeft.Model(TINY) as m2:
                m2.load_adapter(d)
                s2, t2 = m2.eval(data)
                assert (s1, t1) == (s2, t2)
                m2.merge()
                s3, _ = m2.eval(data)
                assert abs(s3 - s1) < 1e-4 * abs(s1)
            # to llama.cpp's GGUF LoRA and back, with and without the model
            g = os.path.join(d, "a.gguf")
            m.save_adapter_gguf(g, name="tiny")
            libpeft.convert_adapter(d, os.path.join(d, "free.gguf"), n_heads=4, n_kv_heads=2, name="tiny")
            assert open(g, "rb").read() == open(os.path.join(d, "free.gguf"), "rb").read()
            back = os.path.join(d, "back")
            libpeft.convert_adapter(g, back, n_heads=4, n_kv_heads=2, n_layers=3, base_model=TINY)
            assert open(os.path.join(back, "adapter_model.safetensors"), "rb").read() == \
                open(os.path.join(d, "adapter_model.safetensors"), "rb").read()
            try:  # a merged GGUF from a Hugging Face base needs its tokenizer (the tiny model has none)
                m.save_merged_gguf(os.path.join(d, "m.gguf"))
                raise AssertionError("merged GGUF without a vocabulary")
            except libpeft.Error as e:
                assert "tokenizer" in str(e) and not os.path.exists(os.path.join(d, "m.gguf"))
            try:
                libpeft.convert_adapter(g, os.path.join(d, "x"))
                raise AssertionError("converted without the head counts")
            except libpeft.Error as e:
                assert "head counts" in str(e)


def test_bias():
    """PEFT's bias option on Qwen2 (q/k/v biases): every bias, or the adapted modules'"""
    qwen2 = os.path.join(os.path.dirname(TINY), "tiny_qwen2")
    with libpeft.Model(qwen2) as m:
        lora = 4 * (32 + 32) + 4 * (32 + 16)  # q, v of layer 1
        assert m.attach_lora(targets="q,v", layers="1", rank=4, bias="lora_only") == lora + 32 + 16
        m.detach()
        assert m.attach_lora(targets="q,v", layers="1", rank=4, bias="all") == lora + 3 * (32 + 16 + 16)
        m.set_optimizer(lr=3e-2)
        data = batch(3)
        first = m.step(data)
        for _ in range(4):
            last = m.step(data)
        assert last.loss < first.loss
        s1, _ = m.eval(data)
        with tempfile.TemporaryDirectory() as d:
            m.save_adapter(d)
            assert '"bias": "all"' in open(os.path.join(d, "adapter_config.json")).read()
            with libpeft.Model(qwen2) as m2:
                m2.load_adapter(d)
                assert m2.eval(data)[0] == s1
        try:
            m.attach_lora(targets="q", bias="some")
            raise AssertionError("a bad bias mode was accepted")
        except KeyError:
            pass


def test_token_containers():
    with libpeft.Model(TINY) as m:
        rows = batch(9, b=2, t=12)
        ref = m.eval(rows)
        flat = array.array("i", rows[0])
        one = m.eval(flat)
        assert one == m.eval([rows[0]])
        labels = [[-100] * 6 + r[6:] for r in rows]
        masked = m.eval(rows, labels)
        assert masked[1] == 2 * 6 and masked[0] < ref[0]  # positions 5..10 of each row predict labels 6..11
        try:
            import numpy as np
        except ImportError:
            return
        a = np.array(rows, dtype=np.int32)
        assert m.eval(a) == ref
        assert m.eval(a.astype(np.int64)) == ref


def test_frozen_bf16():
    rows = batch(9, b=2, t=12)
    with libpeft.Model(TINY) as m:
        ref = m.eval(rows)
    with libpeft.Model(TINY, frozen_dtype="bf16") as m:
        got = m.eval(rows)
    # the weights rounded to BFloat16 move the summed loss a little, not much
    assert got[1] == ref[1] and got[0] != ref[0] and abs(got[0] - ref[0]) < 5e-3 * ref[0], (got, ref)
    try:
        libpeft.Model(TINY, frozen_dtype="fp8")
    except libpeft.Error as e:
        assert "fp8" in str(e)
    else:
        raise AssertionError("fp8 accepted")


def test_errors():
    try:
        libpeft.Model("/nonexistent/model")
    except libpeft.Error as e:
        assert e.code == -7 and "config.json" in str(e), e
    else:
        raise AssertionError("no error")
    with libpeft.Model(TINY) as m:
        for bad in (lambda: m.step(batch(1)), lambda: m.eval([[1, 2, 48]]), lambda: m.set_optimizer(lr=-1)):
            try:
                bad()
            except libpeft.Error as e:
                assert e.code in (-1, -8), e
            else:
                raise AssertionError("no error")
        try:
            m.attach_lora(targets="q,nope")
        except ValueError:
            pass
        else:
            raise AssertionError("bad target accepted")


def test_other_methods():
    with libpeft.Model(TINY) as m:
        assert m.attach_ia3(layers="1-2") == 2 * (16 + 16 + 40)
        m.detach()
        # with the embeddings in full and the final norm alongside (48 x 32 + 32)
        assert m.attach_ia3(layers="1-2", modules_to_save=["embed_tokens"], norms=["final"]) == \
            2 * (16 + 16 + 40) + 48 * 32 + 32
        m.detach()
        assert m.attach_vera(targets="q,v", rank=64, norms=["final"]) == 3 * (64 + 32 + 64 + 16) + 32
        m.detach()
        assert m.attach_norms(layers="last:1") == 3 * 32
        m.detach()
        # Gemma's four norms a layer (hidden 32, 3 layers) and the final one; only those around the MLP
    with libpeft.Model(os.path.join(os.path.dirname(TINY), "tiny_gemma3")) as g:
        assert g.attach_norms() == (3 * 4 + 1) * 32 + 3 * 2 * 12  # and the q/k norms (head_dim 12)
        g.detach()
        assert g.attach_norms(input=False, post_attention=False, final=False, q_norm=False, k_norm=False) == 3 * 2 * 32
        g.detach()
        assert g.attach_norms(input=False, post_attention=False, final=False, pre_feedforward=False,
                              post_feedforward=False, layers="1") == 2 * 12
        g.detach()
        assert g.attach_lora(targets="q", rank=2, layers="last:1", norms=["post_feedforward"]) == 2 * (32 + 48) + 32
        g.detach()
    # Phi-3's fused modules by their names (qkv_proj: out 64, gate_up_proj: out 80; hidden 32)
    with libpeft.Model(os.path.join(os.path.dirname(TINY), "tiny_phi3")) as p:
        assert p.info["architecture"] == "phi3"
        assert p.attach_lora(targets="qkv_proj,gate_up_proj", rank=2) == 3 * 2 * ((32 + 64) + (32 + 80))
        p.detach()
        assert p.attach_lora(targets="v", rank=2) == 3 * 2 * (32 + 64)  # any part selects qkv_proj
        p.detach()
        assert p.attach_ia3(targets="qkv,down", feedforward="down") == 3 * (64 + 40)
        p.detach()
    with libpeft.Model(TINY) as m:
        assert m.attach_lora(targets="q,v", rank=2, dora=True) == 3 * (2 * (64 + 48) + 32 + 16)
        m.detach()
        # LoRA on the embeddings too: A (2, vocab 48) and B (hidden 32, 2)
        assert m.attach_lora(targets="all-linear,embed_tokens", rank=2) == 2 * 3 * 440 + 2 * (48 + 32)
        m.set_optimizer(embed_lr_ratio=0.1)
        assert abs(m.get_optimizer("embed_lr_ratio") - 0.1) < 1e-12
        m.detach()
        # VeRA: lambda_d (rank) and lambda_b (out) per module: q (out 32) and v (out 16) in 3 layers
        assert m.attach_vera(targets="q,v", rank=64) == 3 * (64 + 32 + 64 + 16)
        m.detach()
        # rows of the embeddings and of the (untied) lm_head: 3 + 2 rows of hidden 32
        assert m.attach_lora(targets="q", rank=2, token_indices=[1, 2, 3], head_token_indices=[0, 9]) == \
            3 * 2 * (32 + 32) + 5 * 32
        m.detach()
        # LoHa: 2 r (in + out) per module
        assert m.attach_lora(targets="q", rank=2, variant="loha") == 3 * 2 * 2 * (32 + 32)
        m.detach()
        # LoKr: q (32 x 32) = (4 x 8) x (4 x 8): w1 4 x 4, w2_a 8 x 2, w2_b 2 x 8
        assert m.attach_lora(targets="q", rank=2, variant="lokr") == 3 * (16 + 2 * (8 + 8))
        m.detach()
        # beyond the linear modules: lm_head LoRA (A 2 x 32, B 48 x 2), three token rows, the
        # embeddings in full, the final norm; each group at its own rate
        n = m.attach_lora(targets="q,lm_head", rank=2, modules_to_save=["embed_tokens"],
                          norms=["final"], token_indices=[])
        assert n == 3 * 2 * 64 + 2 * (32 + 48) + 48 * 32 + 32, n
        m.detach()
        assert m.attach_lora(targets="v", rank=2, token_indices=[3, 7, 11], modules_to_save=["lm_head"]) == \
            3 * 2 * 48 + 3 * 32 + 48 * 32
        m.set_optimizer(norm_lr_ratio=0.5, embed_weight_decay=0.0)
        m.detach()
        # PiSSA: unchanged model at init; saved plain for the original base
        before = m.eval([[(i * 5) % 48 for i in range(16)]])
        m.attach_lora(targets="q,v", rank=2, init="pissa")
        after = m.eval([[(i * 5) % 48 for i in range(16)]])
        assert abs(before[0] - after[0]) < 1e-3 * before[0], (before, after)
        with tempfile.TemporaryDirectory() as d:
            m.save_adapter(d, convert_to_lora=True)
            assert '"r": 4' in open(os.path.join(d, "adapter_config.json")).read()
        m.detach()
        assert m.attach_lora(rank=2, target_regex=r"model\.layers\.\d\.self_attn\.q_proj") == 3 * 2 * 64
        m.detach()
        # PEFT's exclude_modules: a list of names (whole or after a dot) or a regular expression
        assert m.attach_lora(targets="all-linear", rank=2,
                             exclude_modules=["down_proj", "model.layers.0.self_attn.q_proj"]) == 3 * 880 - 3 * 144 - 128
        m.detach()
        assert m.attach_lora(targets="q", rank=2, exclude_modules=r"model\.layers\.[01]\..*") == 2 * 64
        m.detach()
        m.attach_lora(targets="v", rank=2, token_indices=[3, 7, 11], modules_to_save=["lm_head"])
        assert m.get_optimizer("norm_lr_ratio") == 0.5
        r = m.step([[(i * 5) % 48 for i in range(16)]] * 2)
        assert r.loss > 0
        m.detach()
        # prompt tuning: 4 virtual rows of hidden 32, saved as PEFT's prompt_embeddings
        assert m.attach_prompt(4, init="text", init_tokens=[1, 5, 9], init_text="x", seed=1) == 4 * 32
        assert m.info["adapter_type"] == "PROMPT_TUNING" and m.info["n_virtual_tokens"] == 4
        loss0 = m.step([[(i * 5) % 48 for i in range(16)]] * 2).loss
        with tempfile.TemporaryDirectory() as d:
            m.save_adapter(d)
            assert '"peft_type": "PROMPT_TUNING"' in open(os.path.join(d, "adapter_config.json")).read()
            with libpeft.Model(TINY) as m2:
                m2.load_adapter(d)
                assert m2.info["n_trainable"] == 4 * 32
        assert loss0 > 0
        m.detach()
        # trainable tokens alone: three rows of hidden 32
        assert m.attach_tokens([3, 7, 11]) == 3 * 32 and m.info["adapter_type"] == "TRAINABLE_TOKENS"
        m.step(batch(4, b=2))
        m.detach()
        # several adapters: two saved LoRAs loaded by name, switched, combined
        with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
            for d, seed in ((d1, 1), (d2, 2)):
                m.attach_lora(targets="q,v", rank=2, seed=seed)
                m.set_optimizer(lr=1e-2)
                for _ in range(5):
                    m.step(batch(seed, b=2))
                m.save_adapter(d)
                m.detach()
            m.load_named_adapter(d1, "one")
            m.load_named_adapter(d2, "two")
            assert m.adapters == (["one", "two"], False)
            m.set_adapter("one")
            l1 = m.eval(batch(5, b=2))
            m.combine_adapters(["one", "two"], [1.0, 0.0], "sum", "cat")
            m.set_adapter("sum")
            assert abs(m.eval(batch(5, b=2))[0] - l1[0]) < 1e-4 * l1[0]
            # ties at density 1 of an adapter with itself (weights 1, 1): the mean of two equal factors
            m.combine_adapters(["one", "one"], [1.0, 1.0], "self_ties", "ties", density=1.0, majority_sign="frequency")
            m.set_adapter("self_ties")
            assert abs(m.eval(batch(5, b=2))[0] - l1[0]) < 1e-4 * l1[0]
            try:
                m.combine_adapters(["one", "two"], [1.0, 1.0], "x", "ties", density=2.0)
                raise AssertionError("density 2 accepted")
            except libpeft.Error:
                pass
            m.delete_adapter("self_ties")
            m.set_adapter("sum")
            names, active = m.adapters
            assert active and names[0] == "sum" and sorted(names) == ["one", "sum", "two"], names
            m.delete_adapter("two")
            m.set_adapter(None)
            assert sorted(m.adapters[0]) == ["one", "sum"] and not m.adapters[1]


def test_tokenizer():
    path = os.path.join(SHARED, "models", "stories260K")
    if not os.path.isdir(path):
        print("SKIP: ../shared not present")
        return
    with libpeft.Tokenizer(path) as t:
        ids = t.encode("Once upon a time")
        assert ids == [1, 403, 407, 261, 378], ids
        assert t.decode(ids) == "Once upon a time"
        text = "Unicode: café, 日本, 😀 and\nnewlines"
        assert t.decode(t.encode(text)) == text


def test_tokenizer_bytelevel():
    # Qwen3's first 4096 pieces (NFC, Qwen2's split) and the same vocabulary in a GGUF file
    data = os.environ.get("PEFT_TEST_DATA", os.path.join(os.path.dirname(__file__), "..", "tests", "data"))
    text = "Hello world! 12 cafe\u0301 日本 <|im_start|>user"
    got = []
    for path in ("qwen3", "qwen3.gguf"):
        with libpeft.Tokenizer(os.path.join(data, "bytelevel", path)) as t:
            ids = t.encode(text)
            assert ids[:3] == [39, 301, 385] and ids[-2] == 4097 and ids[6:8] == [16, 17], ids  # H ell o, <|im_start|>, 1 2
            assert t.decode(ids) == "Hello world! 12 café 日本 user"  # NFC; special tokens dropped
            got.append(ids)
    assert got[0] == got[1]


TESTS = {k: v for k, v in globals().items() if k.startswith("test_")}

if __name__ == "__main__":
    names = sys.argv[1:] or list(TESTS)
    failed = 0
    for name in names:
        try:
            TESTS[name]()
            print(f"ok   {name}")
        except Exception as e:  # report and go on
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
    sys.exit(1 if failed else 0)
