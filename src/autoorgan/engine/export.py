"""Model exchange: nnU-Net's own export and install of model archives."""

from __future__ import annotations

from pathlib import Path

from autoorgan.engine.nnunet_env import NnUNetPaths, nnunet_environment, quiet_nnunet

#: Files nnU-Net's export needs in a model folder and in each exported fold.
EXPORT_MODEL_FILES = ("dataset.json", "plans.json", "dataset_fingerprint.json")
EXPORT_FOLD_FILES = ("checkpoint_final.pth", "progress.png", "validation/summary.json")


def export_model(model_folder: Path, archive: Path, *, configuration: str, fold: int | str, trainer: str,
                 plans: str) -> None:
    """Write ``archive`` with nnU-Net's own ``export_pretrained_model`` (one configuration, one fold).

    ``model_folder`` is ``RESULTS/Dataset{ID}_{Name}/{trainer}__{plans}__{configuration}``; the
    archive holds paths relative to ``RESULTS``, the layout ``install_model_from_zip_file`` expects.
    The archive holds details of this machine (``debug.json``, absolute paths in JSON members) until
    :func:`autoorgan.models.releases.scrub_model_archive` takes them out.
    """
    from nnunetv2.model_sharing.model_export import export_pretrained_model

    results = model_folder.parents[1]
    with nnunet_environment(NnUNetPaths(results=results)), quiet_nnunet():
        export_pretrained_model(model_folder.parent.name, str(archive), configurations=(configuration,),
                                trainer=trainer, plans_identifier=plans, folds=(fold,))


def install_model_archive(archive: Path, results: Path) -> None:
    """nnU-Net's own ``install_model_from_zip_file`` into ``results`` (used to check exports)."""
    from nnunetv2.model_sharing.model_import import install_model_from_zip_file

    with nnunet_environment(NnUNetPaths(results=results)), quiet_nnunet():
        install_model_from_zip_file(str(archive))
