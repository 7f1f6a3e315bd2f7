"""The transformers rollout engine: batched sampling seeded per prompt.

The sampler against its definition (the processed distribution, transformers' own top-p filter as the
oracle for the nucleus), the samples against the batching and the rank split (1 process against 2 with
sharded weights), and the sampler's log-probabilities against the trainer's forward."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm_runs.rollout import HFEngine, Sampling
from llm_runs.rollout.hf import next_token, nucleus

ROOT = Path(__file__).resolve().parents[2]


def _engine(model_dir, batch_size):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return HFEngine(model, AutoTokenizer.from_pretrained(model_dir), batch_size=batch_size)


def _prompts(engine, k=6):
    from llm_runs.data import load_split

    examples = load_split(ROOT / "llm_runs" / "fixtures" / "toy_science" / "train.jsonl")[:k]
    return [engine.tokenizer(e.prompt)["input_ids"] for e in examples]  # unequal lengths: left padding is exercised


@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.5, 0.05])
def test_nucleus_matches_transformers_top_p(top_p):
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = torch.randn(64, 300, generator=torch.Generator().manual_seed(1)) * 3
    theirs = torch.isfinite(TopPLogitsWarper(top_p)(None, logits.clone()))
    assert torch.equal(nucleus(logits.log_softmax(-1), top_p), theirs)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.8)])
def test_next_token_draws_the_processed_distribution(temperature, top_p):
    logits = torch.tensor([[2.0, 0.5, -1.0, 1.5, 0.0, -3.0]])
    sampling = Sampling(temperature=temperature, top_p=top_p)
    target = (logits / temperature).softmax(-1)[0]
    if top_p < 1:
        target = torch.where(nucleus(target.log()[None], top_p)[0], target, 0.0)
        target = target / target.sum()
    draws = 200_000
    token, logprob = next_token(logits.expand(draws, -1), torch.rand(draws, generator=torch.Generator().manual_seed(0),
                                                                       dtype=torch.float64), sampling)
    freq = torch.bincount(token, minlength=6).double() / draws
    assert torch.all(freq[target == 0] == 0)  # outside the nucleus: never drawn
    # within 5 standard errors of a multinomial proportion
    se = (target * (1 - target) / draws).sqrt().double()
    assert torch.all((freq - target.double()).abs() <= 5 * se + 1e-12), (freq, target)
    torch.testing.assert_close(logprob, target.log()[token])


def test_samples_do_not_depend_on_batching(tiny_model_dir):
    one_per_call, all_at_once = _engine(tiny_model_dir, 4), _engine(tiny_model_dir, 64)
    prompts = _prompts(one_per_call)
    sampling = Sampling(temperature=1.0, top_p=0.95, max_new_tokens=12)
    seeds = [11, 12, 13, 14, 15, 16]
    a = one_per_call.generate(prompts, 4, sampling, seeds=seeds)
    b = all_at_once.generate(prompts, 4, sampling, seeds=seeds)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.prompt_index for r in b] == [i for i in range(6) for _ in range(4)]
    for x, y in zip(a, b):
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), rtol=1e-5, atol=1e-5)
    # a prompt's samples come from its seed alone: the last three prompts on their own give the same
    tail = all_at_once.generate(prompts[3:], 4, sampling, seeds=seeds[3:])
    assert [r.token_ids for r in tail] == [r.token_ids for r in b[12:]]
    # and its n samples differ from one another (each row reads its own uniforms)
    assert len({tuple(r.token_ids) for r in b[:4]}) > 1
    # another seed, other samples
    other = all_at_once.generate(prompts, 4, sampling, seeds=[s + 100 for s in seeds])
    assert [r.token_ids for r in other] != [r.token_ids for r in b]


def test_unseeded_samples_follow_torch_global_seed(tiny_model_dir):
    engine = _engine(tiny_model_dir, 64)
    prompts, sampling = _prompts(engine, 3), Sampling(max_new_tokens=6)
    torch.manual_seed(5)
    a = engine.generate(prompts, 2, sampling)
    torch.manual_seed(5)
    b = engine.generate(prompts, 2, sampling)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]


def test_sampler_logprobs_match_the_trainer_forward(tiny_model_dir):
    """Each sampled token's log-probability equals log_softmax(logits / T) of a teacher-forced forward on
    prompt + response (top_p = 1, so no renormalisation), and a response ends at EOS or the length cap."""
    engine = _engine(tiny_model_dir, 64)
    prompts, temperature = _prompts(engine, 3), 0.8
    rollouts = engine.generate(prompts, 3, Sampling(temperature=temperature, max_new_tokens=10), seeds=[1, 2, 3])
    for r in rollouts:
        assert (r.finish_reason == "stop") == (r.token_ids[-1] in engine.eos)
        assert r.finish_reason == "stop" or len(r.token_ids) == 10
        assert not any(t in engine.eos for t in r.token_ids[:-1])
        full = torch.tensor([prompts[r.prompt_index] + r.token_ids])
        with torch.no_grad():
            logits = engine.model(full).logits[0, len(prompts[r.prompt_index]) - 1:-1].float()
        expected = (logits / temperature).log_softmax(-1).gather(-1, torch.tensor(r.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(r.logprobs), expected, rtol=1e-5, atol=1e-5)


RANKS_SCRIPT = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from llm_runs import parallel
from llm_runs.rollout import HFEngine, Sampling

model_dir, prompts_file, out = sys.argv[1:4]
rank, world = parallel.init(torch.device("cpu"))
model = parallel.shard(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), torch.device("cpu"))
prompts, seeds, starts = json.loads(open(prompts_file).read())
mine = slice(starts[rank], starts[rank + 1])  # a contiguous share, as the trainer splits the global batch
engine = HFEngine(model, AutoTokenizer.from_pretrained(model_dir), batch_size=64)
rollouts = engine.generate(prompts[mine], 4, Sampling(top_p=0.95, max_new_tokens=12), seeds=seeds[mine])
rows = parallel.gather([[r.token_ids, r.logprobs] for r in rollouts])
if rank == 0:
    open(out, "w").write(json.dumps(rows))
parallel.finish()
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_rollouts_are_the_same_from_one_process_or_two(tiny_model_dir, tmp_path):
    """Two processes with FSDP2-sharded weights, each sampling its half of the prompts (so their rows end
    at different steps and the ranks must keep running forwards together), against one process."""
    engine = _engine(tiny_model_dir, 64)
    prompts, seeds = _prompts(engine), [21, 22, 23, 24, 25, 26]
    # the random tiny model rarely says EOS: make its most frequent sampled tokens end tokens too, so that
    # rows, and all of one rank's rows before the other's, finish early
    drawn = [t for r in engine.generate(prompts, 4, Sampling(max_new_tokens=12), seeds=seeds) for t in r.token_ids]
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "generation_config.json").read_text())
    config["eos_token_id"] = [engine.tokenizer.eos_token_id, *sorted(set(drawn), key=drawn.count)[-8:]]
    (model_dir / "generation_config.json").write_text(json.dumps(config))
    engine = _engine(model_dir, 64)
    # the second rank samples the last prompt alone, from a seed whose 4 samples all end early: the first
    # rank's rows then still need forwards after the second rank has finished its own
    candidates = engine.generate([prompts[-1]] * 256, 4, Sampling(top_p=0.95, max_new_tokens=12), seeds=list(range(100, 356)))
    seeds[-1] = next(100 + i for i in range(256) if all(r.finish_reason == "stop" for r in candidates[4 * i:4 * i + 4]))
    (tmp_path / "ranks.py").write_text(RANKS_SCRIPT)
    results = {}
    for processes, starts in ((1, [0, 6]), (2, [0, 5, 6])):
        (tmp_path / "prompts.json").write_text(json.dumps([prompts, seeds, starts]))
        out = tmp_path / f"{processes}.json"
        args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                str(tmp_path / "ranks.py"), str(model_dir), str(tmp_path / "prompts.json"), str(out)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
        done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        results[processes] = json.loads(out.read_text())
    assert len(results[1]) == len(results[2]) == 24
    assert [t for t, _ in results[1]] == [t for t, _ in results[2]]
    for (_, a), (_, b) in zip(results[1], results[2]):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-5)
    # the in-process engine (no torchrun) agrees too
    local = engine.generate(prompts, 4, Sampling(top_p=0.95, max_new_tokens=12), seeds=seeds)
    assert [r.token_ids for r in local] == [t for t, _ in results[1]]
    # one rank's rows all done before the other's: the early stop was exercised
    lengths = [len(t) for t, _ in results[2]]
    assert max(lengths[20:]) < 12 == max(lengths[:20]), lengths
