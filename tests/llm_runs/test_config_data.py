"""Configs (errors name the key and the file), split files (errors name file, line and field), templates."""

import json
import re
from pathlib import Path

import pytest

from llm_runs.config import ConfigError, load
from llm_runs.experiment import config as experiment_config  # registers the demo's `warm_start:` section
from llm_runs.data import DataError, PromptSampler, load_split, messages, question_of, render

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "sciknoweval"
CONFIGS = sorted((ROOT / "llm_runs" / "configs").glob("*.yaml"))


def test_defaults_are_the_papers_settings():
    c = load()
    assert (c.optim.lr, c.optim.betas, c.optim.weight_decay, c.optim.warmup_steps, c.optim.clip_norm) == (
        1e-5, (0.9, 0.999), 0.01, 10, 1.0)
    assert (c.rollout.prompts_per_step, c.rollout.samples_per_prompt, c.rollout.temperature) == (32, 8, 1.0)
    assert (c.rollout.max_new_tokens, c.data.max_prompt_tokens) == (8192, 2048)
    assert (c.loss.beta, c.loss.topk, c.loss.add_tail, c.loss.is_cap) == (0.5, 100, True, 2.0)
    assert (c.teacher.kind, c.teacher.ema_tau, c.teacher.demonstration) == ("ema", 0.05, "sibling")
    assert (c.eval.samples, c.eval.temperature, c.eval.top_p) == (16, 0.6, 0.95)
    assert c.model.path == "Qwen/Qwen3-8B" and c.model.enable_thinking is False


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_loads(path):
    c = load(path)
    if path.stem not in ("tiny_cpu", "demo_cpu"):
        assert c.model.path == "Qwen/Qwen3-8B" and c.optim.lr == 1e-5
        assert c.pgpo.enabled == ("pgpo" in path.stem)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.startswith("qwen3_8b_")], ids=lambda p: p.stem)
def test_each_seed_of_a_paper_config_gets_its_own_run_folder(path):
    """The seed is in the run folder's name, so several seeds of one config run side by side."""
    from llm_runs.build import run_name

    names = {seed: run_name(load(path, [f"train.seed={seed}"]), str(path)) for seed in (0, 1, 2)}
    assert names == {seed: f"{path.stem}-seed{seed}" for seed in (0, 1, 2)}


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.startswith("qwen3_8b_")], ids=lambda p: p.stem)
def test_paper_configs_follow_the_h100_recommendation_of_the_scaling_notes(path):
    """docs/scaling.md, 8 × H100 80 GB: micro-batches of 1–2, checkpointed activations, vLLM at ≈ 0.4 of the GPU."""
    c = load(path)
    assert c.loss.micro_batch_size <= 2 and c.model.gradient_checkpointing and c.rollout.gpu_memory_utilization <= 0.4
    notes = (ROOT / "docs" / "scaling.md").read_text()
    assert "`loss.micro_batch_size: 1–2`, `model.gradient_checkpointing: true`, vLLM `gpu_memory_utilization` ≈ 0.4" in notes


def test_paper_configs_cover_four_domains_and_four_methods():
    stems = {p.stem for p in CONFIGS}
    for domain in ("biology", "chemistry", "material", "physics"):
        assert {f"qwen3_8b_{domain}_sdpo", *(f"qwen3_8b_{domain}_pgpo_a{a}" for a in ("0.5", "1", "2"))} <= stems


def test_overrides_and_their_errors(tmp_path):
    c = load(None, ["pgpo.alpha=2", "loss.topk=null", "optim.betas=[0.9, 0.95]", "train.run_name=x"])
    assert c.pgpo.alpha == 2.0 and c.loss.topk is None and c.optim.betas == (0.9, 0.95) and c.train.run_name == "x"
    assert load(None, ["optim.lr=3e-3"]).optim.lr == 3e-3  # YAML 1.1 reads 3e-3 as a string
    with pytest.raises(ConfigError, match="optim.lr: expected float, got 'fast'"):
        load(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="command line: unknown key 'pgpo.alfa'"):
        load(None, ["pgpo.alfa=1"])
    with pytest.raises(ConfigError, match="unknown key 'nope.x'"):
        load(None, ["nope.x=1"])
    with pytest.raises(ConfigError, match="loss.topk: expected int, got 'ten'"):
        load(None, ["loss.topk=ten"])
    with pytest.raises(ConfigError, match="pgpo.form: must be one of"):
        load(None, ["pgpo.form=cubic"])
    with pytest.raises(ConfigError, match=r"loss.beta: must lie in \[0.0, 1.0\]"):
        load(None, ["loss.beta=1.5"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load(None, ["pgpo.alpha"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("pgpo:\n  alpha: 1\n  sensitivity: 2\n")
    with pytest.raises(ConfigError, match=f"{bad}: unknown key 'pgpo.sensitivity'"):
        load(bad)
    bad.write_text("train:\n  steps: many\n")
    with pytest.raises(ConfigError, match=f"{bad}: train.steps: expected int"):
        load(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.yaml")


def _fields_and_docstrings(path):
    """(class, field, annotation source, has a docstring) for every field of the *Config dataclasses in `path`."""
    import ast

    tree = ast.parse(path.read_text())
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Config")):
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                doc = i + 1 < len(body) and isinstance(body[i + 1], ast.Expr) and isinstance(body[i + 1].value, ast.Constant) \
                    and isinstance(body[i + 1].value.value, str)
                yield cls.name, node.target.id, ast.unparse(node.annotation), doc


def test_every_field_has_one_docstring_and_carries_its_allowed_values():
    import typing

    from llm_runs.config import RunConfig, _hints
    from llm_runs.experiment.config import DemoConfig

    rows = [r for p in ("schema.py", "experiment/config.py") for r in _fields_and_docstrings(ROOT / "llm_runs" / p)]
    assert len(rows) > 70 and [f"{c}.{f}" for c, f, _, doc in rows if not doc] == []
    # the choices live on the fields: every str field with a fixed set of values is a Literal
    choices = {f"{c}.{f}": a for c, f, a, _ in rows if a.startswith("Literal[")}
    assert {"ModelConfig.dtype", "PGPOConfig.divergence", "TrainConfig.device", "LossConfig.implementation"} <= set(choices)
    hints = _hints(RunConfig)
    assert "warm_start" not in hints and "warm_start" in _hints(DemoConfig)
    assert typing.get_args(_hints(type(RunConfig().pgpo))["divergence"]) == ("kl", "reverse_kl", "jsd")


def test_the_experiments_section_is_read_by_its_schema_and_checked_but_left_out_by_the_runs():
    from llm_runs.experiment.config import DemoConfig

    demo = ROOT / "llm_runs" / "configs" / "demo_cpu.yaml"
    c = load(demo, ["warm_start.steps=7"], schema=DemoConfig)
    assert (c.warm_start.steps, c.warm_start.lr, c.warm_start.guided_fraction) == (7, 3e-3, 0.5)
    assert c.to_dict()["warm_start"]["steps"] == 7
    run = load(demo, ["warm_start.steps=7"])
    assert not hasattr(run, "warm_start") and "warm_start" not in run.to_dict() and run.train.steps == 250
    for schema in (DemoConfig, None):
        kwargs = {} if schema is None else {"schema": schema}
        with pytest.raises(ConfigError, match=r"warm_start.guided_fraction: must lie in \[0.0, 1.0\]"):
            load(demo, ["warm_start.guided_fraction=2"], **kwargs)
        with pytest.raises(ConfigError, match="unknown key 'warm_start.stepz'"):
            load(demo, ["warm_start.stepz=1"], **kwargs)


def test_a_run_folder_written_before_the_renames_still_loads_and_resumes(tmp_path, capsys):
    """Old run folders hold `warm_start`, `train.log_every` and `pgpo.signal`: read as today's keys."""
    import yaml

    from llm_runs.config import from_dict, load_for_resume

    old = load(ROOT / "llm_runs" / "configs" / "tiny_cpu.yaml").to_dict()
    del old["pgpo"]["divergence"]
    old["pgpo"]["signal"] = "jsd"
    old["train"]["log_every"] = 1
    old["warm_start"] = {"steps": 300, "batch_size": 32, "lr": 3e-3, "guided_fraction": 0.5}
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    (run / "resumed.yaml").write_text("train.steps: 9\ntrain.log_every: 5\n")
    c = load_for_resume(run, ["train.log_every=2", "warm_start.steps=10"])
    assert c.pgpo.divergence == "jsd" and c.train.steps == 9 and not hasattr(c.train, "log_every")
    assert yaml.safe_load((run / "resumed.yaml").read_text()) == {"train.steps": 9}
    assert from_dict(old).to_dict() == load(run / "config.yaml").to_dict()
    assert "pgpo.signal is now pgpo.divergence" in capsys.readouterr().err
    assert load(None, ["pgpo.signal=reverse_kl"]).pgpo.divergence == "reverse_kl"
    with pytest.raises(ConfigError, match="command line: pgpo.divergence: must be one of"):
        load(None, ["pgpo.signal=cubic"])
    with pytest.raises(ConfigError, match="unknown key 'train.log_everything'"):
        load(None, ["train.log_everything=1"])


def test_the_tiny_shape_has_one_definition():
    from llm_runs import tiny
    from llm_runs.tools.smoke import SHAPES

    assert load().model.tiny_shape == tiny.SHAPE and load().model.tiny_shape is not tiny.SHAPE
    assert {k: SHAPES["tiny"][k] for k in tiny.SHAPE} == tiny.SHAPE


def _write(tmp_path, rows):
    path = tmp_path / "split.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD = {"idx": 1, "prompt": "Q?\n\nA: x\nB: y\nPlease reason step by step.", "answer": "B", "system": "sys"}


@pytest.mark.parametrize("row, message", [
    ("{not json", r"split.jsonl:2: not valid JSON"),
    ({**GOOD, "idx": 2, "answer": None}, r"split.jsonl:2: field 'answer' is missing"),
    ({"idx": 2, "answer": "A"}, r"split.jsonl:2: field 'prompt' is missing"),
    ({**GOOD, "idx": "2"}, r"split.jsonl:2: field 'idx' must be int, got str"),
    ({**GOOD, "idx": True}, r"split.jsonl:2: field 'idx' must be int, got bool"),
    ({**GOOD, "idx": 2, "prompt": "  "}, r"split.jsonl:2: field 'prompt' is empty"),
    ({**GOOD}, r"split.jsonl:2: field 'idx' = 1 repeats line 1"),
    ("[1, 2]", r"split.jsonl:2: a row must be a JSON object"),
])
def test_a_malformed_row_names_file_line_and_field(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        load_split(_write(tmp_path, [GOOD, row]))


def test_templates(tmp_path):
    (example,) = load_split(_write(tmp_path, [GOOD]))
    assert question_of(example) == "Q?\n\nA: x\nB: y"
    student = messages(example, "boxed")
    assert student == [{"role": "user", "content": "Q?\n\nA: x\nB: y\nPlease reason step by step, and put your final "
                                                    "answer within \\boxed{}."}]
    teacher = messages(example, "boxed", "\\boxed{B}")
    assert teacher[0]["content"].endswith("\nCorrect solution: \\boxed{B} Correctly solve the original question.")
    tag = messages(example, "answer_tag", "<answer>B</answer>")
    assert tag[0] == {"role": "system", "content": "sys"}
    assert tag[1]["content"] == GOOD["prompt"] + "\nCorrect solution:\n\n<answer>B</answer>\n\nCorrectly solve the original question."


def test_sampler_is_seeded_and_resumable():
    a, b = PromptSampler(10, seed=3), PromptSampler(10, seed=3)
    first = a.draw(7) + a.draw(7)  # crosses an epoch
    assert sorted(first[:10]) == list(range(10)) and a.epoch == 1
    b.draw(7)
    state = b.state_dict()
    c = PromptSampler(10, seed=3)
    c.load_state_dict(state)
    assert c.draw(7) == first[7:]
    assert PromptSampler(10, seed=4).draw(10) != first[:10]


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/sciknoweval is not beside the project")
@pytest.mark.parametrize("domain, train, test", [("biology", 450, 50), ("chemistry", 1890, 210),
                                                 ("material", 841, 94), ("physics", 720, 80)])
def test_real_splits_load_and_render_through_the_chat_template(domain, train, test, tiny_model_dir):
    from transformers import AutoTokenizer

    rows = load_split(SHARED / domain / "train.json")
    assert len(rows) == train and len(load_split(SHARED / domain / "test.json")) == test
    assert all(r.answer in "ABCD" for r in rows)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for template in ("boxed", "answer_tag"):
        text = render(tokenizer, rows[0], template)
        assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        assert question_of(rows[0]) in text
        assert ("\\boxed{}" in text) == (template == "boxed")
        assert ("<answer>" in text) == (template == "answer_tag")  # SDPO's system prompt


@pytest.mark.parametrize("override, words", [
    ("pgpo.alpha=.nan", "finite"), ("loss.beta=.nan", "finite"), ("optim.lr=.nan", "finite"),
    ("optim.lr=.inf", "finite"), ("pgpo.rho_max=.inf", "finite"), ("teacher.ema_tau=.nan", "finite"),
    ("rollout.temperature=0", "greater than"), ("rollout.temperature=-1", "greater than"),
    ("eval.temperature=0", "greater than"), ("rollout.top_p=5", "[0.0, 1.0]"), ("rollout.top_p=0", "greater than"),
    ("eval.top_p=1.5", "[0.0, 1.0]"), ("optim.eps=0", "greater than"), ("optim.betas=[0.9, 1.0]", "[0, 1)"),
    ("optim.betas=[0.9]", "[0, 1)"), ("train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("eval.batch_size=0", "eval.batch_size"), ("data.max_prompt_tokens=0", "data.max_prompt_tokens"),
    ("optim.warmup_steps=-1", "optim.warmup_steps"),
])
def test_values_that_compare_false_or_have_no_meaning_are_refused_by_name(override, words):
    """NaN passes every `<` and `>` check, so a range alone let it through; sampling needs T > 0 and top-p in (0, 1]."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        load(None, [override])
    assert key in str(err.value) and words in str(err.value)


def test_harmless_limits_are_accepted():
    config = load(None, ["loss.is_cap=.inf", "rollout.top_p=1.0", "rollout.temperature=0.7", "optim.betas=[0.0, 0.95]",
                         "train.keep_checkpoints=null", "eval.max_questions=null"])
    assert config.loss.is_cap == float("inf") and config.optim.betas == (0.0, 0.95)


@pytest.mark.parametrize("name, content, words", [
    ("folder", None, "is a directory"),
    ("latin1.jsonl", b'{"idx": 0, "prompt": "x", "answer": "A"}\n{"idx": 1, "prompt": "caf\xe9", "answer": "A"}\n',
     "latin1.jsonl:2: not UTF-8"),
    ("missing.jsonl", b'{"idx": 0, "prompt": "x", "answer": "A"}\n{"idx": 1, "answer": "B"}\n',
     "missing.jsonl:2: field 'prompt' is missing"),
    ("empty_prompt.jsonl", b'{"idx": 0, "prompt": "   ", "answer": "A"}\n', "empty_prompt.jsonl:1: field 'prompt'"),
    ("malformed.jsonl", b'{"idx": 0, "prompt": "x", "answer": "A"\n', "malformed.jsonl:1: not valid JSON"),
])
def test_bad_data_ends_in_one_error_line_naming_the_file_and_line(tmp_path, name, content, words):
    import subprocess
    import sys

    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "llm_runs", "train", "--config", str(root / "llm_runs/configs/tiny_cpu.yaml"),
                           "--no-progress", f"data.train={path}", f"train.output_dir={tmp_path / 'runs'}"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and words in last and "Traceback" not in done.stderr


@pytest.mark.parametrize(("text", "words"), [
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n", "line 2: an alias (*a)"),
    ("train:\n  steps: 3\nloss:\n  beta: 0.5\ntrain:\n  seed: 2\n", "line 5: 'train' is given twice"),
    ("train:\n  steps: 3\n  steps: 4\n", "line 3: 'steps' is given twice"),
])
def test_a_config_file_with_aliases_or_a_key_given_twice_is_refused_by_line(tmp_path, text, words):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(words)):
        load(tmp_path / "c.yaml")


def test_a_negative_seed_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"train.seed: must lie in \[0, ∞\], got -1"):
        load(None, ["train.seed=-1"])


def test_a_test_split_equal_to_the_training_split_is_warned_of(tiny_model_dir, tmp_path, capsys):
    from llm_runs.trainer import Trainer
    from tests.llm_runs.test_trainer import FIXTURES, config

    Trainer(config(tiny_model_dir, tmp_path, f"data.test={FIXTURES / 'train.jsonl'}"), tmp_path / "r", progress=False)
    assert "warning: data.test holds the same examples as data.train" in capsys.readouterr().err


def test_an_answer_outside_the_questions_choices_is_refused_by_line(tmp_path):
    rows = [{"idx": 0, "prompt": "Q?\n\nA: x\nB: y\nC: z\nD: w\nPlease reason step by step.", "answer": "B"},
            {"idx": 1, "prompt": "Q?\n\nA: x\nB: y\nC: z\nD: w\nPlease reason step by step.", "answer": "E"}]
    path = tmp_path / "split.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=re.escape(f"{path}:2: answer 'E' is not one of the question's choices (A, B, C, D)")):
        load_split(path)
