"""A real workload prints the same digest with and without rustmalloc (each install mode)."""

import pytest

from helpers import run_python

WORKLOAD = r'''
import sys, hashlib, json, pickle, re, gc, random, threading, weakref, collections, io, zlib
mode = sys.argv[1]
if mode != "none":
    import rustmalloc
    rustmalloc.install(tuple(mode.split(",")))
    assert rustmalloc.installed() == tuple(d for d in ("raw", "mem", "obj") if d in mode.split(","))
h = hashlib.sha256()
def out(x):
    h.update(repr(x).encode())
    h.update(b"|")
rng = random.Random(1234)

# json
data = [{"id": i, "name": "item%d" % i, "tags": [rng.choice("abcdef") * rng.randint(1, 20) for _ in range(5)],
         "v": rng.random(), "n": None if i % 7 else {"deep": [i, [i, [i]]]}} for i in range(10000)]
s = json.dumps(data, sort_keys=True)
out(len(s)); out(hashlib.sha256(s.encode()).hexdigest())
back = json.loads(s)
out(back == data)

# pickle
for proto in (2, 5):
    p = pickle.dumps(data, protocol=proto)
    out(len(p)); out(hashlib.sha256(p).hexdigest()); out(pickle.loads(p) == data)

# re
text = " ".join(d["name"] + ":" + d["tags"][0] for d in data)
out(len(re.findall(r"item(\d+):(a+|b+)", text)))
out(hashlib.sha256(re.sub(r"\d+", lambda m: str(int(m.group()) * 3), text).encode()).hexdigest())
out([m.span() for m in re.finditer(r"(c{3,})", text)][:50])

# dict / list / str churn
for r in range(15):
    d = {}
    for i in range(5000):
        d["k%d_%d" % (r, i)] = [i] * (i % 17)
    for i in range(0, 5000, 3):
        del d["k%d_%d" % (r, i)]
    out(sum(len(v) for v in d.values()))
    st = "".join(str(i) for i in range(3000))
    out(len(st.upper().split("1")))
    lst = list(range(r * 1000))
    lst.sort(key=lambda x: (x * 7919) % 1000)
    out(lst[:5])
    out(sorted(set(x % 977 for x in lst))[-3:])
    dq = collections.deque(range(5000)); dq.rotate(r); out(dq[0])

# growing and shrinking buffers
ba = bytearray()
for i in range(2000):
    ba += bytes([i % 256]) * (i % 700)
out(hashlib.sha256(ba).hexdigest())
del ba[::2]
out(len(ba)); out(zlib.crc32(ba))
buf = io.BytesIO()
for i in range(3000):
    buf.write(str(i).encode() * (i % 50))
out(zlib.crc32(buf.getvalue()))
comp = zlib.compress(buf.getvalue(), 6); out(len(comp)); out(zlib.decompress(comp) == buf.getvalue())

# cyclic garbage
class Node:
    def __init__(self, v):
        self.v = v
        self.other = None
        self.payload = [v] * 10
for r in range(10):
    nodes = [Node(i) for i in range(2000)]
    for i, n in enumerate(nodes):
        n.other = nodes[(i * 7 + 1) % len(nodes)]
    probe = weakref.ref(nodes[5])
    total = sum(n.other.v for n in nodes)
    del nodes, n
    gc.collect()
    out((total, probe() is None))

# threads
results = [None] * 8
def worker(k):
    r = random.Random(k)
    acc = []
    for i in range(1500):
        acc.append(json.dumps({"k": k, "i": i, "x": r.random(), "l": list(range(i % 20))}))
    junk = [Node(i) for i in range(500)]
    for j in junk:
        j.other = j
    results[k] = hashlib.sha256("".join(acc).encode()).hexdigest()
ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
for t in ts:
    t.start()
for t in ts:
    t.join()
out(results)

# big sorted sets, big ints, floats
out(sum(sorted(set(rng.randrange(10**6) for _ in range(100000)))[::1000]))
out(pow(3, 20000, 10**40)); out(str(7 ** 3000)[-30:])
out(sum(x / 3 for x in range(100000)))
gc.collect()
print(h.hexdigest())
print("workload done")
'''


def _run(mode):
    return run_python(WORKLOAD, prelude=False, argv=[mode], extra_env={"PYTHONHASHSEED": "0"},
                      expect_empty_stderr=True, timeout=120)


@pytest.fixture(scope="module")
def baseline_output():
    return _run("none").stdout


@pytest.mark.parametrize("mode", ["raw,mem,obj", "raw", "mem,obj"])
def test_workload_same_result_with_and_without_rustmalloc(baseline_output, mode):
    got = _run(mode).stdout
    assert "workload done" in baseline_output
    assert got == baseline_output, "workload output differs with rustmalloc.install(%r)" % (mode,)


def test_workload_in_subinterpreter():
    """A sub-interpreter created after install() allocates through the same (process-wide) allocator."""
    import importlib.util
    if importlib.util.find_spec("_testcapi") is None:
        pytest.skip("_testcapi is not available in this CPython build")
    run_python('''
import rustmalloc, _testcapi
rustmalloc.install()
code = "import json, gc\\nd = [{'i': i, 's': str(i) * 20} for i in range(50000)]\\n" \\
       "assert json.loads(json.dumps(d)) == d\\nl = [[i] * 30 for i in range(20000)]\\ngc.collect()\\n"
for _ in range(3):
    rc = _testcapi.run_in_subinterp(code)
    check(rc == 0, "run_in_subinterp returned %r" % rc)
check(python_churn() > 0)
print("ok")
''', expect_empty_stderr=True)
