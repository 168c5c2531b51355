"""`diagnostics=calibration`: temperature scaling (Guo et al. 2017), fitted on one split, measured on the others.

One scalar T > 0 divides every logit: probabilities become softmax(logits / T). T > 1 softens an
overconfident model, T < 1 sharpens an underconfident one. T is fitted on `fit_split` (validation by
default) by minimising the mean negative log-likelihood with LBFGS over log T (so T stays positive and
the step sizes are relative). The argmax of logits / T is the argmax of the logits, so accuracy (and
every label-based metric) is unchanged: only the confidence moves.

Reported per evaluated split (the evaluated split and OOD), before and after T:
  ece   expected calibration error, metrics.expected_calibration_error: `bins` equal-width bins of the
        confidence of the predicted label (max probability), sum over bins of count/N * |accuracy -
        mean confidence| (L1). This is Desai & Durrett's (2020) ECE: their calibrate.py
        (github.com/shreydesai/calibration) computes the same count-weighted L1 sum over equal-width bins
        of the max probability. Their default is 10 bins (ours 15, Guo et al.'s M = 15), their bins are
        left-closed ([k/n, (k+1)/n), ours right-closed: only a confidence exactly on an edge lands
        differently) and they print percent: their BERT 2.5 (in-domain) is our 0.025.
  nll   mean negative log-likelihood of the gold label (natural log), from the logits in float64.

Files: eval/calibration.json (the HTML report reads it: temperature, fitted_on, splits.<split>.{ece_before,
ece_after, nll_before, nll_after, reliability_before, reliability_after}), eval/<split>/reliability_calibrated.png,
and <checkpoint>/calibration.json (the temperature `infer` applies) with the fingerprint of the weights it
was fitted to. TensorBoard: calibration/temperature and calibration/<split>/<figure>.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmreason.errors import UserError

CHECKPOINT_FILE = "calibration.json"  # <checkpoint>/calibration.json: the fitted temperature infer applies
# T is kept in [T_MIN, T_MAX]. On a fit split without a single error every row's NLL falls for ever as T -> 0
# (ever sharper, never wrong on that split), so the minimum over [T_MIN, T_MAX] is T_MIN itself; the
# optimiser would stop wherever the gradient underflows instead. The result's `note` says when a bound is the answer.
T_MIN, T_MAX = 0.05, 20.0
_FIT_HINT = "lmreason evaluate run=<run dir> diagnostics=calibration (or checkpoint=<dir>)"


# ------------------------------------------------------------------ config
def check_config(ccfg, task_name: str | None, key: str = "diagnostics.calibration") -> None:
    """Bad settings as one line, before any model is loaded.

    Raises:
        UserError: a task=gen model, bins or max_iter < 1, an empty fit_split.
    """
    if task_name == "gen":
        raise UserError(
            f"{key}: temperature scaling calibrates class probabilities (task=cls); this is a task=gen model: "
            "drop calibration from diagnostics="
        )
    for name in ("bins", "max_iter"):
        if ccfg[name] is None or ccfg[name] < 1:
            raise UserError(f"{key}.{name}={ccfg[name]}: must be >= 1")
    if not str(ccfg.fit_split or "").strip():
        raise UserError(f"{key}.fit_split is empty: name the split T is fitted on (e.g. validation)")


# ------------------------------------------------------------------ the numbers
def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of `labels` (N,) under softmax(`logits` (N, C) / temperature)."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    top = scaled.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))  # logsumexp per row, (N,)
    labels = np.asarray(labels, dtype=np.int64)
    return float((log_norm - scaled[np.arange(len(labels)), labels]).mean())


def scaled_probs(logits, temperature: float) -> np.ndarray:
    """(N, C) float64 softmax(logits / temperature)."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass
class TemperatureFit:
    temperature: float
    n: int  # examples fitted on
    nll_before: float  # at T = 1
    nll_after: float  # at the fitted T
    note: str | None = None  # why T is a bound, not an inner minimum (no errors to fit on, or the minimum beyond it)


def fit_temperature(logits, labels, max_iter: int = 100) -> TemperatureFit:
    """The T minimising the mean NLL of softmax(logits / T) (LBFGS with a strong-Wolfe line search over log T,
    float64, starting at T = 1), kept in [T_MIN, T_MAX]; T_MIN when every row is predicted right.

    Raises:
        ValueError: no rows, or logits and labels that do not match.
    """
    import torch

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"expected logits (N, C) and labels (N,) with N > 0; got {logits.shape} and {labels.shape}")
    before = nll(logits, labels)
    if (logits.argmax(axis=1) == labels).all():
        note = f"every fit example is predicted right: the NLL falls as T -> 0, so T is the bound {T_MIN}"
        return TemperatureFit(T_MIN, len(labels), before, nll(logits, labels, T_MIN), note)
    z, y = torch.from_numpy(logits), torch.from_numpy(labels)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-14
    )

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = float(log_t.detach().exp())
    if not math.isfinite(fitted):  # a diverged line search: keep the raw probabilities
        fitted = 1.0
    temperature = min(max(fitted, T_MIN), T_MAX)
    note = (
        None if temperature == fitted else f"the fit reached the bound T = {temperature:g} (kept in [{T_MIN}, {T_MAX}])"
    )
    return TemperatureFit(temperature, len(labels), before, nll(logits, labels, temperature), note)


def split_calibration(logits, labels, temperature: float, bins: int = 15) -> dict:
    """ECE, NLL, mean confidence and reliability bins of one split at T = 1 and at `temperature`; accuracy once
    (the same at both: dividing by T > 0 keeps every argmax)."""
    from lmreason.evaluation.metrics import expected_calibration_error, reliability_bins

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    figures = {"n": len(labels)}
    for when, t in (("before", 1.0), ("after", float(temperature))):
        probs = scaled_probs(logits, t)
        confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
        figures["acc"] = float(correct.mean())
        figures[f"ece_{when}"] = expected_calibration_error(confidence, correct, bins)
        figures[f"nll_{when}"] = nll(logits, labels, t)
        figures[f"confidence_{when}"] = float(confidence.mean())
        figures[f"reliability_{when}"] = reliability_bins(confidence, correct, bins)
    return figures


# ------------------------------------------------------------------ the checkpoint's record (infer reads it)
def save_temperature(checkpoint_dir: Path, fit: TemperatureFit, fitted_on: str) -> Path:
    """<checkpoint>/calibration.json, written atomically, with the fingerprint of the weights T belongs to.

    Raises:
        UserError: the checkpoint dir is not writable.
    """
    from lmreason.evaluation.outputs import write_json
    from lmreason.models.onnx_export import weights_fingerprint

    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    record = {
        "temperature": fit.temperature,
        "fitted_on": fitted_on,
        "n": fit.n,
        "nll_before": fit.nll_before,
        "nll_after": fit.nll_after,
        "note": fit.note,
        "weights": weights_fingerprint(checkpoint_dir),
    }
    write_json(path, record)
    return path


@dataclass
class AppliedTemperature:
    temperature: float  # 1.0: raw probabilities
    note: str | None  # what infer prints about it (None: nothing to say)


def temperature_for_inference(checkpoint_dir: Path, calibrated: bool | None, task_name: str) -> AppliedTemperature:
    """The temperature `infer` divides the logits by: the checkpoint's fitted one when `calibrated` is true or
    null (null: only when there is one, fitted on these weights), 1.0 when false.

    Raises:
        UserError: calibrated=true without a fit (or for a task=gen model, or with a fit of other weights);
            a calibration.json that is not a calibration record.
    """
    from lmreason.models.onnx_export import weights_fingerprint

    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    if calibrated is False:
        return AppliedTemperature(1.0, "raw probabilities (calibrated=false)" if path.is_file() else None)
    if task_name != "cls":
        if calibrated:
            raise UserError(
                f"calibrated=true: temperature scaling is for classifiers (task=cls); {checkpoint_dir} is a "
                f"task={task_name} model: drop calibrated=true"
            )
        return AppliedTemperature(1.0, None)
    if not path.is_file():
        if calibrated:
            raise UserError(
                f"calibrated=true: {checkpoint_dir} has no fitted temperature ({CHECKPOINT_FILE}); fit one with "
                f"{_FIT_HINT}, or set calibrated=false"
            )
        return AppliedTemperature(1.0, None)
    record = read_temperature_record(path)
    if record.get("weights") != weights_fingerprint(checkpoint_dir):
        message = f"{path} was fitted to other weights than {checkpoint_dir} holds now; re-fit it with {_FIT_HINT}"
        if calibrated:
            raise UserError(f"calibrated=true: {message}, or set calibrated=false")
        return AppliedTemperature(1.0, f"raw probabilities: {message}")
    t = record["temperature"]
    return AppliedTemperature(t, f"temperature {t:.4g} ({CHECKPOINT_FILE}, fitted on {record.get('fitted_on', '?')})")


def read_temperature_record(path: Path) -> dict:
    """A checkpoint's calibration.json, checked.

    Raises:
        UserError: unreadable JSON, or no positive finite `temperature`.
    """
    import json

    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path}: unreadable ({type(exc).__name__}); re-fit it with {_FIT_HINT}, or delete it"
        ) from None
    t = record.get("temperature") if isinstance(record, dict) else None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise UserError(f"{path}: temperature={t!r} is not a positive number; re-fit it with {_FIT_HINT}, or delete it")
    return {**record, "temperature": float(t)}


# ------------------------------------------------------------------ the diagnostic (evaluate)
def run_calibration(session, task, requests, ccfg, fit_request, checkpoint_dir: Path, run_dir: Path | None) -> dict:
    """Fit T on `fit_request`'s split, measure every request's split before and after; write eval/calibration.json,
    the reliability figures after T and (ccfg.save) <checkpoint>/calibration.json; print one table; log to
    TensorBoard. Returns the eval/calibration.json payload.

    Raises:
        UserError: a split with labels the model was not trained on, an unwritable file.
    """
    from lmreason.evaluation.outputs import write_json
    from lmreason.evaluation.plots import reliability_figure, save_figure
    from lmreason.evaluation.predict import predict_split
    from lmreason.ui import console

    check_config(ccfg, task.name)
    predicted = {}

    def logits_of(request):
        if request.name not in predicted:
            try:
                p = predict_split(session, task, request.dataset, request.label_names)
            except UserError as exc:
                raise UserError(f"calibration, split {request.name}: {exc}") from None
            predicted[request.name] = (p.logits, p.labels)
        return predicted[request.name]

    fit = fit_temperature(*logits_of(fit_request), max_iter=int(ccfg.max_iter))
    payload = {
        "temperature": fit.temperature,
        "fitted_on": fit_request.name,
        "n_fit": fit.n,
        "nll_fit_before": fit.nll_before,
        "nll_fit_after": fit.nll_after,
        "fit_note": fit.note,
        "bins": int(ccfg.bins),
        "checkpoint": str(checkpoint_dir),
        "saved_to": None,
        "splits": {},
    }
    for request in requests:
        figures = split_calibration(*logits_of(request), fit.temperature, int(ccfg.bins))
        payload["splits"][request.name] = figures
        title = f"{request.name}: reliability after temperature scaling (T = {fit.temperature:.3f})"
        save_figure(
            reliability_figure(figures["reliability_after"], figures["ece_after"], title),
            request.out_dir / "reliability_calibrated.png",
        )
    if ccfg.save:
        try:
            payload["saved_to"] = str(save_temperature(checkpoint_dir, fit, fit_request.name))
        except UserError as exc:  # e.g. a packaged model's read-only dir
            raise UserError(f"{exc}, or keep the checkpoint as it is: diagnostics.calibration.save=false") from None
    write_json(requests[0].out_dir.parent / "calibration.json", payload)
    console.print(calibration_table(payload))
    for line in _notes(payload):
        console.print(f"[yellow]{line}[/]")
    if run_dir is not None:
        from lmreason.evaluation.outputs import head_prefix

        log_calibration(run_dir, payload, head_prefix(run_dir, requests[0].out_dir.parent))
    return payload


def _notes(payload: dict) -> list[str]:
    """What a reader of the table must know: a fit on an evaluated split, a bound reached, where T went."""
    notes = []
    fitted_on = payload["fitted_on"]
    if fitted_on in payload["splits"]:
        notes.append(
            f"calibration: T was fitted on {fitted_on}, which is also reported: its 'after' figures are optimistic "
            "(measure on another split: diagnostics.calibration.fit_split=validation)"
        )
    if payload["fit_note"]:
        notes.append(
            f"calibration on {fitted_on}: {payload['fit_note']}; more (or harder) fit data gives a meaningful T"
        )
    if payload["saved_to"]:
        notes.append(
            f"calibration: temperature saved to {payload['saved_to']}; infer applies it (calibrated=false: raw)"
        )
    return notes


def calibration_table(payload: dict):
    """One row per split: n, accuracy (unchanged by T), ECE before -> after, NLL before -> after; T in the title."""
    from rich.table import Table

    table = Table(
        title=f"calibration: T = {payload['temperature']:.4f} fitted on {payload['fitted_on']} "
        f"({payload['n_fit']} examples, NLL {payload['nll_fit_before']:.4f} -> {payload['nll_fit_after']:.4f})",
        caption=f"ECE: {payload['bins']} equal-width bins of the predicted label's probability, L1. "
        "Accuracy is the same before and after: T moves confidence, never the predicted label.",
        caption_justify="left",
        title_justify="left",
    )
    for column in ("split", "n", "acc", "ECE before -> after", "NLL before -> after", "confidence before -> after"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, f in payload["splits"].items():
        table.add_row(
            split,
            str(f["n"]),
            f"{f['acc']:.4f}",
            f"{f['ece_before']:.4f} -> {f['ece_after']:.4f}",
            f"{f['nll_before']:.4f} -> {f['nll_after']:.4f}",
            f"{f['confidence_before']:.4f} -> {f['confidence_after']:.4f}",
        )
    return table


def log_calibration(run_dir: Path, payload: dict, prefix: str = "") -> None:
    """[<head>/]calibration/temperature and [<head>/]calibration/<split>/{ece,nll}_{before,after} scalars (step 0),
    and each split's reliability diagram after T; `prefix`: outputs.head_prefix."""
    from torch.utils.tensorboard import SummaryWriter

    from lmreason.evaluation.plots import reliability_figure

    writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
    writer.add_scalar(f"{prefix}calibration/temperature", payload["temperature"], 0)
    for split, f in payload["splits"].items():
        for figure in ("ece_before", "ece_after", "nll_before", "nll_after"):
            writer.add_scalar(f"{prefix}calibration/{split}/{figure}", f[figure], 0)
        writer.add_figure(
            f"{prefix}calibration/{split}/reliability_after",
            reliability_figure(f["reliability_after"], f["ece_after"], f"{split} after T={payload['temperature']:.3f}"),
        )
    writer.close()
