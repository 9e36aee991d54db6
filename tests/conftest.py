import os

# Triton kernels run under the interpreter on CPU-only machines; @triton.jit reads this when a kernel is defined,
# so it must be set before any test imports tnq_kernels.triton.
if os.environ.get("TNQ_TEST_CUDA") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import dataclasses
import itertools

import pytest
import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SIZES = [0, 1, 31, 32, 33, 4097]

#: every backend the per-op tests run: "cpu" the C++ CPU kernels (backend=None on CPU tensors), "triton" the Triton
#: kernels (CPU tensors under TRITON_INTERPRET=1, CUDA tensors with TNQ_TEST_CUDA=1), "cuda" the C++ CUDA kernels.
BACKENDS = ("cpu", "triton", "cuda")
TRITON_ON_CUDA = os.environ.get("TNQ_TEST_CUDA") == "1"
#: the device each backend's tests put their tensors on (known before collection, so a matrix can filter by it)
DEVICE_TYPE = {"cpu": "cpu", "triton": "cuda" if TRITON_ON_CUDA else "cpu", "cuda": "cuda"}


#: the SIMD paths the C++ CPU backend may take; each needs its own process, as the choice is made once per process
ISA_ENVS = {"best": {}, "avx2": {"TNQ_NO_AVX512": "1"}, "portable": {"TNQ_NO_AVX2": "1"}}


def laplace(n, scale=1.0, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=gen, dtype=torch.float64) - 0.5
    return (-scale * torch.sign(u) * torch.log1p(-2 * u.abs())).to(dtype)


@pytest.fixture
def native():
    """The C++ extension must be built for tests that exercise torch.ops.tnq on CPU tensors."""
    from tnq_kernels import ops
    if ops.native_error is not None:
        pytest.fail(f"C++ extension not built ({ops.native_error}); run `make build` first")
    return ops


# ---- the backend fixture ----

@dataclasses.dataclass(frozen=True)
class Backend:
    """One backend as the tests see it: its tensors live on ``device``; the call helpers go through the public API
    (tnq_kernels.<op>(..., backend=api)), which routes through tnq_kernels.ops.kernel; ``kernel(op)`` is the function
    that routing picks, for checks the public API would pre-empt (it normalises codebook names, counts weights)."""
    name: str
    device: torch.device
    api: str | None  # the public API's backend= argument

    def to(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)

    def kernel(self, op: str):
        from tnq_kernels import ops
        return ops.kernel(op, self.api, self.device.type)

    # the public API, inputs moved to the backend's device (a no-op when they are there already)

    def compress(self, x, bits, block_size, codebook=0, seed=0, rounding="stochastic"):
        import tnq_kernels
        return tnq_kernels.compress(self.to(x), bits, block_size, codebook, seed, backend=self.api, rounding=rounding)

    def decompress(self, payload, shape=None, dtype=None):
        import tnq_kernels
        return tnq_kernels.decompress(self.to(payload), shape, dtype, backend=self.api)

    def decompress_sum(self, payloads, weights=None, shape=None, dtype=None):
        import tnq_kernels
        payloads = self.to(payloads) if isinstance(payloads, torch.Tensor) else [self.to(p) for p in payloads]
        return tnq_kernels.decompress_sum(payloads, weights, shape, dtype, backend=self.api)

    def scale_truncate(self, x, bits, block_size, codebook=0):
        import tnq_kernels
        return tnq_kernels.scale_truncate(self.to(x), bits, block_size, codebook, backend=self.api)

    def quantize(self, z, bits, codebook=0, seed=0, rounding="stochastic"):
        import tnq_kernels
        return tnq_kernels.quantize(self.to(z), bits, codebook, seed, backend=self.api, rounding=rounding)

    def pack(self, codes, bits):
        import tnq_kernels
        return tnq_kernels.pack(self.to(codes), bits, backend=self.api)

    def unpack(self, words, bits, n):
        import tnq_kernels
        return tnq_kernels.unpack(self.to(words), bits, n, backend=self.api)


def _make_backend(name: str) -> Backend:
    from tnq_kernels import ops
    if name == "cpu":
        if ops.native_error is not None:
            pytest.fail(f"C++ extension not built ({ops.native_error}); run `make build` first")
        routed = ops.backend_name("compress", None, "cpu")
        if routed != "native":  # e.g. TNQ_BACKEND=reference would make every comparison reference vs reference
            pytest.fail(f"backend=None routes CPU tensors to {routed!r}, not the C++ kernels: unset TNQ_BACKEND")
        return Backend("cpu", torch.device("cpu"), None)
    if name == "triton":
        pytest.importorskip("tnq_kernels.triton", reason="triton is not installed")
        if TRITON_ON_CUDA and not torch.cuda.is_available():
            pytest.skip("TNQ_TEST_CUDA=1 but torch sees no CUDA device")
        return Backend("triton", torch.device(DEVICE_TYPE["triton"]), "triton")
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        missing = sorted(set(ops.SCHEMAS) - ops.NATIVE_CUDA_OPS)
        if missing:
            pytest.fail(f"the extension has no C++ CUDA kernel for {missing}: it was built without nvcc or with "
                        f"TNQ_CUDA=0 ({ops.native_error or 'loaded'}); rebuild with "
                        "`pip install --no-build-isolation -e .`")
        return Backend("cuda", torch.device("cuda"), "cuda")
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")


@pytest.fixture
def backend(request) -> Backend:
    """Parametrised over BACKENDS by pytest_generate_tests (per test, with that test's `matrix` of cases)."""
    return _make_backend(request.param)


def matrix(argnames: str, cpu, triton=None, cuda=None, devices=None):
    """Parametrise a test over (backend, *argnames) with a list of cases per backend, so the slow Triton interpreter
    gets a thinner matrix than the C++ CPU kernels. ``triton`` / ``cuda`` default to ``cpu``'s cases; pass [] to
    leave a backend out (say why where you do). ``devices``: keep only backends whose tensors live on these device
    types (e.g. ("cuda",) for a check that needs two devices)."""
    cases = {"cpu": list(cpu), "triton": list(cpu if triton is None else triton),
             "cuda": list(cpu if cuda is None else cuda)}
    return pytest.mark.matrix(argnames, cases, devices)


def only(*names: str, devices=None):
    """A test without further parameters that runs on the named backends only (say why at the use)."""
    return pytest.mark.matrix("", {b: [()] if b in names else [] for b in BACKENDS}, devices)


def grid(*axes):
    """The cases of a full product of axes, as tuples."""
    return list(itertools.product(*axes))


def _id(v) -> str:
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    if isinstance(v, float) and v != v:
        return "nan"
    if isinstance(v, (list, tuple)):
        return "+".join(map(_id, v))
    return str(v)


def pytest_configure(config):
    config.addinivalue_line("markers", "matrix(argnames, cases, devices): per-backend cases (conftest.matrix)")


def _parametrizes(metafunc, name: str) -> bool:
    for m in metafunc.definition.iter_markers("parametrize"):
        names = m.args[0]
        if name in ([n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)):
            return True
    return False


def pytest_generate_tests(metafunc):
    # a test that parametrises "backend" itself (e.g. over the API's backend= strings) keeps its own values
    if "backend" not in metafunc.fixturenames or _parametrizes(metafunc, "backend"):
        return
    mark = metafunc.definition.get_closest_marker("matrix")
    argnames, cases, devices = mark.args if mark else ("", {b: [()] for b in BACKENDS}, None)
    names = [a.strip() for a in argnames.split(",") if a.strip()]
    params = []
    for b in BACKENDS:
        if devices is not None and DEVICE_TYPE[b] not in devices:
            continue
        backend_cases = cases[b]
        if DEVICE_TYPE[b] == "cuda" and not torch.cuda.is_available():
            backend_cases = backend_cases[:1]  # one case says "skipped: needs a CUDA device", not hundreds
        for case in backend_cases:
            marks = ()
            if isinstance(case, type(pytest.param())):  # a case with marks, e.g. a known divergence as strict xfail
                case, marks = case.values, case.marks
            case = case if isinstance(case, tuple) else (case,)
            if len(case) != len(names):
                raise ValueError(f"{metafunc.function.__name__}: case {case!r} does not match ({argnames})")
            params.append(pytest.param(b, *case, marks=marks, id="-".join([b, *map(_id, case)])))
    metafunc.parametrize(["backend", *names], params, indirect=["backend"])


# ---- comparisons shared by the per-op files ----

def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality of two float tensors (so -0.0 != 0.0), except that any NaN equals any NaN: NaN payloads
    differ between torch's CPU and CUDA float conversions and carry no information here."""
    a, b = a.cpu().reshape(-1), b.cpu().reshape(-1)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    nan = torch.isnan(a)
    if not torch.equal(nan, torch.isnan(b)):
        return False
    as_int = {4: torch.int32, 2: torch.int16}[a.element_size()]
    return torch.equal(a[~nan].view(as_int), b[~nan].view(as_int))


def assert_same_payload(backend: Backend, got: torch.Tensor, want: torch.Tensor, any_nan_scale: bool = False) -> None:
    """``got`` (on the backend's device) equals the reference payload ``want`` byte for byte. ``any_nan_scale``: a
    NaN scale may be any NaN (its bits are not specified: the reference, the CPU backend and CUDA produce different
    quiet NaNs from a NaN input of another dtype); everything else must still be identical bytes."""
    from tnq_kernels import checks
    from tnq_kernels import format as fmt
    assert got.device.type == backend.device.type, f"payload on {got.device}, expected {backend.device}"
    got = got.cpu()
    assert got.dtype == torch.uint8 and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    if torch.equal(got, want):
        return
    if any_nan_scale:
        h = checks.read_header(want)
        lo, hi = fmt.HEADER_BYTES, fmt.HEADER_BYTES + 4 * h.nblocks
        if (torch.equal(got[:lo], want[:lo]) and torch.equal(got[hi:], want[hi:])
                and same_bits(got[lo:hi].view(torch.float32), want[lo:hi].view(torch.float32))):
            return
    diff = (got != want).nonzero().flatten()[:8].tolist()
    pytest.fail(f"{backend.name} payload differs from the reference at bytes {diff} (header {fmt.HEADER_BYTES} "
                f"bytes, then scales)")


def assert_same_values(backend: Backend, got: torch.Tensor, want: torch.Tensor) -> None:
    """Decoded values on the backend's device: identical dtype, shape and bits (NaN equals any NaN, see same_bits)."""
    assert got.device.type == backend.device.type, f"result on {got.device}, expected {backend.device}"
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    assert same_bits(got, want), f"{backend.name} values differ from the reference"


# ---- torch.library.opcheck samples, per op (each op's file checks its own; test_api checks every op has some) ----

OPCHECK_SEED = 0x5EED_1234_ABCD


def opcheck_samples() -> dict[str, list[tuple]]:
    """CPU arguments for each `tnq` op, built with the reference (`opcheck` moves them to the device)."""
    from tnq_kernels import reference as ref
    x = laplace(200, scale=0.01, dtype=torch.bfloat16).view(10, 20)
    xa = laplace(4097, seed=1)
    p = ref.compress(x, 3, 96, 0, OPCHECK_SEED)
    q = ref.compress(x, 5, 0, 2, OPCHECK_SEED + 1)
    pa = ref.compress(xa, 3, 2048, 0, 7)
    z = ref.scale_truncate(x, 3, 96, 0)[1]
    za = ref.scale_truncate(xa, 3, 2048, 0)[1]
    codes = ref.quantize(z, 3, 0, OPCHECK_SEED)
    codes_a = ref.quantize(za, 3, 0, 7)
    return {
        "compress": [(x, 3, 96, 0, OPCHECK_SEED), (xa, 3, 2048, 0, 7), (xa.half().view(17, 241).t(), 5, 0, 2, 8),
                     (x, 2, 96, 6, OPCHECK_SEED, 1)],  # rounding = 1: nearest
        "decompress": [(p, [10, 20], torch.bfloat16), (p, [10, 20], torch.float16), (pa, [4097], torch.float32)],
        "decompress_sum": [([p, q], [0.5, 2.0], [200], torch.float32), ([pa, pa], [0.5, 2.0], [4097], torch.bfloat16),
                           ([pa], None, [4097], torch.float32)],
        "decompress_into": [(p, torch.empty(10, 20, dtype=torch.float16)), (pa, torch.empty(4097))],
        "decompress_sum_into": [([p, q], [0.5, 2.0], torch.empty(200)),
                                ([p, q], None, torch.empty(200, dtype=torch.bfloat16))],
        "scale_truncate": [(x, 3, 96, 0), (xa, 3, 2048, 0)],
        "quantize": [(z, 3, 0, OPCHECK_SEED), (za, 3, 0, 7), (za, 3, 0, 7, 1)],
        "pack": [(codes, 3), (codes_a, 3)],
        "unpack": [(ref.pack(codes, 3), 3, 200), (ref.pack(codes_a, 3), 3, 4097)],
    }


def _to_device(v, device):
    if isinstance(v, torch.Tensor):
        return v.to(device)
    if isinstance(v, list):
        return [_to_device(e, device) for e in v]
    return v


def opcheck(backend: Backend, op: str) -> None:
    """torch.library.opcheck (schema, fake kernel, dispatch) on every sample of ``op``, with the registered op that
    runs it on ``backend``: tnq::<op> for the C++ kernels, tnq::triton_<op> (which takes the codebook's table in
    place of the codebook id) for Triton, on the first sample only (opcheck runs the interpreter many times)."""
    samples = opcheck_samples()[op]
    for args in samples[:1] if backend.name == "triton" else samples:
        args = tuple(_to_device(a, backend.device) for a in args)
        if backend.name == "triton":
            from tnq_kernels.triton import _common
            if op in ("compress", "scale_truncate"):
                args = (args[0], _common.table(args[3], args[1], backend.device), *args[1:])
            elif op == "quantize":
                z, bits, codebook, seed, *rounding = args
                args = (z, _common.table(codebook, bits, backend.device), bits, seed, *rounding)
            target = getattr(torch.ops.tnq, f"triton_{op}")
        else:
            target = getattr(torch.ops.tnq, op).default
        torch.library.opcheck(target, args)
