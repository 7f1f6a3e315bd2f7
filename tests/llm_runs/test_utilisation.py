"""smoke's train MFU and decoding bound: the model FLOPs it counts, checked against torch's own FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llm_runs.tools import utilisation


def _tiny():
    from transformers import AutoModelForCausalLM, Qwen3Config

    from llm_runs.tools.smoke import SHAPES

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(Qwen3Config(**SHAPES["tiny"], attn_implementation="eager")).float()


@pytest.mark.parametrize("frozen", [False, True])
def test_the_products_flops_are_what_torchs_counter_counts(frozen):
    """Every matrix product of a forward and backward over one sequence (logits at every position), with the
    decoder's linear weights trained or frozen, equals torch's count; attention's score products (eager attention:
    batched products the counter sees) are the causal count the MFU uses, doubled (the counter does not skip the
    masked half)."""
    model = _tiny()
    if frozen:
        for name, p in model.named_parameters():
            p.requires_grad_(".layers." not in name)
    length = 24
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(1))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids).logits.sum().backward()
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    shape = utilisation.decoder_shape(model)
    assert shape["linear_trained"] == (0 if frozen else shape["linear"])
    attention = 2 * shape["layers"] * shape["heads"] * shape["head_dim"] * length**2  # the forward's, causal
    flops = utilisation.train_flops(shape, [length], length)
    assert flops - 3 * attention == counts["aten.mm"]
    assert counts["aten.bmm"] == 2 * 3 * attention  # QKᵀ and AV, forward and both gradients, the whole square


def test_device_names_map_to_their_peaks():
    assert utilisation.device_peaks("NVIDIA H100 80GB HBM3") == (989e12, 3.35e12)
    assert utilisation.device_peaks("NVIDIA H100 PCIe") == (756e12, 2.0e12)
    assert utilisation.device_peaks("NVIDIA H200") == (989e12, 4.8e12)
    assert utilisation.device_peaks("a CPU") is None


def test_smoke_prints_mfu_and_the_decoding_bound_given_the_peaks():
    from llm_runs.tools.smoke import report, run

    result = run("tiny", steps=1, response_tokens=8, dtype="float32", device="cpu", peak_tflops=1.0, bandwidth_gbs=10.0)
    assert result["train_mfu"] == pytest.approx(result["train_tflops_per_s"] / 1.0)
    assert 0 < result["train_mfu"] < 1
    assert result["decode_bound_tokens_per_s"] > result["tokens_per_s_generated"] > 0
    text = report(result)
    assert "MFU" in text and "of the bandwidth bound" in text
    unknown = run("tiny", steps=1, response_tokens=8, dtype="float32", device="cpu")
    assert unknown["train_mfu"] is None and "give --peak-tflops" in report(unknown)
