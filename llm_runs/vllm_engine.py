"""The `vllm` rollout engine: a `vllm.LLM` colocated with each training process (optional `gpu` extra).

    engine = VLLMEngine(model_dir, seed, gpu_memory_utilization)
    engine.generate(prompt_ids, n, sampling, seeds)   token ids, sampler log-probs, finish reasons
    engine.update_weights(named_tensors)              in place, per tensor; then reset_prefix_cache()
    engine.sleep() / engine.wake()                    level-1 sleep around training

Under torchrun every rank builds its own engine (`distributed_executor_backend="external_launcher"`,
tensor parallel size 1), so the engine lives in the trainer's process and weights are pushed as
tensors, never through files: after each optimizer step the trainer gathers each FSDP2 parameter
(`full_tensor()`), and vLLM's `load_weights` maps the transformers names onto its fused layers
(qkv, gate-up). Weights pushed this way are lost if vLLM reloads from disk, so the trainer's
sampler-vs-trainer log-prob gap is the check that they arrived.

vLLM is imported only here, and only when `rollout.engine: vllm` is chosen. This module has not run
on a GPU in this project yet (no GPU with vLLM was available): treat its first run as a test.
"""

from __future__ import annotations

from typing import Iterable

import torch

from llm_runs.rollout import Rollout, Sampling


def _import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError("rollout.engine=vllm needs vLLM: pip install -e '.[gpu]' (on a CUDA machine)") from err
    return vllm


class VLLMEngine:
    def __init__(self, model_dir: str, seed: int = 0, gpu_memory_utilization: float = 0.5, dtype: str = "bfloat16",
                 max_model_len: int | None = None, distributed: bool = False):
        vllm = _import_vllm()
        kwargs = dict(model=model_dir, seed=seed, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                      enable_sleep_mode=True, tensor_parallel_size=1, enable_prefix_caching=True)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if distributed:  # one engine per torchrun rank, inside the trainer's process
            kwargs["distributed_executor_backend"] = "external_launcher"
        self.vllm = vllm
        self.llm = vllm.LLM(**kwargs)
        self.asleep = False

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: Sampling,
                 seeds: list[int] | None = None) -> list[Rollout]:
        from vllm.inputs import TokensPrompt

        if self.asleep:
            self.wake()
        params = [self.vllm.SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                                           max_tokens=sampling.max_new_tokens, seed=None if seeds is None else seeds[i],
                                           logprobs=0 if sampling.logprobs else None)  # 0: the sampled token's only
                  for i in range(len(prompt_ids))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, use_tqdm=False)
        rollouts = []
        for i, request in enumerate(outputs):
            for completion in request.outputs:
                tokens = list(completion.token_ids)
                logprobs = None
                if sampling.logprobs:
                    logprobs = [step[token].logprob for step, token in zip(completion.logprobs, tokens)]
                rollouts.append(Rollout(i, tokens, logprobs, "length" if completion.finish_reason == "length" else "stop"))
        return rollouts

    def _model(self):
        """vLLM's model object in this process; its location moved between releases."""
        executor = self.llm.llm_engine.model_executor
        worker = executor.driver_worker
        for path in (("worker", "model_runner", "model"), ("model_runner", "model")):
            obj = worker
            try:
                for attr in path:
                    obj = getattr(obj, attr)
                return obj
            except AttributeError:
                continue
        raise RuntimeError(f"cannot find the model inside vLLM {self.vllm.__version__}; the weight-update path "
                           "of this engine was written for the pinned version (pyproject's `gpu` extra)")

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.asleep:
            self.llm.wake_up(tags=["weights"])  # weights first: the KV cache is not needed to load them
        model = self._model()
        for name, tensor in named_tensors:
            full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # FSDP2 shard → whole
            model.load_weights([(_strip_prefixes(name), full.detach())])
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights

    def sleep(self) -> None:
        if not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


def _strip_prefixes(name: str) -> str:
    """transformers names as vLLM expects them: no FSDP / activation-checkpoint / PEFT wrappers."""
    for prefix in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "base_model.model."):
        name = name.replace(prefix, "")
    return name
