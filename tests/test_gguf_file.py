"""cpuinfer.gguf_file: the strict mmap GGUF reader, against gguf.GGUFReader and written files."""

from __future__ import annotations

import math
import struct

import gguf
import numpy as np
import pytest
from conftest import REFERENCE
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

from cpuinfer.errors import GGUFError
from cpuinfer.gguf_file import GGUFFile


# --- helpers ----------------------------------------------------------------

def same_value(ours, theirs) -> bool:
    """Metadata equality: scalars exactly, arrays item by item (numpy arrays vs lists)."""
    if isinstance(theirs, list):
        if theirs and isinstance(theirs[0], str):
            return list(ours) == theirs
        return np.array_equal(np.asarray(ours), np.asarray(theirs))
    if isinstance(theirs, float) and math.isnan(theirs):
        return math.isnan(ours)
    return type(ours) is type(theirs) and ours == theirs


def assert_matches_reader(path, byte_checks: int | None = None) -> GGUFFile:
    """Every key and tensor of `path` as GGUFFile reads it equals what gguf.GGUFReader reads."""
    ours, ref = GGUFFile(path), gguf.GGUFReader(path)
    ref_fields = {k: f for k, f in ref.fields.items() if k not in ("GGUF.tensor_count", "GGUF.kv_count")}
    assert set(ours.metadata) == set(ref_fields)
    for key, field in ref_fields.items():
        assert same_value(ours.metadata[key], field.contents()), key

    assert list(ours.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors:
        info = ours.tensors[t.name]
        assert (info.ggml_type, info.shape, info.offset, info.nbytes) == (
            int(t.tensor_type), tuple(int(d) for d in reversed(t.shape)), int(t.data_offset), int(t.n_bytes)), t.name
    step = 1 if byte_checks is None else max(1, len(ref.tensors) // byte_checks)
    for t in list(ref.tensors[::step]) + ref.tensors[-1:]:
        assert np.array_equal(ours.raw(ours.tensors[t.name]), t.data.reshape(-1).view(np.uint8)), t.name
    return ours


# A small file with every value type, odd tensor shapes and a 64-byte alignment.
SCALARS = {
    "test.u8": (200, VT.UINT8), "test.i8": (-100, VT.INT8), "test.u16": (60000, VT.UINT16),
    "test.i16": (-30000, VT.INT16), "test.u32": (4_000_000_000, VT.UINT32), "test.i32": (-2_000_000_000, VT.INT32),
    "test.f32": (1.5, VT.FLOAT32), "test.u64": (2**63 + 5, VT.UINT64), "test.i64": (-(2**62), VT.INT64),
    "test.f64": (math.pi, VT.FLOAT64), "test.true": (True, VT.BOOL), "test.false": (False, VT.BOOL),
    "test.str": ("héllo ✓ 😀", VT.STRING), "test.empty_str": ("", VT.STRING),
}
ARRAYS = {
    "test.arr_str": (["a", "", "ü😀", "<s>"], VT.STRING),
    "test.arr_u8": ([0, 1, 255], VT.UINT8), "test.arr_i8": ([-128, 0, 127], VT.INT8),
    "test.arr_u16": ([0, 65535], VT.UINT16), "test.arr_i16": ([-32768, 32767], VT.INT16),
    "test.arr_u32": ([0, 2**32 - 1, 7], VT.UINT32), "test.arr_i32": ([-(2**31), 2**31 - 1], VT.INT32),
    "test.arr_u64": ([2**64 - 1, 0], VT.UINT64), "test.arr_i64": ([-(2**63), 2**63 - 1], VT.INT64),
    "test.arr_f32": ([0.5, -2.25, 1e30], VT.FLOAT32), "test.arr_f64": ([math.e, -1e-300], VT.FLOAT64),
    "test.arr_bool": ([True, False, True, True], VT.BOOL),
}
ALIGNMENT = 64
NUMPY_TYPES = {VT.UINT8: np.uint8, VT.INT8: np.int8, VT.UINT16: np.uint16, VT.INT16: np.int16,
               VT.UINT32: np.uint32, VT.INT32: np.int32, VT.UINT64: np.uint64, VT.INT64: np.int64,
               VT.FLOAT32: np.float32, VT.FLOAT64: np.float64, VT.BOOL: bool}


def small_tensors() -> dict[str, tuple[np.ndarray, int, tuple[int, ...]]]:
    """name -> (array to write, ggml type, shape in numpy order)."""
    rng = np.random.default_rng(0)
    q8 = gguf.quants.quantize(rng.standard_normal((3, 64)).astype(np.float32), QT.Q8_0)
    q4 = gguf.quants.quantize(rng.standard_normal((2, 1, 3, 32)).astype(np.float32), QT.Q4_0)
    return {
        "scalar_like": (np.array([7.0], dtype=np.float32), QT.F32, (1,)),
        "odd_f32": (rng.standard_normal((3, 5)).astype(np.float32), QT.F32, (3, 5)),
        "vec_f16": (rng.standard_normal(7).astype(np.float16), QT.F16, (7,)),
        "cube_f32": (rng.standard_normal((2, 3, 5)).astype(np.float32), QT.F32, (2, 3, 5)),
        "blk.0.q8": (q8, QT.Q8_0, (3, 64)),
        "blk.0.q4_4d": (q4, QT.Q4_0, (2, 1, 3, 32)),
    }


def save(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_small_gguf(path) -> None:
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_custom_alignment(ALIGNMENT)
    for key, (value, vtype) in SCALARS.items():
        w.add_key_value(key, value, vtype)
    for key, (value, sub) in ARRAYS.items():
        w.add_key_value(key, value, VT.ARRAY, sub_type=sub)
    for name, (arr, qtype, _) in small_tensors().items():
        w.add_tensor(name, arr, raw_dtype=qtype if arr.dtype == np.uint8 else None)
    save(w)


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    write_small_gguf(path)
    return path


def load_bytes(path, data: bytes) -> GGUFFile:
    """Write `data` to a fresh inode at `path` (earlier mappings stay valid) and open it."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)
    return GGUFFile(path)


def header_end(g: GGUFFile) -> int:
    return min((t.offset for t in g.tensors.values()), default=len(g.data))


def touch_every_tensor(g: GGUFFile) -> None:
    """A file that loads must hand out in-range views only."""
    for info in g.tensors.values():
        raw = g.raw(info)
        assert raw.size == info.nbytes and info.offset + info.nbytes <= g.data.size
        g.blocks(info)
        int(raw.sum(dtype=np.uint64))


def load_or_gguf_error(path, data: bytes) -> GGUFFile | None:
    try:
        g = load_bytes(path, data)
    except GGUFError as e:
        assert str(e)
        return None
    touch_every_tensor(g)
    return g


# --- the default model against gguf.GGUFReader --------------------------------

def test_smollm2_matches_gguf_reader(smollm2):
    g = assert_matches_reader(smollm2, byte_checks=6)
    assert g.architecture == "llama"
    assert len(g.tensors) == 272
    assert g.metadata["GGUF.version"] == 3
    assert isinstance(g.metadata["tokenizer.ggml.tokens"], list)
    assert g.metadata["tokenizer.ggml.token_type"].dtype == np.int32


def test_smollm2_blocks_view_is_zero_copy(smollm2):
    g = GGUFFile(smollm2)
    info = g.tensors["token_embd.weight"]
    blocks = g.blocks(info)
    block, type_size = gguf.GGML_QUANT_SIZES[QT(info.ggml_type)]
    assert blocks.shape == (info.shape[0], info.shape[1] // block * type_size)
    assert np.shares_memory(blocks, g.data) and not blocks.flags.writeable


def test_mistral_vocab_only_file_matches_reader():
    g = assert_matches_reader(REFERENCE / "mistral-vocab-llamacpp.gguf")
    assert g.tensors == {} and len(g.metadata["tokenizer.ggml.tokens"]) == 32000


# --- a written file reads back exactly ------------------------------------------

def test_small_file_reads_back_what_was_written(small_gguf):
    g = GGUFFile(small_gguf)
    md = g.metadata
    assert md["general.alignment"] == ALIGNMENT and md["general.architecture"] == "llama"
    for key, (value, vtype) in SCALARS.items():
        expected = float(np.float32(value)) if vtype == VT.FLOAT32 else value
        assert type(md[key]) is type(expected) and md[key] == expected, key
    for key, (value, sub) in ARRAYS.items():
        if sub == VT.STRING:
            assert md[key] == value, key
        else:
            expected = np.array(value, dtype=NUMPY_TYPES[sub])
            assert md[key].dtype == expected.dtype and np.array_equal(md[key], expected), key
    assert md["test.arr_u64"][0] == 2**64 - 1 and md["test.arr_f32"].dtype == np.float32

    for name, (arr, qtype, shape) in small_tensors().items():
        info = g.tensors[name]
        assert (info.ggml_type, info.shape, info.nbytes) == (qtype, shape, arr.nbytes), name
        assert info.offset % ALIGNMENT == 0, name
        assert bytes(g.raw(info)) == arr.tobytes(), name
    assert g.blocks(g.tensors["blk.0.q4_4d"]).shape == (2, 1, 3, 18)
    assert g.tensors["vec_f16"].type_name == "F16"


def test_small_file_matches_reader(small_gguf):
    assert_matches_reader(small_gguf)


# --- robustness: truncated and corrupted files ------------------------------------

def test_every_truncation_fails_with_gguf_error(small_gguf, tmp_path):
    data = small_gguf.read_bytes()
    good = GGUFFile(small_gguf)
    end_of_data = max(t.offset + t.nbytes for t in good.tensors.values())
    cuts = list(range(header_end(good) + 1)) + list(range(header_end(good), len(data) + 1, 7)) + [end_of_data - 1]
    for cut in cuts:
        if cut < end_of_data:
            with pytest.raises(GGUFError):
                load_bytes(tmp_path / "cut.gguf", data[:cut])
        else:  # only alignment padding after the last tensor is missing
            g = load_bytes(tmp_path / "cut.gguf", data[:cut])
            assert g.tensors == good.tensors


@pytest.mark.parametrize("width, values", [
    (1, [0x00, 0x01, 0x02, 0x07, 0x08, 0x09, 0x0C, 0x0D, 0x40, 0x7F, 0x80, 0xFF]),
    (4, [0xFFFFFFFF, 0x80000000, 0x00010000, 9, 8, 0]),
    (8, [2**64 - 1, 2**63, 2**32, 2**40 + 1, 1 << 20]),
], ids=["byte", "u32", "u64"])
def test_corrupt_header_loads_or_fails_with_gguf_error(small_gguf, tmp_path, width, values):
    data = small_gguf.read_bytes()
    rng = np.random.default_rng(width)
    path = tmp_path / "bad.gguf"
    n_loaded = 0
    for pos in range(header_end(GGUFFile(small_gguf)) - width + 1):
        randoms = [int(v) for v in rng.integers(0, 256 ** width, size=2, dtype=np.uint64)]
        for v in values + randoms:
            bad = data[:pos] + v.to_bytes(width, "little") + data[pos + width:]
            n_loaded += load_or_gguf_error(path, bad) is not None
    assert n_loaded > 0  # e.g. overwriting a string's content with other bytes still loads


def test_random_garbage_fails_with_gguf_error(tmp_path):
    rng = np.random.default_rng(1)
    for n in (24, 100, 4096):
        for _ in range(20):
            load_or_gguf_error(tmp_path / "junk.gguf", b"GGUF" + rng.bytes(n))
            load_or_gguf_error(tmp_path / "junk.gguf", b"GGUF\x03\x00\x00\x00" + rng.bytes(n))


def raw_header(n_tensors: int, kvs: bytes, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + kvs


def gguf_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def tensor_entry(name: str, ne: list[int], ggml_type: int, offset: int) -> bytes:
    dims = struct.pack(f"<I{len(ne)}Q", len(ne), *ne)
    return gguf_str(name) + dims + struct.pack("<IQ", ggml_type, offset)


@pytest.mark.parametrize("data, message", [
    (raw_header(0, b"", 0, version=1), "version 1"),
    (raw_header(0, b"", 0, version=4), "version 4"),
    (raw_header(2**62, b"", 0), "corrupt"),
    (raw_header(0, b"", 2**62), "corrupt"),
    (raw_header(0, gguf_str("k") + struct.pack("<I", 13) + b"\0" * 16, 1), "unknown value type 13"),
    (raw_header(0, gguf_str("k") + struct.pack("<IIQ", 9, 9, 1) + b"\0" * 16, 1), "array item type 9"),
    (raw_header(0, gguf_str("k") + struct.pack("<IIQ", 9, 8, 2**61) + b"\0" * 16, 1), "truncated"),
    (raw_header(0, gguf_str("k") + struct.pack("<IIQ", 9, 6, 2**61) + b"\0" * 16, 1), "truncated"),
    (raw_header(0, gguf_str("general.alignment") + struct.pack("<II", 4, 48) + b"\0" * 16, 1), "general.alignment 48"),
    (raw_header(0, gguf_str("general.alignment") + struct.pack("<II", 4, 0) + b"\0" * 16, 1), "general.alignment 0"),
    (raw_header(1, tensor_entry("t", [32, 2, 1, 1, 1], 0, 0) + b"\0" * 512, 0), "5 dimensions"),
    (raw_header(1, tensor_entry("t", [32, 0], 0, 0) + b"\0" * 512, 0), "bad shape"),
    (raw_header(1, tensor_entry("t", [2**41], 0, 0) + b"\0" * 512, 0), "bad shape"),
    (raw_header(1, tensor_entry("t", [32], 4, 0) + b"\0" * 512, 0), "unknown type 4"),
    (raw_header(1, tensor_entry("t", [33], 8, 0) + b"\0" * 512, 0), "multiple of the 32"),
    (raw_header(1, tensor_entry("t", [4], 0, 4) + b"\0" * 512, 0), "outside the file"),
    (raw_header(1, tensor_entry("t", [4], 0, 2**63) + b"\0" * 512, 0), "outside the file"),
    (raw_header(1, tensor_entry("t", [1024], 0, 0) + b"\0" * 512, 0), "outside the file"),
    (raw_header(2, tensor_entry("t", [4], 0, 0) + tensor_entry("t", [4], 0, 32) + b"\0" * 512, 0), "twice"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_malformed_headers_name_the_problem(tmp_path, data, message):
    with pytest.raises(GGUFError, match=message):
        load_bytes(tmp_path / "bad.gguf", data)


def test_hand_written_header_with_one_tensor_loads(tmp_path):
    data = raw_header(1, tensor_entry("t", [4, 2], 0, 0), 0)
    start = -(-len(data) // 32) * 32
    payload = np.arange(8, dtype=np.float32).tobytes()
    g = load_bytes(tmp_path / "ok.gguf", data.ljust(start, b"\0") + payload)
    info = g.tensors["t"]
    assert (info.shape, info.offset, info.nbytes) == ((2, 4), start, 32)
    assert np.array_equal(g.raw(info).view(np.float32).reshape(2, 4), np.arange(8).reshape(2, 4))


@pytest.mark.parametrize("value, vtype", [
    ("64", VT.STRING), ("abc", VT.STRING), (64.0, VT.FLOAT32), (float("nan"), VT.FLOAT32),
    (True, VT.BOOL), ([64], VT.ARRAY), ([32, 64], VT.ARRAY),
])
def test_mistyped_alignment_fails_with_gguf_error(tmp_path, value, vtype):
    w = gguf.GGUFWriter(tmp_path / "a.gguf", arch="llama")
    w.add_key_value("general.alignment", value, vtype, sub_type=VT.UINT32 if vtype == VT.ARRAY else None)
    w.add_tensor("t", np.zeros(8, dtype=np.float32))
    save(w)
    with pytest.raises(GGUFError, match="bad general.alignment"):
        GGUFFile(tmp_path / "a.gguf")


# --- not a GGUF file at all -----------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(GGUFError, match="no such file"):
        GGUFFile(tmp_path / "nope.gguf")


def test_folder(tmp_path):
    with pytest.raises(GGUFError, match="folder"):
        GGUFFile(tmp_path)


@pytest.mark.parametrize("content", [b"", b"GGUF", b"hello\n", b"GGUF\x03\x00\x00\x00" + b"\0" * 8])
def test_tiny_files(tmp_path, content):
    with pytest.raises(GGUFError, match="not a GGUF file"):
        load_bytes(tmp_path / "tiny.gguf", content)


def test_text_file(tmp_path):
    with pytest.raises(GGUFError, match="not a GGUF file.*bad magic"):
        load_bytes(tmp_path / "readme.gguf", b"This is a README, not a model.\n" * 10)


def test_header_prefix_of_real_model(smollm2, tmp_path):
    with open(smollm2, "rb") as f:
        head = f.read(2 << 20)
    with pytest.raises(GGUFError, match="outside the file"):
        load_bytes(tmp_path / "head.gguf", head)


def test_file_strings_in_messages_are_escaped_and_cut(tmp_path):
    """A flipped byte in a key's length once made `info` print 21 MB of file bytes, NULs and escapes included."""
    key = "\x00\x1b[2J\n" * 1_000_000
    with pytest.raises(GGUFError) as e:
        load_bytes(tmp_path / "bad.gguf", raw_header(0, gguf_str(key) + struct.pack("<I", 13) + b"\0" * 16, 1))
    message = str(e.value)
    assert len(message) < len(str(tmp_path)) + 300, message
    assert "'\\x00\\x1b[2J\\n" in message and "(6,000,000 characters)" in message
    assert all(c.isprintable() for c in message), message
    name = "blk.0\x00\r" + "x" * 500
    with pytest.raises(GGUFError) as e:
        load_bytes(tmp_path / "bad.gguf", raw_header(1, tensor_entry(name, [32], 4, 0) + b"\0" * 512, 0))
    assert "tensor 'blk.0\\x00\\r" in str(e.value) and len(str(e.value)) < len(str(tmp_path)) + 300


def test_the_runtime_reads_ggml_types_without_the_gguf_package():
    """Start-up: loading a model must not import gguf's vocab module, which pulls in mistral_common (0.75 s),
    and gguf imported afterwards shares the same type table."""
    import subprocess
    import sys

    code = ("import sys, cpuinfer.model\n"
            "assert 'mistral_common' not in sys.modules and 'gguf.vocab' not in sys.modules, sorted(sys.modules)\n"
            "from cpuinfer.ggml_types import GGMLQuantizationType\n"
            "import gguf\n"
            "assert gguf.GGMLQuantizationType is GGMLQuantizationType\n"
            "assert gguf.GGUFReader and gguf.GGUFWriter\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
