"""A model folder in the transformers format, checked before anything is loaded from it: config.json, the
weight files (present, readable, finite), the tokenizer (present, with a chat template, no larger than the
model's vocabulary). Every problem is a ConfigError naming the file — never a safetensors header error, a
tokenizer-backend message, or an IndexError inside generate."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llm_runs.config import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_folder(path: Path, what: str, weights: bool = True) -> dict:
    """The folder's parsed config.json, once `path` is shown to be a model folder (and, with `weights`, to hold
    readable weight files). `what` names the setting for messages, e.g. "--checkpoint" or "model.path"."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{what} {path}: {'not a folder' if path.exists() else 'does not exist'}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{what} {path}: no config.json there (not a model folder: a run's final/ or "
                          f"checkpoints/step-N)")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{config_file}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ConfigError(f"{config_file}: not a transformers model config (no model_type)")
    if weights:
        for file in weight_files(path, what):
            open_safetensors(file)
    return config


def weight_files(path: Path, what: str) -> list[Path]:
    """The folder's safetensors files (those of its index when sharded); an error when there are none."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as err:
            raise ConfigError(f"{index}: not a safetensors index ({err!r})") from None
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise ConfigError(f"{index}: lists weight files that are not there: {missing}")
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        other = sorted(p.name for p in path.glob("pytorch_model*.bin"))
        if other:
            return []  # the legacy format: transformers reads and checks it
        raise ConfigError(f"{what} {path}: no weights there (no *.safetensors file)")
    return files


def open_safetensors(file: Path):
    from safetensors import SafetensorError, safe_open

    if file.stat().st_size == 0:
        raise ConfigError(f"{file}: empty weights file (a copy or a write that did not finish)")
    try:
        return safe_open(str(file), framework="pt")
    except SafetensorError as err:
        raise ConfigError(f"{file}: not a readable safetensors file ({err}): truncated or damaged") from None


def check_finite_files(path: Path, what: str) -> None:
    """Read every floating tensor of the folder's weight files, one at a time; refuse NaN or inf."""
    bad = []
    for file in weight_files(Path(path), what):
        with open_safetensors(file) as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    bad.append(f"{key} ({int((~torch.isfinite(tensor)).sum())} values)")
    if bad:
        raise ConfigError(f"{what} {path}: the weights hold NaN or inf: {', '.join(bad[:5])}"
                          f"{f' and {len(bad) - 5} more tensors' if len(bad) > 5 else ''}")


def check_finite_parameters(model, what: str) -> None:
    """Refuse a loaded model whose parameters or buffers hold NaN or inf, naming them (they would crash the
    first rollout — "probability tensor contains either inf, nan" — or, in an unused row, train on and be
    carried into every checkpoint)."""
    bad = []
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and tensor.device.type != "meta" and not torch.isfinite(tensor).all():
            bad.append(f"{name} ({int((~torch.isfinite(tensor)).sum())} values)")
    if bad:
        raise ConfigError(f"{what}: the weights hold NaN or inf: {', '.join(bad[:5])}"
                          f"{f' and {len(bad) - 5} more tensors' if len(bad) > 5 else ''}")


def check_tokenizer(path: Path, what: str) -> None:
    """The folder must hold its own tokenizer files (the model's ids mean nothing with another tokenizer)."""
    if not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"{what} {path}: no tokenizer there ({' or '.join(TOKENIZER_FILES)}); a run's checkpoints "
                          f"and final/ hold one: copy the base model's tokenizer files into it")


def check_tokenizer_fits(tokenizer, config: dict, what: str) -> None:
    """A tokenizer whose ids exceed the model's embedding would fail inside generate (IndexError); one without
    a chat template cannot render the prompts."""
    vocabulary = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if vocabulary is not None and len(tokenizer) > vocabulary:
        raise ConfigError(f"{what}: the tokenizer has {len(tokenizer)} tokens, more than the model's vocabulary of "
                          f"{vocabulary} (config.json vocab_size): it is not this model's tokenizer")
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{what}: the tokenizer has no chat template (tokenizer_config.json chat_template or "
                          f"chat_template.jinja), which the prompts are rendered with")
