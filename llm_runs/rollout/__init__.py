"""Rollout engines side by side behind one interface (`engine.RolloutEngine`): `hf` (transformers
`generate` on the trainer's model) and `vllm` (a `vllm.LLM` in the training process, imported only when
chosen)."""

from llm_runs.rollout.engine import Rollout, RolloutEngine, Sampling
from llm_runs.rollout.hf import HFEngine

__all__ = ["Rollout", "RolloutEngine", "Sampling", "HFEngine"]
