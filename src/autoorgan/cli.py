"""The ``autoorgan`` command: a thin Typer layer over :mod:`autoorgan.api`.

It parses options, sets up logging and progress display, and turns
:class:`~autoorgan.errors.AutoOrganError` into one red line and an exit code. Heavy libraries
(torch, nnU-Net, SimpleITK) are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from autoorgan import __version__
from autoorgan.errors import AutoOrganError

if TYPE_CHECKING:
    from autoorgan.pipeline import BatchResult

app = typer.Typer(
    name="autoorgan",
    help="Segment bones and organs in CT images with nnU-Net v2 models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)
console = Console(stderr=True)
out = Console()

# ---------------------------------------------------------------------------------------------
# Options shared by several commands

TaskOpt = Annotated[str, typer.Option("--task", "-t", help="Task name, e.g. ribs, organs, upper_limb "
                                      "(see 'autoorgan tasks').", show_default=False)]
TasksFileOpt = Annotated[Path | None, typer.Option(
    "--tasks-file", help="TOML or JSON task table that adds custom tasks or changes built-in ones.",
    exists=True, dir_okay=False, show_default=False)]
ModelsDirOpt = Annotated[Path | None, typer.Option(
    "--models-dir", help="Folder of installed models (nnU-Net results layout). "
    "Default: $AUTOORGAN_MODELS, else $nnUNet_results.", show_default=False)]


def _fail(message: str, code: int = 1) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def _run(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Call ``fn``; an AutoOrganError becomes one error line and its exit code."""
    try:
        return fn(*args, **kwargs)
    except AutoOrganError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _version_callback(value: bool) -> None:
    if value:
        out.print(f"autoorgan {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug messages.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Segment bones and organs in CT images with nnU-Net v2 models.

    Typical use: [bold]autoorgan predict --task ribs -i ct/ -o out/[/]
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False)],
        force=True,
    )
    if not verbose:
        for noisy in ("nnunetv2", "autoorgan.engine", "PIL", "matplotlib", "numexpr"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # Deprecation notices from inside torch/nnU-Net are not the user's business.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


# ---------------------------------------------------------------------------------------------
# predict


@app.command()
def predict(
    task: TaskOpt,
    input: Annotated[Path, typer.Option("--input", "-i", help="A CT file or a folder of CT files "
                                        "(.nii, .nii.gz, .nrrd, .mha, ...). Any file names.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder: <case>.nii.gz label maps and "
                                         "<case>.json sidecars.", show_default=False)],
    device: Annotated[str, typer.Option("--device", "-d", help="auto (CUDA if available), cpu, cuda, cuda:N "
                                        "or mps.")] = "auto",
    part_id: Annotated[int, typer.Option("--part-id", help="This process's shard, 0..num-parts-1.")] = 0,
    num_parts: Annotated[int, typer.Option("--num-parts", help="Number of shards (e.g. one per GPU). A case's "
                                           "shard depends only on its name.")] = 1,
    resume: Annotated[bool, typer.Option("--continue", "-c", help="Skip cases whose outputs are complete.")] = False,
    models_dir: ModelsDirOpt = None,
    tasks_file: TasksFileOpt = None,
    dataset_id: Annotated[int | None, typer.Option("--dataset-id", help="Use this nnU-Net dataset ID "
                                                   "instead of the task's.", show_default=False)] = None,
    trainer: Annotated[str | None, typer.Option("--trainer", help="nnU-Net trainer name of the model "
                                                "(default from the task table).", show_default=False)] = None,
    fold: Annotated[str | None, typer.Option("--fold", help="Fold to use (an integer or 'all').",
                                             show_default=False)] = None,
    configuration: Annotated[str | None, typer.Option("--configuration", help="nnU-Net configuration, e.g. "
                                                      "3d_fullres.", show_default=False)] = None,
    plans: Annotated[str | None, typer.Option("--plans", help="nnU-Net plans identifier.",
                                              show_default=False)] = None,
    step_size: Annotated[float, typer.Option("--step-size", help="Sliding-window step as a fraction of the "
                                             "patch; larger is faster, 0.5 is nnU-Net's default.")] = 0.5,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display; errors and the "
                                        "summary only.")] = False,
) -> None:
    """Segment every CT of INPUT and write label maps that line up with the CTs.

    Each output has exactly the input's size, spacing, origin and direction, whatever its
    orientation. A bad case is reported and skipped; the exit code is non-zero if any failed.

    Examples:

      autoorgan predict --task ribs -i ct/ -o out/

      CUDA_VISIBLE_DEVICES=3 autoorgan predict --task organs -i ct/ -o out/ --part-id 3 --num-parts 4
    """
    from autoorgan import api
    from autoorgan.cli_progress import RichProgress

    fold_value: int | str | None = None
    if fold is not None:
        fold_value = fold if fold == "all" else _int_option("--fold", fold)
    if quiet:
        logging.getLogger().setLevel(logging.WARNING)
    with RichProgress(console, enabled=not quiet) as listener:
        result = _run(
            api.predict, task=task, input=input, output=output, models_dir=models_dir, tasks_file=tasks_file,
            dataset_id=dataset_id, trainer=trainer, fold=fold_value, configuration=configuration, plans=plans,
            device=device, part_id=part_id, num_parts=num_parts, resume=resume, step_size=step_size,
            listener=listener,
        )
    _print_summary(result, output)
    if not result.ok:
        raise typer.Exit(1)


def _int_option(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        _fail(f"{name} must be an integer or 'all', got '{value}'", 2)


def _print_summary(result: BatchResult, output: Path) -> None:
    done, skipped, failed = result.count("done"), result.count("skipped"), result.count("failed")
    line = f"{done} done, {skipped} already complete, {failed} failed → {output}"
    console.print(("[green]" if not failed else "[red]") + line + "[/]", highlight=False)
    for r in result.failed:
        console.print(f"  [red]failed[/] {r.case_id}: {r.error}", highlight=False, markup=True, soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# tasks, labels, install-weights


@app.command()
def tasks(
    models_dir: ModelsDirOpt = None,
    tasks_file: TasksFileOpt = None,
) -> None:
    """List the tasks: dataset ID, number of labels, and whether (and where) a model is installed."""
    from autoorgan import api

    statuses = _run(api.list_tasks, tasks_file=tasks_file, models_dir=models_dir)
    table = Table(title="autoorgan tasks")
    table.add_column("task")
    table.add_column("dataset", justify="right")
    table.add_column("labels", justify="right")
    table.add_column("model")
    table.add_column("description")
    for s in statuses:
        where = f"[green]installed[/] {s.model_folder}" if s.installed else "[dim]not installed[/]"
        table.add_row(s.task.name, str(s.task.dataset_id), str(len(s.task.labels)), where, s.task.description)
    out.print(table, soft_wrap=True)


@app.command()
def labels(
    task: Annotated[str, typer.Argument(help="Task name.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (value → name).")] = False,
    tasks_file: TasksFileOpt = None,
) -> None:
    """Show the label table of a task: value and structure name."""
    from autoorgan import api

    table_data = _run(api.task_labels, task=task, tasks_file=tasks_file)
    if as_json:
        sys.stdout.write(json.dumps({str(k): v for k, v in table_data.items()}, indent=2) + "\n")
        return
    table = Table(title=f"labels of {task}")
    table.add_column("value", justify="right")
    table.add_column("structure")
    for value, name in table_data.items():
        table.add_row(str(value), name)
    out.print(table)


@app.command("install-weights")
def install_weights(
    archive: Annotated[Path, typer.Argument(help="nnU-Net model zip (nnU-Net's export format).",
                                            show_default=False)],
    models_dir: ModelsDirOpt = None,
    tasks_file: TasksFileOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an installed model.")] = False,
) -> None:
    """Install a model archive into the models folder and say which task it serves."""
    from autoorgan import api

    installed = _run(api.install_weights, archive=archive, models_dir=models_dir, tasks_file=tasks_file,
                     force=force)
    for model in installed:
        out.print(f"installed {model.folder} (folds {', '.join(model.folds)})", highlight=False)
        if not model.tasks:
            out.print(f"  [yellow]no task uses dataset {model.dataset_id} with this trainer/plans/configuration;"
                      " add one with --tasks-file[/]", highlight=False)
        for name in model.tasks:
            note = model.label_notes.get(name)
            verdict = "labels match the task table" if note is None else f"[yellow]labels differ: {note}[/]"
            out.print(f"  serves task '{name}': {verdict}", highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()
