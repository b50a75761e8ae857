"""The shared training pieces: the schedule, the weight average, mixed precision, length-grouped batches."""
from __future__ import annotations

import random

import pytest
import torch

from finetune.optim import WeightAverage, autocast, autocast_dtype, length_grouped_batches, warmup_cosine


def test_warmup_then_cosine_down_to_the_floor():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1, abs=0.01)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0, abs=0.02)
    assert warmup_cosine(50, 100, 10, min_ratio=0.1) == pytest.approx(0.55)
    assert warmup_cosine(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 100, 10, min_ratio=0.1) == pytest.approx(0.1)


def test_weight_average_follows_trainable_weights_only():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)
    average = WeightAverage(model, decay=0.9)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update()  # first update: decay ramps as (1+n)/(10+n) = 2/11
    got = list(average.model.parameters())
    for i in (0, 1):  # frozen: the copy keeps its weights
        torch.testing.assert_close(got[i], start[i])
    for i in (2, 3):  # trainable: lerp towards the live weights by 1 - 2/11
        torch.testing.assert_close(got[i], start[i] + 9 / 11)
    assert not any(p.requires_grad for p in average.model.parameters()) and not average.model.training
    for _ in range(1000):
        average.update()
    torch.testing.assert_close(got[2], start[2] + 1.0)  # converges to steady live weights


@pytest.mark.parametrize("decay", [1.0, 1.5, -0.1])
def test_weight_average_refuses_a_decay_outside_0_1(decay):
    with pytest.raises(ValueError, match="between 0 and 1"):
        WeightAverage(torch.nn.Linear(2, 2), decay)


def test_length_grouped_batches_cover_every_index_once_with_similar_lengths():
    draw = random.Random(0)
    lengths = [draw.randint(1, 300) for _ in range(1000)]
    batches = length_grouped_batches(lengths, batch_size=8, rng=random.Random(1), group=25)
    assert sorted(j for b in batches for j in b) == list(range(1000)) and len(batches) == 125
    assert all(len(b) == 8 for b in batches)
    padded = sum(len(b) * max(lengths[j] for j in b) for b in batches)
    plain = sum(8 * max(lengths[i:i + 8]) for i in range(0, 1000, 8))
    assert padded < 0.75 * plain  # far less padding than batches in random order
    assert length_grouped_batches(lengths, 8, random.Random(1), group=25) == batches  # the seed fixes the order
    means = [sum(lengths[j] for j in b) / len(b) for b in batches]
    assert means != sorted(means) and means != sorted(means, reverse=True)  # the batches themselves are shuffled


def test_autocast_defaults_to_bf16_on_cuda_and_fp32_elsewhere():
    assert autocast_dtype(None, torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype(None, torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16 and autocast_dtype("fp32", torch.device("cuda")) is None
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ b).dtype is torch.bfloat16
    with autocast(torch.device("cpu"), None):
        assert (a @ b).dtype is torch.float32
