"""The C++ copies of the shared constants (csrc/tnq_constants.h, csrc/cpu/tables.cpp) agree with Python's
(codebooks.py, format.py, rng.py) exactly: level tables bit for bit, the hash, the header layout, and the
payload layout arithmetic up to n = 2^40 (64-bit indices, checked without allocating)."""
import re
import struct
from pathlib import Path

import pytest

from tnq_kernels import codebooks as cb
from tnq_kernels import format as fmt
from tnq_kernels import rng

HEADER_H = Path(__file__).resolve().parents[1] / "csrc" / "tnq_constants.h"


@pytest.fixture
def C(native):
    return native._C


def _bits32(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", v))[0]


@pytest.mark.parametrize("codebook", sorted(cb.CODEBOOK_IDS))
@pytest.mark.parametrize("bits", range(1, 9))
def test_tables_bit_exact(C, codebook, bits):
    cid = cb.CODEBOOK_IDS[codebook]
    assert [_bits32(v) for v in C.levels(cid, bits)] == [_bits32(v) for v in cb.levels(codebook, bits)]
    assert [_bits32(v) for v in C.inv_gaps(cid, bits)] == [_bits32(v) for v in cb.inv_gaps(codebook, bits)]


@pytest.mark.parametrize("x", [0.0, 1.0, 9.0, 49.0, 961.0, 65025.0, 1e-300, 1e300])
def test_lambert_w0_same_newton(C, x):
    assert C.lambert_w0(x) == cb.lambert_w0(x)


@pytest.mark.parametrize("seed", [0, 1, 0x0123456789ABCDEF, 2**63 - 1, 2**63, 2**64 - 1])
def test_hash_matches_python(C, seed):
    for i in [0, 1, 31, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**33 - 1, 2**33, 2**40 + 12345, 2**63 + 7, 2**64 - 1]:
        assert C.bits16(seed, i) == rng.bits16_int(seed, i), (seed, i)
        if i < 2**63:
            assert C.hash(seed, i) == rng.hash_int(seed, i), (seed, i)


def test_hash_vectors_of_the_docs(C):
    # the SPEC v1.2 vectors of docs/RNG.md (pinned in tests/test_rng.py), from the C++ header's definition
    from test_rng import ELEMENTS, PAIRS, VECTORS
    for seed, (pairs, m) in VECTORS.items():
        assert [C.hash(seed, j) for j in PAIRS] == pairs
        assert [C.bits16(seed, i) for i in ELEMENTS] == m


def test_hash_rejects_out_of_range(C):
    with pytest.raises(TypeError):
        C.hash(-1, 0)  # Python callers pass seed & (2^64 - 1); the op itself reads an int64 as two's complement


def test_header_constants(C):
    k = C.constants()
    assert k["magic"] == fmt.MAGIC
    assert k["version"] == fmt.VERSION
    assert k["header_bytes"] == fmt.HEADER_BYTES
    assert k["codes_align"] == fmt.CODES_ALIGN
    assert k["flag_nonfinite"] == fmt.FLAG_NONFINITE
    assert k["max_block_size"] == fmt.MAX_BLOCK_SIZE
    assert (k["min_bits"], k["max_bits"]) == (cb.MIN_BITS, cb.MAX_BITS)
    assert k["codebook_ids"] == cb.CODEBOOK_IDS
    assert k["scale_rules"] == {cid: cb.scale_rule(cid) for cid in cb.CODEBOOK_NAMES}
    assert k["dtype_ids"] == fmt.DTYPE_IDS
    # field offsets: version, bits, codebook, dtype, block_size, flags, numel, reserved of "<4sBBBBIIQQ"
    sizes = [struct.calcsize("<" + c) for c in ("4s", "B", "B", "B", "B", "I", "I", "Q")]
    offsets = [sum(sizes[:j]) for j in range(1, len(sizes) + 1)]
    assert list(k["offsets"]) == offsets
    assert (k["fmix_c1"], k["fmix_c2"]) == (rng.C1, rng.C2)
    assert (k["seed_salt_lo"], k["seed_salt_hi"]) == (rng.SEED_SALT_LO, rng.SEED_SALT_HI)
    assert k["uniform_bits"] == rng.UNIFORM_BITS
    assert k["tnq_a"] == cb.TNQ_A
    assert k["tnq_max_alpha"] == cb.TNQ_MAX_ALPHA
    assert k["rounding_ids"] == rng.ROUNDING_IDS and k["num_roundings"] == len(rng.ROUNDING_IDS)
    assert k["nearest_u"] == rng.NEAREST_U


def test_rounding_constants_of_triton():
    tc = pytest.importorskip("tnq_kernels.triton._common", reason="triton is not installed")
    assert tc.NEAREST_U.value == rng.NEAREST_U
    assert (rng.STOCHASTIC, rng.NEAREST) == (rng.ROUNDING_IDS["stochastic"], rng.ROUNDING_IDS["nearest"])


def test_header_file_is_what_was_compiled(C):
    # the module reports what was compiled; the header text is what nvcc compiles: they must say the same
    text = HEADER_H.read_text()

    def const(name):
        m = re.search(rf"\b{name}\s*=\s*([^;]+);", text)
        assert m, f"{name} not found in {HEADER_H.name}"
        return m.group(1).strip()

    k = C.constants()
    assert int(const("kHeaderBytes")) == k["header_bytes"]
    assert int(const("kCodesAlign")) == k["codes_align"]
    assert int(const("kFmixC1").rstrip("uU"), 16) == k["fmix_c1"]
    assert int(const("kFmixC2").rstrip("uU"), 16) == k["fmix_c2"]
    assert int(const("kSeedSaltLo").rstrip("uU"), 16) == k["seed_salt_lo"]
    assert int(const("kSeedSaltHi").rstrip("uU"), 16) == k["seed_salt_hi"]
    assert int(const("kUniformBits")) == k["uniform_bits"]
    assert float(const("kTnqA")) == cb.TNQ_A
    assert float(const("kTnqMaxAlpha")) == cb.TNQ_MAX_ALPHA
    assert float(const("kNearestU").rstrip("fF")) == rng.NEAREST_U
    assert int(const("kNumRoundings")) == len(rng.ROUNDING_IDS)
    ids = re.search(r"enum RoundingId : int \{([^}]*)\}", text).group(1)
    assert {k.strip(): int(v) for k, v in (e.split("=") for e in ids.split(","))} == {
        "kStochastic": rng.ROUNDING_IDS["stochastic"], "kNearest": rng.ROUNDING_IDS["nearest"]}


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 4097, 10**6, 2**31 - 1, 2**31 + 5, 2**32, 2**32 + 33, 2**40 + 3])
@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("block", [0, 32, 96, 2048, 2**30])
def test_layout_matches_format(C, n, bits, block):
    assert C.layout(n, bits, block) == (fmt.num_blocks(n, block), fmt.codes_offset(n, block),
                                        fmt.payload_bytes(n, bits, block))
