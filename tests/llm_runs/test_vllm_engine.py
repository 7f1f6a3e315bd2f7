"""The `vllm` rollout engine against the real vLLM (its CPU build in `.venv-vllm`: `make test-vllm`).

Skipped where vLLM is not installed (the main `.venv`). Every check compares vLLM with an independent
computation: transformers' forward of the same weights, or a one-process run against a two-process run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from llm_runs.rollout import Sampling  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "llm_runs" / "configs" / "tiny_cpu.yaml"
FIXTURES = ROOT / "llm_runs" / "fixtures" / "toy_science"
PROMPTS = [[5, 6, 7, 8], [40, 41, 42], [100, 7, 300, 12, 9]]
GAP = 1e-4  # sampler vs trainer, per token, fp32 on both sides (seen: ~1e-6)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from llm_runs.rollout.vllm import VLLMEngine

    engine = VLLMEngine(str(tiny_model_dir), seed=0, dtype=torch.float32, max_model_len=256, enforce_eager=True)
    yield engine
    engine.close()


def _hf_logprobs(model, prompt: list[int], tokens: list[int], temperature: float = 1.0, top_p: float = 1.0):
    """log-probs of `tokens` after `prompt` under the distribution vLLM samples from: logits / T, then the
    top-p nucleus (the smallest set of most likely tokens holding mass ≥ top_p), renormalised."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:-1].double() / temperature
    probs = logits.softmax(-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        outside = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p  # the mass before a token already reaches p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs.log().gather(-1, torch.tensor(tokens)[:, None])[:, 0]


def _mean_gap(model, rollouts, prompts, temperature=1.0, top_p=1.0) -> float:
    gaps = []
    for r in rollouts:
        hf = _hf_logprobs(model, prompts[r.prompt_index], r.token_ids, temperature, top_p)
        gaps.append((hf - torch.tensor(r.logprobs, dtype=torch.float64)).abs())
    return torch.cat(gaps).mean().item()


def test_seeded_generation_is_reproducible(engine):
    sampling = Sampling(1.0, 1.0, 16)
    first = engine.generate(PROMPTS, 3, sampling, seeds=[1, 2, 3])
    again = engine.generate(PROMPTS, 3, sampling, seeds=[1, 2, 3])
    other = engine.generate(PROMPTS, 3, sampling, seeds=[4, 5, 6])
    assert len(first) == 9 and [r.prompt_index for r in first] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    assert [r.logprobs for r in first] == [r.logprobs for r in again]
    assert [r.token_ids for r in first] != [r.token_ids for r in other]
    # without seeds, they come from torch's generator: seeding torch reproduces them
    torch.manual_seed(7)
    a = engine.generate(PROMPTS, 2, sampling)
    torch.manual_seed(7)
    b = engine.generate(PROMPTS, 2, sampling)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        engine.generate(PROMPTS, 1, sampling, seeds=[1, 2])


def test_responses_end_with_eos_or_are_truncated(engine, tiny_model_dir):
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(tiny_model_dir).eos_token_id
    limit = 200  # long enough that a random model's samples both stop and run out (seeded: the same every run)
    rollouts = engine.generate(PROMPTS, 8, Sampling(1.0, 1.0, limit), seeds=[1, 2, 3])
    assert {r.finish_reason for r in rollouts} == {"stop", "length"}
    for r in rollouts:
        assert len(r.token_ids) == len(r.logprobs) >= 1
        if r.finish_reason == "stop":
            assert r.token_ids[-1] == eos and eos not in r.token_ids[:-1]
        else:
            assert len(r.token_ids) == limit and eos not in r.token_ids


def test_sampler_logprobs_equal_a_transformers_forward(engine, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rollouts = engine.generate(PROMPTS, 4, Sampling(1.0, 1.0, 16), seeds=[1, 2, 3])
    assert _mean_gap(model, rollouts, PROMPTS) < 1e-5
    # the evaluation's settings: the log-probs are those of the distribution sampled from
    rollouts = engine.generate(PROMPTS, 4, Sampling(0.6, 0.95, 16), seeds=[1, 2, 3])
    assert _mean_gap(model, rollouts, PROMPTS, 0.6, 0.95) < 1e-5


def test_pushed_weights_replace_the_old_ones(engine, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    old = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    new = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sampling = Sampling(1.0, 1.0, 16)
    before = engine.generate(PROMPTS, 4, sampling, seeds=[1, 2, 3])
    try:
        engine.sleep()  # the trainer pushes while the engine sleeps
        engine.update_weights(new.named_parameters())
        after = engine.generate(PROMPTS, 4, sampling, seeds=[1, 2, 3])
        assert _mean_gap(new, after, PROMPTS) < 1e-5  # the new weights, in every layer (fused qkv, gate-up)
        assert _mean_gap(old, after, PROMPTS) > 0.05  # and not the old ones
        assert [r.token_ids for r in after] != [r.token_ids for r in before]
    finally:
        engine.update_weights(old.named_parameters())
    assert _mean_gap(old, engine.generate(PROMPTS, 4, sampling, seeds=[1, 2, 3]), PROMPTS) < 1e-5


def _run(tmp_path, name, *overrides, processes=1, resume=False, eager=True):
    common = ["--no-progress", "rollout.engine=vllm", f"rollout.enforce_eager={str(eager).lower()}"]
    if resume:
        args = ["-m", "llm_runs", "train", "--resume", str(tmp_path / name), *common, *overrides]
    else:
        args = ["-m", "llm_runs", "train", "--config", str(TINY), *common, f"train.run_name={name}",
                f"model.path={tmp_path / 'model'}", "model.tiny=false", f"train.output_dir={tmp_path}",
                f"data.train={FIXTURES / 'train.jsonl'}", f"data.test={FIXTURES / 'test.jsonl'}", *overrides]
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(("seconds_", "tokens_per_s", "peak_memory", "timestamp"))} for r in rows]


@pytest.fixture
def model_link(tiny_model_dir, tmp_path):
    (tmp_path / "model").symlink_to(tiny_model_dir, target_is_directory=True)
    return tmp_path / "model"


def test_training_with_vllm_keeps_the_sampler_on_the_trainers_weights(model_link, tmp_path):
    """Every step's rollouts come from the weights of the step before: a stale engine would show here. This
    run takes vLLM's default path (compiled, not eager)."""
    done = _run(tmp_path, "one", "train.steps=4", "train.eval_every=2", "train.checkpoint_every=0",
                "eval.samples=16", "eval.temperature=0.6", "eval.top_p=0.95", eager=False)
    assert "Invalid process group" not in done.stderr and "Traceback" not in done.stderr
    rows = _rows(tmp_path / "one")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["logprob_gap_mean"] < GAP and r["logprob_gap_alarm"] == 0 and r["skipped"] == 0 for r in rows), \
        [r["logprob_gap_mean"] for r in rows]
    assert rows[0]["rho"] > 1.0 and rows[-1]["information"] != rows[0]["information"]  # PGPO is on and it trained
    # validation ran through the same engine at the paper's settings (16 samples, T 0.6, top-p 0.95)
    result = json.loads((tmp_path / "one" / "eval" / "step-000004.json").read_text())
    assert result["k"] == 16 and result["questions"] > 0 and "val_mean_at_k" in rows[1] and "val_mean_at_k" in rows[3]
    # eval through vLLM on the run's export: seeded, so twice the same
    out = [tmp_path / "eval1.json", tmp_path / "eval2.json"]
    for path in out:
        ev = subprocess.run([sys.executable, "-m", "llm_runs", "eval", "--checkpoint", str(tmp_path / "one" / "final"),
                             "--engine", "vllm", "--out", str(path), "--no-progress", "rollout.enforce_eager=true"],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                            timeout=600)
        assert ev.returncode == 0, ev.stderr[-3000:]
        assert "vllm engine" in ev.stdout
    first, second = (json.loads(p.read_text()) for p in out)
    assert first == second and first["engine"] == "vllm" and first["k"] == 16  # the run's eval.samples


def test_two_processes_match_one_process_with_vllm(model_link, tmp_path):
    """torchrun, FSDP2 shards gathered one tensor at a time into each rank's own engine."""
    overrides = ("train.steps=3", "train.eval_every=3", "train.checkpoint_every=0")
    one = _run(tmp_path, "one", *overrides)
    two = _run(tmp_path, "two", *overrides, processes=2)
    assert "Invalid process group" not in two.stderr, two.stderr[-3000:]
    rows1, rows2 = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len(rows1) == len(rows2) == 3
    assert all(r["logprob_gap_mean"] < GAP for r in rows1 + rows2), [r["logprob_gap_mean"] for r in rows1 + rows2]
    for a, b in zip(rows1, rows2):
        assert a["reward_mean"] == b["reward_mean"] and a["response_length_mean"] == b["response_length_mean"]
        for key in ("information", "rho", "loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    assert rows1[-1]["val_mean_at_k"] == rows2[-1]["val_mean_at_k"]


def test_resume_in_the_middle_of_a_vllm_run(model_link, tmp_path):
    """Stopped at step 2 of 4 and resumed: the engine gets the checkpoint's weights (not the base model's)
    and the run continues as if never stopped."""
    full = ("train.steps=4", "train.checkpoint_every=2", "train.eval_every=0")
    _run(tmp_path, "full", *full)
    _run(tmp_path, "half", "train.steps=2", "train.checkpoint_every=2", "train.eval_every=0")
    _run(tmp_path, "half", "train.steps=4", resume=True)
    rows = _rows(tmp_path / "half")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["logprob_gap_mean"] < GAP for r in rows), [r["logprob_gap_mean"] for r in rows]
    assert _without_timing(rows) == _without_timing(_rows(tmp_path / "full"))


def test_smoke_of_a_random_model_pushes_its_weights_into_vllm():
    """`model.random_init`: vLLM starts from dummy weights and is given the trainer's before the first step."""
    from llm_runs.tools.smoke import run

    result = run("tiny", steps=1, engine="vllm", response_tokens=16, dtype="float32", device="cpu",
                 overrides=("rollout.enforce_eager=true",))
    assert result["logprob_gap_mean"] < GAP and result["tokens_per_s_generated"] > 0
