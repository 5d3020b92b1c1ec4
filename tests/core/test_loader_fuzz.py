"""Fuzzing the adapter file loader: mutated safetensors headers, damaged torch zips and
hostile pickles go through the same steps as the IPAdapter Model Loader node
(`read_layout` for the Flux/SD3.5 check, then `load_adapter_weights`, `describe`,
`IPAdapterModel.from_weights`). Only a clean load or an IPAdapterError may come out: never
another exception, never a hang, never a spawned process or a file written by a payload.

Each test has a wall-clock budget (FUZZ_BUDGET_S, default 5 s; examples after it are
skipped; FUZZ_EXAMPLES caps the count) and every example a hard timer, so the module takes
about 25 s. A failing example is printed by hypothesis with the edits that made it."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import shutil
import signal
import struct
import sys
import time
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ip_adapter_core.adapter import IPAdapterModel
from ip_adapter_core.checkpoint import load_adapter_layout, load_adapter_weights, read_layout
from ip_adapter_core.detect import describe
from ip_adapter_core.dit.detect import describe_dit, is_dit_state
from ip_adapter_core.errors import IPAdapterError

# a backstop for the whole module; "thread": the per-example guard below owns SIGALRM
pytestmark = [pytest.mark.timeout(180, method="thread"), pytest.mark.usefixtures("one_thread")]

BUDGET_S = float(os.environ.get("FUZZ_BUDGET_S", "5"))
EXAMPLE_LIMIT_S = 20  # one example longer than this is a hang
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

# --- what counts as code execution ------------------------------------------------------

_SPAWN_EVENTS = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "subprocess.Popen", "socket.connect",
                 "os.kill", "ctypes.dlopen", "webbrowser.open"}
_watch = {"on": False, "events": []}


def _audit(event, args):
    if _watch["on"] and event in _SPAWN_EVENTS:
        _watch["events"].append((event, repr(args)[:200]))


sys.addaudithook(_audit)  # hooks cannot be removed; it records only while a load runs


class Hang(BaseException):
    """Not an Exception: the loader's own `except Exception` must not turn it into an error."""


@contextmanager
def _guard():
    """Record process-spawning events and stop an example that runs too long."""

    def alarm(signum, frame):
        raise Hang(f"one load took more than {EXAMPLE_LIMIT_S} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, EXAMPLE_LIMIT_S)
    _watch["on"], _watch["events"] = True, []
    try:
        yield
    finally:
        _watch["on"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def load_like_the_node(path: Path) -> str:
    """The IPAdapter Model Loader's steps on a file, host-free: 'ok', or the error class name."""
    with _guard():
        try:
            try:
                dit = is_dit_state(read_layout(path))
            except IPAdapterError:
                dit = False  # the node then reports the file through the UNet path
            if dit:
                describe_dit(read_layout(path), path.name)
                return "ok"
            try:  # the Unified Loader scans the folder by headers only
                describe(load_adapter_layout(path))
            except IPAdapterError:
                pass
            weights = load_adapter_weights(path)
            spec = describe(weights)
            IPAdapterModel.from_weights(weights, spec, dtype=torch.float32)
            return "ok"
        except IPAdapterError as exc:
            assert str(exc).strip(), f"{type(exc).__name__} without a message"
            return type(exc).__name__
        finally:
            assert not _watch["events"], f"a load spawned something: {_watch['events']}"


class Budget:
    def __init__(self):
        self.start = time.monotonic()
        self.examples = 0
        self.outcomes: dict[str, int] = {}

    def spent(self) -> bool:
        return time.monotonic() - self.start > BUDGET_S

    def record(self, outcome: str) -> None:
        self.examples += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


# --- seed files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeds(adapter_file, tmp_path_factory):
    """A published-layout SD1.5 .safetensors (header + data) and .bin (torch zip)."""
    st_path = Path(adapter_file("ip-adapter_sd15.safetensors"))
    raw = st_path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    bin_path = Path(adapter_file("ip-adapter_sd15_light_v11.bin"))
    blob = bin_path.read_bytes()
    with zipfile.ZipFile(bin_path) as zf:
        pkl = next(i for i in zf.infolist() if i.filename.endswith("data.pkl"))
    name_len, extra_len = struct.unpack("<HH", blob[pkl.header_offset + 26 : pkl.header_offset + 30])
    pkl_start = pkl.header_offset + 30 + name_len + extra_len  # the local header's extra field pads the data
    assert blob[pkl_start] == 0x80
    pkl_range = (pkl_start, pkl_start + pkl.compress_size)
    central = blob.find(b"PK\x01\x02")  # the central directory (zip index)
    return Seeds({"st_header": header, "st_data_size": len(raw) - 8 - n, "st_raw_head": raw[: 8 + n],
                  "bin": blob, "pkl_range": pkl_range, "central": central, "dir": tmp_path_factory.mktemp("fuzz")})


class Seeds(dict):
    def __repr__(self):  # hypothesis prints the arguments of a failing example; not 44 MB of bytes
        return "<seed files>"


def _write_safetensors(path: Path, header: object, data_size: int, prefix: bytes | None = None) -> None:
    """A header and a data section of zeros (sparse: nothing is written for it)."""
    text = json.dumps(header, separators=(",", ":")).encode() if prefix is None else prefix
    if prefix is None:
        text += b" " * (-len(text) % 8)
        text = struct.pack("<Q", len(text)) + text
    with open(path, "wb") as fh:
        fh.write(text)
        fh.truncate(len(text) + max(0, data_size))


# --- strategies -------------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                         st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                           max_leaves=8)
dims = st.one_of(st.integers(0, 4096), st.integers(-5, -1), st.integers(2**31, 2**62), st.sampled_from([1, 768, 3072, 320]))
shapes = st.one_of(st.lists(dims, max_size=5), json_values)
dtypes = st.one_of(st.sampled_from(["F16", "BF16", "F32", "F64", "I8", "U8", "I16", "I32", "I64", "BOOL", "F8_E4M3", "F8_E5M2"]),
                   st.text(max_size=6), json_values)
key_names = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["image_proj.proj.weight", "image_proj.norm.weight", "image_proj.latents", "ip_adapter.1.to_k_ip.weight",
                     "ip_adapter.x.to_k_ip.weight", "ip_adapter.999.to_v_ip.weight", "ip_adapter.1.to_k_lora.down.weight",
                     "image_proj.perceiver_resampler.proj_in.weight", "image_proj.proj.3.weight", "__metadata__",
                     "double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight", "adapter_modules.1.to_k_ip.weight"]),
)


OPS = ["drop", "rename", "shape", "dtype", "offsets", "replace_entry", "metadata", "add", "swap_offsets"]
new_entries = st.one_of(json_values, st.fixed_dictionaries(
    {"dtype": dtypes, "shape": shapes, "data_offsets": st.lists(st.integers(0, 2**40), min_size=2, max_size=2)}))


@st.composite
def header_edit(draw):
    """One edit of the published header: (operation, key index, value); values drawn up front."""
    op = draw(st.sampled_from(OPS))
    value = {
        "rename": key_names, "shape": shapes, "dtype": dtypes, "replace_entry": json_values, "metadata": json_values,
        "offsets": st.one_of(st.lists(st.integers(-10, 2**64 + 10), max_size=3), json_values),
        "add": st.tuples(key_names, new_entries),
    }.get(op, st.none())
    return op, draw(st.integers(0, 10_000)), draw(value)


def _mutate_header(header: dict, edits) -> dict:
    h = dict(header)
    for op, index, value in edits:
        keys = [k for k in h if k != "__metadata__"]
        if not keys:
            break
        key = keys[index % len(keys)]
        entry = dict(h[key]) if isinstance(h.get(key), dict) else h.get(key)
        if op == "drop":
            h.pop(key, None)
        elif op == "rename":
            h[value] = h.pop(key, entry)
        elif op in ("shape", "dtype", "offsets") and isinstance(entry, dict):
            entry[{"shape": "shape", "dtype": "dtype", "offsets": "data_offsets"}[op]] = value
            h[key] = entry
        elif op == "swap_offsets":
            other = keys[(index + 1) % len(keys)]
            if isinstance(h.get(key), dict) and isinstance(h.get(other), dict):
                a, b = dict(h[key]), dict(h[other])
                a["data_offsets"], b["data_offsets"] = b.get("data_offsets"), a.get("data_offsets")
                h[key], h[other] = a, b
        elif op == "replace_entry":
            h[key] = value
        elif op == "metadata":
            h["__metadata__"] = value
        elif op == "add":
            h[value[0]] = value[1]
    return h


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "F8_E4M3": 1, "F8_E5M2": 1}


def _relayout(header: dict) -> int | None:
    """Recompute every data offset so the header is self-consistent again (the edits then
    reach recognition and model building instead of the header checks); the data size, or
    None when some entry cannot be laid out."""
    offset = 0
    for key in sorted(k for k in header if k != "__metadata__"):
        info = header[key]
        if not isinstance(info, dict) or not isinstance(info.get("dtype"), str) or info["dtype"] not in _ITEMSIZE:
            return None
        if not isinstance(info.get("shape"), list):
            return None
        shape = info["shape"]
        if not all(type(d) is int and 0 <= d <= 4096 for d in shape):
            return None
        n = _ITEMSIZE[info["dtype"]]
        for d in shape:
            n *= d
        if n > 64 << 20:
            return None
        header[key] = {**info, "data_offsets": [offset, offset + n]}
        offset += n
    return offset


# --- safetensors -------------------------------------------------------------------------------

_budgets: dict[str, Budget] = {}


def _budget(name: str) -> Budget:
    if name not in _budgets:
        _budgets[name] = Budget()
    return _budgets[name]


@pytest.mark.slow
@FUZZ
@given(edits=st.lists(header_edit(), min_size=1, max_size=4), relayout=st.booleans(),
       data_delta=st.sampled_from([0, 0, 0, -1, 1, -4096, 8]))
def test_mutated_safetensors_headers(seeds, edits, relayout, data_delta):
    budget = _budget("header")
    if budget.spent():
        return
    header = _mutate_header(seeds["st_header"], edits)
    data_size = seeds["st_data_size"]
    if relayout:
        data_size = _relayout(header) or data_size
    path = seeds["dir"] / "mutated.safetensors"
    _write_safetensors(path, header, data_size + data_delta)
    budget.record(load_like_the_node(path))


@pytest.mark.slow
@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=6),
    length=st.one_of(st.none(), st.integers(0, 2**64 - 1), st.integers(0, 64)),
    cut=st.one_of(st.none(), st.integers(0, 10**9)),
)
def test_mutated_safetensors_bytes(seeds, flips, length, cut):
    budget = _budget("bytes")
    if budget.spent():
        return
    head = bytearray(seeds["st_raw_head"])
    for pos, value in flips:
        head[pos % len(head)] = value
    if length is not None:
        head[:8] = struct.pack("<Q", length)
    data_size = seeds["st_data_size"]
    if cut is not None:
        total = len(head) + data_size
        keep = cut % (total + 1)
        head, data_size = head[: min(keep, len(head))], max(0, keep - len(head))
    path = seeds["dir"] / "bytes.safetensors"
    _write_safetensors(path, None, data_size, prefix=bytes(head))
    budget.record(load_like_the_node(path))


# --- torch zip (.bin) ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # a flipped protocol byte; torch warns, then we refuse
@FUZZ
@given(
    region=st.sampled_from(["pickle", "pickle", "central", "head", "anywhere"]),
    flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.none(), st.integers(0, 10**9)),
)
def test_mutated_torch_zip(seeds, region, flips, cut):
    budget = _budget("zip")
    if budget.spent():
        return
    blob = bytearray(seeds["bin"])
    lo, hi = {"pickle": seeds["pkl_range"], "central": (seeds["central"], len(blob)), "head": (0, 200),
              "anywhere": (0, len(blob))}[region]
    for pos, value in flips:
        blob[lo + pos % max(1, hi - lo)] = value
    if cut is not None:
        blob = blob[: cut % (len(blob) + 1)]
    path = seeds["dir"] / "mutated.bin"
    path.write_bytes(bytes(blob))
    budget.record(load_like_the_node(path))


# --- pickles: plain structures and payloads -----------------------------------------------------


class _Call:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


tensors = st.builds(lambda n, m: torch.zeros(n, m, dtype=torch.float16), st.integers(0, 4), st.integers(0, 4))
plain = st.recursive(
    st.one_of(st.none(), st.integers(), st.text(max_size=8), st.floats(allow_nan=False), tensors),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=10), c, max_size=3)
    | st.builds(OrderedDict, st.dictionaries(st.sampled_from(["proj.weight", "norm.weight", "1.to_k_ip.weight"]), c, max_size=3)),
    max_leaves=6,
)


PAYLOADS = [
    lambda marker: _Call(os.system, f"touch '{marker}'"),
    lambda marker: _Call(builtins.exec, f"open({str(marker)!r}, 'w').write('x')"),
    lambda marker: _Call(builtins.eval, f"open({str(marker)!r}, 'w')"),
    lambda marker: _Call(shutil.copyfile, __file__, str(marker)),
    lambda marker: _Call(os.rename, "/nonexistent-source", str(marker)),
]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@FUZZ
@given(obj=plain, container=st.sampled_from(["zip", "pickle2", "pickle4", "pickle0"]),
       hostile=st.one_of(st.none(), st.integers(0, len(PAYLOADS) - 1)))
def test_pickled_structures_and_payloads(seeds, obj, container, hostile):
    budget = _budget("pickle")
    if budget.spent():
        return
    marker = seeds["dir"] / "payload-ran"
    if hostile is not None:
        payload = PAYLOADS[hostile](marker)
        obj = {"image_proj": OrderedDict([("proj.weight", torch.zeros(2, 2)), ("norm.weight", payload)]),
               "ip_adapter": OrderedDict([("1.to_k_ip.weight", obj if isinstance(obj, torch.Tensor) else payload)])}
    path = seeds["dir"] / "structure.bin"
    if container == "zip":
        torch.save(obj, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=int(container[-1]))
    outcome = load_like_the_node(path)
    assert not marker.exists(), "a pickled payload ran"
    if hostile is not None:
        assert outcome in ("UnsafeCheckpointError", "UnreadableCheckpointError"), outcome
    budget.record(outcome)


def test_fuzz_ran_examples():
    """The budgets above were spent on examples (not skipped wholesale); prints the outcomes."""
    ran = {name: (b.examples, b.outcomes) for name, b in _budgets.items()}
    print("fuzz outcomes:", ran)
    for name, (examples, outcomes) in ran.items():
        assert examples > 0, name
