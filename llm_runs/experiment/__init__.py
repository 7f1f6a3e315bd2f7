"""The CPU experiment: does the loop learn? A task with computable answers (`synthetic`), a supervised warm
start that makes a tiny model able to use its teacher's context (`warm_start`), and SDPO against PGPO on
it (`demo`, `python -m llm_runs demo`). It uses the trainer; the trainer never imports it."""
