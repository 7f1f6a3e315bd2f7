"""Where a config and the files it names are found, from any working directory and after a plain
`pip install` (docs/training.md, "Paths").

- `--config NAME` is a file path, or the name of a shipped config (`tiny_cpu`, `qwen3_8b_biology_sdpo`, …:
  the YAML files in `llm_runs/configs/`, installed with the package).
- A relative path inside a config (`data.train`, `data.test`, `eval --data`) is read from the directory the
  command runs in. A path beginning `llm_runs/` (the shipped fixtures) that is not there is read from the
  installed package instead, so the shipped configs work from any directory.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent  # llm_runs/, in the repository or in site-packages
SHIPPED_CONFIGS = PACKAGE / "configs"


def shipped_configs() -> list[str]:
    """The names `--config` accepts besides a path (the stems of llm_runs/configs/*.yaml)."""
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def config_file(name: str | Path) -> Path | None:
    """The config file `name` means: an existing path, else NAME.yaml there, else a shipped config of that name
    (with or without .yaml); None when none exists."""
    path = Path(name)
    if path.exists():
        return path
    local = path.with_name(path.name + ".yaml")
    if path.suffix not in (".yaml", ".yml") and local.exists():  # your tiny_cpu.yaml before the shipped one
        return local
    if path.parent == Path("."):  # a bare name, never a path that happens to be missing
        shipped = SHIPPED_CONFIGS / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
        if shipped.exists():
            return shipped
    return None


def input_file(path: str | Path) -> Path:
    """A file a config names, as it will be opened: absolute paths as they are; relative ones from the current
    directory, or, for `llm_runs/…` paths missing there, from the installed package. A file found nowhere is
    returned as given, so that the error names the path the user wrote."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    parts = path.parts
    if parts and parts[0] == PACKAGE.name:
        packaged = PACKAGE.joinpath(*parts[1:])
        if packaged.exists():
            return packaged
    return path
