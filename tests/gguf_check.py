#!/usr/bin/env python3
"""An independent GGUF reader for the tests (stdlib only). Usage:
   gguf_check.py same-lora MINE.gguf REFERENCE.gguf   tensors (names, shapes, types, bytes) and adapter.* equal
   gguf_check.py lora FILE.gguf                       structural check of a GGUF LoRA file
   gguf_check.py merged BASE.gguf OUT.gguf REGEX [TYPE]
                                                      a merged export: the base's keys (but general.name,
                                                      general.file_type), its tensors and shapes, and the
                                                      bytes of every tensor whose name REGEX does not match;
                                                      TYPE: "same" (every tensor in the base's type) or a
                                                      ggml type number (every matrix REGEX matches)
   gguf_check.py same-model REFERENCE.gguf OUT.gguf [REGEX]
                                                      the same keys (but general.name, general.size_label)
                                                      and tensors (names, shapes, types; bytes unless the
                                                      name matches REGEX)"""
import struct
import sys

TYPES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


BLOCK = {0: (1, 4), 1: (1, 2), 30: (1, 2), 8: (32, 34), 2: (32, 18), 12: (256, 144), 14: (256, 210)}


def read(path, any_type=False):
    d = open(path, "rb").read()
    o = 0

    def take(fmt):
        nonlocal o
        v = struct.unpack_from("<" + fmt, d, o)[0]
        o += struct.calcsize(fmt)
        return v

    def string():
        nonlocal o
        n = take("Q")
        s = d[o:o + n].decode("utf-8")
        o += n
        return s

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(TYPES[t])

    assert d[:4] == b"GGUF", "magic"
    o = 4
    version, n_t, n_kv = take("I"), take("Q"), take("Q")
    assert version == 3, version
    kv = {}
    for _ in range(n_kv):
        k = string()
        t = take("I")
        kv[k] = (t, value(t))
    tensors = []
    for _ in range(n_t):
        name = string()
        nd = take("I")
        ne = [take("Q") for _ in range(nd)]
        tensors.append((name, ne, take("I"), take("Q")))
    align = kv.get("general.alignment", (4, 32))[1]
    start = (o + align - 1) // align * align
    out = []
    for name, ne, t, off in tensors:
        assert any_type or t == 0, f"{name}: type {t} (expected F32)"
        assert off % align == 0, f"{name}: offset {off} not aligned"
        per, size = BLOCK[t]
        n = 1
        for x in ne:
            n *= x
        assert n % per == 0, f"{name}: {n} values are not whole blocks of type {t}"
        n = n // per * size
        assert start + off + n <= len(d), f"{name}: data past the end"
        out.append((name, ne, t, d[start + off:start + off + n]))
    return kv, out


def main():
    mode = sys.argv[1]
    if mode == "lora":
        kv, ts = read(sys.argv[2])
        assert kv["general.type"][1] == "adapter" and kv["adapter.type"][1] == "lora", kv
        assert kv["adapter.lora.alpha"][0] == 6
        names = {t[0] for t in ts}
        for name, ne, _, _ in ts:
            assert name.endswith((".weight.lora_a", ".weight.lora_b")), name
            if name.endswith("lora_a"):
                b = [t for t in ts if t[0] == name[:-1] + "b"][0]
                assert ne[1] == b[1][0], f"{name}: rank of lora_a {ne} and lora_b {b[1]} differ"
            assert name[:-1] + ("b" if name.endswith("a") else "a") in names, name
        print(f"ok: {len(ts)} tensors")
    elif mode == "merged":
        import re
        kv1, t1 = read(sys.argv[2], True)
        kv2, t2 = read(sys.argv[3], True)
        skip = ("general.name", "general.file_type")
        assert {k: v for k, v in kv1.items() if k not in skip} == {k: v for k, v in kv2.items() if k not in skip}, \
            "keys differ"
        out = {n: (ne, t, d) for n, ne, t, d in t2}
        changed = 0
        for n, ne, t, d in t1:
            assert n in out and out[n][0] == ne, f"{n}: missing or reshaped"
            want = sys.argv[5] if len(sys.argv) > 5 else None
            if want == "same" or (want is not None and re.search(sys.argv[4], n) and len(ne) == 2):
                got = out[n][1]
                assert got == (t if want == "same" else int(want)), f"{n}: type {got}, base {t}, wanted {want}"
            if re.search(sys.argv[4], n):
                changed += 1
            else:
                assert out[n][1] == t and out[n][2] == d, f"{n}: not copied as stored"
        print(f"ok: {len(t1)} tensors, {len(t1) - changed} copied byte for byte")
    elif mode == "same-model":
        import re
        kv1, t1 = read(sys.argv[2], True)
        kv2, t2 = read(sys.argv[3], True)
        skip = ("general.name", "general.size_label")
        for k in sorted(set(kv1) | set(kv2)):
            if k not in skip:
                assert kv1.get(k) == kv2.get(k), f"key {k}: {str(kv1.get(k))[:200]} != {str(kv2.get(k))[:200]}"
        out = {n: (ne, t, d) for n, ne, t, d in t2}
        assert sorted(out) == sorted(n for n, _, _, _ in t1), "tensor names differ"
        same = 0
        for n, ne, t, d in t1:
            assert out[n][:2] == (ne, t), f"{n}: shape/type {out[n][:2]} != {(ne, t)}"
            if len(sys.argv) > 4 and re.search(sys.argv[4], n):
                continue
            assert out[n][2] == d, f"{n}: bytes differ"
            same += 1
        print(f"ok: {len(kv1)} keys, {len(t1)} tensors, {same} byte for byte")
    elif mode == "same-lora":
        kv1, t1 = read(sys.argv[2])
        kv2, t2 = read(sys.argv[3])
        for k in ("general.architecture", "general.type", "adapter.type", "adapter.lora.alpha"):
            assert kv1[k] == kv2[k], (k, kv1.get(k), kv2.get(k))
        assert [(n, ne, t) for n, ne, t, _ in t1] == [(n, ne, t) for n, ne, t, _ in t2], "tensor lists differ"
        for (n, _, _, a), (_, _, _, b) in zip(t1, t2):
            assert a == b, f"{n}: bytes differ"
        print(f"ok: {len(t1)} tensors identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
