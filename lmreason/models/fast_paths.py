"""The CPU fast paths: speed-ups that patch third-party internals, applied, checked and reported in one place.

    first_token_only  (lmreason.models.first_token)      a sequence classifier's last encoder layer computes
                      position 0 ([CLS]) only; training, evaluation and inference
    fast_dropout      (lmreason.training.dropout)        CPU dropout masks from 16-bit lanes (p quantised to
                      1/65536) and, for encoders, the attention function that drops with them; training only
    row_gradient      (lmreason.training.embedding_grad) the input embedding's gradient in one buffer kept across
                      steps, only the rows written re-zeroed; training only, one process
    batch_shards      (lmreason.training.shards)         a training micro-batch split into shards computed side
                      by side on the CPU's threads, one thread each; applied by the training loop (it needs
                      the task and the recipe), checked on the run's first micro-batch, reported here too

Each module's docstring says exactly what differs from the unpatched computation. Behind one switch,
`device.fast_paths` (default true). Each path that applies to the model is checked when it is applied
against the unpatched computation on a tiny batch (torch's RNG state, gradients and train/eval modes are
left as they were); a path whose check fails, or whose patched internals are missing (a transformers
or torch upgrade), is undone and the run goes on with the unpatched computation, after one warning line.
The report (`FastPathReport`) names what was applied and why the rest was skipped: the finetune banner
and metrics.json show it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

NAMES = ("first_token_only", "fast_dropout", "row_gradient")
CHECK_FAILED = "check against the unpatched computation failed"


@dataclass
class FastPathReport:
    """Which fast paths are in use: `applied` names, `skipped` name -> why not."""

    applied: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"applied": list(self.applied), "skipped": dict(self.skipped)}

    def describe(self) -> str:
        """One line for the banner: "first_token_only, row_gradient; skipped: fast_dropout (why)"."""
        by_reason: dict[str, list[str]] = {}
        for name, why in self.skipped.items():
            by_reason.setdefault(why, []).append(name)
        parts = [", ".join(self.applied) or "none"]
        if by_reason:
            parts.append("skipped: " + ", ".join(f"{', '.join(names)} ({why})" for why, names in by_reason.items()))
        return "; ".join(parts)


def apply_fast_paths(
    model, device, world_size: int = 1, *, enabled: bool = True, training: bool = True, compiled: bool = False
) -> FastPathReport:
    """Apply, in place, each fast path that applies to `model` on `device`, each checked; the report.

    `training=False` (evaluation, inference): only `first_token_only`, the others change nothing without
    gradients or dropout. `enabled=False` (`device.fast_paths=false`): none, the model is left as built.
    `compiled=True` (`device.compile`): only `first_token_only` (plain module code, which compiles); the
    other two replace eager kernels with custom autograd code the compiler cannot trace (graph breaks),
    and the compiler generates its own dropout and embedding-gradient kernels.
    Call after the model is on its device and frozen layers are set, before a DDP wrapper.
    """
    import torch

    from lmreason.models import first_token
    from lmreason.training import dropout, embedding_grad

    report = FastPathReport()
    if not enabled:
        report.skipped = {name: "device.fast_paths=false" for name in NAMES}
        return report
    device = torch.device(device)
    failed: dict[str, str] = {}

    def attempt(name: str, unsupported: str | None, apply_and_check, undo) -> None:
        if unsupported is not None:
            report.skipped[name] = unsupported
            return
        try:
            problem = apply_and_check()
        except Exception as exc:  # patched internals missing or changed: e.g. an attribute transformers renamed
            problem = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        if problem is None:
            report.applied.append(name)
            return
        try:
            undo()
        except Exception as exc:  # pragma: no cover - undo touches only what apply set
            log.debug("undoing %s failed: %s", name, exc)
        failed[name] = problem
        report.skipped[name] = f"{CHECK_FAILED}: {problem}"

    attempt(
        "first_token_only",
        first_token.first_token_unsupported(model),
        lambda: first_token.trim_checked(model),
        lambda: None,
    )  # trim_checked undoes itself

    training_only = None if training else "training only: no dropout or gradients here"
    training_only = training_only or ("device.compile: the compiler makes its own kernels" if compiled else None)
    attempt(
        "fast_dropout",
        training_only or dropout.fast_dropout_unsupported(model, device),
        lambda: _fast_dropout_checked(model, device),
        lambda: dropout.undo_fast_dropout(model),
    )
    attempt(
        "row_gradient",
        training_only or embedding_grad.row_gradient_unsupported(model, device, world_size),
        lambda: _row_gradient_checked(model, device, world_size),
        lambda: embedding_grad.undo_row_gradient(model),
    )
    if failed:  # one line, whatever failed: the run goes on, slower, with the unpatched computation
        log.warning(
            "fast paths off after a failed check (the unpatched computation is used): %s",
            "; ".join(f"{name}: {why}" for name, why in failed.items()),
        )
    return report


def _fast_dropout_checked(model, device) -> str | None:
    from lmreason.training import dropout

    before = _eval_logits(model)
    dropout.use_fast_dropout(model, device)
    problem = dropout.check_fast_dropout(model)
    if problem is None:
        import torch

        after = _eval_logits(model)
        if not torch.allclose(before, after, rtol=1e-4, atol=1e-5):
            problem = f"evaluation logits changed by {(before - after).abs().max().item():.2g}"
    return problem


def _row_gradient_checked(model, device, world_size) -> str | None:
    from lmreason.training import embedding_grad

    if not embedding_grad.use_row_gradient(model, device, world_size):
        return "not installed"
    return embedding_grad.check_row_gradient(model)


def _eval_logits(model):
    """The model's logits (float) on a fixed tiny padded batch, in eval mode; modes restored."""
    import torch

    param = next(model.parameters())
    vocab = int(getattr(model.config, "vocab_size", 100))
    ids = torch.randint(min(5, vocab - 1), vocab, (2, 7), generator=torch.Generator().manual_seed(0)).to(param.device)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask)
        return (out.logits if hasattr(out, "logits") else out[0]).float()
    finally:
        for module, training in modes.items():
            module.training = training
