"""`python -m pgpo`: a printed demonstration of the multiplier and of one modulated optimizer step.

    python -m pgpo [--alpha 1.0] [--rho-max 2.0] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy

import torch

from pgpo import Multiplier, information, modulated_step


def show_multiplier(alpha: float, rho_max: float) -> None:
    linear, smooth = Multiplier(alpha, rho_max), Multiplier(alpha, rho_max, form="smooth")
    print(f"Multiplier ρ(I), α = {alpha:g}, ρ_max = {rho_max:g}   (viscosity ν = 1/ρ)")
    print(f"{'I':>6} {'linear ρ':>10} {'smooth ρ':>10} {'linear ν':>10}")
    for i in (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, float("nan")):
        print(f"{i:>6g} {linear(i):>10.4f} {smooth(i):>10.4f} {linear.viscosity(i):>10.4f}")


def show_information(seed: int) -> None:
    """I between a random student and a teacher that puts extra mass on a 'correct' token."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 6, 32, generator=g, dtype=torch.float64)  # (sequences, positions, vocab)
    student = logits.log_softmax(-1)
    bonus = torch.zeros(32, dtype=torch.float64)
    bonus[3] = 2.0  # the feedback shifts the teacher towards token 3
    teacher = (logits + bonus).log_softmax(-1)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[0, 4:] = False  # padding
    print("\nInformation between a student and its feedback-shifted teacher (4 sequences × 6 tokens × 32):")
    for kind in ("kl", "reverse_kl", "jsd"):
        print(f"  {kind:<10} token mean {information(student, teacher, mask, kind=kind).item():.4f}"
              f"   sequence mean {information(student, teacher, mask, kind=kind, reduce='sequence').item():.4f}")


def show_modulated_step(alpha: float, rho_max: float, seed: int) -> None:
    """One AdamW step, plain and modulated, from the same state and gradient."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    x, y = torch.randn(32, 8, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    for _ in range(3):  # give the moment buffers some history
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()

    twin = copy.deepcopy(model)
    twin_optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.01)
    # load_state_dict keeps the very tensors it is given: copy, or both optimizers share buffers
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for p, q in zip(model.parameters(), twin.parameters()):
        q.grad = p.grad.clone()

    rho = Multiplier(alpha, rho_max)(0.6)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    modulated_step(twin_optimizer, rho)
    plain = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    scaled = torch.cat([(q.detach() - b).flatten() for q, b in zip(twin.parameters(), before)])
    same_state = all(
        torch.equal(a, b)
        for sa, sb in zip(optimizer.state.values(), twin_optimizer.state.values())
        for a, b in zip(sa.values(), sb.values())
    )
    print(f"\nModulated AdamW step with ρ = ρ(I = 0.6) = {rho:g}:")
    print(f"  |Δθ| plain {plain.norm():.6e}   modulated {scaled.norm():.6e}   ratio {scaled.norm() / plain.norm():.12f}")
    print(f"  max |Δθ_mod − ρ·Δθ_plain| = {(scaled - rho * plain).abs().max():.2e}")
    print(f"  moment buffers bit-identical to the plain step: {same_state}")
    print(f"  learning rate restored: {twin_optimizer.param_groups[0]['lr']:g}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pgpo", description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--rho-max", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        Multiplier(args.alpha, args.rho_max)
    except ValueError as error:
        parser.error(str(error))
    show_multiplier(args.alpha, args.rho_max)
    show_information(args.seed)
    show_modulated_step(args.alpha, args.rho_max, args.seed)


if __name__ == "__main__":
    main()
