"""sde_lab — SGD and PGPO as Euler–Maruyama-discretised SDEs, and their measured weak order.

Not built yet: the problems, the dynamics and `weak_error` arrive with the sde_lab issue. It will use
`pgpo.Multiplier` for the modulated step (`Multiplier.derivative` serves the order-2 drift).
"""
