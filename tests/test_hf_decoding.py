"""The KV buffer of `hf_decoding` (no model): slots written, moved and relaid out as continuous
batching does, checked value by value."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from budgetlib.backends.hf_decoding import PreallocatedLayer  # noqa: E402


def block(rows, width, start):
    """(keys, values) of shape (rows, 1 head, width, 1) holding start, start + 1, ... (values negated)."""
    k = torch.arange(start, start + rows * width, dtype=torch.float32).reshape(rows, 1, width, 1)
    return k, -k


def test_relayout_right_aligns_parts_and_keeps_free_rows():
    layer = PreallocatedLayer(1)
    layer.relayout([block(2, 3, 0), block(1, 2, 100)], offsets=[0, 1], width=3, capacity=8, rows=4)
    assert layer._k.shape == (4, 1, 8, 1) and layer.active == 3 and layer.length == 3
    assert layer.keys.shape == (3, 1, 3, 1)  # the batch is the filled rows, the filled columns
    assert layer.keys[:, 0, :, 0].tolist() == [[0, 1, 2], [3, 4, 5], [0, 100, 101]]
    assert torch.equal(layer.values, -layer.keys)
    # a step appends one column to the running rows only
    layer.update(torch.full((3, 1, 1, 1), 7.0), torch.full((3, 1, 1, 1), -7.0))
    assert layer.length == 4 and layer.keys[:, 0, :, 0].tolist() == [[0, 1, 2, 7], [3, 4, 5, 7], [0, 100, 101, 7]]
    assert layer._k[3].abs().sum() == 0  # the free slot is untouched


def test_write_rows_joins_right_aligned_and_move_row_fills_a_finished_slot():
    layer = PreallocatedLayer(1)
    layer.relayout([block(2, 4, 0)], offsets=[0], width=4, capacity=6, rows=4)
    layer._k[2:] = 99  # stale values in the free slots are overwritten, padding zeroed
    layer.write_rows(2, *block(2, 2, 50))
    assert layer.active == 4
    assert layer.keys[:, 0, :, 0].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 0, 50, 51], [0, 0, 52, 53]]
    layer.move_row(3, 0)  # row 0 finished: the last running row takes its slot
    layer.set_active(3)
    assert layer.keys[:, 0, :, 0].tolist() == [[0, 0, 52, 53], [4, 5, 6, 7], [0, 0, 50, 51]]
    assert torch.equal(layer.values, -layer.keys)
    with pytest.raises(ValueError, match=r"3 rows of 2 positions do not fit at row 2 of a 4-row buffer"):
        layer.write_rows(2, *block(3, 2, 0))
    with pytest.raises(ValueError, match=r"1 rows of 5 positions do not fit"):
        layer.write_rows(3, *block(1, 5, 0))  # wider than the filled part
