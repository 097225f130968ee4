"""What a training run shows on screen: live bars, a line per epoch, a closing summary table.

The bars are transient and only drawn on a terminal; the per-epoch lines and the table are
printed everywhere, so logs of a batch job still tell the story.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from .train import TrainResult


class TrainProgress:
    """An epoch bar and a batch bar (loss, lr, img/s); use as a context manager."""

    def __init__(self, console: Console, epochs: int, batches: int, first_epoch: int) -> None:
        self.console = console
        self.batches = batches
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.epoch_task = self.bars.add_task("epochs", total=epochs, completed=first_epoch, info="")
        self.batch_task = self.bars.add_task("batches", total=batches, info="")

    def __enter__(self) -> TrainProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(*exc)

    def start_epoch(self, epoch: int) -> None:
        self.bars.reset(self.batch_task, total=self.batches, description=f"epoch {epoch}", info="")

    def batch(self, loss: float, lr: float, img_s: float) -> None:
        info = f"loss {loss:.4f}  lr {lr:.3g}  {img_s:.0f} img/s"
        self.bars.update(self.batch_task, advance=1, info=info)

    def end_epoch(self, row: dict[str, Any]) -> None:
        self.bars.update(self.epoch_task, advance=1)
        val = "" if row["val_top1"] != row["val_top1"] else (
            f"  val top-1 {row['val_top1']:.2f}%  top-5 {row['val_top5']:.2f}%  "
            f"loss {row['val_loss']:.4f}"
        )  # fmt: skip
        self.console.print(
            f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f}  lr {row['lr']:.3g}"
            f"{val}  {row['time_s']:.1f}s  {row['img_s']:.0f} img/s"
        )


def summary_table(result: TrainResult) -> Table:
    """One screen that says how the run went and where its files are."""
    table = Table(title=f"run {result.run_dir.name}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    best = "—"
    if result.best_top1 is not None:
        best = f"{result.best_top1:.2f}% (epoch {result.best_epoch})"
    rows = [
        ("recipe", result.recipe_name),
        ("best val top-1", best),
        ("epochs", f"{result.epochs_done} of {result.epochs}"),
        ("time", f"{result.elapsed_s:.1f}s this session"),
        ("throughput", f"{result.img_s:.0f} img/s (training)"),
        ("device", result.device),
        ("run dir", str(result.run_dir)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table
