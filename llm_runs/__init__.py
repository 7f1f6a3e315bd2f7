"""llm_runs — SDPO and PGPO training of Qwen3 on Science Q&A (GPU), and of a tiny model on a CPU.

    python -m llm_runs train --config llm_runs/configs/tiny_cpu.yaml
    python -m llm_runs demo --quick      # does the loop learn? SDPO vs PGPO on a synthetic task, minutes

- `config`      the run's settings (the paper's defaults), YAML + `section.key=value` overrides;
- `data`        split files, the two prompt templates, the seeded prompt sampler;
- `reward`      the 0/1 answer check;  `teacher`  SDPO's teacher contexts and the EMA / live / frozen weights;
- `loss`        the self-distillation loss and the information signal I (via `pgpo.information`);
- `rollout`     the engine interface and the transformers engine;  `vllm_engine`  the colocated vLLM one;
- `trainer`     the loop (ρ applied through `pgpo.modulated_step`);  `parallel`  FSDP2;  `checkpoint`;
- `evaluate`    mean@k;  `tiny`, `smoke`, `bench`  the CPU model, the real shape, timings;
- `synthetic`, `warm_start`, `demo`  the CPU experiment: a task with computable answers, the supervised
  warm start, SDPO vs PGPO from it with a figure and a table.
"""
