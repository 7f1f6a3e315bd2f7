"""Studies: uses of the sde_lab library that make claims — the claims table (`verify`), the theory figures
(`figures`), the engine against its peers (`bench`) — with the settings they share (`settings`).

The library never imports a study; `python -m sde_lab verify|figures|bench` runs them.
"""
