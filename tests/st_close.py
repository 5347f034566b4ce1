"""Compare the F32 tensors of two safetensors files: same names and shapes, and every
value within TOL x (largest magnitude in the first file). Usage: st_close.py A B TOL"""
import json
import struct
import sys


def load(path):
    raw = open(path, 'rb').read()
    n = struct.unpack('<Q', raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, t in header.items():
        if name == '__metadata__':
            continue
        if t['dtype'] != 'F32':
            sys.exit('%s: %s is %s, not F32' % (path, name, t['dtype']))
        s, e = t['data_offsets']
        out[name] = (tuple(t['shape']), struct.unpack('<%df' % ((e - s) // 4), data[s:e]))
    return out


def main():
    a, b, tol = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
    if a.keys() != b.keys():
        sys.exit('tensor names differ: %s' % sorted(set(a) ^ set(b)))
    scale = max(max((abs(v) for v in t[1]), default=0.0) for t in a.values())
    worst = 0.0
    for name in a:
        if a[name][0] != b[name][0]:
            sys.exit('%s: shape %s vs %s' % (name, a[name][0], b[name][0]))
        worst = max([worst] + [abs(x - y) for x, y in zip(a[name][1], b[name][1])])
    print('max difference %.3g (largest value %.3g)' % (worst, scale))
    sys.exit(0 if worst <= tol * scale else 1)


main()
