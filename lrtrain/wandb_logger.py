"""`logger=[...,wandb]`: one Weights & Biases run per lrtrain run, through W&B's own client.

The run's config is the composed lrtrain config. Every step row and every epoch row becomes one history row
whose x axis is lrtrain's `step` (W&B's `define_metric`), so rows that a rollback or a resume writes again
for earlier steps stay in W&B's history, as they do in steps.csv. The final metrics go to the run's summary
under the names the sweep report uses. The jobs of a sweep share a W&B group, named after the sweep dir.

`wandb` is imported when a run starts with this logger, never otherwise. `mode: null` leaves the choice to
W&B, which reads WANDB_MODE (online unless set), so `WANDB_MODE=offline lrtrain ...` never touches the network.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Optional

from lrtrain.errors import ConfigValueError
from lrtrain.loggers import RunContext, Sink, summary_metrics
from lrtrain.summary import SUCCEEDED, Status, Summary

MODES = ("online", "offline", "disabled")
RUN_ID_FILE = ".wandb_run_id"  # in the run dir: the W&B run an in-place resume continues
_MAX_GROUP = 128  # W&B's limit on a group name's length


class WandbLogger(Sink):
    def __init__(self, project: str, entity: Optional[str] = None, name: Optional[str] = None,
                 tags: Optional[list[str]] = None, mode: Optional[str] = None, dir: Optional[str] = None):
        if importlib.util.find_spec("wandb") is None:
            raise ConfigValueError("logger", "wandb", "a logger that is installed: wandb is not; install it "
                                   "with `pip install 'lrtrain[wandb]'` (or `uv sync --extra wandb`)")
        if mode is not None and mode not in MODES:
            raise ConfigValueError("mode", mode, f"one of {', '.join(MODES)}, or null (W&B reads WANDB_MODE)")
        if not project:
            raise ConfigValueError("project", project, "a W&B project name")
        self.project, self.entity, self.name, self.tags = project, entity, name, list(tags or [])
        self.mode, self.dir = mode, dir
        self.run: Any = None

    def on_start(self, ctx: RunContext) -> None:
        import wandb

        self.step_columns = ctx.step_columns
        root = ctx.out_dir if self.dir is None else self.dir
        id_file = ctx.out_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if ctx.resumed_in_place and id_file.is_file() else None
        name = self.name or (ctx.out_dir.name if ctx.sweep_dir is None else f"job {ctx.job_num}")
        group = None if ctx.sweep_dir is None else str(ctx.sweep_dir)[-_MAX_GROUP:]
        # console="off": lrtrain's own terminal output (the progress bar, one-line errors) stays untouched
        self.run = wandb.init(project=self.project, entity=self.entity, name=name, tags=self.tags, group=group,
                              mode=self.mode, dir=str(root), config=ctx.config, id=run_id,
                              resume="allow" if run_id else None, reinit="create_new",
                              settings=wandb.Settings(console="off"))
        id_file.write_text(self.run.id + "\n")
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def on_steps(self, rows: list[list[Any]]) -> None:
        for row in rows:
            self.run.log(dict(zip(self.step_columns, row)))

    def on_epoch(self, row: dict[str, Any]) -> None:
        # the epoch's lr is its last step's, already logged with the steps
        self.run.log({k: v for k, v in row.items() if k != "lr"})

    def on_end(self, summary: Summary) -> None:
        if self.run is None:
            return
        self.run.summary.update({"status": str(summary.status), **summary_metrics(summary)})
        self._finish(0 if summary.status in (*SUCCEEDED, Status.PRUNED) else 1)

    def close(self) -> None:
        if self.run is not None:  # ended without a summary: an error the loop is raising
            self._finish(1)

    def _finish(self, exit_code: int) -> None:
        run, self.run = self.run, None
        run.finish(exit_code=exit_code)
