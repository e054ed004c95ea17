from __future__ import annotations

import pytest
import torch

from capacity_service.science.data import distinct_bit_rows, make_dataset
from capacity_service.specs import CNNSpec, FCDNNSpec, RNNSpec


def test_same_seed_same_data_other_seed_other_data() -> None:
    spec = FCDNNSpec(width=32)
    a, b, c = (make_dataset(spec, 500, seed) for seed in (7, 7, 8))
    torch.testing.assert_close(a.x, b.x)
    torch.testing.assert_close(a.y, b.y)
    assert not torch.equal(a.x, c.x)


@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        (FCDNNSpec(width=32), (100, 32)),
        (FCDNNSpec(width=8, n_in=12), (100, 12)),
        (CNNSpec(), (100, 1, 32, 32)),
        (RNNSpec(steps=5, n_in=32), (100, 5, 32)),
    ],
)
def test_shapes_values_and_labels(
    spec: FCDNNSpec | CNNSpec | RNNSpec, shape: tuple[int, ...]
) -> None:
    data = make_dataset(spec, 100, seed=0)
    assert data.x.shape == shape
    assert data.x.dtype == torch.float32
    assert set(data.x.unique().tolist()) == {0.0, 1.0}
    assert set(data.y.unique().tolist()) == {0, 1}
    assert data.n == 100


def test_bits_and_labels_are_balanced() -> None:
    data = make_dataset(FCDNNSpec(width=64), 4000, seed=1)
    assert float(data.x.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(data.y.float().mean()) == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize(("n", "bits"), [(256, 8), (250, 8), (1000, 11), (3000, 40)])
def test_rows_are_distinct(n: int, bits: int) -> None:
    rows = distinct_bit_rows(n, bits, torch.Generator().manual_seed(0))
    assert rows.shape == (n, bits)
    assert torch.unique(rows, dim=0).shape[0] == n


def test_rejection_path_replaces_duplicates() -> None:
    # 2^12 = 4096 codes, 1000 rows: a birthday collision is all but certain in the first
    # draw (expected about 120 pairs), so the resampling loop must run.
    rows = distinct_bit_rows(1000, 12, torch.Generator().manual_seed(0))
    assert torch.unique(rows, dim=0).shape[0] == 1000


def test_too_many_samples_for_the_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"n: n = 300 exceeds the 2\^8 = 256 distinct inputs"):
        make_dataset(FCDNNSpec(width=8), 300, seed=0)
