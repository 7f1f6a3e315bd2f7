"""llm_runs — SDPO and PGPO training of Qwen3 on Science Q&A (GPU), and of a tiny model on a CPU.

    python -m llm_runs train --config llm_runs/configs/tiny_cpu.yaml
    python -m llm_runs demo --quick      # does the loop learn? SDPO vs PGPO on a synthetic task, minutes

The trainer's core (this folder; it imports nothing from `experiment` or `tools`):
- `config`      the run's settings (the paper's defaults), each field with its allowed values and docstring;
- `data`, `tokens`  split files, the two prompt templates, the seeded prompt sampler; left padding;
- `build`       the run's parts from its config: device, examples, model and tokenizer, LoRA, the engine;
- `model_files` checks of a model folder (config, weights, tokenizer) before anything is loaded;
- `rollout/`    the engine interface, with `hf` (transformers) and `vllm` (colocated vLLM) behind it;
- `reward`      the 0/1 answer check;  `teacher`  SDPO's teacher contexts and the EMA / live / frozen weights;
- `batch`       micro-batches and their forward;  `loss`, `chunked_loss`  the self-distillation loss and I;
- `metrics`     the step's metrics, gathered by one object;  `trainer`  the step and the loop;
- `evaluate`    mean@k;  `checkpoint`  atomic, resumable;  `parallel`  FSDP2;  `tiny`  the CPU model.

Around it: `experiment/` (the CPU experiment: synthetic task, warm start, SDPO vs PGPO demo) and `tools/`
(the real shape with random weights, timings per stage, the loss's benchmark).
"""

from importlib.util import find_spec

# `pgpo` installs with torch and numpy alone; this package needs its extra too
_MISSING = [m for m in ("transformers", "tokenizers", "tqdm", "yaml", "safetensors") if find_spec(m) is None]
if _MISSING:
    raise ImportError(f"llm_runs needs {', '.join(_MISSING)}: pip install 'pgpo-toolkit[llm]' (from a clone: "
                      f"pip install -e '.[llm]'; everything: '.[all]')")

