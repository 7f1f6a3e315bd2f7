"""The SDPO/PGPO loop on a tiny random Qwen3 on CPU: updates, ρ, SDPO equivalence, resume, bad input."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llm_runs import trainer as trainer_module
from llm_runs.config import ConfigError, load
from llm_runs.batch import make_batch
from llm_runs.loss import importance_weights
from llm_runs.metrics import StepMetrics
from llm_runs.rollout import Rollout
from llm_runs.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "llm_runs" / "configs" / "tiny_cpu.yaml"
FIXTURES = ROOT / "llm_runs" / "fixtures" / "toy_science"
# fields that measure the machine, not the run
TIMING = ("seconds_", "tokens_per_s", "peak_memory", "timestamp")


def config(model_dir, out, *overrides):
    return load(TINY, [f"model.path={model_dir}", "model.tiny=false", f"train.output_dir={out}",
                       f"data.train={FIXTURES / 'train.jsonl'}", f"data.test={FIXTURES / 'test.jsonl'}",
                       "train.eval_every=0", "train.checkpoint_every=0", *overrides])


def run_rows(path):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_one_step_changes_every_trainable_parameter(tiny_model_dir, tmp_path):
    t = Trainer(config(tiny_model_dir, tmp_path), tmp_path / "run", progress=False)
    before = weights(t.model)
    row = t.step()
    assert row["teacher_fraction"] == 1.0 and row["loss"] > 0 and row["skipped"] == 0
    unchanged = [k for k, v in t.model.named_parameters() if torch.equal(v.detach(), before[k])]
    assert not unchanged
    # the gradient itself reached every tensor (not only weight decay)
    assert all(s["exp_avg"].abs().sum() > 0 for s in t.optimizer.state.values())


def test_pgpo_scales_the_update_by_exactly_rho(tiny_model_dir, tmp_path):
    # built and stepped one after the other: each run seeds itself, so both draw the same rollouts
    sdpo = Trainer(config(tiny_model_dir, tmp_path, "pgpo.enabled=false"), tmp_path / "sdpo", progress=False)
    base = weights(sdpo.model)
    a = sdpo.step()
    pgpo = Trainer(config(tiny_model_dir, tmp_path, "pgpo.alpha=4.0", "pgpo.rho_max=3.0"), tmp_path / "pgpo",
                   progress=False)
    b = pgpo.step()
    assert a["information"] == b["information"] > 0 and a["rho"] == 1.0
    rho = b["rho"]
    assert rho == pytest.approx(min(1 + 4.0 * b["information"], 3.0)) and rho > 1.2
    for name, p in pgpo.model.named_parameters():
        plain = dict(sdpo.model.named_parameters())[name].detach() - base[name]
        scaled = p.detach() - base[name]
        # float32 rounding of θ + ρΔθ: a few ulps of |θ|
        assert torch.allclose(scaled, rho * plain, rtol=1e-4, atol=4 * 1.2e-7 * base[name].abs().max().item()), name
    for s, q in zip(sdpo.optimizer.state.values(), pgpo.optimizer.state.values()):  # moments untouched by ρ
        assert torch.equal(s["exp_avg"], q["exp_avg"]) and torch.equal(s["exp_avg_sq"], q["exp_avg_sq"])


def test_alpha_zero_is_sdpo_bit_for_bit(tiny_model_dir, tmp_path):
    runs = {}
    for name, extra in (("sdpo", "pgpo.enabled=false"), ("pgpo0", "pgpo.alpha=0.0")):
        t = Trainer(config(tiny_model_dir, tmp_path, extra, "train.steps=3", "train.eval_every=3"), tmp_path / name,
                    progress=False)
        t.train()
        runs[name] = (run_rows(tmp_path / name / "metrics.jsonl"), weights(t.model))
    assert runs["sdpo"][0] == runs["pgpo0"][0]
    assert all(torch.equal(runs["sdpo"][1][k], runs["pgpo0"][1][k]) for k in runs["sdpo"][1])


@pytest.mark.slow
def test_resume_after_two_of_four_steps_equals_four_steps(tiny_model_dir, tmp_path):
    common = ("train.checkpoint_every=2", "train.eval_every=2", "eval.samples=2")
    full = Trainer(config(tiny_model_dir, tmp_path, *common, "train.steps=4"), tmp_path / "full", progress=False)
    full.train()
    half = Trainer(config(tiny_model_dir, tmp_path, *common, "train.steps=2"), tmp_path / "half", progress=False)
    half.train()
    del half
    resumed = Trainer(config(tiny_model_dir, tmp_path, *common, "train.steps=4"), tmp_path / "half", progress=False)
    assert resumed.resume() and resumed.state.step == 2
    resumed.train()
    assert run_rows(tmp_path / "full" / "metrics.jsonl") == run_rows(tmp_path / "half" / "metrics.jsonl")
    a, b = weights(full.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "half" / "checkpoints" / "best" / "model.safetensors").exists()


def test_nonfinite_gradient_skips_the_step(tiny_model_dir, tmp_path):
    t = Trainer(config(tiny_model_dir, tmp_path), tmp_path / "run", progress=False)
    before = weights(t.model)
    hook = t.model.lm_head.weight.register_hook(lambda g: g * float("nan"))
    row = t.step()
    hook.remove()
    assert row["skipped"] == 1 and row["skipped_total"] == 1 and not math.isfinite(row["grad_norm"])
    assert all(torch.equal(v, before[k]) for k, v in t.model.state_dict().items())
    assert not t.optimizer.state  # AdamW never stepped
    assert t.step()["skipped"] == 0  # the next batch trains normally


def test_nonfinite_information_gives_rho_one(tiny_model_dir, tmp_path, monkeypatch):
    t = Trainer(config(tiny_model_dir, tmp_path, "pgpo.alpha=2.0"), tmp_path / "run", progress=False)
    monkeypatch.setattr(trainer_module, "global_information", lambda n, d: torch.tensor(float("nan")))
    row = t.step()
    assert row["rho"] == 1.0 and row["information_nonfinite_total"] == 1 and row["skipped"] == 0


def test_groups_without_success_get_no_teacher_and_no_crash(tiny_model_dir, tmp_path):
    t = Trainer(config(tiny_model_dir, tmp_path, "teacher.demonstration=sibling"), tmp_path / "run", progress=False)
    row = t.step()  # a random model never answers right: every sample is masked out
    assert row["reward_mean"] == 0.0 and row["teacher_fraction"] == 0.0 and row["groups_with_success"] == 0.0
    assert row["loss"] == 0.0 and row["information"] == 0.0 and row["rho"] == 1.0


def test_stale_engine_weights_show_in_the_logprob_gap(tiny_model_dir, tmp_path):
    t = Trainer(config(tiny_model_dir, tmp_path), tmp_path / "run", progress=False)
    fresh = t.step()
    assert fresh["logprob_gap_max"] < 1e-4 and fresh["logprob_gap_alarm"] == 0
    generate = t.engine.generate

    def stale(*args, **kwargs):  # the engine samples with weights the trainer no longer has
        with torch.no_grad():
            saved = t.model.lm_head.weight.clone()
            t.model.lm_head.weight.mul_(1.5)
            try:
                return generate(*args, **kwargs)
            finally:
                t.model.lm_head.weight.copy_(saved)

    t.engine.generate = stale
    row = t.step()
    assert row["logprob_gap_max"] > 0.1 and row["logprob_gap_alarm"] == 1


def test_vllm_engine_is_explained_where_it_cannot_run(tiny_model_dir, tmp_path):
    try:
        import vllm  # noqa: F401
    except ImportError:  # the main environment: a clean error that says how to get vLLM
        with pytest.raises(ConfigError, match="rollout.engine=vllm needs vLLM"):
            Trainer(config(tiny_model_dir, tmp_path, "rollout.engine=vllm"), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="lora_rank"):
        Trainer(config(tiny_model_dir, tmp_path, "rollout.engine=vllm", "model.lora_rank=4"), tmp_path / "r2",
                progress=False)


def test_vllm_names_lose_their_wrappers():
    from llm_runs.rollout.vllm import _strip_prefixes

    assert _strip_prefixes("model.layers.0._checkpoint_wrapped_module.self_attn.q_proj.weight") == \
        "model.layers.0.self_attn.q_proj.weight"


def test_missing_model_path_and_vllm_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Trainer(config(tmp_path / "nowhere", tmp_path), tmp_path / "run", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        Trainer(config(tmp_path / "empty", tmp_path), tmp_path / "run", progress=False)


@pytest.mark.slow
def test_cli_run_killed_mid_way_resumes_and_evaluates(tiny_model_dir, tmp_path):
    """kill -9 after a checkpoint, `--resume`, and the run finishes with one metrics row per step."""
    args = [sys.executable, "-m", "llm_runs", "train", "--config", str(TINY), "--no-progress",
            f"model.path={tiny_model_dir}", "model.tiny=false", f"train.output_dir={tmp_path}", "train.run_name=r",
            f"data.train={FIXTURES / 'train.jsonl'}", f"data.test={FIXTURES / 'test.jsonl'}", "train.steps=40",
            "train.checkpoint_every=2", "train.eval_every=0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = tmp_path / "r" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text().strip() >= "step-000004":
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run([sys.executable, "-m", "llm_runs", "train", "--resume", str(tmp_path / "r"), "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [r["step"] for r in run_rows(tmp_path / "r" / "metrics.jsonl")]
    assert steps == list(range(1, 41))
    ev = subprocess.run([sys.executable, "-m", "llm_runs", "eval", "--checkpoint",
                         str(tmp_path / "r" / "checkpoints" / "step-000040"), "--no-progress", "eval.samples=2"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    result = json.loads((tmp_path / "r" / "checkpoints" / "step-000040" / "eval.json").read_text())
    assert result["k"] == 2 and result["questions"] == 4 and 0.0 <= result["mean_at_k"] <= 1.0


def test_sibling_rule_in_the_loop_with_lone_successes(tiny_model_dir, tmp_path, monkeypatch):
    """One success per group (faked reward): its n − 1 siblings get it as demonstration, it gets none."""
    t = Trainer(config(tiny_model_dir, tmp_path, "teacher.demonstration=sibling"), tmp_path / "run", progress=False)
    calls = iter(range(10**6))
    monkeypatch.setattr(trainer_module, "score", lambda text, answer, fmt: float(next(calls) % 4 == 0))
    row = t.step()
    assert row["reward_mean"] == 0.25 and row["groups_with_success"] == 1.0
    assert row["teacher_fraction"] == 0.75 and row["loss"] > 0 and row["information"] > 0


def test_smoke_runs_full_steps_on_a_random_model_of_a_given_shape():
    from llm_runs.tools.smoke import SHAPES, run

    result = run("tiny", steps=1, response_tokens=8, dtype="float32", device="cpu")
    spec = SHAPES["tiny"]
    per_layer = (spec["hidden_size"] * spec["head_dim"] * (2 * spec["num_attention_heads"] + 2 * spec["num_key_value_heads"])
                 + 3 * spec["hidden_size"] * spec["intermediate_size"] + 2 * spec["hidden_size"] + 2 * spec["head_dim"])
    expected = 2 * spec["vocab_size"] * spec["hidden_size"] + spec["num_hidden_layers"] * per_layer + spec["hidden_size"]
    assert result["parameters"] == expected  # the shape arithmetic of an untied Qwen3
    assert result["tokens_per_s_generated"] > 0 and result["seconds_train"] > 0 and result["loss"] > 0


def test_qwen3_8b_shape_has_the_published_parameter_count():
    """8,190,735,360 (Qwen/Qwen3-8B's published config), from the config alone: meta tensors, nothing allocated."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    from llm_runs.tools.smoke import SHAPES

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen3Config(**SHAPES["qwen3-8b"]))
    assert sum(p.numel() for p in model.parameters()) == 8_190_735_360


@pytest.mark.slow
def test_lora_trains_only_the_adapters_and_resumes_identically(tiny_model_dir, tmp_path):
    pytest.importorskip("peft")
    lora = ("model.lora_rank=4", "train.checkpoint_every=2", "train.eval_every=2", "eval.samples=2")
    t = Trainer(config(tiny_model_dir, tmp_path, *lora, "train.steps=4"), tmp_path / "probe", progress=False)
    before = weights(t.model)
    adapters = {n for n, p in t.model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    t.step()
    after = weights(t.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {n for n in adapters}  # every adapter moved, no base weight did
    t = Trainer(config(tiny_model_dir, tmp_path, *lora, "train.steps=4"), tmp_path / "full", progress=False)
    t.train()
    half = Trainer(config(tiny_model_dir, tmp_path, *lora, "train.steps=2"), tmp_path / "half", progress=False)
    half.train()
    resumed = Trainer(config(tiny_model_dir, tmp_path, *lora, "train.steps=4"), tmp_path / "half", progress=False)
    assert resumed.resume()
    resumed.train()
    assert run_rows(tmp_path / "full" / "metrics.jsonl") == run_rows(tmp_path / "half" / "metrics.jsonl")
    a, b = weights(t.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "half" / "final" / "adapter_model.safetensors").exists()


def test_lora_teachers(tiny_model_dir, tmp_path):
    """frozen = the base model (adapter off); ema = averaged adapter swapped in, and swapped back after."""
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 17, 42, 9, 3]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(input_ids=ids).logits
    runs = {}
    for kind in ("frozen", "ema", "live"):
        t = Trainer(config(tiny_model_dir, tmp_path, "model.lora_rank=4", f"teacher.kind={kind}"), tmp_path / kind,
                    progress=False)
        t.step()
        t.step()
        student = weights(t.model)
        with torch.no_grad(), t.teacher.forward() as network:
            runs[kind] = network(input_ids=ids).logits
        assert all(torch.equal(v, student[k]) for k, v in t.model.state_dict().items())  # student restored
        with torch.no_grad():
            runs[kind + "-student"] = t.model(input_ids=ids).logits
    torch.testing.assert_close(runs["frozen"], base)
    assert torch.equal(runs["live"], runs["live-student"])
    assert not torch.allclose(runs["ema"], runs["ema-student"]) and not torch.allclose(runs["ema"], base)


@pytest.fixture(scope="module")
def sharpened_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its output head × 8: confident tokens, whose top-20 hold all but ~1e-8 of the mass
    (the tail bucket used to round to log 0: every step was skipped with grad_norm NaN and I = inf)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    path = tmp_path_factory.mktemp("sharpened")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


@pytest.mark.parametrize("implementation", ["chunked", "plain"])
def test_a_sharpened_head_trains_every_step(sharpened_model_dir, tmp_path, implementation):
    t = Trainer(config(sharpened_model_dir, tmp_path, f"loss.implementation={implementation}", "train.steps=3",
                       "loss.topk=20", "loss.add_tail=true"), tmp_path / "run", progress=False)
    before = weights(t.model)
    rows = [t.step() for _ in range(3)]
    assert [r["skipped"] for r in rows] == [0, 0, 0]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("information", "grad_norm", "loss", "jsd_teacher_student", "entropy"))
    assert max(r["rho"] for r in rows) > 1.0  # PGPO acted on a finite I
    assert any(not torch.equal(v, before[k]) for k, v in t.model.state_dict().items())
    assert min(r["entropy"] for r in rows) < 0.5  # the model is confident indeed (nats per token)


def _ragged(rollouts, generator):
    """The rollouts cut to lengths 1 … 24 (a padded micro-batch) with sampler log-probabilities moved off the
    trainer's by up to ±1 nat (importance weights away from 1, some at the cap)."""
    out = []
    for i, r in enumerate(rollouts):
        keep = 1 + (7 * i) % len(r.token_ids)
        moved = (torch.tensor(r.logprobs[:keep]) + 2 * torch.rand(keep, generator=generator) - 1).tolist()
        out.append(Rollout(r.prompt_index, r.token_ids[:keep], moved, "stop"))
    return out


@pytest.mark.parametrize("teacher", ["ema", "live", "frozen"])
def test_chunked_loss_gives_the_plain_numbers_and_gradients_inside_the_trainer(tiny_model_dir, tmp_path, teacher):
    """What the trainer hands the loss — padded responses, the prompt/response split, `logits_to_keep`, the
    sampler's log-probabilities and their capped importance weights, micro-batches of unequal size — through
    the chunked loss at several chunk sizes (1 row, a few rows, a chunk ending inside a sequence, all rows at
    once) and through the plain one, on the same rollouts: the same loss, I, JSD, entropy, log-probabilities
    and gradients, to float32 rounding."""
    t = Trainer(config(tiny_model_dir, tmp_path, f"teacher.kind={teacher}", "loss.micro_batch_size=6"),
                tmp_path / "run", progress=False)
    prompts = t.draw_prompts()
    rollouts = _ragged(t.generate(prompts), torch.Generator().manual_seed(0))
    contexts = t.teacher_contexts(prompts, rollouts, t.score(prompts, rollouts))
    assert len({len(r.token_ids) for r in rollouts}) > 5 and len(rollouts) % 6  # padded, and a short last micro-batch
    outputs, grads, information = {}, {}, {}
    plain_micro_batch = t.micro_batch_loss

    for implementation, chunk_size in [("plain", None), ("chunked", 1), ("chunked", 3), ("chunked", 7), ("chunked", None)]:
        t.config.loss.implementation, t.config.loss.chunk_size = implementation, chunk_size
        case, seen = (implementation, chunk_size), []

        def recorded(batch, metrics, seen=seen):
            out = plain_micro_batch(batch, metrics)
            seen.append(out)
            return out

        t.micro_batch_loss = recorded
        metrics = StepMetrics(t.device)
        t.forward_backward(prompts, rollouts, contexts, metrics)
        outputs[case], information[case] = seen, t.information(metrics).item()
        grads[case] = {n: p.grad.clone() for n, p in t.model.named_parameters()}

    weights = [importance_weights(o.token_logprobs, b.sampler_logprobs) for o, b in
               zip(outputs[("plain", None)], [make_batch_of(t, prompts, rollouts, contexts, s) for s in range(0, 16, 6)])]
    assert any((w == 2.0).any() for w in weights) and any(((w < 0.9) & (w > 0)).any() for w in weights)
    reference = outputs[("plain", None)]
    for case in outputs:
        assert information[case] == pytest.approx(information[("plain", None)], rel=1e-6), case
        for a, b in zip(reference, outputs[case]):
            assert b.loss.item() == pytest.approx(a.loss.item(), rel=1e-6), case
            for pair in ("information", "information_sequence", "jsd", "entropy"):
                for x, y in zip(getattr(a, pair), getattr(b, pair)):
                    assert y.item() == pytest.approx(x.item(), rel=1e-6, abs=1e-12), (case, pair)
            torch.testing.assert_close(b.token_logprobs, a.token_logprobs, rtol=1e-5, atol=1e-6)
        for name, g in grads[("plain", None)].items():
            assert (grads[case][name] - g).norm() <= 1e-5 * g.norm() + 1e-12, (case, name)


def make_batch_of(t, prompts, rollouts, contexts, start):
    """The trainer's micro-batch of rollouts [start, start + 6)."""
    part = slice(start, start + 6)
    return make_batch([prompts.ids[r.prompt_index] for r in rollouts[part]], contexts.ids[part],
                      [r.token_ids for r in rollouts[part]], [r.logprobs for r in rollouts[part]], contexts.mask[part],
                      t.pad)


def test_metrics_cost_one_host_sync_per_step_however_many_micro_batches(tiny_model_dir, tmp_path, monkeypatch):
    """Reading a device tensor on the host (`.item()`, `.tolist()`, `float()`, `bool()`) stalls a GPU's
    pipeline: the trainer's own reads per step must not grow with the number of micro-batches."""
    import inspect

    own = (str(ROOT / "llm_runs"), str(ROOT / "pgpo"))
    counts = {"n": 0}

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = inspect.currentframe().f_back.f_code.co_filename
            if caller.startswith(own) and "rollout" not in caller and "evaluate" not in caller:
                counts["n"] += 1
            return original(self, *args, **kwargs)
        return wrapper

    def reads(micro_batch):
        t = Trainer(config(tiny_model_dir, tmp_path, f"loss.micro_batch_size={micro_batch}"),
                    tmp_path / f"mb{micro_batch}", progress=False)
        with monkeypatch.context() as m:
            for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
                m.setattr(torch.Tensor, name, counting(name))
            counts["n"] = 0
            t.step()
        return counts["n"]

    one, eight = reads(16), reads(2)  # 16 sequences per step: 1 micro-batch, then 8
    assert one == eight
    assert 1 <= one <= 2  # the one read of the metrics is seen: the count is not vacuous


def test_a_run_resumed_before_its_first_checkpoint_logs_each_step_once(tiny_model_dir, tmp_path):
    """Killed (here: ended) before any checkpoint, then resumed: it starts over from step 0, and its log must not
    read 1, 2, 1, 2."""
    c = config(tiny_model_dir, tmp_path, "train.steps=2")  # checkpoint_every = 0: no checkpoint is ever written
    Trainer(c, tmp_path / "run", progress=False).train()
    again = Trainer(c, tmp_path / "run", progress=False)
    assert not again.resume()
    again.train()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_an_overlong_test_prompt_is_dropped_and_reported_like_a_training_one(tiny_model_dir, tmp_path, capsys):
    rows = [json.loads(line) for line in (FIXTURES / "test.jsonl").read_text().splitlines() if line.strip()]
    long = dict(rows[0], idx=10_000, prompt="Which of these is right? " + "very " * 3000)
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + [long]))
    t = Trainer(config(tiny_model_dir, tmp_path, f"data.test={tmp_path / 'test.jsonl'}", "data.max_prompt_tokens=512"),
                tmp_path / "run", progress=False)
    assert [e.idx for e in t.test_examples] == [r["idx"] for r in rows]
    captured = capsys.readouterr()
    assert "dropped 1 test prompts longer than 512 tokens" in captured.out + captured.err
    assert t.validate()["mean_at_k"] >= 0.0


@pytest.mark.slow
def test_a_validation_that_fails_never_costs_the_checkpoint_of_its_step(tiny_model_dir, tmp_path):
    """Validation out of memory at step 2 (checkpoint and evaluation both due): the step-2 checkpoint is already
    on disk, and the resumed run redoes the validation, logs step 2 once and ends equal to an uninterrupted one."""
    common = ("train.checkpoint_every=2", "train.eval_every=2", "eval.samples=2", "train.steps=4")
    full = Trainer(config(tiny_model_dir, tmp_path, *common), tmp_path / "full", progress=False)
    full.train()
    faulty = Trainer(config(tiny_model_dir, tmp_path, *common), tmp_path / "run", progress=False)

    def out_of_memory():
        raise torch.OutOfMemoryError("a 41 GB allocation during validation")

    faulty.life.validate = out_of_memory  # this run only: the fault, not the code under test
    with pytest.raises(torch.OutOfMemoryError):
        faulty.train()
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-000002"
    del faulty
    resumed = Trainer(config(tiny_model_dir, tmp_path, *common), tmp_path / "run", progress=False)
    assert resumed.resume() and resumed.state.step == 2 and resumed.state.pending_row["step"] == 2
    resumed.train()
    assert run_rows(tmp_path / "full" / "metrics.jsonl") == run_rows(tmp_path / "run" / "metrics.jsonl")
    a, b = weights(full.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = lambda run: json.loads((tmp_path / run / "summary.json").read_text())  # noqa: E731
    assert summary("full") == summary("run")


# ------------------------------------------------------------------------------------------------
# resuming with changed settings


def _cli(*args):
    done = subprocess.run([sys.executable, "-m", "llm_runs", *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=600)
    return done.returncode, done.stderr


def _train_cli(model_dir, out, *overrides):
    """`python -m llm_runs train` of the tiny config into OUT/r, no validation; (exit code, stderr)."""
    return _cli("train", "--config", str(TINY), "--no-progress", f"model.path={model_dir}", "model.tiny=false",
                f"train.output_dir={out}", "train.run_name=r", f"data.train={FIXTURES / 'train.jsonl'}",
                f"data.test={FIXTURES / 'test.jsonl'}", "train.eval_every=0", *overrides)


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    """A finished 2-step run with its step-2 checkpoint, written by the CLI once for the module."""
    out = tmp_path_factory.mktemp("finished")
    code, err = _train_cli(tiny_model_dir, out, "train.steps=2", "train.checkpoint_every=2")
    assert code == 0, err[-2000:]
    return out / "r"


@pytest.fixture
def two_step_run(finished_run, tmp_path):
    """A copy of `finished_run` of the test's own, to resume or to leave untouched."""
    import shutil

    return shutil.copytree(finished_run, tmp_path / "r")


@pytest.mark.parametrize("override", [
    "pgpo.alpha=3.0", "loss.beta=1.0", "pgpo.enabled=false", "model.dtype=bfloat16", "teacher.kind=live",
    "model.path=/somewhere/else", "data.train=/other/train.jsonl", "data.test=/other/test.jsonl", "optim.lr=0.5",
    "train.seed=7", "rollout.temperature=0.7", "eval.samples=3", "optim.betas=[0.8,0.9]",
])
def test_resume_refuses_a_setting_that_makes_another_experiment_naming_the_key(two_step_run, override):
    from llm_runs.config import load_for_resume

    before = (two_step_run / "config.yaml").read_bytes()
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"{key.replace('.', '[.]')}: .* → "):
        load_for_resume(two_step_run, [override])
    assert (two_step_run / "config.yaml").read_bytes() == before and not (two_step_run / "resumed.yaml").exists()


def test_resume_with_changed_settings_ends_in_one_error_line_and_leaves_the_run_as_it_was(two_step_run):
    before = {p.name: p.read_bytes() for p in (two_step_run / "config.yaml", two_step_run / "metrics.jsonl")}
    code, err = _cli("train", "--resume", str(two_step_run), "--no-progress", "optim.lr=0.5", "train.seed=3")
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and "Traceback" not in err
    assert "optim.lr: 0.001 → 0.5" in last and "train.seed: 0 → 3" in last
    assert {p.name: p.read_bytes() for p in (two_step_run / "config.yaml", two_step_run / "metrics.jsonl")} == before


@pytest.mark.slow
def test_resume_allows_the_length_and_cadence_and_keeps_them_without_rewriting_config_yaml(two_step_run):
    before = (two_step_run / "config.yaml").read_bytes()
    code, err = _cli("train", "--resume", str(two_step_run), "--no-progress", "train.steps=3", "train.checkpoint_every=1",
                     "train.eval_every=3")
    assert code == 0, err[-2000:]
    assert (two_step_run / "config.yaml").read_bytes() == before  # still steps: 2, the run's first settings
    import yaml
    assert yaml.safe_load((two_step_run / "resumed.yaml").read_text()) == {
        "train.steps": 3, "train.eval_every": 3, "train.checkpoint_every": 1}
    assert [r["step"] for r in run_rows(two_step_run / "metrics.jsonl")] == [1, 2, 3]
    assert (two_step_run / "eval" / "step-000003.json").exists()
    # a later resume without overrides keeps them: the run is done at step 3, nothing is redone
    code, err = _cli("train", "--resume", str(two_step_run), "--no-progress")
    assert code == 0, err[-2000:]
    assert [r["step"] for r in run_rows(two_step_run / "metrics.jsonl")] == [1, 2, 3]


def test_resume_refuses_edited_data_files_at_the_same_path(tiny_model_dir, tmp_path):
    rows = (FIXTURES / "train.jsonl").read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    c = config(tiny_model_dir, tmp_path, f"data.train={tmp_path / 'train.jsonl'}", "train.steps=1", "train.checkpoint_every=1")
    Trainer(c, tmp_path / "run", progress=False).train()
    (tmp_path / "train.jsonl").write_text("\n".join(rows[1:]) + "\n")  # one example fewer, same path
    again = Trainer(c, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"data.train .*differ from those the run started on"):
        again.resume()


def test_the_trainer_api_refuses_a_changed_seed_by_name_not_by_a_sampler_error(tiny_model_dir, tmp_path):
    c = config(tiny_model_dir, tmp_path, "train.steps=1", "train.checkpoint_every=1")
    Trainer(c, tmp_path / "run", progress=False).train()
    other = config(tiny_model_dir, tmp_path, "train.steps=1", "train.checkpoint_every=1", "train.seed=5")
    with pytest.raises(ConfigError, match=r"train.seed: 0 → 5"):
        Trainer(other, tmp_path / "run", progress=False).resume()


# ------------------------------------------------------------------------------------------------
# a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (room for one checkpoint of the tiny model, ~2.7 MB, not two): a real full disk."""
    import shutil

    where = tmp_path / "small_disk"
    where.mkdir()
    mount = shutil.which("mount")
    if mount is None or subprocess.run([mount, "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                                       capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (or CAP_SYS_ADMIN)")
    yield where
    subprocess.run(["umount", str(where)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_is_one_clean_error_and_the_run_resumes(tiny_model_dir, tmp_path, small_disk):
    import shutil

    code, err = _train_cli(tiny_model_dir, small_disk, "train.steps=4", "train.checkpoint_every=1")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err, err[-3000:]
    root = small_disk / "r" / "checkpoints"
    assert last.startswith("error: no space left on the device while writing") and str(root / "step-000002") in last
    assert "step-000001" in last and "is intact" in last
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000001"]  # no .tmp-* left holding the space
    assert (root / "latest").read_text().strip() == "step-000001"
    # moved to a disk with room, the run resumes from step 1 and logs every step once
    moved = tmp_path / "moved"
    shutil.copytree(small_disk / "r", moved)
    code, err = _cli("train", "--resume", str(moved), "--no-progress")
    assert code == 0, err[-2000:]
    assert [r["step"] for r in run_rows(moved / "metrics.jsonl")] == [1, 2, 3, 4]
    assert (moved / "final" / "model.safetensors").exists()


def test_an_export_that_fails_leaves_no_partial_folder(tiny_model_dir, tmp_path, small_disk):
    from llm_runs.checkpoint import StorageError

    t = Trainer(config(tiny_model_dir, tmp_path), tmp_path / "run", progress=False)
    t.run_dir = small_disk  # the export goes to the small disk
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (4 * 2**20 - 200 * 2**10))  # leave ~200 KiB: less than the 660 KB of weights
    with pytest.raises(StorageError, match=r"no space left on the device while writing .*final"):
        t.export("final")
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


@pytest.mark.slow
def test_a_full_disk_while_logging_is_one_clean_error_naming_the_log(tiny_model_dir, small_disk):
    # 12 KiB left: the run's hold (RUN/.hold) and config.yaml fit, a block each; rows soon don't
    (small_disk / "filler").write_bytes(b"\0" * (4 * 2**20 - 12 * 2**10))
    code, err = _train_cli(tiny_model_dir, small_disk, "train.steps=40", "train.checkpoint_every=0")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert last == f"error: no space left on the device while writing {small_disk / 'r' / 'metrics.jsonl'}: free some space and resume"


@pytest.mark.slow
def test_a_resumed_run_says_which_steps_it_redoes_and_shows_each_step_once(two_step_run):
    """Killed after step 3 was logged but before its checkpoint: the resume says that step 3 is redone, shows
    steps 3 and 4 only (not the rows of steps 1–2 again), and the log holds each step once."""
    rows = (two_step_run / "metrics.jsonl").read_text()
    (two_step_run / "metrics.jsonl").write_text(rows + json.dumps({"step": 3, "loss": 0.5}) + "\n")
    code, err = _cli("train", "--resume", str(two_step_run), "--no-progress", "train.steps=4")
    assert code == 0, err[-2000:]
    assert "resumed from step-000002 (step 2); steps 3–3, logged after it, are redone and shown again" in err
    shown = re.findall(r" step (\d+)/4 ", err)
    assert shown == ["3", "4"], err
    assert [r["step"] for r in run_rows(two_step_run / "metrics.jsonl")] == [1, 2, 3, 4]
