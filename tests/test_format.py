import struct

import pytest

from tnq_kernels import format as fmt


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 4097, 10**6, 2**31 + 5, 2**40 + 3])
@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("block", [0, 32, 2048])
def test_payload_size_formula(n, bits, block):
    nb = 1 if block == 0 else -(-n // block)
    expect = 32 + -(-4 * nb // 16) * 16 + 4 * bits * -(-n // 32)
    assert fmt.payload_bytes(n, bits, block) == expect
    assert fmt.codes_offset(n, block) % 16 == 0
    # exactly `bits` bits per element plus the scales (up to the 32-element tail and the 16-byte alignment)
    assert expect * 8 - (bits * n + 32 * nb) < 8 * 48 + bits * 32


def _hdr(**kw):
    h = dict(bits=3, codebook=0, dtype=0, block_size=2048, flags=0, numel=100)
    h.update(kw)
    return fmt.Header(**h)


def test_header_round_trip():
    h = _hdr(bits=5, codebook=3, dtype=2, block_size=96, flags=1, numel=2**40 + 1)
    raw = fmt.pack_header(h)
    assert len(raw) == 32 and raw[:4] == b"TNQK" and raw[4] == 1
    assert fmt.parse_header(raw, h.nbytes) == h


def _corrupt(offset, fmt_char, value):
    raw = bytearray(fmt.pack_header(_hdr()))
    struct.pack_into("<" + fmt_char, raw, offset, value)
    return bytes(raw)


@pytest.mark.parametrize("offset,fc,value,field", [
    (0, "4s", b"TNQX", "magic"), (4, "B", 2, "version"), (5, "B", 0, "bits"), (5, "B", 9, "bits"),
    (6, "B", 16, "codebook"), (7, "B", 3, "dtype"), (8, "I", 33, "block_size"), (12, "I", 2, "flags"),
    (24, "Q", 1, "reserved"), (16, "Q", 2**63, "numel"),
])
def test_bad_field_named(offset, fc, value, field):
    with pytest.raises(ValueError, match=field):
        fmt.parse_header(_corrupt(offset, fc, value))


def test_length_checked():
    h = _hdr()
    raw = fmt.pack_header(h)
    for bad in (h.nbytes - 1, h.nbytes + 1, 32):
        with pytest.raises(ValueError, match="length"):
            fmt.parse_header(raw, bad)
    with pytest.raises(ValueError, match="length"):
        fmt.parse_header(raw[:31])


@pytest.mark.parametrize("bad", [-32, 33, 1, 2**31, 3.0, True])
def test_bad_block_size(bad):
    with pytest.raises(ValueError, match="block_size"):
        fmt.check_block_size(bad)
