"""editnb.clustering: the fast KMeans gives exactly the labels of the plain loop."""
import numpy as np
import pytest
import torch

from editnb.clustering import kmeans, kmeans_reference


def _cases():
    g = torch.Generator().manual_seed(0)
    for n, c, k in [(300, 40, 8), (500, 3, 5), (64, 200, 8), (40, 7, 1), (12, 4, 12)]:
        yield "row-major", torch.randn(n, c, generator=g), k
        # LIME's features are a transposed view: (channels, pixels) memory read as (pixels, channels)
        yield "transposed", torch.randn(c, n, generator=g).T, k
    blobs = torch.randn(6, 16, generator=g) * 4
    yield "blobs", (blobs[torch.arange(600) % 6] + 0.3 * torch.randn(600, 16, generator=g)), 6
    yield "unit rows", torch.nn.functional.normalize(torch.randn(400, 30, generator=g), dim=1), 8
    yield "ties", torch.randint(0, 3, (200, 5), generator=g).float(), 8  # repeated points, empty clusters


@pytest.mark.parametrize("name,x,k", list(_cases()), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("seed", [0, 7])
def test_fast_kmeans_gives_the_plain_loops_labels_bit_for_bit(name, x, k, seed):
    assert torch.equal(kmeans(x, k, seed=seed), kmeans_reference(x, k, seed=seed))


def test_kmeans_finds_separated_blobs_and_is_seeded():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(300) % 3
    x = centres[truth] + 0.5 * torch.randn(300, 2, generator=g)
    labels = kmeans(x, 3)
    # one cluster per blob, whatever the cluster ids
    assert all(len(set(labels[truth == b].tolist())) == 1 for b in range(3))
    assert len(set(labels.tolist())) == 3
    assert torch.equal(labels, kmeans(x, 3))


def test_kmeans_accepts_numpy_arrays_through_as_tensor_and_rejects_bad_input():
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float64)
    assert torch.equal(kmeans(torch.as_tensor(x), 4), kmeans_reference(torch.as_tensor(x), 4))
    with pytest.raises(ValueError, match="k must be in"):
        kmeans(torch.zeros(5, 2), 6)
    with pytest.raises(ValueError, match=r"\(N, C\) matrix"):
        kmeans(torch.zeros(5), 2)
