"""How much of a GPU a training step uses: the train part's model FLOPs utilisation (MFU) and the rollouts' share of
the memory-bandwidth bound on decoding.

MFU (Chowdhery et al. 2022, PaLM, App. B): the FLOPs the model needs (no recomputation counted: gradient
checkpointing's second forward is not), over the seconds and the device's peak dense 16-bit rate. For the
student's forward and backward over sequences of L_i tokens, with N the decoder layers' linear weights (N_train of
them trained), ℓ layers of n_h query heads of width d_h, and the head (V × H) applied at the R response positions:

    forward   2·N·ΣL_i + 2·ℓ·n_h·d_h·ΣL_i² (causal attention: QKᵀ and AV over L_i/2 keys on average) + 2·V·H·R
    backward  the linear products' input gradients (their forward's FLOPs again), attention's two gradients (twice its
              forward's: both factors are activations), and 2·N_train·ΣL_i (+ 2·V·H·R if the head trains)

Decoding reads every weight once per step of all the rows decoding together (the KV cache is ignored: a lower
bound on bytes, so an upper bound on speed): at most rows × bandwidth / weight bytes tokens per second.
"""

from __future__ import annotations

import torch

# dense bfloat16/float16 tensor-core peak (FLOP/s) and memory bandwidth (B/s), from NVIDIA's data sheets (SXM parts)
PEAKS = {"H200": (989e12, 4.8e12), "H100 PCIe": (756e12, 2.0e12), "H100": (989e12, 3.35e12),
         "A100": (312e12, 2.0e12), "L40S": (362e12, 0.864e12)}


def device_peaks(name: str) -> tuple[float, float] | None:
    """(FLOP/s, bytes/s) for a device name as torch.cuda.get_device_name gives it, or None if unknown."""
    for key, peaks in PEAKS.items():  # "H100 PCIe" before "H100": the first match wins
        if key in name:
            return peaks
    return None


def decoder_shape(model: torch.nn.Module) -> dict:
    """The counts the FLOPs need, read from a transformers decoder: N and N_train (its layers' linear weights),
    ℓ, n_h, d_h, and the head's V, H and whether it trains."""
    config = model.config
    layers = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in name]
    head = model.get_output_embeddings()
    heads = config.num_attention_heads
    return {"linear": sum(m.weight.numel() for m in layers),
            "linear_trained": sum(p.numel() for m in layers for p in m.parameters() if p.requires_grad),
            "layers": config.num_hidden_layers, "heads": heads,
            "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
            "vocabulary": head.weight.shape[0], "hidden": head.weight.shape[1],
            "head_trained": head.weight.requires_grad}


def train_flops(shape: dict, lengths: list[int], response_tokens: int) -> float:
    """Model FLOPs of the student's forward + backward over sequences of `lengths` tokens (see the module)."""
    tokens, squares = sum(lengths), sum(n * n for n in lengths)
    head = 2 * shape["vocabulary"] * shape["hidden"] * response_tokens
    linear = 2 * shape["linear"] * tokens + head
    attention = 2 * shape["layers"] * shape["heads"] * shape["head_dim"] * squares
    # attention's products multiply two activations: its backward is two products for each of the forward's
    return 2 * linear + 3 * attention + 2 * shape["linear_trained"] * tokens + (head if shape["head_trained"] else 0)


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
