"""llm_runs — SDPO and PGPO training of Qwen3 on Science Q&A (GPU), and of a tiny model on a CPU.

Not built yet: the training loop arrives with the llm_runs issue. It will use `pgpo.information`
(the signal from the forwards the loss already runs), `pgpo.generalized_jsd` (the loss),
`pgpo.all_reduce_information` and `pgpo.modulated_step`.
"""
