"""`lmreason export`: an ONNX graph of a classification run or checkpoint (fp32, optionally int8), checked
against the PyTorch model on the run's validation split before it is kept."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from lmreason.commands.entry import hydra_command
from lmreason.validation import validate


def run(cfg: DictConfig) -> dict:
    """Export `run=`/`checkpoint=` into <checkpoint>/onnx/; returns the export record (the check's figures)."""
    validate("export", cfg)
    from lmreason.evaluation.loading import resolve_checkpoint
    from lmreason.models.onnx_export import export_checkpoint
    from lmreason.training.device import resolve_device
    from lmreason.ui import console

    checkpoint_dir, _ = resolve_checkpoint(cfg.run, cfg.checkpoint)
    resolve_device(cfg.device)  # threads for torch and onnxruntime; the graph itself is device-independent
    settings = OmegaConf.to_object(cfg.export)
    console.print(
        f"[bold]export[/] {checkpoint_dir} to ONNX ({'fp32 and int8' if settings.quantize == 'int8' else 'fp32'})"
    )
    return export_checkpoint(checkpoint_dir, settings, cache_dir=cfg.cache_dir, batch_size=cfg.batch_size)


main = hydra_command("export")(run)
