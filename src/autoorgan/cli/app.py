"""The ``autoorgan`` command: a thin Typer layer over :mod:`autoorgan.api`.

It parses options, sets up logging and progress display, and turns
:class:`~autoorgan.errors.AutoOrganError` into one red line and an exit code. Heavy libraries
(torch, nnU-Net, SimpleITK) are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from autoorgan import __version__
from autoorgan.cli.options import PredictCommand, with_predict_options
from autoorgan.cli.text import SafeRichHandler, terminal_safe
from autoorgan.errors import AutoOrganError
from autoorgan.options import PredictOptions

if TYPE_CHECKING:
    from autoorgan.batch.job import BatchResult

app = typer.Typer(
    name="autoorgan",
    help="Segment bones and organs in CT images with nnU-Net v2 models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)
T = TypeVar("T")
#: No emoji codes: a case named ``a:warning:`` prints as written (user text goes through terminal_safe).
console = Console(stderr=True, emoji=False)
out = Console(emoji=False)

# ---------------------------------------------------------------------------------------------
# Options shared by several commands

TaskOpt = Annotated[str, typer.Option("--task", "-t", help="Task name, e.g. ribs, organs, upper_limb "
                                      "(see 'autoorgan tasks').", show_default=False)]
PredictTaskOpt = Annotated[list[str], typer.Option(
    "--task", "-t", help="Task name, e.g. ribs, organs, upper_limb (see 'autoorgan tasks'); several as "
    "--task ribs --task vertebrae or ribs,vertebrae, or 'all' (one whole-body label map, see 'autoorgan labels all').",
    show_default=False, metavar="TASK")]
TasksFileOpt = Annotated[Path | None, typer.Option(
    "--tasks-file", help="TOML or JSON task table that adds custom tasks or changes built-in ones.",
    exists=True, dir_okay=False, show_default=False)]
ModelsDirOpt = Annotated[Path | None, typer.Option(
    "--models-dir", help="Folder of installed models (nnU-Net results layout). "
    "Default: $AUTOORGAN_MODELS, else $nnUNet_results, else the per-user folder (see 'autoorgan tasks').",
    show_default=False)]


def _fail(message: str, code: int = 1) -> NoReturn:
    console.print(f"[bold red]error:[/] {terminal_safe(message)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def _run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn``; an AutoOrganError becomes one error line and its exit code."""
    try:
        return fn(*args, **kwargs)
    except AutoOrganError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM inside signals_as_interrupts()
        from autoorgan.batch.interrupts import exit_code_of

        _fail(f"{exc or 'interrupted'}; finished cases are kept (run again with --continue for the rest)",
              exit_code_of(exc))


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
        handlers=[SafeRichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False)],
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


@app.command(cls=PredictCommand)
@with_predict_options
def predict(
    task: PredictTaskOpt,
    input: Annotated[Path, typer.Option("--input", "-i", help="A CT file or a folder of CT files "
                                        "(.nii, .nii.gz, .nrrd, .mha, ...). Any file names.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder: <case>.nii.gz label maps and "
                                         "<case>.json sidecars. For one input file also a label map file "
                                         "(seg.nii.gz, .nii, .nrrd, .mha; sidecar seg.json beside it).",
                                         show_default=False)],
    part_id: Annotated[str, typer.Option("--part-id", rich_help_panel="Device", help="This process's shard, 0..num-parts-1, or 'auto' "
                                         "(the Slurm array task).")] = "0",
    num_parts: Annotated[str, typer.Option("--num-parts", rich_help_panel="Device", help="Number of shards or 'auto' (the Slurm array "
                                           "size). A case's shard depends only on its name.")] = "1",
    devices: Annotated[str | None, typer.Option("--devices", rich_help_panel="Device", help="Run one worker process per GPU, e.g. "
                                                "cuda:0,cuda:1; each takes a shard.", show_default=False)] = None,
    workers: Annotated[int | None, typer.Option("--workers", rich_help_panel="Device", help="Run N worker processes on --device (e.g. "
                                                "cpu); each takes a shard.", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display; errors and the "
                                        "summary only.")] = False,
    options: Any = None,
) -> None:
    """Segment every CT of INPUT and write label maps that line up with the CTs.

    Each output has exactly the input's size, spacing, origin and direction, whatever its
    orientation. A bad case is reported and skipped; the exit code is non-zero if any failed.

    Examples:

      autoorgan predict --task ribs -i ct/ -o out/

      autoorgan predict --task all -i ct/ -o out/     (every task, one whole-body label map)

      CUDA_VISIBLE_DEVICES=3 autoorgan predict --task organs -i ct/ -o out/ --part-id 3 --num-parts 4
    """
    import os

    from autoorgan import api
    from autoorgan.batch.interrupts import signals_as_interrupts
    from autoorgan.batch.sharding import resolve_shard
    from autoorgan.cli.progress import RichProgress

    chosen = _run(options.build)
    if quiet:
        logging.getLogger().setLevel(logging.WARNING)
    if devices is not None or workers is not None:
        from autoorgan.cli.cluster import predict_multi

        if part_id != "0" or num_parts != "1":
            _fail("--devices/--workers make the shards themselves; drop --part-id/--num-parts", 2)
        from autoorgan.runs.predict import output_file_of

        if _run(output_file_of, input, output) is not None:
            _fail("--devices/--workers split a folder of cases; for one input file, drop them", 2)
        forwarded = worker_arguments(task=",".join(task), input=input, output=output, options=chosen)
        with signals_as_interrupts():  # SIGTERM/Ctrl-C stop the workers too, then exit 143/130
            code = _run(predict_multi, console, predict_args=forwarded, input=input, output=output,
                        devices=devices, workers=workers, device=chosen.device, quiet=quiet)
        raise typer.Exit(code)
    part, parts = _run(resolve_shard, part_id, num_parts, os.environ)
    with signals_as_interrupts(), RichProgress(console, enabled=not quiet) as listener:
        result = _run(api.predict, task=",".join(task), input=input, output=output, listener=listener,
                      options=dataclasses.replace(chosen, part_id=part, num_parts=parts))
    _print_summary(result, output)
    if not result.ok:
        raise typer.Exit(1)


def worker_arguments(*, task: str, input: Path, output: Path, options: PredictOptions) -> list[str]:
    """The ``predict`` command line a worker process repeats: the task, input and output, and every
    forwarded option that differs from its default (all but device, shard and display)."""
    return ["--task", str(task), "--input", str(input), "--output", str(output), *options.worker_arguments()]


def _int_option(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        _fail(f"{name} must be an integer or 'all', got '{value}'", 2)


def _print_summary(result: BatchResult, output: Path) -> None:
    done, skipped, failed = result.count("done"), result.count("skipped"), result.count("failed")
    line = f"{done} done, {skipped} already complete, {failed} failed → {terminal_safe(output)}"
    console.print(("[green]" if not failed else "[red]") + line + "[/]", highlight=False)
    for r in result.failed:  # the case named once, by its id: the error is the reason alone
        what = f"{r.case_id}: {r.error or 'unknown error'}"
        console.print(f"  [red]failed[/] {terminal_safe(what)}", highlight=False, markup=True, soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# tasks, labels, install-weights


@app.command()
def tasks(
    models_dir: ModelsDirOpt = None,
    tasks_file: TasksFileOpt = None,
) -> None:
    """List the tasks: dataset ID, number of labels, and whether (and where) a model is installed.

    Below the table: the models folder looked in, and where that folder came from."""
    from autoorgan import api
    from autoorgan.models.store import FROM_USER_FOLDER, models_dir_source

    statuses = _run(api.list_tasks, tasks_file=tasks_file, models_dir=models_dir)
    source, folder = models_dir_source(models_dir)
    table = Table(title="autoorgan tasks")
    table.add_column("task")
    table.add_column("dataset", justify="right")
    table.add_column("labels", justify="right")
    table.add_column("model")
    table.add_column("description")
    for s in statuses:
        where = f"[green]installed[/] {terminal_safe(s.model_folder)}" if s.installed else "[dim]not installed[/]"
        if s.task.demo:  # shipped with autoorgan, whatever the models folder is
            where = f"[green]shipped[/] {terminal_safe(s.model_folder)}" if s.installed else "[red]missing[/]"
        name = f"{s.task.name} [yellow](demo)[/]" if s.task.demo else s.task.name
        table.add_row(name, str(s.task.dataset_id), str(len(s.task.labels)), where,
                      terminal_safe(s.task.description))
    out.print(table, soft_wrap=True)
    origin = source if source == FROM_USER_FOLDER else f"from {source}"
    out.print(f"models folder: {terminal_safe(folder, markup=False)} ({origin})", soft_wrap=True, markup=False,
              highlight=False)
    if not folder.is_dir():
        out.print("  (does not exist yet: 'autoorgan install-weights MODEL.zip' installs a model there)",
                  soft_wrap=True, markup=False, highlight=False)


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
    table = Table(title=f"labels of {terminal_safe(task)}")
    table.add_column("value", justify="right")
    table.add_column("structure")
    for value, name in table_data.items():
        table.add_row(str(value), terminal_safe(name))
    out.print(table)
    from autoorgan.registry.tasks import load_registry, normalize_name

    known = load_registry(tasks_file)
    if normalize_name(task) in known and known[normalize_name(task)].demo:
        from autoorgan.registry.tasks import DEMO_NOTE

        out.print(f"[yellow]{DEMO_NOTE}[/]", highlight=False, soft_wrap=True)


@app.command("install-weights")
def install_weights(
    archive: Annotated[Path, typer.Argument(help="nnU-Net model zip (nnU-Net's export format).",
                                            show_default=False)],
    models_dir: ModelsDirOpt = None,
    tasks_file: TasksFileOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an installed model.")] = False,
    sha256: Annotated[str | None, typer.Option("--sha256", help="Expected SHA-256 of the archive; refused if "
                                               "it differs.", show_default=False)] = None,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help="Install even if a checkpoint "
                                                   "needs code to load or plans.json names code outside "
                                                   "nnU-Net (only for archives you trust).")] = False,
    max_size: Annotated[float | None, typer.Option("--max-size", metavar="GB", help="Refuse an archive that "
                                                   "unpacks to more than this many GB (default 20).",
                                                   show_default=False)] = None,
    max_ratio: Annotated[float | None, typer.Option("--max-ratio", help="Refuse a member that unpacks to more "
                                                    "than this many times its packed size (zip bombs) "
                                                    "(default 100).", show_default=False)] = None,
    calibrate_with: Annotated[list[Path] | None, typer.Option(
        "--calibrate-with", metavar="CT", help="Then find the orientation each installed model was trained in "
        "from this CT (see 'autoorgan calibrate'); repeat for several.", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", "-d", help="With --calibrate-with: auto, cpu, cuda, cuda:N "
                                        "or mps.")] = "auto",
) -> None:
    """Install a model archive into the models folder and say which task it serves.

    With --calibrate-with CT, each task the archive serves is calibrated right after (see
    'autoorgan calibrate'); a refused calibration leaves the model installed and exits 1.
    """
    from autoorgan import api

    installed = _run(api.install_weights, archive=archive, models_dir=models_dir, tasks_file=tasks_file,
                     force=force, sha256=sha256, trust_checkpoint=trust_checkpoint, max_size_gb=max_size,
                     max_ratio=max_ratio)
    for model in installed:
        out.print(terminal_safe(f"installed {model.folder} (folds {', '.join(model.folds)})"), highlight=False)
        if not model.tasks:
            out.print(f"  [yellow]no task uses dataset {model.dataset_id} with this trainer/plans/configuration;"
                      " add one with --tasks-file[/]", highlight=False)
        for name in model.tasks:
            note = model.label_notes.get(name)
            verdict = ("labels match the task table" if note is None
                       else f"[yellow]labels differ: {terminal_safe(note)}[/]")
            out.print(f"  serves task '{name}': {verdict}", highlight=False)
    if calibrate_with:
        for name in sorted({name for model in installed for name in model.tasks}):
            calibrate(task=name, inputs=calibrate_with, models_dir=models_dir, tasks_file=tasks_file, device=device,
                      min_margin=None, dry_run=False, quiet=False)


@app.command()
def calibrate(
    task: TaskOpt,
    inputs: Annotated[list[Path], typer.Option("--input", "-i", help="A CT whose geometry is right (file or "
                                               "DICOM series folder); repeat for several.", show_default=False,
                                               metavar="CT")],
    models_dir: ModelsDirOpt = None,
    tasks_file: TasksFileOpt = None,
    device: Annotated[str, typer.Option("--device", "-d", help="auto (CUDA if available), cpu, cuda, cuda:N "
                                        "or mps.")] = "auto",
    min_margin: Annotated[float | None, typer.Option(
        "--min-margin", min=0.0, help="Least lead of the winner over the best orientation with other labels "
        "(default 0.1).", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the result without recording it.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Find the orientation a model was trained in, and record it beside the model.

    nnU-Net learns the storage order of its training arrays and ignores direction matrices. This
    runs the installed model on the CT in all 48 axis-aligned orientations (a box around the
    body's centre), scores each by anatomy (left/right structures on their side, vertebrae and
    ribs in head-to-feet order, organs on their side), the model's certainty, how coherent its
    labels are and how much it finds, and records the winner in the model's folder
    (autoorgan_calibration.json): 'predict', 'export-weights' and 'install-weights' carry it along.
    It refuses (exit 1, nothing recorded) when the winner's margin over the best orientation
    with other labels is too small; try another CT, or several.

    Example:

      autoorgan calibrate --task ribs -i chest_ct.nii.gz
    """
    from autoorgan import api
    from autoorgan.cli.calibrate import candidate_progress, candidate_table, summary
    from autoorgan.runs.calibrate import CalibrationRefused

    if quiet:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        with candidate_progress(console, task, enabled=not quiet) as progress:
            result = api.calibrate(task, inputs, models_dir=models_dir, tasks_file=tasks_file, device=device,
                                   min_margin=min_margin, write=not dry_run, progress=progress)
    except CalibrationRefused as exc:
        out.print(candidate_table(exc.calibration))
        out.print(summary(exc.calibration), highlight=False)
        _fail(str(exc), exc.exit_code)
    except AutoOrganError as exc:
        _fail(str(exc), exc.exit_code)
    out.print(candidate_table(result))
    out.print(summary(result), highlight=False)
    where = "not recorded (--dry-run)" if result.record_path is None else f"recorded in {result.record_path}"
    out.print(terminal_safe(f"task '{result.task.name}': orientation {result.winner.codes}, {where}"),
              highlight=False, soft_wrap=True)


@app.command("check-precision")
def check_precision(
    task: TaskOpt,
    inputs: Annotated[list[Path], typer.Option("--input", "-i", help="A CT (file, DICOM series folder or folder "
                                               "of CTs); repeat for several.", show_default=False, metavar="CT")],
    models_dir: ModelsDirOpt = None,
    tasks_file: TasksFileOpt = None,
    device: Annotated[str, typer.Option("--device", "-d", help="cpu: --precision applies to the CPU only.")] = "cpu",
    min_dice: Annotated[float | None, typer.Option(
        "--min-dice", help="Least Dice of any structure in any CT (default 0.99; only stricter).",
        show_default=False)] = None,
    median_dice: Annotated[float | None, typer.Option(
        "--median-dice", help="Least median Dice (default 0.999; only stricter).", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the result without recording it.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Check that a model gives the same labels in bf16 as in fp32, and record it beside the model.

    Segments each CT twice with the installed model on the CPU, in fp32 and in bf16 (as 'predict
    --precision fp32/bf16' does, without post-processing), and compares each structure's labels
    (Dice). The model agrees when the lowest Dice is at least 0.99 and the median at least 0.999.
    The result is recorded in the model's folder (autoorgan_precision.json), which
    'export-weights' and 'install-weights' carry along: '--precision auto' runs a model that does
    not agree in fp32 even on CPUs with native bf16. Exit 0 when it agrees, 1 when it does not
    (recorded all the same). On a CPU without native bf16 the bf16 run is emulated: slower, same
    labels.

    Example:

      autoorgan check-precision --task ribs -i chest_ct.nii.gz -i abdomen_ct.nii.gz
    """
    from autoorgan import api
    from autoorgan.cli.precision_check import dice_table, emulation_note, outcome, run_progress, summary

    if quiet:
        logging.getLogger().setLevel(logging.WARNING)
    with run_progress(console, task, enabled=not quiet) as progress:
        result = _run(api.check_precision, task, inputs, models_dir=models_dir, tasks_file=tasks_file, device=device,
                      min_dice=min_dice, median_dice=median_dice, write=not dry_run, progress=progress)
    out.print(dice_table(result))
    out.print(summary(result), highlight=False)
    note = emulation_note(result)
    if note is not None:
        out.print(terminal_safe(note), highlight=False, markup=False, soft_wrap=True)
    out.print(outcome(result), highlight=False, markup=False, soft_wrap=True)
    if not result.agrees:
        raise typer.Exit(1)


@app.command()
def status(
    input: Annotated[Path, typer.Option("--input", "-i", help="The CT file or folder of the batch.",
                                        show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The batch's output folder.", show_default=False)],
    num_parts: Annotated[int, typer.Option("--num-parts", help="Show counts per shard for this many parts.")] = 1,
    task: Annotated[str | None, typer.Option("--task", "-t", help="Count a case as done only if its output is "
                                             "of this task.", show_default=False)] = None,
    all_cases: Annotated[bool, typer.Option("--all", help="List done cases too.")] = False,
) -> None:
    """Which cases of a batch are done, failed or missing (per shard with --num-parts).

    Reads only the folders, so it works for batches spread over GPUs, processes or Slurm array
    tasks. Exit code 0 when every case is done, 1 while any is failed or missing.
    """
    from autoorgan.batch.status import collect_status
    from autoorgan.cli.cluster import print_status

    batch = _run(collect_status, input, output, num_parts=num_parts, task=task)
    print_status(console, out, batch, show_cases=all_cases)
    if not batch.complete:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------
# train, export-weights, demo


@app.command()
def train(
    task: TaskOpt,
    data: Annotated[Path, typer.Option("--data", help="Training data: a folder with images/ and labels/ "
                                       "(matching case names, any readable format), or an nnU-Net raw dataset "
                                       "(imagesTr/, labelsTr/, dataset.json).", show_default=False)],
    device: Annotated[str, typer.Option("--device", "-d", help="auto (CUDA if available), cpu, cuda, cuda:N "
                                        "or mps.")] = "auto",
    resume: Annotated[bool, typer.Option("--continue", "-c", help="Resume an interrupted training from its "
                                         "latest checkpoint (planning is not repeated).")] = False,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Number of epochs (default: the "
                                               "trainer's own, 1000 for nnU-Net's trainers).",
                                               show_default=False)] = None,
    iterations_per_epoch: Annotated[int | None, typer.Option("--iterations-per-epoch", min=1, help="Training "
                                                             "iterations per epoch (default: the trainer's, 250).",
                                                             show_default=False)] = None,
    initial_lr: Annotated[float | None, typer.Option("--initial-lr", min=0.0, help="Initial learning rate "
                                                     "(default: the trainer's, 0.01).", show_default=False)] = None,
    plans_override: Annotated[Path | None, typer.Option(
        "--plans-override", exists=True, dir_okay=False, help="JSON object merged into the configuration of "
        "nnU-Net's plans after planning (e.g. patch_size, batch_size, architecture).", show_default=False)] = None,
    models_dir: ModelsDirOpt = None,
    work_dir: Annotated[Path | None, typer.Option("--work-dir", help="Where nnU-Net's raw and preprocessed data "
                                                  "are kept. Default: $AUTOORGAN_WORK, else ~/.cache/autoorgan.",
                                                  show_default=False)] = None,
    tasks_file: TasksFileOpt = None,
    dataset_id: Annotated[int | None, typer.Option("--dataset-id", help="Train under this nnU-Net dataset ID "
                                                   "instead of the task's.", show_default=False)] = None,
    trainer: Annotated[str | None, typer.Option("--trainer", help="nnU-Net trainer class (default from the "
                                                "task table: nnUNetTrainerNoMirroring).", show_default=False)] = None,
    fold: Annotated[str | None, typer.Option("--fold", help="Fold to train (an integer or 'all'; default 0).",
                                             show_default=False)] = None,
    configuration: Annotated[str | None, typer.Option("--configuration", help="nnU-Net configuration "
                                                      "(default 3d_fullres).", show_default=False)] = None,
    plans: Annotated[str | None, typer.Option("--plans", help="nnU-Net plans identifier (default nnUNetPlans).",
                                              show_default=False)] = None,
    augmentation_workers: Annotated[int | None, typer.Option(
        "--augmentation-workers", min=0, help="Data-augmentation worker processes (0: in-process; default: "
        "nnU-Net's choice).", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed the random generators for a repeatable "
                                             "training (with --augmentation-workers 0 on CPU).",
                                             show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Train a task's model with nnU-Net on labelled CTs; it lands where 'predict' finds it.

    Every label file is checked first (only values of the task's label table, same grid as its
    image). Then nnU-Net plans, preprocesses and trains (3d_fullres, nnUNetTrainerNoMirroring,
    fold 0 unless the task or the options say otherwise).

    Examples:

      autoorgan train --task hip --data my_data/ --device cuda

      autoorgan train --task my_liver --tasks-file my_tasks.toml --data Dataset501_Liver/ --epochs 300
    """
    from autoorgan import api
    from autoorgan.cli.train import EpochProgress

    fold_value: int | str | None = None
    if fold is not None:
        fold_value = fold if fold == "all" else _int_option("--fold", fold)
    override = _read_plans_override(plans_override) if plans_override is not None else None
    if quiet:
        logging.getLogger().setLevel(logging.WARNING)
    with EpochProgress(console, epochs, enabled=not quiet):
        folder = _run(
            api.train, task=task, data=data, models_dir=models_dir, work_dir=work_dir, tasks_file=tasks_file,
            dataset_id=dataset_id, trainer=trainer, fold=fold_value, configuration=configuration, plans=plans,
            device=device, epochs=epochs, iterations_per_epoch=iterations_per_epoch, initial_lr=initial_lr,
            resume=resume, plans_override=override, augmentation_workers=augmentation_workers, seed=seed,
        )
    console.print(f"[green]trained[/] {terminal_safe(folder)}", highlight=False, soft_wrap=True)


def _read_plans_override(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        _fail(f"cannot read the plans override {path}: {exc}", 2)
    if not isinstance(data, dict):
        _fail(f"the plans override {path} must hold a JSON object", 2)
    return data


@app.command("export-weights")
def export_weights(
    task: TaskOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="The zip archive to write.", show_default=False)],
    models_dir: ModelsDirOpt = None,
    tasks_file: TasksFileOpt = None,
    dataset_id: Annotated[int | None, typer.Option("--dataset-id", help="Export this nnU-Net dataset ID "
                                                   "instead of the task's.", show_default=False)] = None,
    trainer: Annotated[str | None, typer.Option("--trainer", help="nnU-Net trainer name of the model.",
                                                show_default=False)] = None,
    fold: Annotated[str | None, typer.Option("--fold", help="Fold to export (an integer or 'all').",
                                             show_default=False)] = None,
    configuration: Annotated[str | None, typer.Option("--configuration", help="nnU-Net configuration.",
                                                      show_default=False)] = None,
    plans: Annotated[str | None, typer.Option("--plans", help="nnU-Net plans identifier.",
                                              show_default=False)] = None,
) -> None:
    """Write a task's installed model as a zip that 'install-weights' (and nnU-Net) installs elsewhere."""
    from autoorgan import api

    fold_value: int | str | None = None
    if fold is not None:
        fold_value = fold if fold == "all" else _int_option("--fold", fold)
    archive = _run(api.export_weights, task=task, output=output, models_dir=models_dir, tasks_file=tasks_file,
                   dataset_id=dataset_id, trainer=trainer, fold=fold_value, configuration=configuration, plans=plans)
    size = archive.stat().st_size / 1e6
    out.print(terminal_safe(f"exported {archive} ({size:.1f} MB); install with: autoorgan install-weights "
                            f"{archive.name}"), highlight=False, soft_wrap=True)


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the phantom, the segmentation "
                                         "and the summary.")] = Path("autoorgan_demo"),
    device: Annotated[str, typer.Option("--device", "-d", help="auto (CUDA if available), cpu, cuda, cuda:N "
                                        "or mps.")] = "cpu",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic phantom.")] = 1,
) -> None:
    """Run the whole pipeline on a synthetic phantom with the small DEMO MODEL shipped in the package.

    The demo model was trained on synthetic phantoms only (scripts/make_demo_model.py): it shows
    what autoorgan does without downloading weights, and is not for real CT. The demo
    synthesizes a phantom (the pelvic region of a whole-body-like phantom), segments it
    (hip_left, hip_right, sacrum), and prints Dice against the phantom's truth.
    """
    from autoorgan.cli.train import demo_table
    from autoorgan.demo import DEMO_NOTE, run_demo

    console.print(f"[yellow]{DEMO_NOTE}[/]", highlight=False, soft_wrap=True)
    result = _run(run_demo, output=output, device=device, seed=seed)
    out.print(demo_table(result.dice))
    out.print(f"mean Dice {result.mean_dice:.3f} in {result.seconds:.1f} s", highlight=False)
    for what, path in (("CT", result.ct), ("truth", result.truth), ("segmentation", result.label_map)):
        out.print(f"{what} {terminal_safe(path)}", highlight=False, soft_wrap=True)
    for extra in result.extra_files:
        out.print(terminal_safe(extra), highlight=False, soft_wrap=True)


@app.command()
def repair(
    task: Annotated[str, typer.Option("--task", "-t", help="Task of the label maps (ribs, vertebrae, hip, ...), "
                                      "or 'all' for merged maps (labels from their sidecar).",
                                      show_default=False)],
    input: Annotated[Path, typer.Option("--input", "-i", help="A label map file or a folder of them.",
                                        show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file (for one input file) or folder; "
                                         "a <name>.json sidecar lists the changes.", show_default=False)],
    vertebrae: Annotated[Path | None, typer.Option("--vertebrae", help="Vertebrae label map(s) on the same grid: "
                                                   "rib numbering and rib-vertebra junctions.",
                                                   show_default=False)] = None,
    ct: Annotated[Path | None, typer.Option("--ct", help="The CT(s) on the same grid: bone for the rib-vertebra "
                                            "junction, body for the midline.", show_default=False)] = None,
    skeleton: Annotated[Path | None, typer.Option("--skeleton", help="Skeleton label map(s) on the same grid: "
                                                  "bone for the rib-vertebra junction.", show_default=False)] = None,
    step: Annotated[list[str] | None, typer.Option("--step", help="Run only these steps (repeatable): islands, "
                                                   "sides, vertebrae, ribs, junction.", show_default=False)] = None,
    tasks_file: TasksFileOpt = None,
    resume: Annotated[bool, typer.Option("--continue", "-c", help="Skip label maps whose outputs are complete "
                                         "(failed ones are retried).")] = False,
    skip_failed: Annotated[bool, typer.Option("--skip-failed", help="With --continue: do not retry label maps "
                                              "that failed before (OUT/<case>.error.json).")] = False,
) -> None:
    """Repair label maps: islands, left/right in patient space, vertebrae and ribs as one
    correctly numbered piece each, rib-vertebra junctions.

    A map that fails is reported (and recorded in OUT/<case>.error.json) and the others go on;
    the exit code is non-zero if any failed.

    Examples:

      autoorgan repair --task ribs -i ribs.nii.gz --vertebrae vertebrae.nii.gz --ct ct.nii.gz -o fixed.nii.gz

      autoorgan repair --task vertebrae -i maps/ -o fixed/
    """
    from autoorgan import api
    from autoorgan.batch.interrupts import signals_as_interrupts

    with signals_as_interrupts():
        results = _run(api.repair, task=task, input=input, output=output, vertebrae=vertebrae, ct=ct,
                       skeleton=skeleton, tasks_file=tasks_file, steps=step or None, resume=resume,
                       skip_failed=skip_failed)
    failed = [r for r in results if not r.ok]
    for r in results:
        if r.status == "skipped":
            out.print(terminal_safe(f"{r.case_id}: already repaired → {r.output}"), highlight=False)
        elif r.ok:
            detail = ", ".join(f"{s['step']} {s['changed_voxels']}" for s in r.steps)
            out.print(terminal_safe(f"{r.case_id}: {r.changed_voxels} voxel(s) changed ({detail}) → {r.output}"),
                      highlight=False)
    for r in failed:
        error = r.error or "unknown error"
        what = error if error.startswith(r.case_id) else f"{r.case_id}: {error}"
        console.print(f"  [red]failed[/] {terminal_safe(what)}", highlight=False, markup=True, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def view(
    output: Annotated[Path, typer.Argument(help="An output folder of autoorgan predict.", show_default=False)],
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0: any free port).")] = 0,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the address; do not open a "
                                             "browser.")] = False,
) -> None:
    """Look at the results in the browser: each case's CT and label map in 3D (NiiVue).

    Serves the output folder on 127.0.0.1 only, under a random address, until Ctrl+C; the
    overview (index.html) links each case to its viewer page.
    """
    import webbrowser

    from autoorgan.viewer.server import start

    server = _run(start, output, port, background=False)
    out.print(f"serving {terminal_safe(output)} at {server.url} (Ctrl+C to stop)", highlight=False,
              soft_wrap=True)
    if not no_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


def main() -> None:
    """Console-script entry point."""
    app()
