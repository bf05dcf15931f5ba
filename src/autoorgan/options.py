"""The options of a predict run, declared once.

:class:`PredictOptions` is the single declaration of every ``predict`` option: its type, its
default, its command-line flag and help, and what it affects. Everything else derives from it:

- the command line (:mod:`autoorgan.cli.options` turns each field into a Typer option),
- the Python API (``autoorgan.api.predict(task, input, output, **options)``),
- the command line of worker processes (:meth:`PredictOptions.worker_arguments`),
- the run record (:meth:`PredictOptions.as_record`),
- and ``--continue``'s completeness: the fields marked :attr:`Affects.OUTPUTS` are recorded in each
  sidecar's ``output_options``, those marked :attr:`Affects.LABELS` in its ``made_with``; outputs
  made with other values are redone.

Adding a predict option means adding one field here and using it where it acts.

Speed: the default reproduces ``nnUNetv2_predict`` (mirroring on, tile step 0.5) label for label;
its only change is the streamed torch export (:mod:`autoorgan.engine.fast_export`), which gives
the same labels in less time and memory. ``--fast`` combines the two savings whose agreement with
the default was measured at Dice >= 0.99: no mirroring and the body crop
(:mod:`autoorgan.engine.body`). A larger tile step (``--step-size``) is not part of it: it moves
the labels of a small model by more than that (``benchmarks/fast_agreement.py``).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoorgan.errors import InputError

#: nnU-Net's default sliding-window step.
DEFAULT_STEP = 0.5


class Choice(str, enum.Enum):
    """An option with a fixed set of values; parsed forgivingly (case, ``_`` for ``-``)."""

    @classmethod
    def parse(cls, value: Any, what: str) -> Any:
        if isinstance(value, cls):
            return value
        text = str(getattr(value, "value", value)).strip().lower().replace("_", "-")
        for member in cls:
            if member.value == text:
                return member
        raise InputError(f"{what} must be one of {', '.join(m.value for m in cls)}, got '{value}'")

    def __str__(self) -> str:
        return str(self.value)


class OutputType(Choice):
    """Format of the label map (``--output-type``)."""

    NIFTI = "nifti"
    NRRD = "nrrd"
    #: A DICOM SEG referencing the source series (DICOM input), besides the NIfTI label map.
    DICOM_SEG = "dicom-seg"
    #: An RT Structure Set (contours) on the source series (DICOM input), besides the NIfTI label map.
    RTSTRUCT = "rtstruct"
    #: The label map as 3D Slicer's segmentation (``.seg.nrrd``: NRRD with segment names, colours, codes).
    SEG_NRRD = "seg-nrrd"

    @property
    def suffix(self) -> str:
        """File ending of the label map."""
        return {OutputType.NRRD: ".nrrd", OutputType.SEG_NRRD: ".seg.nrrd"}.get(self, ".nii.gz")

    @property
    def mask_suffix(self) -> str:
        """File ending of per-structure masks and per-task maps (plain NRRD beside a ``.seg.nrrd``)."""
        return ".nrrd" if self in (OutputType.NRRD, OutputType.SEG_NRRD) else ".nii.gz"


class Export(Choice):
    """How the network's output becomes the label map (``--export``)."""

    TORCH = "torch"
    NNUNET = "nnunet"


class Precision(Choice):
    """The network's precision on the CPU (``--precision``; see :mod:`autoorgan.engine.precision`)."""

    #: bfloat16 where the CPU computes it natively and the model's check does not forbid it, else float32.
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"


class Affects(enum.Enum):
    """What a field changes, for ``--continue``: outputs made with another value are redone."""

    #: Nothing a finished case holds (how the batch runs, reports written per run).
    NOTHING = "nothing"
    #: The files written per case (format, masks, subsets, repair): ``output_options``.
    OUTPUTS = "outputs"
    #: The labels themselves (model choice, prediction settings): ``made_with``.
    LABELS = "labels"


@dataclass(frozen=True)
class OptionSpec:
    """How one field of :class:`PredictOptions` appears outside Python."""

    #: Command-line flags, the long one first (``("--continue", "-c")``); for a yes/no option
    #: with ``negative`` the pair reads ``--x/--no-x``.
    flags: tuple[str, ...]
    help: str
    #: The command line's type when it differs from the field's (e.g. ``str`` for ``--fold``).
    cli_type: Any = None
    #: ``--x/--no-x`` yes/no option (``None``: not chosen).
    negative: bool = False
    #: Repeated by worker processes (``--devices``/``--workers``); device and shard are not.
    forward: bool = True
    affects: Affects = Affects.NOTHING
    #: Extra keyword arguments for the command-line option (e.g. ``min``).
    cli: dict[str, Any] = field(default_factory=dict)
    #: The group the option is shown in by ``--help``.
    panel: str = "Options"


def _parse_orientation(value: Any) -> str | None:
    """``--orientation``: three axis codes, one of R/L, A/P and S/I each (``"lps"`` → ``"LPS"``), or
    ``native``."""
    if value is None:
        return None
    text = str(value).strip().upper()
    if text == "NATIVE":
        return "native"
    pairs = ("RL", "AP", "SI")
    if len(text) != 3 or sorted(next((i for i, p in enumerate(pairs) if c in p), -1) for c in text) != [0, 1, 2]:
        raise InputError(f"--orientation must be three axis codes such as RAS or LPS (one of R/L, A/P and S/I "
                         f"each) or native, got '{value}'")
    return text


def _option(default: Any, *flags: str, help: str, **spec: Any) -> Any:
    return field(default=default, metadata={"spec": OptionSpec(flags=flags, help=help, **spec)})


def _parse_fold(value: Any) -> int | str | None:
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip()
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise InputError(f"--fold must be an integer or 'all', got '{value}'") from None


def _parse_names(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return tuple(item.strip() for item in items if item.strip())


@dataclass(frozen=True)
class SpeedOptions:
    """How one run predicts, resolved: sliding-window step, mirroring, body crop, export and the
    precision asked for (``auto`` is resolved per machine and model when a model loads)."""

    step_size: float = DEFAULT_STEP
    tta: bool = True
    crop_body: bool = False
    export: str = "torch"
    precision: str = "auto"

    def as_dict(self) -> dict[str, object]:
        return {"step_size": self.step_size, "tta": self.tta, "crop_body": self.crop_body, "export": self.export,
                "precision": self.precision}


def resolve_speed(*, fast: bool = False, step_size: float | None = None, tta: bool | None = None,
                  crop_body: bool | None = None, export: str = "torch", precision: str = "auto") -> SpeedOptions:
    """The settings of a run: the default (or the ``fast`` preset), with any explicit choice on top.

    ``None`` means "not chosen": the preset decides. Raises :class:`InputError` for a step outside
    (0, 1], an unknown export or an unknown precision.
    """
    step = step_size if step_size is not None else DEFAULT_STEP
    if not 0 < step <= 1:
        raise InputError(f"step size must be in (0, 1], got {step}")
    kind = Export.parse(export, "export").value
    return SpeedOptions(step_size=float(step), tta=(not fast) if tta is None else tta,
                        crop_body=fast if crop_body is None else crop_body, export=kind,
                        precision=Precision.parse(precision, "precision").value)


@dataclass(frozen=True)
class PredictOptions:
    """Every option of ``predict`` besides the task, the input and the output.

    Built from keyword arguments (``PredictOptions(fast=True, statistics=True)``); values are
    checked and normalised on construction (:class:`InputError` for a bad one). The field order
    is the order of the worker command line.
    """

    # -- speed (what changes the labels) -------------------------------------------------------
    step_size: float | None = _option(
        None, "--step-size", affects=Affects.LABELS, panel="Speed",
        help="Sliding-window step as a fraction of the patch; larger is faster but moves the labels "
             "(see docs/performance.md). Default 0.5 (nnU-Net's).")
    #: A preset: what it changes is recorded as the resolved ``tta`` and ``crop_body``.
    fast: bool = _option(
        False, "--fast", panel="Speed",
        help="Faster preset: no mirroring and body crop (measured Dice against the default in "
             "docs/performance.md).")
    tta: bool | None = _option(
        None, "--tta", negative=True, affects=Affects.LABELS, panel="Speed",
        help="Test-time mirroring (default on, off with --fast).")
    crop_body: bool | None = _option(
        None, "--crop-body", negative=True, affects=Affects.LABELS, panel="Speed",
        help="Run only the tiles that reach into the body's bounding box, skipping the air around it; inside "
             "the box the labels are the whole image's (default off, on with --fast).")
    export: Export = _option(
        Export.TORCH, "--export", cli_type=str, affects=Affects.LABELS, panel="Speed",
        help="torch (streamed: nnU-Net's labels in less time and memory) or nnunet (nnU-Net's own export).")
    precision: Precision = _option(
        Precision.AUTO, "--precision", cli_type=str, affects=Affects.LABELS, panel="Speed",
        help="The network's precision on the CPU: auto (bfloat16 where the CPU has it natively, AMX or "
             "AVX512-BF16, else float32), fp32 or bf16. CUDA keeps nnU-Net's autocast. See docs/performance.md.")
    # -- the batch ---------------------------------------------------------------------------------
    resume: bool = _option(
        False, "--continue", "-c", panel="Batch",
        help="Skip cases whose outputs are complete (failed cases are retried).")
    skip_failed: bool = _option(
        False, "--skip-failed", panel="Batch",
        help="With --continue: do not retry cases that failed before (OUT/<case>.error.json).")
    # -- outputs -----------------------------------------------------------------------------------
    statistics: bool = _option(
        False, "--statistics", panel="Outputs",
        help="Also write per-structure statistics: <case>.stats.json and statistics.csv (volume in ml, CT "
             "intensities, centroid in mm, bounding box).")
    preview: bool = _option(
        False, "--preview", panel="Outputs",
        help="Also write <case>.png: axial, coronal and sagittal slices and a coronal MIP with the labels.")
    postprocess: bool | None = _option(
        None, "--postprocess", negative=True, affects=Affects.OUTPUTS, panel="Outputs",
        help="Anatomical repair (islands, left/right, vertebrae, ribs); default: on for bone tasks, off for "
             "organs.")
    split: bool = _option(
        False, "--split", affects=Affects.OUTPUTS, panel="Outputs",
        help="Also write one binary mask per structure: <case>/<structure>.nii.gz.")
    split_only: bool = _option(
        False, "--split-only", affects=Affects.OUTPUTS, panel="Outputs",
        help="Write the per-structure masks instead of the label map.")
    output_type: OutputType = _option(
        OutputType.NIFTI, "--output-type", cli_type=str, affects=Affects.OUTPUTS, panel="Outputs",
        help="Label map format: nifti (<case>.nii.gz), nrrd (<case>.nrrd), seg-nrrd (<case>.seg.nrrd: 3D "
             "Slicer's segmentation, with names and colours), dicom-seg (DICOM input: also "
             "<case>.seg.dcm referencing the series) or rtstruct (DICOM input: also <case>.rtstruct.dcm, "
             "contours on the series).")
    roi_subset: tuple[str, ...] | None = _option(
        None, "--roi-subset", cli_type=str, affects=Affects.OUTPUTS, panel="Outputs",
        help="Keep only these structures, comma- or space-separated (e.g. liver,spleen or liver spleen; see "
             "'autoorgan labels').")
    # -- the model ---------------------------------------------------------------------------------
    models_dir: Path | None = _option(
        None, "--models-dir", panel="Model",
        help="Folder of installed models (nnU-Net results layout). Default: $AUTOORGAN_MODELS, else "
             "$nnUNet_results, else the per-user folder (see 'autoorgan tasks').")
    tasks_file: Path | None = _option(
        None, "--tasks-file", cli={"exists": True, "dir_okay": False}, panel="Model",
        help="TOML or JSON task table that adds custom tasks or changes built-in ones.")
    dataset_id: int | None = _option(
        None, "--dataset-id", panel="Model", help="Use this nnU-Net dataset ID instead of the task's.")
    trainer: str | None = _option(
        None, "--trainer", panel="Model", help="nnU-Net trainer name of the model (default from the task table).")
    fold: int | str | None = _option(
        None, "--fold", cli_type=str, panel="Model", help="Fold to use (an integer or 'all').")
    configuration: str | None = _option(
        None, "--configuration", panel="Model", help="nnU-Net configuration, e.g. 3d_fullres.")
    plans: str | None = _option(None, "--plans", panel="Model", help="nnU-Net plans identifier.")
    orientation: str | None = _option(
        None, "--orientation", affects=Affects.LABELS, panel="Model",
        help="Feed the model arrays in this orientation for this run: axis codes such as RAS or LPS, or native "
             "(as stored). Default: the model's calibration record (see 'autoorgan calibrate'), the task "
             "table, the model's dataset.json, else RAS.")
    trust_checkpoint: bool = _option(
        False, "--trust-checkpoint", panel="Model",
        help="Load a model checkpoint even if it needs arbitrary code to unpickle (only for models from a "
             "source you trust).")
    # -- several tasks -----------------------------------------------------------------------------
    cascade: bool = _option(
        True, "--cascade", negative=True, affects=Affects.OUTPUTS, panel="Several tasks",
        help="Several tasks with skeleton: run each subdivision model only on the box of its skeleton class "
             "(skipped when the class is absent); --no-cascade runs every model on the whole image.")
    cascade_margin: float | None = _option(
        None, "--cascade-margin", affects=Affects.OUTPUTS, cli={"min": 0.0}, panel="Several tasks",
        help="Margin (mm) around each skeleton class's box. Default: half the subdivision model's patch, at "
             "least 20 mm.")
    keep_task_maps: bool = _option(
        False, "--keep-task-maps", affects=Affects.OUTPUTS, panel="Several tasks",
        help="Several tasks: also write each task's own map, <case>/<task>.nii.gz.")
    # -- input -------------------------------------------------------------------------------------
    max_archive_size: float | None = _option(
        None, "--max-archive-size", panel="Input",
        help="Largest size (GB) one DICOM series in a .zip may inflate to (default 16); a zip over it fails "
             "its case.")
    # -- where this process runs (not repeated by workers, which get their own) ---------------------
    device: str = _option(
        "auto", "--device", "-d", forward=False, panel="Device",
        help="auto (CUDA if available), cpu, cuda, cuda:N (gpu, gpu:N alike) or mps.")
    #: Set in each process that predicts (workers get it too), before the models load.
    threads: int | None = _option(
        None, "--threads", cli={"min": 1}, panel="Device",
        help="Threads of torch's CPU work (torch.set_num_threads) in each predicting process. Default: "
             "torch's own (the cores, or OMP_NUM_THREADS; --workers share the cores).")
    part_id: int = field(default=0, metadata={"spec": None})
    num_parts: int = field(default=1, metadata={"spec": None})

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "export", Export.parse(self.export, "export"))
        set_(self, "precision", Precision.parse(self.precision, "precision"))
        set_(self, "output_type", OutputType.parse(self.output_type, "output type"))
        set_(self, "fold", _parse_fold(self.fold))
        set_(self, "roi_subset", _parse_names(self.roi_subset))
        set_(self, "orientation", _parse_orientation(self.orientation))
        for name in ("models_dir", "tasks_file"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                set_(self, name, Path(value))
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise InputError(f"--threads must be a whole number of 1 or more, got {self.threads}")
        if self.cascade_margin is not None and not self.cascade_margin >= 0:
            raise InputError(f"--cascade-margin must be 0 or more millimetres, got {self.cascade_margin}")
        self.speed()  # checks the step size

    # -- derived views ----------------------------------------------------------------------------

    def speed(self) -> SpeedOptions:
        """The resolved prediction settings (the ``--fast`` preset with explicit choices on top)."""
        return resolve_speed(fast=self.fast, step_size=self.step_size, tta=self.tta, crop_body=self.crop_body,
                             export=self.export.value, precision=self.precision.value)

    def model_overrides(self) -> dict[str, Any]:
        """The one-model overrides that were given (``--dataset-id``, ``--trainer``, ...)."""
        names = ("dataset_id", "trainer", "fold", "configuration", "plans")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def as_record(self) -> dict[str, Any]:
        """Every option as JSON values, with the speed settings resolved (the run record's)."""
        record = {f.name: _json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}
        record.update(self.speed().as_dict())
        return record

    def worker_arguments(self) -> list[str]:
        """The command-line options a worker process repeats: every forwarded field that differs
        from its default, in field order."""
        args: list[str] = []
        for f in dataclasses.fields(self):
            spec: OptionSpec | None = f.metadata.get("spec")
            value = getattr(self, f.name)
            if spec is None or not spec.forward or value == f.default:
                continue
            flag = spec.flags[0]
            if isinstance(value, bool):
                args.append(flag if value else f"--no-{flag[2:]}")
            elif isinstance(value, tuple):
                args += [flag, ",".join(value)]
            else:
                args += [flag, str(value)]
        return args


def option_fields(affects: Affects | None = None) -> list[dataclasses.Field[Any]]:
    """The fields of :class:`PredictOptions` that have a command-line form (optionally only those
    that affect ``affects``)."""
    chosen = []
    for f in dataclasses.fields(PredictOptions):
        spec = f.metadata.get("spec")
        if spec is not None and (affects is None or spec.affects is affects):
            chosen.append(f)
    return chosen


def _json_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def build_options(options: PredictOptions | None = None, **settings: Any) -> PredictOptions:
    """``options`` with ``settings`` on top (keyword names of :class:`PredictOptions`); an unknown
    name is a :class:`TypeError` naming it, as for any Python function."""
    names = {f.name for f in dataclasses.fields(PredictOptions)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(f"unknown predict option(s): {', '.join(unknown)}")
    base = options or PredictOptions()
    return dataclasses.replace(base, **settings) if settings else base


__all__ = ["DEFAULT_STEP", "Affects", "Export", "OptionSpec", "OutputType", "Precision", "PredictOptions",
           "SpeedOptions", "build_options", "option_fields", "resolve_speed"]
