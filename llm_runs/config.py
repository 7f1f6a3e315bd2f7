"""Run configuration: the schema's dataclasses (`llm_runs.schema`, defaults = the paper's settings) read from
YAML and overridden on the command line with `section.key=value`.

Every field says what it accepts: a `Literal[...]` type for a choice, `Annotated[..., Range(...)]` for an
interval, and a docstring. `_check` is the one place that reads them. Unknown sections or keys, and values of
the wrong type or out of range, are errors that name the key (and the file).

Experiments extend `RunConfig` with sections of their own (a subclass: `llm_runs.experiment.config.DemoConfig`
adds `warm_start`); `load(path, overrides, schema=...)` reads a file with the schema it is given. A file
written for an experiment still loads with the plain `RunConfig`: the experiment's sections are checked
against its schema (registered by the experiment's config module: `register_experiment`), then
left out. Keys that were renamed or removed (`RENAMED`,
`REMOVED`) are mapped or dropped when read, so that old run folders still resume.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Literal

import yaml

from llm_runs import paths
from llm_runs.schema import (ConfigError, DataConfig, EvalConfig, LossConfig, ModelConfig,  # noqa: F401  re-exported
                             OptimConfig, PGPOConfig, Range, RolloutConfig, RunConfig, TeacherConfig, TrainConfig)


# Sections that experiments add to RunConfig ({section: its dataclass}), registered by the experiment's own
# config module (`register_experiment`) when it is imported, so the core never imports an experiment: a file
# written for one loads with RunConfig, its sections checked, then left out.
EXPERIMENT_SECTIONS: dict[str, type] = {}

# Keys that were renamed or removed, mapped (or dropped) when read from a file, an override or a run folder,
# so that run folders written before still load and resume.
RENAMED = {"pgpo.signal": "pgpo.divergence"}
REMOVED = {"train.log_every": "it was never read"}


# ---------------------------------------------------------------------------------------------
# reading and checking values


def _check(key: str, value, annotation, where: str):
    """The one check of a value against its field's annotation: the type (minimally converted), a Literal's
    choices, an `Annotated` Range (and finiteness for floats). Returns the value to set."""
    ranges = []
    if typing.get_origin(annotation) is Annotated:
        ranges = [m for m in annotation.__metadata__ if isinstance(m, Range)]
        annotation = typing.get_args(annotation)[0]
    value = _coerce(key, value, annotation, where)
    if value is None:
        return None
    bound = ranges[0] if ranges else Range()
    if isinstance(value, tuple):  # a fixed number of numbers, each in the range
        count = len(typing.get_args(annotation))
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and bound.holds(v) for v in value)
        if len(value) != count or not numbers:
            words = {1: "one number", 2: "two numbers", 3: "three numbers"}.get(count, f"{count} numbers")
            raise ConfigError(f"{where}{key}: must be {words}{f' in {bound}' if ranges else ''}, got {value!r}")
        return value
    if isinstance(value, float) and (math.isnan(value) or (math.isinf(value) and not bound.inf)):
        raise ConfigError(f"{where}{key}: must be a finite number, got {value!r}")  # NaN passes every comparison
    if bound.above and not value > bound.lo:
        raise ConfigError(f"{where}{key}: must be greater than {bound.lo}, got {value!r}")
    if ranges and not bound.holds(value):
        raise ConfigError(f"{where}{key}: must lie in {bound}, got {value!r}")
    return value


def _coerce(key: str, value, annotation, where: str):
    """Check (and minimally convert) one value against a type: bool, int, float, str, dict, tuple, a Literal,
    or an Optional of one."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0], where)
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise ConfigError(f"{where}{key}: must be one of {args}, got {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is dict or origin is dict:
        if isinstance(value, dict):
            return value
    elif annotation is tuple or origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
    else:
        return value
    name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{where}{key}: expected {name}, got {value!r} ({type(value).__name__})")


@functools.cache
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls, include_extras=True)


def register_experiment(schema: type) -> type:
    """Class decorator for an experiment's subclass of RunConfig: its extra sections become known to a plain
    RunConfig load (checked, then left out)."""
    base = {f.name for f in dataclasses.fields(RunConfig)}
    EXPERIMENT_SECTIONS.update({f.name: _hints(schema)[f.name] for f in dataclasses.fields(schema)
                                if f.name not in base})
    return schema


_NOTED: set = set()


def _note(message: str) -> None:
    """One line on stderr, once per process (and on rank 0 only)."""
    if message not in _NOTED and os.environ.get("RANK", "0") == "0":
        _NOTED.add(message)
        print(f"note: {message}", file=sys.stderr)


def _set(config, key: str, value, where: str = "") -> None:
    """Check `section.name = value` against `config`'s schema (a RunConfig or a subclass) and set it."""
    if key in RENAMED:
        _note(f"{where}{key} is now {RENAMED[key]}; read as that")
        key = RENAMED[key]
    if key in REMOVED:
        _note(f"{where}{key} is no longer a setting ({REMOVED[key]}); ignored")
        return
    section, _, name = key.partition(".")
    sections = [f.name for f in dataclasses.fields(config)]
    if name and section not in sections and section in EXPERIMENT_SECTIONS:
        target = EXPERIMENT_SECTIONS[section]()  # an experiment's section: checked, then left out
    elif not name or section not in sections:
        raise ConfigError(f"{where}unknown key {key!r}: keys are section.name with sections {sections} (an "
                          f"experiment's sections are known once its config module is imported, e.g. "
                          f"llm_runs.experiment.config)")
    else:
        target = getattr(config, section)
    hints = _hints(type(target))
    if name not in hints:
        raise ConfigError(f"{where}unknown key {key!r}; {section} has {sorted(hints)}")
    setattr(target, name, _check(key, value, hints[name], where))


def load(path: str | Path | None = None, overrides: list[str] | tuple = (), schema: type = RunConfig):
    """Defaults ← the YAML file (nested sections) ← `section.key=value` overrides (values parsed as YAML), as a
    `schema` (RunConfig, or an experiment's subclass of it: see `register_experiment`)."""
    config = schema()
    if path is not None:
        found = paths.config_file(path)
        if found is None:
            raise ConfigError(f"config file {path} does not exist (or a shipped config's name: "
                              f"{', '.join(paths.shipped_configs())})")
        path = found
        data = _read_mapping(path, "the top level must be a mapping of sections")
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section {section!r} must be a mapping, got {values!r}")
            for name, value in values.items():
                _set(config, f"{section}.{name}", value, where=f"{path}: ")
    apply_overrides(config, overrides)
    return config


class _StrictLoader(yaml.SafeLoader):
    """YAML for configs: no aliases (a config needs none, and an alias bomb expands to gigabytes) and no key
    given twice in one mapping (YAML keeps the last one silently: a duplicated section would lose the first)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"line {event.start_mark.line + 1}: an alias (*{event.anchor}): configs take plain "
                                 f"values, no anchors or aliases")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: {key!r} is given twice in one mapping "
                                     f"(first on line {seen[key]}): YAML would keep only the last")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def read_yaml(text: str):
    """`yaml.safe_load` with `_StrictLoader`'s two refusals."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader subclass)


def _read_mapping(path: Path, shape: str) -> dict:
    """A YAML file whose top level is a mapping (empty: {}); `shape` says what it must be, in the error."""
    try:
        data = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {shape}, got {data!r}")
    return data


def apply_overrides(config, overrides) -> None:
    """`section.key=value` items (values parsed as YAML) set on `config`."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        _set(config, key.strip(), yaml.safe_load(raw) if raw.strip() else None, where="command line: ")


def from_dict(data: dict, schema: type = RunConfig):
    """The inverse of `RunConfig.to_dict` (a resolved config saved in a run folder)."""
    config = schema()
    for section, values in data.items():
        for name, value in values.items():
            _set(config, f"{section}.{name}", value, where="resolved config: ")
    return config


# ---------------------------------------------------------------------------------------------
# resuming a run with changed settings

# What `--resume` may change: the run's length, its evaluation and checkpoint cadence, where it lives, and
# memory knobs that leave every computed number the same up to float rounding. Any other change would make
# the resumed run a different experiment from the one its first steps belong to. An experiment's own
# sections (`warm_start`: read by the warm-start command, not by training) are no part of a run's config.
RESUME_SAFE = (
    "train.steps", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.output_dir", "train.run_name", "train.report_to", "train.log_interval", "eval.keep_samples",
    "loss.micro_batch_size", "loss.implementation", "loss.chunk_size", "model.gradient_checkpointing",
    "rollout.gpu_memory_utilization", "rollout.enforce_eager", "rollout.cpu_kv_cache_gib",
    "rollout.logprob_gap_alarm", "rollout.record", "train.checkpoint_minutes", "train.end_time", "train.end_margin_s",
)


def flat(config: RunConfig) -> dict:
    """{"section.key": value} for every setting."""
    return {f"{section}.{key}": value for section, values in config.to_dict().items() for key, value in values.items()}


def resume_safe(key: str) -> bool:
    return key in RESUME_SAFE or key.partition(".")[0] in EXPERIMENT_SECTIONS


def resume_changes(saved: RunConfig, new: RunConfig) -> tuple[dict, dict]:
    """The settings that differ between a run's saved config and the one it is resumed with, split into
    (refused, allowed): {key: (saved value, new value)} each."""
    before, after = flat(saved), flat(new)
    changed = {k: (before[k], after[k]) for k in before if _normal(before[k]) != _normal(after[k])}
    refused = {k: v for k, v in changed.items() if not resume_safe(k)}
    return refused, {k: v for k, v in changed.items() if k not in refused}


def check_resume(saved: RunConfig, new: RunConfig, run_dir) -> dict:
    """Refuse (ConfigError naming each key) a resume whose settings differ from the run's beyond RESUME_SAFE;
    returns the allowed changes."""
    refused, allowed = resume_changes(saved, new)
    if refused:
        listed = "; ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in refused.items())
        raise ConfigError(
            f"--resume {run_dir}: {len(refused)} setting(s) differ from the run's config.yaml and would make it a "
            f"different experiment: {listed}. A resume may change only {', '.join(RESUME_SAFE)}; to change the "
            f"others, start a new run (a new train.run_name).")
    return allowed


def _normal(value):
    return list(value) if isinstance(value, tuple) else value


RESUMED = "resumed.yaml"  # in a run folder: the allowed changes made by earlier resumes, {key: value}


def load_for_resume(run_dir, overrides=()) -> RunConfig:
    """A run's config for `--resume`: its config.yaml ← the changes earlier resumes made (RESUMED) ← `overrides`.
    Refuses changes outside RESUME_SAFE (naming each key); records the allowed ones in RESUMED, so that the
    next resume keeps them; config.yaml itself is never rewritten."""
    run_dir = Path(run_dir)
    saved_path, resumed_path = run_dir / "config.yaml", run_dir / RESUMED
    saved = load(saved_path)
    earlier = _read_mapping(resumed_path, "must map section.key to a value") if resumed_path.exists() else {}
    config = copy.deepcopy(saved)
    for key, value in earlier.items():
        _set(config, key, value, where=f"{resumed_path}: ")
    apply_overrides(config, overrides)
    allowed = check_resume(saved, config, run_dir)
    if allowed and os.environ.get("RANK", "0") == "0":
        tmp = resumed_path.with_name(RESUMED + ".tmp")
        tmp.write_text(yaml.safe_dump({k: _normal(new) for k, (_, new) in allowed.items()}, sort_keys=False))
        os.replace(tmp, resumed_path)
    elif not allowed and resumed_path.exists() and os.environ.get("RANK", "0") == "0":
        resumed_path.unlink()  # every earlier change undone on the command line
    return config
