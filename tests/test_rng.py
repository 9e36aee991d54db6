import pytest
import torch

from tnq_kernels import rng

INDICES = [0, 1, 2, 31, 2**31, 2**32, 2**32 + 1, 2**40 + 12345]
# docs/RNG.md: H(seed, i), pinned so no backend or refactor can silently change the noise.
VECTORS = {
    0: [0x2EEEC8C6, 0x4FC6C666, 0xAED9FDC6, 0xBA3B9598, 0x42A73507, 0x8D2CA078, 0x1A0F0B96, 0x666FD6F4],
    1: [0x3F0B8416, 0x8563DF12, 0x259D6538, 0xD182F079, 0xA74E0EF3, 0x88E18D39, 0xB35A914F, 0x7F656CD9],
    0x0123456789ABCDEF: [0xDB94EE4F, 0x399675C7, 0x76E61F21, 0xD5923366, 0xFBEABB4D, 0xCFBAE444, 0xDF785C34,
                         0x51F84B7B],
    2**64 - 1: [0x895A158C, 0xE56F6D91, 0x299513BD, 0x98A0E7DB, 0xAF0F3CA3, 0xBA39D807, 0xA90390F9, 0x387B5C57],
}


def test_fmix32_is_murmur3_finaliser():
    assert rng.fmix32_int(0) == 0
    assert rng.fmix32_int(1) == 0x514E28B7


@pytest.mark.parametrize("seed", list(VECTORS))
def test_vectors_scalar_and_tensor(seed):
    assert [rng.hash_int(seed, i) for i in INDICES] == VECTORS[seed]
    assert rng.hash_tensor(seed, torch.tensor(INDICES)).tolist() == VECTORS[seed]


def test_negative_seed_is_twos_complement():
    assert rng.hash_int(-1, 5) == rng.hash_int(2**64 - 1, 5)


def test_uniform_statistics():
    u = rng.uniform_tensor(12345, torch.arange(1 << 20))
    assert u.dtype == torch.float32 and u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 5 * (1 / 12 / 2**20) ** 0.5
    counts = torch.histc(u, bins=16, min=0, max=1)
    expected = 2**20 / 16
    chi2 = (((counts - expected) ** 2) / expected).sum().item()
    assert chi2 < 50  # 15 dof: p < 1e-5 beyond this
    # neighbouring indices and neighbouring seeds are uncorrelated
    v = rng.uniform_tensor(12346, torch.arange(1 << 20))
    for a, b in [(u[:-1], u[1:]), (u, v)]:
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.01


def test_derive_seed_separates_parts():
    seeds = {rng.derive_seed(7, r, t, b) for r in range(4) for t in range(4) for b in range(4)}
    assert len(seeds) == 64
    assert all(0 <= s < 2**63 for s in seeds)
    assert rng.derive_seed(1, 2) != rng.derive_seed(2, 1)
