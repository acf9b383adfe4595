"""Every error type lrtrain raises, and `describe`: any failure as one line in the user's words (the key,
value or file, and what would be valid) with its exit code. A leaf module: it imports nothing of lrtrain's
but the config-dir lookup, so every other module can import it."""

from __future__ import annotations

import errno
import os
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

# Exit codes (documented in the README).
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_DIVERGED = 3


class ConfigValueError(ValueError):
    """A value outside its valid range; `key` is relative to the schema that raised it."""

    def __init__(self, key: str, value: Any, valid: str):
        self.key, self.value, self.valid = key, value, valid
        super().__init__(f"{key}={value!r}: must be {valid}")

    def under(self, prefix: str) -> "ConfigValueError":
        return ConfigValueError(f"{prefix}.{self.key}" if prefix else self.key, self.value, self.valid)


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says which file and why."""


class DataError(Exception):
    """A data set that cannot be read: names the root and what was expected there."""


class DataFileError(DataError):
    """A data file that is there but is not what its format holds (refused, truncated, inconsistent): bad input,
    like a bad checkpoint. The message names the file and what was expected."""


class InputFileError(Exception):
    """A file lrtrain wrote that it reads back (a job's summary.json or .hydra/*.yaml) and that is not what it
    writes (edited, corrupt, from elsewhere): names the file and what was expected."""


class LoggerStoreError(Exception):
    """A logger's store that cannot be used (an MLflow tracking URI that is not a database, is read-only, or
    a server that refuses): names the key and the file or URL."""


class Interrupted(Exception):
    """A signal stopped a run before it trained (in the LR range test, which has no checkpoint to resume from):
    it ends `interrupted`, with exit 128 + the signal. The message says which signal, and where."""


class WriteError(Exception):
    """An output that could not be written (a full disk, a folder without write permission): names the file."""


def write_error(path: Path, e: OSError, kept: str = "") -> WriteError:
    """A failed write in the user's words, naming the file; `kept`: what is left intact, when it matters."""
    note = f" ({kept})" if kept else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return WriteError(f"no space left on device writing {path}{note}")
    reason = os.strerror(e.errno) if e.errno else _first_line(str(e))[:160] or type(e).__name__
    if e.filename is not None and str(e.filename) != str(path):  # its temporary file (a folder in the way?)
        reason = f"{e.filename}: {reason}"
    return WriteError(f"could not write {path}: {reason}{note}")


class ModelInputError(ValueError):
    """The model cannot take the data set's inputs (e.g. a ConvNet on tabular rows)."""


class OptimizerInputError(ValueError):
    """The optimizer cannot train this model's parameters (e.g. Muon for a model without hidden matrices)."""


class FlipError(ValueError):
    """A horizontal flip asked for on digits or other glyphs, where it changes what the image shows."""


# Keys that moved: the old spelling is refused with a message naming the new one.
RENAMED = {
    "trainer.mode": "trainer.monitor_mode",
    "trainer.tensorboard": "the logger group: logger=[csv] (no TensorBoard) or logger=[csv,tensorboard]",
    "trainer.plots": "logger.csv.plots (curves.png is drawn from the CSV logger's files)",
}


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), "")


def _omegaconf_error(e: Any) -> str:
    key = getattr(e, "full_key", None) or getattr(e, "key", None)
    msg = _first_line(getattr(e, "msg", None) or str(e))
    obj_type = getattr(e, "object_type", None)
    if type(e).__name__ in ("ConfigKeyError", "ConfigAttributeError") and key in RENAMED:
        return f"{key}: renamed; use {RENAMED[key]}"
    if type(e).__name__ in ("ConfigKeyError", "ConfigAttributeError") and key and is_dataclass(obj_type):
        valid = ", ".join(f.name for f in fields(obj_type) if not f.name.startswith("_"))
        if not valid:  # an option without keys (warmup=none): name the options that have them
            choice = getattr(obj_type, "choice", key.split(".")[0])
            group = choice.split("=")[0]
            others = [o for o in _options(group) if f"{group}={o}" != choice]
            return f"{key}: unknown key; {choice} has no keys (options that have: {', '.join(others)})"
        return f"{key}: unknown key; valid keys here: {valid}"
    parent = getattr(e, "parent_node", None)
    if type(e).__name__ in ("ConfigKeyError", "ConfigAttributeError") and key and hasattr(parent, "keys"):
        return f"{key}: unknown key; valid keys here: {', '.join(k for k in parent.keys() if not k.startswith('_'))}"
    if type(e).__name__ == "MissingMandatoryValue" and key:
        return f"{key}: a value is required"
    return f"{key}: {msg}" if key else msg


def _options(group: str) -> list[str]:
    from lrtrain.paths import config_dir

    return sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))


def _unknown_option(group: str, name: str) -> str:
    return f"{group}={name}: no such option; valid: {', '.join(_options(group))}"


def _schema_named(group: str, option: str) -> list[str]:
    """The schemas (class names) that the option files of a group, or one of them, name in their defaults."""
    from lrtrain.paths import config_dir

    names = set()
    for path in (Path(config_dir()) / group).glob(f"{option or '*'}.yaml"):
        names.update(re.findall(r"^\s*- /(\w+)@_here_", path.read_text(), re.M))
    return sorted(names)


def _old_schema(where: str, old: str) -> str:
    """A defaults line naming a schema the way it was named before schemas went by their class names
    (`/schema_optimizer_adam@_here_`): the class to name instead, read off the built-in option of that name."""
    from lrtrain.paths import config_dir

    words = old.split("_")[1:]
    for cut in range(len(words), 0, -1):  # the longest group name first: early_stopping before early
        group, option = "_".join(words[:cut]), "_".join(words[cut:])
        if (Path(config_dir()) / group).is_dir():
            names = _schema_named(group, option) or _schema_named(group, "")
            break
    else:
        return f"{where}: {old} is no longer a schema's name; the primary config's schema is Config (lrtrain/config.py)"
    new = f"/{names[0]}@_here_" if len(names) == 1 else "one of " + ", ".join(f"/{n}@_here_" for n in names)
    return f"{where}: {old} is no longer a schema's name; schemas go by their class name: {new} (lrtrain/config.py)"


def _not_enabled(e: BaseException) -> str | None:
    """`regularization.l2.weight_decay=0.1` without l2 in the list: which option to add, and the list with it.

    Read off the override Hydra was applying and the config composed so far (the frame of Hydra's
    `_apply_overrides_to_config`): Hydra says only "Could not override", and OmegaConf, where the option's node
    is null, fails an assertion. None when the key does not reach into an option that is off."""
    import traceback

    for frame, _ in traceback.walk_tb(e.__traceback__):
        if frame.f_code.co_name == "_apply_overrides_to_config" and "override" in frame.f_locals:
            key, cfg = frame.f_locals["override"].key_or_group, frame.f_locals.get("cfg")
            break
    else:
        return None
    parts = key.split(".")
    if cfg is None or len(parts) < 3 or parts[1] not in _options(parts[0]):
        return None
    group, option = parts[0], parts[1]
    node = cfg.get(group)
    if node is None or not hasattr(node, "keys") or node.get(option) is not None:
        return None  # the option is on: the problem is another one
    chosen = [name for name in node.keys() if node.get(name) is not None]
    return f"{key}: {option} is not enabled; add it: {group}=[{','.join([*chosen, option])}]"


def _worker_cause(text: str) -> str | None:
    """A DataLoader worker's exception re-raised in the main process: its first line is "Caught X in DataLoader
    worker process 0." and the cause (which names the file) is the last line of the worker's traceback."""
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return None
    last = [line for line in text.strip().splitlines() if line.strip()][-1].strip()
    return re.sub(r"^[\w.]+: ", "", last)


def _one_line(text: str) -> str:
    """A multi-line library message as one line: its lines joined (Hydra's cause is often on a later line)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith("full_key: "))


def _out_of_memory(e: BaseException) -> str | None:
    """What an allocation that failed asked for, in the user's units; None when `e` is not one."""
    text = str(e)
    asked = re.search(r"tried to allocate (\d+) bytes", text)
    if asked:
        size = float(asked.group(1))
        for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
            if size < 1024 or unit == "PiB":
                break
            size /= 1024
        return f"out of memory: one allocation of {size:.3g} {unit} failed"
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in text.lower():
        return f"out of memory ({_first_line(text) or type(e).__name__})"
    return None


def _yaml_error(e: BaseException) -> str | None:
    """A config file that is not valid YAML (a --config-dir of the user's): its file, line and PyYAML's reason."""
    import yaml

    if not isinstance(e, yaml.MarkedYAMLError):
        return None
    mark = e.problem_mark or e.context_mark
    where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "a config file"
    reason = "; ".join(part for part in (e.context, e.problem) if part)
    return f"{where}: not valid YAML ({reason})"


_FULL_KEY = re.compile(r"^full_key: (\S+)$", re.M)


def describe(e: BaseException) -> tuple[str, int]:
    """A one-line cause and the exit code for an exception that ended a run."""
    from hydra.errors import InstantiationException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(e, InstantiationException):  # building a config node failed: say which node, then the cause
        key = _FULL_KEY.search(str(e))
        where = f"{key.group(1)}: " if key else ""
        cause = e.__cause__
        if cause is None:  # Hydra's own refusal (a blocklisted _target_, ...): its whole message
            return where + _one_line(str(e)), EXIT_CONFIG
        if type(cause).__module__ == __name__:  # lrtrain's own errors name their key or file already
            return describe(cause)
        memory = _out_of_memory(cause)
        if memory:  # the config asks for a model or data set too large to build
            return f"{where}too large to build: {memory}; make it smaller", EXIT_CONFIG
        message, code = describe(cause)
        return where + message, code
    yaml_error = _yaml_error(e)
    if yaml_error:
        return yaml_error, EXIT_CONFIG
    if isinstance(e, MissingConfigException):
        missing = getattr(e, "missing_cfg_file", None) or ""
        options = getattr(e, "options", None)
        if options and "/" in missing:
            return _unknown_option(*missing.rsplit("/", 1)), EXIT_CONFIG
    if isinstance(e, ConfigValueError):
        return str(e), EXIT_CONFIG
    not_enabled = _not_enabled(e)  # a key of an option left out of a multi-select group
    if not_enabled:
        return not_enabled, EXIT_CONFIG
    if isinstance(e, OmegaConfBaseException):
        return _omegaconf_error(e), EXIT_CONFIG
    cause = e.__cause__
    if cause is None and "raised while composing config" in str(e):  # Hydra raises it while handling OmegaConf's
        cause = e.__context__
    if type(e).__module__.startswith("hydra") and isinstance(cause, OmegaConfBaseException):
        recipe = re.match(r"In 'experiment/(\w+)'", str(e))  # a recipe's key the option chosen instead lacks
        return _omegaconf_error(cause) + (f" (set by +experiment={recipe.group(1)})" if recipe else ""), EXIT_CONFIG
    if type(e).__module__.startswith("hydra"):
        old = re.search(r"In '([\w/]+)': Could not load '(schema_\w+)'", str(e))
        if old:
            return _old_schema(f"{old.group(1)}.yaml", old.group(2)), EXIT_CONFIG
        # e.g. an unknown option inside a multi-select list: regularization=[l2,foo]
        missing = re.search(r"Could not (?:load|find) '([\w/]+)/([^'/]+)'", str(e))
        if missing:
            return _unknown_option(*missing.groups()), EXIT_CONFIG
        return _one_line(str(e)), EXIT_CONFIG
    text = _worker_cause(str(e)) or str(e)
    if isinstance(e, (CheckpointError, DataFileError, InputFileError)):
        return _first_line(text), EXIT_CONFIG  # bad input, like a bad config value
    if isinstance(e, (DataError, WriteError, LoggerStoreError)):
        return _first_line(text), EXIT_FAILED
    memory = _out_of_memory(e)
    if memory:
        return memory, EXIT_FAILED
    return f"{type(e).__name__}: {_first_line(text)}", EXIT_FAILED
