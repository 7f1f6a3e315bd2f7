"""Model folders that are not what they should be end in one `error:` line naming the file (exit 2): eval
--checkpoint on a folder that is not a checkpoint, truncated or empty weights, a missing or foreign tokenizer,
and weights holding NaN or inf (for training too)."""

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from llm_runs.__main__ import main
from llm_runs.config import ConfigError, load
from llm_runs.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "llm_runs" / "configs" / "tiny_cpu.yaml"
FIXTURES = ROOT / "llm_runs" / "fixtures" / "toy_science"


def config(model_dir, out, *overrides):
    return load(TINY, [f"model.path={model_dir}", "model.tiny=false", f"train.output_dir={out}",
                       f"data.train={FIXTURES / 'train.jsonl'}", f"data.test={FIXTURES / 'test.jsonl'}",
                       "train.eval_every=0", "train.checkpoint_every=0", *overrides])


@pytest.fixture(scope="module")
def checkpoint_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(config(tiny_model_dir, out, "train.steps=1", "train.checkpoint_every=1"), out / "r", progress=False).train()
    return out / "r" / "checkpoints" / "step-000001"


def eval_error(capsys, folder, *extra) -> str:
    with pytest.raises(SystemExit) as done:
        main(["eval", "--checkpoint", str(folder), "--no-progress", "eval.samples=1", "eval.max_questions=1", *extra])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


def damaged(checkpoint_dir, tmp_path, name, change) -> Path:
    """A copy of the checkpoint (inside a run folder, with the run's config.yaml) with one thing wrong."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint_dir.parent.parent / "config.yaml", run / "config.yaml")
    folder = shutil.copytree(checkpoint_dir, run / "checkpoints" / name)
    change(folder)
    return folder


def put_nan(folder: Path, value=float("nan")):
    weights = load_file(folder / "model.safetensors")
    key = next(k for k in weights if "embed_tokens" in k)
    weights[key][-1, 0] = value  # a row no prompt of the tiny tokenizer may ever use
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def truncate_to(size):
    def change(folder):
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:size])
    return change


@pytest.mark.parametrize("name, change, words", [
    ("empty", truncate_to(0), "model.safetensors: empty weights file"),
    ("header_cut", truncate_to(1000), "model.safetensors: not a readable safetensors file"),
    ("data_cut", truncate_to(-5000), "model.safetensors: not a readable safetensors file"),
    ("no_weights", lambda f: (f / "model.safetensors").unlink(), "no weights there"),
    ("no_tokenizer", lambda f: [p.unlink() for p in f.iterdir() if p.name.startswith(("tokenizer", "chat_template"))],
     "no tokenizer there"),
    ("no_template", lambda f: (f / "chat_template.jinja").unlink() if (f / "chat_template.jinja").exists() else None,
     "no chat template"),
    ("not_a_model", lambda f: (f / "config.json").write_text("{}"), "config.json: not a transformers model config"),
    ("bad_json", lambda f: (f / "config.json").write_text("{nope"), "config.json: not valid JSON"),
    ("no_config", lambda f: (f / "config.json").unlink(), "no config.json there"),
    ("foreign_tokenizer", lambda f: (f / "config.json").write_text(
        json.dumps({**json.loads((f / "config.json").read_text()), "vocab_size": 8})), "more than the model's vocabulary of 8"),
    ("nan", put_nan, "the weights hold NaN or inf: model.embed_tokens.weight (1 values)"),
    ("inf", lambda f: put_nan(f, float("inf")), "the weights hold NaN or inf"),
])
def test_eval_on_a_damaged_checkpoint_names_what_is_wrong(checkpoint_dir, tmp_path, capsys, name, change, words):
    folder = damaged(checkpoint_dir, tmp_path, name, change)
    last = eval_error(capsys, folder)
    assert words in last and (str(folder) in last or name in ("not_a_model", "bad_json"))


def test_eval_on_a_file_or_a_missing_folder(checkpoint_dir, tmp_path, capsys):
    assert "does not exist" in eval_error(capsys, tmp_path / "nothing")
    assert "not a folder" in eval_error(capsys, checkpoint_dir / "config.json")
    assert "no config.json there" in eval_error(capsys, checkpoint_dir.parent)  # the checkpoints/ folder itself


def test_the_intact_checkpoint_evaluates(checkpoint_dir, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint_dir), "--no-progress", "eval.samples=1",
                 "eval.max_questions=1"]) == 0


def test_training_refuses_a_model_with_nan_in_an_unused_row(tiny_model_dir, tmp_path):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    put_nan(model)
    with pytest.raises(ConfigError, match=r"model.path .*the weights hold NaN or inf: model.embed_tokens.weight"):
        Trainer(config(model, tmp_path), tmp_path / "run", progress=False)


def test_a_sharded_index_naming_a_missing_file_is_refused(checkpoint_dir, tmp_path, capsys):
    def index(folder):
        names = load_file(folder / "model.safetensors").keys()
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {k: "model-00002-of-00002.safetensors" for k in names}}))
    folder = damaged(checkpoint_dir, tmp_path, "index", index)
    assert "lists weight files that are not there" in eval_error(capsys, folder)


# ------------------------------------------------------------------------------------------------
# resuming from a checkpoint damaged after it was written


@pytest.mark.parametrize("damage, words", [
    (lambda ck: shutil.rmtree(ck), "names step-000001, which is missing or incomplete"),
    (lambda ck: (ck / "trainer_state.pt").write_bytes((ck / "trainer_state.pt").read_bytes()[:1000]),
     "trainer_state.pt: cannot be read"),
    (lambda ck: (ck / "model.safetensors").write_bytes((ck / "model.safetensors").read_bytes()[:-5000]),
     "model.safetensors: not a readable safetensors file"),
])
def test_resume_from_a_damaged_checkpoint_names_it_and_keeps_the_log(tiny_model_dir, checkpoint_dir, tmp_path, damage, words):
    run = shutil.copytree(checkpoint_dir.parent.parent, tmp_path / "r")
    log = (run / "metrics.jsonl").read_bytes()
    damage(run / "checkpoints" / "step-000001")
    trainer = Trainer(config(tiny_model_dir, tmp_path, "train.steps=1", "train.checkpoint_every=1"), run, progress=False)
    with pytest.raises(ConfigError, match=words):
        trainer.resume()
    assert (run / "metrics.jsonl").read_bytes() == log  # not wiped as if the run had never checkpointed
