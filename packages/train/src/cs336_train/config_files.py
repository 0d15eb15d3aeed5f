"""The configurations cs336-train ships (cs336_train/configs/*.toml), found by name from any directory.

Every command that takes a configuration accepts a file or a bundled name:

    >>> resolve_config("tinystories_cpu")                 # doctest: +SKIP
    PosixPath('.../cs336_train/configs/tinystories_cpu.toml')
    >>> resolve_config("my_experiment.toml")              # an existing file is used as it is    # doctest: +SKIP

`tinystories_cpu.toml` and `configs/tinystories_cpu.toml` (where the configurations lived before they moved into
the package) name the bundled file too, as long as no such file exists where the command runs.
`cs336-train configs` lists them; `cs336-train configs NAME` prints one, to copy and edit.
"""

import os
from pathlib import Path

from cs336_train.errors import ConfigError

# Beside this module, so the wheel carries them and they are found whatever the working directory.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = "tinystories_cpu"


def bundled_configs() -> dict[str, Path]:
    """{name: path} of every bundled configuration, sorted by name."""
    return {path.stem: path for path in sorted(CONFIG_DIR.glob("*.toml"))}


def resolve_config(name_or_path: str | os.PathLike) -> Path:
    """The configuration file meant by `name_or_path`: an existing file, else a bundled configuration's name.

    A name that is neither raises ConfigError listing the bundled names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = bundled_configs()
    # "tinystories_cpu", "tinystories_cpu.toml" or the old "configs/tinystories_cpu.toml": a name, not a path.
    names_a_bundled_file = path.suffix in ("", ".toml") and path.parent.name in ("", "configs")
    if names_a_bundled_file and path.stem in bundled:
        return bundled[path.stem]
    if path.is_dir():
        raise ConfigError(f"configuration {str(path)!r} is a directory; give a TOML file or a bundled name "
                          f"({', '.join(bundled)})")
    raise ConfigError(f"configuration {str(path)!r} is neither a file nor a bundled configuration; the bundled ones "
                      f"are {', '.join(bundled)} (`cs336-train configs` describes them)")


def describe_config(path: Path) -> str:
    """What a configuration is for: the first sentence of its header comment ('' when it has none).

    The sentence may run over several comment lines, so the header's lines are joined first.
    """
    header = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    text = " ".join(header)
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]
