"""The fine-tuning recipe: validate -> setup -> train -> save -> cleanup.

One loop for every task (classification, generation): the task supplies
tokenization, the model, the loss and validation metrics. The loop owns
accumulation, precision, clipping, scheduling, validation, early stopping,
checkpoints, resume, TensorBoard and the progress bar.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmreason.errors import UserError
from lmreason.training import checkpoint as ckpt
from lmreason.training.batching import TokenizedSplit, length_grouped_batches, sorted_batches, to_device
from lmreason.training.distributed import Distributed
from lmreason.training.early_stopping import EarlyStopping

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss or the gradient became NaN/inf."""


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class FinetuneRecipe:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist = Distributed.from_env(cfg.device)
        self._validate_config()
        self.stop_requested = None  # set to the signal name by SIGINT/SIGTERM
        # Fault injection for tests of the stop and NaN paths (deterministic, unlike timed signals).
        self.fault_stop_after_steps = int(os.environ.get("LMREASON_STOP_AFTER_STEPS", 0)) or None
        self.fault_nan_at_step = int(os.environ.get("LMREASON_INJECT_NAN_AT_STEP", 0)) or None

    # ------------------------------------------------------------------ validate
    def _validate_config(self) -> None:
        t = self.cfg.train
        if t.grad_accum_steps < 1:
            raise UserError(f"train.grad_accum_steps={t.grad_accum_steps}: must be >= 1")
        if t.batch_size < 1 or t.eval_batch_size < 1:
            raise UserError("train.batch_size and train.eval_batch_size must be >= 1")
        if t.max_steps is None and t.epochs <= 0:
            raise UserError(f"train.epochs={t.epochs}: must be > 0 (or set train.max_steps)")
        if t.max_steps is not None and t.max_steps < 1:
            raise UserError(f"train.max_steps={t.max_steps}: must be >= 1 (or null to use train.epochs)")
        if t.nonfinite not in ("stop", "skip"):
            raise UserError(f"train.nonfinite={t.nonfinite}: use stop or skip")
        es = t.early_stopping
        if es.mode not in ("min", "max"):
            raise UserError(f"train.early_stopping.mode={es.mode}: use min or max")
        if not t.eval_every_epoch and not t.eval_every_steps:
            raise UserError("no validation scheduled: set train.eval_every_epoch=true or train.eval_every_steps=N")
        if self.cfg.task.name == "gen" and self.cfg.model.arch != "decoder":
            raise UserError(f"task=gen needs a decoder model; model.arch={self.cfg.model.arch} (use model=gpt or model=tiny-gpt)")
        if self.cfg.model.lora.enabled and self.cfg.task.name != "gen":
            raise UserError("model.lora.enabled=true is supported with task=gen; turn it off for task=cls")
        if self.cfg.data.source == "reasoning" and self.cfg.data.ood_config is None and "ood" in self.cfg.data.sizes:
            pass  # no ood split is generated: nothing to check here, evaluate reports without a gap

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        import torch

        from lmreason.data.prepare import prepare_data
        from lmreason.models.freezing import apply_freezing
        from lmreason.models.loading import load_tokenizer
        from lmreason.tasks import get_task
        from lmreason.training.device import resolve_device
        from lmreason.training.optim import build_optimizer, build_scheduler

        cfg = self.cfg
        self.device, self.precision = resolve_device(cfg.device)
        self.dist.init(self.device)
        self.task = get_task(cfg.task.name)
        self.resume_state = self._load_resume_state()
        seed_everything(cfg.seed + self.dist.rank)

        self.tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
        with self.dist.rank_zero_first():  # one process tokenizes and caches; the others reuse it
            self.data = prepare_data(cfg, self.tokenizer)
        if "validation" not in self.data.splits:
            raise UserError(f"{self.data.summary.get('source')}: no validation split for early stopping; add one")
        self.label_names = self.data.label_names
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.train_split = TokenizedSplit(self.data.splits["train"], self.task, pad_id)
        self.val_split = TokenizedSplit(self.data.splits["validation"], self.task, pad_id)

        if self.resume_state is not None:
            self.model = self.task.load_model(self.run_dir / "checkpoints" / "last", cfg)
        else:
            seed_everything(cfg.seed)  # same head init on every rank
            self.model = self.task.build_model(cfg, self.label_names)
        self.param_counts = apply_freezing(self.model, cfg.regularization)
        self.model.to(self.device)
        self.model_for_training = self.dist.wrap(self.model)

        t = cfg.train
        self.micro_batches_per_epoch = math.ceil(len(self.train_split) / (t.batch_size * self.dist.world_size))
        self.steps_per_epoch = math.ceil(self.micro_batches_per_epoch / t.grad_accum_steps)
        self.total_steps = t.max_steps or max(1, math.ceil(t.epochs * self.steps_per_epoch))
        self.optimizer = build_optimizer(self.model, cfg.optimizer, cfg.regularization.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg.scheduler, self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.early_stopping = EarlyStopping(t.early_stopping)
        self.step, self.epoch, self.batch_in_epoch, self.skipped_steps = 0, 0, 0, 0
        self.elapsed_before_resume = 0.0
        self.eval_seconds = 0.0  # validation and checkpoint time of this process
        if self.resume_state is not None:
            self._restore(self.resume_state)
        self.writer = self._tensorboard() if self.dist.is_main else None

    def _load_resume_state(self):
        if not self.cfg.resume:
            if (self.run_dir / "checkpoints").exists():
                raise UserError(f"{self.run_dir} already holds a run; start a new one or resume it with resume={self.run_dir}")
            return None
        last = self.run_dir / "checkpoints" / "last"
        ckpt.recover_checkpoint(last)
        state = ckpt.load_trainer_state(last)
        log.info("resume: continuing %s from step %d", self.run_dir, state["step"])
        return state

    def _restore(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.skipped_steps = state.get("skipped_steps", 0)
        self.elapsed_before_resume = state.get("elapsed_s", 0.0)
        self.early_stopping.load_state_dict(state["early_stopping"])
        self.history = list(state.get("history", []))
        ckpt.set_rng_state(state["rng"][min(self.dist.rank, len(state["rng"]) - 1)] if isinstance(state["rng"], list) else state["rng"])

    def _tensorboard(self):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.run_dir / "tb"))

    # ------------------------------------------------------------------ train
    def train(self) -> dict:
        import torch

        from lmreason.training.device import autocast
        from lmreason.training.progress import TrainingProgress

        cfg, t = self.cfg, self.cfg.train
        self.history = getattr(self, "history", [])
        self._install_signal_handlers()
        self.model_for_training.train()
        progress = TrainingProgress(self.total_steps, self.step, enabled=self.dist.is_main)
        started = time.perf_counter()
        samples = tokens = 0
        window_start, window_samples = time.perf_counter(), 0
        status = "completed"
        accum_loss = torch.zeros((), device=self.device)
        last_grad_norm = float("nan")
        while self.step < self.total_steps and status == "completed":
            batches = self._epoch_batches(self.epoch)
            i = self.batch_in_epoch
            while i < len(batches):
                group = batches[i : min(i + t.grad_accum_steps, len(batches))]
                accum_loss.zero_()
                for k, indices in enumerate(group):
                    batch = to_device(self.train_split.collate(indices), self.device)
                    # DDP: synchronise gradients only on the last micro-batch of the group.
                    with self.dist.no_sync_unless(self.model_for_training, k == len(group) - 1), autocast(self.device, self.precision):
                        loss, _ = self.task.forward(self.model_for_training, batch)
                    if self.fault_nan_at_step == self.step + 1:
                        loss = loss * float("nan")
                    scaled = loss / len(group)  # mean over the group's micro-batches
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                    accum_loss += scaled.detach()
                    samples += len(indices) * self.dist.world_size
                    tokens += int(batch["attention_mask"].sum()) * self.dist.world_size
                    window_samples += len(indices) * self.dist.world_size
                i += len(group)
                if self.scaler:
                    self.scaler.unscale_(self.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.max_grad_norm or float("inf"))
                finite = bool(torch.isfinite(grad_norm)) and bool(torch.isfinite(accum_loss))
                if not finite and not self.scaler:
                    if t.nonfinite == "stop":
                        self.optimizer.zero_grad(set_to_none=True)
                        self._write_metrics("diverged", time.perf_counter() - started, samples, tokens)
                        raise TrainingDiverged(
                            f"the loss or gradient became NaN/inf at step {self.step + 1} (epoch {self.epoch + 1}); "
                            f"the last good checkpoint is kept in {self.run_dir / 'checkpoints' / 'last'}. "
                            "Lower optimizer.lr, use precision fp32, or set train.nonfinite=skip"
                        )
                    self.skipped_steps += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scheduler.step()
                else:
                    if self.scaler:
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                    else:
                        self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.batch_in_epoch = i
                if self.step % t.log_every_steps == 0 or self.step == self.total_steps:
                    now = time.perf_counter()
                    rate = window_samples / max(now - window_start, 1e-9)
                    window_start, window_samples = now, 0
                    last_grad_norm = float(grad_norm)
                    self._log_train(float(accum_loss), last_grad_norm, rate)
                    progress.update(self.step, loss=float(accum_loss), lr=self.scheduler.get_last_lr()[0])
                else:
                    progress.update(self.step)
                if t.eval_every_steps and self.step % t.eval_every_steps == 0:
                    status = self._validate_and_checkpoint(started, samples, tokens)
                elif t.save_every_steps and self.step % t.save_every_steps == 0:
                    self._save("last", None)
                if self.fault_stop_after_steps == self.step:
                    self.stop_requested = "LMREASON_STOP_AFTER_STEPS"
                if self.stop_requested and status == "completed":
                    status = "interrupted"
                if status != "completed" or self.step >= self.total_steps:
                    break
            if status == "completed" and self.batch_in_epoch >= len(batches):
                self.epoch += 1
                self.batch_in_epoch = 0
                if t.eval_every_epoch and not (t.eval_every_steps and self.step % t.eval_every_steps == 0):
                    status = self._validate_and_checkpoint(started, samples, tokens)
        progress.close()
        if status == "interrupted":
            self._save("last", None)
            wall = time.perf_counter() - started
            self._write_metrics("interrupted", wall, samples, tokens)
            raise UserError(
                f"stopped by {self.stop_requested} at step {self.step}; checkpoint saved. "
                f"Continue with: lmreason finetune resume={self.run_dir}"
            )
        if not self.history or self.history[-1]["step"] != self.step:
            self._validate_and_checkpoint(started, samples, tokens)  # max_steps ended mid-epoch
        wall = time.perf_counter() - started
        return self._write_metrics("early_stopped" if self.early_stopping.should_stop else "completed", wall, samples, tokens)

    def _epoch_batches(self, epoch: int) -> list:
        t = self.cfg.train
        global_batches = length_grouped_batches(
            self.train_split.lengths, t.batch_size * self.dist.world_size, self.cfg.seed, epoch, t.length_grouping
        )
        return [self.dist.shard(b) for b in global_batches]

    def _install_signal_handlers(self) -> None:
        def request_stop(signum, frame):
            if self.stop_requested:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.stop_requested = signal.Signals(signum).name
            log.warning("%s received: saving a checkpoint at the end of this step", self.stop_requested)

        try:
            signal.signal(signal.SIGTERM, request_stop)
            signal.signal(signal.SIGINT, request_stop)
        except ValueError:  # not the main thread (e.g. a launcher): keep the defaults
            pass

    # ------------------------------------------------------------------ validate
    def validate(self) -> dict:
        import torch

        from lmreason.training.device import autocast

        self.model.eval()
        batches = (to_device(self.val_split.collate(b), self.device)
                   for b in self.dist.shard_eval(sorted_batches(self.val_split.lengths, self.cfg.train.eval_batch_size)))
        with torch.inference_mode(), autocast(self.device, self.precision):
            metrics = self.task.evaluate(self.model, batches, self.label_names, self)
        self.model.train()
        return {f"val/{k}": v for k, v in metrics.items()}

    def _validate_and_checkpoint(self, started, samples, tokens) -> str:
        began = time.perf_counter()
        try:
            return self._validate_and_checkpoint_timed()
        finally:
            self.eval_seconds += time.perf_counter() - began  # kept out of the training throughput

    def _validate_and_checkpoint_timed(self) -> str:
        metrics = self.validate()
        monitor = self.cfg.train.early_stopping.monitor
        if monitor not in metrics:
            raise UserError(f"train.early_stopping.monitor={monitor} is not a validation metric; use one of {', '.join(metrics)}")
        improved = self.early_stopping.update(metrics[monitor], self.step)
        metrics[f"{monitor}_best"] = self.early_stopping.best
        self.history.append({"step": self.step, "epoch": self.epoch, **metrics})
        if self.writer:
            for key, value in metrics.items():
                if value is not None:
                    self.writer.add_scalar(key, value, self.step)
            self.writer.flush()
        if self.dist.is_main:
            from lmreason.ui import console

            shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            console.print(f"[bold]step {self.step}[/] {shown}" + ("  [green](best)[/]" if improved else ""))
        self._save("last", metrics)
        if improved:
            self._save_best()
        stop = self.early_stopping.enabled and self.early_stopping.should_stop
        return "early_stopped" if stop else "completed"

    # ------------------------------------------------------------------ save
    def _trainer_state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": self.dist.gather_rng_states(ckpt.rng_state()),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "skipped_steps": self.skipped_steps,
            "early_stopping": self.early_stopping.state_dict(),
            "history": self.history,
            "elapsed_s": self.elapsed_before_resume,
        }

    def _save(self, name: str, metrics: dict | None) -> None:
        state = self._trainer_state()  # collective under DDP: every rank takes part
        if not self.dist.is_main:
            return
        meta = {"task": self.cfg.task.name, "label_names": self.label_names, "max_length": self.cfg.model.max_length,
                "step": self.step, "epoch": self.epoch, "metrics": metrics, "lmreason_checkpoint": 1}
        self.task.save_model(self.model, self.tokenizer, self.run_dir / "checkpoints" / name, state, meta,
                             OmegaConf.to_yaml(self.cfg, resolve=True), self.cfg)

    def _save_best(self) -> None:
        if self.dist.is_main:
            ckpt.link_checkpoint(self.run_dir / "checkpoints" / "last", self.run_dir / "checkpoints" / "best")

    def _log_train(self, loss: float, grad_norm: float, samples_per_s: float) -> None:
        if not self.writer:
            return
        self.writer.add_scalar("train/loss", loss, self.step)
        self.writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
        self.writer.add_scalar("train/grad_norm", grad_norm, self.step)
        self.writer.add_scalar("train/samples_per_s", samples_per_s, self.step)

    def _write_metrics(self, status: str, wall: float, samples: int, tokens: int) -> dict:
        es = self.early_stopping
        train_wall = wall - self.eval_seconds
        best_entry = next((h for h in self.history if h["step"] == es.best_step), None)
        results = {
            "status": status,
            "monitor": es.monitor,
            "best_metric": es.best,
            "best_step": es.best_step,
            "val": {k: v for k, v in (best_entry or {}).items() if k.startswith("val/")},
            "last_val": {k: v for k, v in (self.history[-1] if self.history else {}).items() if k.startswith("val/")},
            "steps": self.step,
            "epochs": self.epoch + (self.batch_in_epoch / max(1, self.micro_batches_per_epoch)),
            "skipped_steps": self.skipped_steps,
            "wall_time_s": wall + self.elapsed_before_resume,
            # training throughput: time in validation and checkpointing excluded
            "train_samples_per_s": samples / train_wall if train_wall > 0 else None,
            "train_tokens_per_s": tokens / train_wall if train_wall > 0 else None,
            "train_tokens": tokens,
            "validation_and_checkpoint_s": self.eval_seconds,
            "trainable_params": self.param_counts["trainable"],
            "frozen_params": self.param_counts["frozen"],
            "device": str(self.device),
            "precision": self.precision,
            "world_size": self.dist.world_size,
            "history": self.history,
        }
        if self.dist.is_main:
            tmp = self.run_dir / "metrics.json.tmp"
            tmp.write_text(json.dumps(results, indent=2, default=float))
            os.replace(tmp, self.run_dir / "metrics.json")
            if self.writer and status in ("completed", "early_stopped"):
                self._log_hparams(results)
        return results

    def _log_hparams(self, results: dict) -> None:
        cfg = self.cfg
        hparams = {
            "model": cfg.model.name_or_path, "task": cfg.task.name, "data": cfg.data.name,
            "optimizer": cfg.optimizer.name, "lr": cfg.optimizer.lr, "scheduler": cfg.scheduler.name,
            "warmup": cfg.scheduler.warmup_steps, "weight_decay": cfg.regularization.weight_decay,
            "batch_size": cfg.train.batch_size, "grad_accum": cfg.train.grad_accum_steps,
            "precision": self.precision, "seed": cfg.seed,
        }
        final = {f"hparam/{k}": v for k, v in results["val"].items() if isinstance(v, (int, float)) and v is not None}
        self.writer.add_hparams(hparams, final or {"hparam/none": 0.0}, run_name=".")

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        if getattr(self, "writer", None):
            self.writer.close()
        self.dist.cleanup()
