"""A sweep's jobs composed by Hydra once per distinct set of config-group choices.

Hydra composes every job from nothing: it builds the defaults list (reading the YAML tree), merges its files,
then applies the job's value overrides (`ConfigLoaderImpl._apply_overrides_to_config`) as its last step. That
took about 0.2 s a job on a 2-core CPU, for every job of a sweep. A value override (one that names no config
group, no package and nothing of `hydra`) cannot change the defaults list: Hydra sorts it into the overrides
it applies to the merged config. So the jobs that choose the same groups share one composition by Hydra, and
each job gets a copy of it with its value overrides applied by Hydra's own function, and the two records of
its overrides that Hydra's composition writes (`hydra.overrides.task`, `hydra.job.override_dirname`).
Anything else (a `hydra.*` or `defaults` override, an override that does not parse, a dict value, an override
that fails to apply) is composed in full by Hydra, which also gives its own error message.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

# At most this many shared compositions are kept (about 0.2 MB each); past it, jobs are composed in full.
BASES = 64


class SweepComposer:
    """`load_sweep_config` of the config loader it wraps, with the shared compositions described above."""

    def __init__(self, loader: Any):
        self.loader = loader
        self.parser = OverridesParser.create()
        self.bases: dict[tuple[str, ...], DictConfig] = {}
        self.repo: Any = None  # the config repository Hydra's composition sees, for group_exists

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        hydras = hasattr(self.loader, "_parse_overrides_and_create_caching_repo")  # Hydra's loader (or a wrapper)
        split = self.split(master_config, sweep_overrides) if hydras else None
        if split is None:
            return self.loader.load_sweep_config(master_config, sweep_overrides)
        groups, values, parsed = split
        base = self.bases.get(groups)
        if base is None:
            base = self.loader.load_sweep_config(master_config, list(groups))
            if len(self.bases) >= BASES:
                return self._finish(master_config, sweep_overrides, base, values, parsed)
            self.bases[groups] = base
        return self._finish(master_config, sweep_overrides, copy.deepcopy(base), values, parsed)

    def _finish(self, master_config: DictConfig, sweep_overrides: list[str], cfg: DictConfig,
              values: list[Override], parsed: list[Override]) -> DictConfig:
        """`cfg` (the job's group choices composed) with the job's value overrides, as Hydra's composition ends."""
        try:
            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        except Exception:  # composed in full, Hydra says what is wrong in its own words
            return self.loader.load_sweep_config(master_config, sweep_overrides)
        cfg.hydra.overrides.task = [o.input_line for o in parsed]
        job = cfg.hydra.job.config.override_dirname
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=parsed, kv_sep=job.kv_sep, item_sep=job.item_sep, exclude_keys=job.exclude_keys)
        # as Hydra's load_sweep_config: resolvers such as ${now:} give the job the values the master config got
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
        return cfg

    def split(self, master_config: DictConfig,
              sweep_overrides: list[str]) -> Optional[tuple[tuple[str, ...], list[Override], list[Override]]]:
        """(the overrides that choose config groups, the value overrides, all of them parsed); None where the
        job must be composed in full."""
        try:
            parsed = self.parser.parse_overrides(overrides=list(sweep_overrides))
        except Exception:
            return None
        repo = self._repo(master_config)
        groups: list[str] = []
        values: list[Override] = []
        for line, o in zip(sweep_overrides, parsed):
            key = o.key_or_group
            if key.split(".")[0].split("/")[0] in ("hydra", "defaults") or o.is_sweep_override():
                return None  # Hydra's own settings (searchpath, env_copy, ...) or the defaults list itself
            if isinstance(o.value(), dict):
                return None  # a dict is merged into a group's node, or replaces a group: rare, not worth a rule
            if o.package is not None or repo.group_exists(key):
                groups.append(line)
            else:
                values.append(o)
        return tuple(groups), values, parsed

    def _repo(self, master_config: DictConfig) -> Any:
        if self.repo is None:
            # the repository as Hydra's composition of this sweep builds it (hydra.searchpath included)
            hydra_overrides = list(OmegaConf.to_container(master_config.hydra.overrides.hydra))
            _, self.repo = self.loader._parse_overrides_and_create_caching_repo(
                master_config.hydra.job.config_name, hydra_overrides)
        return self.repo

    def forget(self) -> None:
        self.bases.clear()
        self.repo = None


# At most this many composed configs are kept (about 0.2 MB each); jobs past it are composed again.
REMEMBER = 256


class ComposedOnce:
    """A config loader that remembers each sweep config it composes and hands it out once more, to the
    next request for the same overrides. Everything else goes to the loader it wraps."""

    def __init__(self, loader: Any):
        self.loader = loader
        self.composer = SweepComposer(loader)
        self.composed: dict[tuple[str, ...], list[DictConfig]] = {}

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = tuple(sweep_overrides)
        if self.composed.get(key):
            return self.composed[key].pop()
        cfg = self.composer.load_sweep_config(master_config, sweep_overrides)
        if sum(map(len, self.composed.values())) < REMEMBER:
            # the caller may change the config it gets (the launcher sets the job's number): keep a copy
            self.composed.setdefault(key, []).append(copy.deepcopy(cfg))
        return cfg

    def peek(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        """The config `load_sweep_config` will hand out for these overrides, composed now and kept for it."""
        cfg = self.load_sweep_config(master_config, sweep_overrides)
        # at the front: the next peek at the same overrides (a job repeated in the batch) gets another copy
        self.composed.setdefault(tuple(sweep_overrides), []).insert(0, cfg)
        return cfg

    def forget(self) -> None:
        self.composed.clear()
        self.composer.forget()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


