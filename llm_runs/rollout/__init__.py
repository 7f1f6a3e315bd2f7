"""Rollout engines side by side behind one interface (`engine.RolloutEngine`): `hf` (batched sampling
with transformers' KV cache on the trainer's model, seeded per prompt) and `vllm` (a `vllm.LLM` in the training process, imported only when
chosen)."""

from llm_runs.rollout.engine import Rollout, RolloutEngine, Sampling
from llm_runs.rollout.hf import HFEngine

__all__ = ["Rollout", "RolloutEngine", "Sampling", "HFEngine"]
