"""The information signal reduced over data-parallel ranks equals the single-process value."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pgpo import all_reduce_information, global_information, information

WORLD = 2


def batch():
    """A batch of 6 sequences × 5 positions × 9 tokens with a ragged mask (seeded, the same everywhere)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 9, generator=g, dtype=torch.float64)
    student = logits.log_softmax(-1)
    teacher = (logits + torch.randn(6, 5, 9, generator=g, dtype=torch.float64)).log_softmax(-1)
    mask = torch.rand(6, 5, generator=g) < 0.7
    mask[4:] = False  # rank 1's second micro-batch is empty
    return student, teacher, mask


def _rank(rank, init_file, out_file):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only: no name resolution, no network
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        student, teacher, mask = batch()
        mine = slice(3 * rank, 3 * rank + 3)  # this rank's shard, in two micro-batches
        numerator, denominator = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        for micro in (slice(mine.start, mine.start + 1), slice(mine.start + 1, mine.stop)):
            n, d = information(student[micro], teacher[micro], mask[micro], reduce="sum")
            numerator, denominator = numerator + n, denominator + d
        value = global_information(numerator, denominator)
        total = all_reduce_information(numerator, denominator)
        with open(f"{out_file}.{rank}", "w") as f:
            json.dump({"I": value.item(), "den": total[1].item()}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ranks_agree_with_the_single_process_value(tmp_path):
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=WORLD, join=True)
    student, teacher, mask = batch()
    expected = information(student, teacher, mask).item()
    results = [json.loads((tmp_path / f"out.{r}").read_text()) for r in range(WORLD)]
    for result in results:
        assert result["I"] == pytest.approx(expected, rel=1e-14)
        assert result["den"] == mask.sum().item()
    assert results[0]["I"] == results[1]["I"]  # every rank steps with the same ρ


def test_without_a_process_group_it_is_the_identity():
    assert not dist.is_initialized()
    n, d = all_reduce_information(torch.tensor(1.5, dtype=torch.float32), torch.tensor(3.0))
    assert n.dtype == d.dtype == torch.float64
    assert n.item() == 1.5 and d.item() == 3.0
    assert global_information(1.5, 3).item() == 0.5
    assert global_information(0.0, 0.0).item() == 0.0  # nothing masked in anywhere: no signal, no NaN
