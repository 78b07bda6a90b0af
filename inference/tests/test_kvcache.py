import torch
from transformers.cache_utils import DynamicLayer

from inference.kvcache import BufferLayer


def test_the_buffer_layer_holds_what_concatenation_would_even_past_its_capacity() -> None:
    buffered, reference = BufferLayer(capacity=2), DynamicLayer()
    for step in range(5):  # capacity 2: it has to grow twice
        keys, values = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4)
        got = buffered.update(keys, values)
        expected = reference.update(keys, values)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
        assert buffered.get_seq_length() == reference.get_seq_length() == step + 1


def test_dropping_rows_keeps_the_others_intact() -> None:
    buffered, reference = BufferLayer(capacity=8), DynamicLayer()
    for _ in range(3):
        keys = torch.randn(4, 2, 1, 4)
        buffered.update(keys, keys)
        reference.update(keys, keys)
    rows = torch.tensor([0, 2])
    buffered.batch_select_indices(rows)
    reference.batch_select_indices(rows)
    keys = torch.randn(2, 2, 1, 4)
    assert torch.equal(buffered.update(keys, keys)[0], reference.update(keys, keys)[0])
