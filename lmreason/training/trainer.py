"""The fine-tuning recipe: validate -> setup -> train -> save -> cleanup.

One loop for every task (classification, generation): the task supplies
tokenization, the model, the loss and validation metrics. The loop owns
accumulation, precision, clipping, scheduling, validation, early stopping,
checkpoints, resume, TensorBoard and the progress bar.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmreason.atomic import atomic_write_json
from lmreason.errors import UserError
from lmreason.faults import fault_point, reset_counts
from lmreason.seeding import seed_everything
from lmreason.tasks.base import ValidationContext
from lmreason.training import checkpoint as ckpt
from lmreason.training.batching import TokenizedSplit, length_grouped_batches, sorted_batches, to_device
from lmreason.training.distributed import Distributed
from lmreason.training.early_stopping import EarlyStopping

log = logging.getLogger(__name__)
# `extra=` for records meant for <run>/finetune.log only (Hydra's file handler); the console shows them its own way
FILE_ONLY = {"file_only": True}


class TrainingDiverged(UserError):
    """The loss or the gradient became NaN/inf."""


class TrainingInterrupted(UserError):
    """SIGINT/SIGTERM (or the test hook) stopped the run after saving a checkpoint."""

    stops_sweep = True  # Ctrl-C in a multirun stops the sweep, not just this job


class FinetuneRecipe:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist = Distributed.from_env(cfg.device)
        self.stop_requested = None  # set to the signal name by SIGINT/SIGTERM
        reset_counts()  # tests: fault points count from this run's start, also in process

    # ------------------------------------------------------------------ validate
    # The config's own checks are lmreason.validation.validate_finetune, run by `finetune.run` first;
    # the two below need the task and the model's config.
    def _check_monitor(self) -> None:
        """A monitor the task never reports would otherwise fail at the first validation, an epoch in."""
        names = getattr(self.task, "validation_metrics", None)  # tasks whose metrics are fixed declare them
        monitor = self.cfg.train.early_stopping.monitor
        if names is not None and monitor not in [f"val/{n}" for n in names]:
            raise UserError(
                f"train.early_stopping.monitor={monitor} is not a validation metric of task={self.cfg.task.name}; "
                f"use one of {', '.join(f'val/{n}' for n in names)}"
            )

    def _check_freezing(self) -> None:
        """Layer counts come from the model's config: known before any data is prepared."""
        from lmreason.models.freezing import check_freeze_layers
        from lmreason.models.loading import load_config

        if self.cfg.regularization.freeze_layers:
            _, model_config = load_config(self.cfg.model, self.cfg.cache_dir)
            check_freeze_layers(self.cfg.regularization.freeze_layers, getattr(model_config, "num_hidden_layers", None))

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        import torch

        from lmreason.data.prepare import prepare_data
        from lmreason.models.fast_paths import apply_fast_paths
        from lmreason.models.freezing import apply_freezing
        from lmreason.models.loading import load_tokenizer
        from lmreason.tasks import get_task
        from lmreason.training.compile import compile_model
        from lmreason.training.device import resolve_device
        from lmreason.training.optim import build_optimizer, build_scheduler

        cfg = self.cfg
        self.device, self.precision = resolve_device(cfg.device)
        self.dist.init(self.device)
        # Under torchrun every rank composed its own Hydra config: a `${now:...}` run dir differs per rank.
        self.run_dir = Path(self.dist.broadcast(str(self.run_dir)))
        self.task = get_task(cfg.task)
        self._check_monitor()
        self.resume_state = self._load_resume_state()
        seed_everything(cfg.seed + self.dist.rank)

        self.tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
        self._check_freezing()
        with self.dist.rank_zero_first():  # one process tokenizes and caches; the others reuse it
            self.data = prepare_data(cfg, self.task, self.tokenizer)
        if "validation" not in self.data.splits:
            raise UserError(f"{self.data.summary.get('source')}: no validation split for early stopping; add one")
        self.label_names = self.data.label_names
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.train_split = TokenizedSplit(self.data.splits["train"], self.task, pad_id)
        self.val_split = TokenizedSplit(self.data.splits["validation"], self.task, pad_id)

        if self.resume_state is not None:
            last = self.run_dir / "checkpoints" / "last"
            try:
                self.model = self.task.load_model(last, cfg)
            except (OSError, ValueError) as exc:  # e.g. weights only as a pickle (never loaded), or damaged
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise UserError(
                    f"{last}: cannot load the checkpoint's model ({first}); lmreason loads safetensors weights only"
                ) from None
        else:
            seed_everything(cfg.seed)  # same head init on every rank
            self.model = self.task.build_model(cfg, self.label_names)
        self.param_counts = apply_freezing(self.model, cfg.regularization)
        self.model.to(self.device)
        # [CLS]-only last layer, 16-bit dropout masks, persistent embedding gradient: each checked, named in the banner
        self.fast_paths = apply_fast_paths(
            self.model,
            self.device,
            self.dist.world_size,
            enabled=cfg.device.fast_paths,
            training=True,
            compiled=cfg.device.compile,
        )
        self.compiled = compile_model(self.model) if cfg.device.compile else None  # in place: checkpoints unchanged
        self.model_for_training = self.dist.wrap(self.model)
        self.adversarial = adversarial_settings(cfg.regularization)  # None unless regularization=adversarial
        self.embedding = self.model.get_input_embeddings() if self.adversarial else None
        self.shards = self._setup_shards()  # None: one pass per micro-batch

        t = cfg.train
        # the plan's own length: a task that plans its batches (task=multi) may make a few more than n / B
        self.micro_batches_per_epoch = len(self._epoch_batches(0))
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
        self._log_summary()

    def _log_summary(self) -> None:
        """What this run is, in a few lines of <run>/finetune.log (the full config is in .hydra/config.yaml)."""
        cfg, t = self.cfg, self.cfg.train
        es = t.early_stopping
        source = self.data.summary.get("source")
        # task=multi (it plans its own batches) reads each task's data from task.tasks, never cfg.data
        data = source if hasattr(self.task, "plan_batches") else f"{cfg.data.name} ({source})"
        lines = [
            f"model: {cfg.model.name_or_path} ({'random init' if cfg.model.from_scratch else 'pretrained'}, "
            f"max length {cfg.model.max_length})",
            f"data: {data}: {len(self.train_split)} train / {len(self.val_split)} validation",
            f"task: {cfg.task.name}; early stopping on {es.monitor} ({es.mode}, patience {es.patience})"
            if es.enabled
            else f"task: {cfg.task.name}; early stopping off (best by {es.monitor}, {es.mode})",
            f"optimizer: {cfg.optimizer.name} lr {cfg.optimizer.lr:g}, {cfg.scheduler.name} schedule, "
            f"weight decay {cfg.regularization.weight_decay:g}",
            f"batch: {t.batch_size} x {t.grad_accum_steps} accumulation x {self.dist.world_size} process(es)",
            f"steps: {self.total_steps} ({self.steps_per_epoch} per epoch)"
            + (f", resuming at {self.step}" if self.step else ""),
            f"device: {self.device} ({self.precision}); seed {cfg.seed}",
        ]
        if self.adversarial:
            lines.append(f"adversarial training: {self.adversarial.describe()}")
        for line in lines:
            log.info(line, extra=FILE_ONLY)

    def _load_resume_state(self):
        if not self.cfg.resume:
            if (self.run_dir / "checkpoints").exists():
                raise UserError(
                    f"{self.run_dir} already holds a run; start a new one or resume it with resume={self.run_dir}"
                )
            return None
        last = self.run_dir / "checkpoints" / "last"
        for name in ("last", "best"):  # a kill between the renames of a save leaves it moved aside
            ckpt.recover_checkpoint(self.run_dir / "checkpoints" / name)
        ckpt.discard_partial_checkpoints(self.run_dir / "checkpoints")  # halves of saves a kill interrupted
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
        if self.early_stopping.best_loss is None:  # a checkpoint from before the tie-break: its history has the loss
            best_entry = next((h for h in self.history if h["step"] == self.early_stopping.best_step), {})
            self.early_stopping.best_loss = best_entry.get("val/loss")
        saved_world = state.get("world_size", len(state["rng"]) if isinstance(state["rng"], list) else 1)
        if saved_world != self.dist.world_size:
            raise UserError(
                f"{self.run_dir} was trained with {saved_world} process(es), this resume has {self.dist.world_size}: "
                f"the global batch and data order would change. Resume with {saved_world} "
                + (
                    "process (no torchrun)"
                    if saved_world == 1
                    else f"processes (torchrun --nproc_per_node {saved_world} ...)"
                )
            )
        ckpt.set_rng_state(
            state["rng"][min(self.dist.rank, len(state["rng"]) - 1)] if isinstance(state["rng"], list) else state["rng"]
        )

    def _tensorboard(self):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.run_dir / "tb"))

    # ------------------------------------------------------------------ train
    def train(self) -> dict:
        import torch

        from lmreason.training.progress import TrainingProgress

        t = self.cfg.train
        self.history = getattr(self, "history", [])
        self._install_signal_handlers()
        self.model_for_training.train()
        progress = TrainingProgress(self.total_steps, self.step, enabled=self.dist.is_main)
        started = time.perf_counter()
        samples = tokens = 0
        window_start, window_samples = time.perf_counter(), 0
        # A resumed run that had already early-stopped has nothing left to train.
        status = "early_stopped" if self.early_stopping.should_stop else "completed"
        self._write_metrics("running", 0.0, 0, 0)  # a sweep report tells a started run from a dead one
        accum_loss = torch.zeros((), device=self.device)
        accum_adv_loss = torch.zeros((), device=self.device)  # regularization.adversarial's L_adv
        last_grad_norm = float("nan")
        while self.step < self.total_steps and status == "completed":
            batches = self._epoch_batches(self.epoch)
            i = self.batch_in_epoch
            while i < len(batches):
                group = batches[i : min(i + t.grad_accum_steps, len(batches))]
                accum_loss.zero_()
                accum_adv_loss.zero_()
                for k, (indices, weight, global_size) in enumerate(group):
                    # mean over the group's micro-batches; `weight` (1 in one process) makes DDP's gradient
                    # average the global batch's mean (see Distributed.shard)
                    if self.shards is not None:
                        scaled, adv_scaled = self._sharded_micro_batch(indices, weight, len(group)), None
                    else:
                        batch = to_device(self.train_split.collate(indices), self.device)
                        scaled, adv_scaled = self._micro_batch(batch, weight, len(group), k == len(group) - 1)
                    accum_loss += scaled
                    if adv_scaled is not None:
                        accum_adv_loss += adv_scaled
                    samples += global_size
                    # real (non-pad) tokens from the host-side lengths: no device sync per micro-batch
                    tokens += int(self.train_split.lengths[indices].sum()) * self.dist.world_size  # estimate under DDP
                    window_samples += global_size
                if (
                    fault_point("train_step") == "STOP"
                ):  # tests: a kill between backward and the optimizer step, or a stop
                    self.stop_requested = "a STOP fault point"
                i += len(group)
                if self.scaler:
                    self.scaler.unscale_(self.optimizer)
                max_norm = t.max_grad_norm or float("inf")
                if self.shards is not None:  # the two passes over the gradients side by side, as the shards ran
                    grad_norm = self.shards.clip_grad_norm(max_norm)
                else:
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
                finite = bool(torch.isfinite(grad_norm)) and bool(torch.isfinite(accum_loss))
                finite = not self.dist.any_rank(not finite)  # DDP: every rank steps, skips or stops alike
                if not finite and not self.scaler:
                    if t.nonfinite == "stop":
                        self._discard_gradients()
                        self._write_metrics("diverged", time.perf_counter() - started, samples, tokens)
                        last = self.run_dir / "checkpoints" / "last"
                        kept = (
                            f"the last good checkpoint is kept in {last}"
                            if (last / "config.json").is_file()
                            else "no checkpoint had been written yet"
                        )
                        raise TrainingDiverged(
                            f"the loss or gradient became NaN/inf at step {self.step + 1} (epoch {self.epoch + 1}); "
                            f"{kept}. Lower optimizer.lr, use precision fp32, or set train.nonfinite=skip"
                        )
                    self.skipped_steps += 1
                    self._discard_gradients()
                    self.scheduler.step()
                else:
                    if self.scaler:
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                    elif self.shards is not None:  # the update side by side too, bit for bit step()'s
                        self.shards.optimizer_step(self.optimizer)
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
                    train_loss = float(self.dist.mean(accum_loss))  # DDP: the global batch's loss, not this rank's
                    adv_loss = float(self.dist.mean(accum_adv_loss)) if self.adversarial else None
                    self._log_train(train_loss, last_grad_norm, rate, adv_loss)
                    progress.update(self.step, loss=train_loss, lr=self.scheduler.get_last_lr()[0])
                else:
                    progress.update(self.step)
                if t.eval_every_steps and self.step % t.eval_every_steps == 0:
                    status = self._validate_and_checkpoint(started, samples, tokens)
                elif t.save_every_steps and self.step % t.save_every_steps == 0:
                    self._save("last", None)
                # DDP: a signal reaches the ranks at different moments; all stop at the step where any saw it.
                if self.dist.any_rank(self.stop_requested is not None) and status == "completed":
                    self.stop_requested = self.stop_requested or "a signal to another rank"
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
            raise TrainingInterrupted(
                f"stopped by {self.stop_requested} at step {self.step}; checkpoint saved. "
                f"Continue with: lmreason finetune resume={self.run_dir}"
            )
        if not self.history or self.history[-1]["step"] != self.step:
            self._validate_and_checkpoint(started, samples, tokens)  # max_steps ended mid-epoch
        wall = time.perf_counter() - started
        return self._write_metrics(
            "early_stopped" if self.early_stopping.should_stop else "completed", wall, samples, tokens
        )

    def _micro_batch(self, batch: dict, weight: float, group_size: int, last: bool):
        """Forward and backward of one micro-batch: (its clean loss, its adversarial loss or None), each
        x weight / group_size, detached. DDP synchronises gradients only in the last pass of the `last` one."""
        import contextlib

        from lmreason.training.device import autocast

        def forward(final: bool):
            with (
                self.dist.no_sync_unless(self.model_for_training, last and final),
                autocast(self.device, self.precision),
            ):
                loss, _ = self.task.forward(self.model_for_training, batch)
            return loss * weight / group_size

        def loss_scale(loss):
            return self.scaler.scale(loss) if self.scaler else loss

        adversarial = self.adversarial
        attack = adversarial.attack(self.embedding, batch["attention_mask"]) if adversarial else None
        with attack or contextlib.nullcontext():
            scaled = forward(final=attack is None)
            if fault_point("loss") == "NAN":  # tests: a non-finite loss (LMREASON_FAULT_AT=loss:<n>:NAN)
                scaled = scaled * float("nan")
            if attack is None:
                loss_scale(scaled).backward()
                return scaled.detach(), None
            adv_scaled = attack.train(scaled, forward, loss_scale)  # (1 - w) clean + w adversarial
        return scaled.detach(), adv_scaled

    def _shard_loss(self, batch: dict):
        """A shard's mean loss (its forward pass, under the run's autocast: it runs in a shard's own thread)."""
        from lmreason.training.device import autocast

        with autocast(self.device, self.precision):
            loss, _ = self.task.forward(self.model_for_training, batch)
        return loss

    def _sharded_micro_batch(self, indices, weight: float, group_size: int):
        """Forward and backward of one micro-batch as shards side by side (training/shards.py): its loss
        x weight / group_size, detached."""
        batches = [
            to_device(self.train_split.collate(part), self.device)
            for part in self.shards.split(indices, self.train_split.lengths)
        ]
        scale = weight / group_size
        if fault_point("loss") == "NAN":  # tests: a non-finite loss (LMREASON_FAULT_AT=loss:<n>:NAN)
            scale = float("nan")
        return self.shards.backward(self._shard_loss, batches, [self.task.loss_terms(b) for b in batches], scale)

    def _setup_shards(self):
        """Shards (training/shards.py) where they apply and pass their check on the first micro-batch, else None;
        named in the fast-path report either way."""
        import torch

        from lmreason.models.fast_paths import CHECK_FAILED
        from lmreason.training.shards import Shards, check_shards, shards_unsupported

        why = (
            shards_unsupported(
                self.model,
                self.device,
                self.task,
                world_size=self.dist.world_size,
                adversarial=self.adversarial is not None,
                compiled=bool(self.cfg.device.compile),
            )
            if self.cfg.device.fast_paths
            else "device.fast_paths=false"
        )
        if why is None:
            shards = Shards(self.model, torch.get_num_threads())
            indices = self._epoch_batches(0)[0][0]
            parts = shards.split(indices, self.train_split.lengths)
            batches = [to_device(self.train_split.collate(part), self.device) for part in [*parts, indices]]
            terms = [self.task.loss_terms(b) for b in batches[:-1]]
            if len(parts) < 2:
                why = "micro-batches of one example"
            else:
                problem = check_shards(shards, self.model, self._shard_loss, batches, terms)
                if problem is None:
                    self.fast_paths.applied.append("batch_shards")
                    return shards
                why = f"{CHECK_FAILED}: {problem}"
                log.warning("batch shards off after a failed check (one pass per micro-batch): %s", problem)
            shards.close()
        self.fast_paths.skipped["batch_shards"] = why
        return None

    def _discard_gradients(self) -> None:
        """Drop non-finite gradients. Zeroed in place first: clipping scaled every element by NaN,
        and a gradient buffer kept across steps (`embedding_grad`) must start clean again."""
        self.optimizer.zero_grad(set_to_none=False)
        self.optimizer.zero_grad(set_to_none=True)

    def _epoch_batches(self, epoch: int) -> list:
        t = self.cfg.train
        size = t.batch_size * self.dist.world_size
        if hasattr(self.task, "plan_batches"):  # task=multi: single-task batches, shared out by its sampling rule
            global_batches = self.task.plan_batches(
                self.data.splits["train"], size, self.cfg.seed, epoch, t.length_grouping
            )
        else:
            global_batches = length_grouped_batches(
                self.train_split.lengths, size, self.cfg.seed, epoch, t.length_grouping
            )
        return [(*self.dist.shard(b), len(b)) for b in global_batches]  # (indices, loss weight, global size)

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
        index_batches = sorted_batches(self.val_split.lengths, self.cfg.train.eval_batch_size)
        if getattr(self.task, "gathers_validation", False):
            index_batches = self.dist.shard_eval(index_batches)  # DDP: each rank predicts a share; the task gathers
        batches = (to_device(self.val_split.collate(b), self.device) for b in index_batches)
        batches = _fault_point_after_first(batches, "validation")
        with torch.inference_mode(), autocast(self.device, self.precision):
            metrics = self.task.evaluate(self.model, batches, self.label_names, self._validation_context())
        self.model.train()
        # DDP: rank 0's numbers on every rank, so early stopping and "best" are decided once, identically.
        metrics = self.dist.broadcast(metrics)
        return {f"val/{k}": v for k, v in metrics.items()}

    def _validation_context(self) -> ValidationContext:
        """What the task's validation may know of this run (never the recipe itself)."""
        from functools import partial

        from lmreason.evaluation.batch_workers import batch_workers, run_batches
        from lmreason.evaluation.generation import generate_texts

        def generate(model, prompt_ids):
            return generate_texts(model, self.tokenizer, prompt_ids, self.cfg.generation, self.device, self.precision)[
                0
            ]

        return ValidationContext(
            step=self.step,
            is_last=self.step >= self.total_steps,
            number=len(self.history) + 1,
            dataset=self.data.splits["validation"],
            generate=generate,
            gather=self.dist.gather_predictions,
            map_batches=partial(
                run_batches,
                device=self.device,
                precision=self.precision,
                workers=batch_workers(self.device),
                pool=self.shards.pool if self.shards is not None else None,
            ),
        )

    def _validate_and_checkpoint(self, started, samples, tokens) -> str:
        began = time.perf_counter()
        try:
            status = self._validate_and_checkpoint_timed()
        finally:
            self.eval_seconds += time.perf_counter() - began  # kept out of the training throughput
        # partial results while training goes on (`lmreason evaluate sweep=` reads them); the end overwrites it
        self._write_metrics("running", time.perf_counter() - started, samples, tokens)
        return status

    def _validate_and_checkpoint_timed(self) -> str:
        metrics = self.validate()
        monitor = self.cfg.train.early_stopping.monitor
        if monitor not in metrics:
            raise UserError(
                f"train.early_stopping.monitor={monitor} is not a validation metric; use one of {', '.join(metrics)}"
            )
        # a tie on the monitor goes to the lower val/loss (see early_stopping.py)
        improved = self.early_stopping.update(metrics[monitor], self.step, metrics.get("val/loss"))
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
            log.info("validation at step %d: %s%s", self.step, shown, " (best)" if improved else "", extra=FILE_ONLY)
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
            "world_size": self.dist.world_size,  # a resume must use as many processes (same global batch)
        }

    def _save(self, name: str, metrics: dict | None) -> None:
        state = self._trainer_state()  # collective under DDP: every rank takes part
        if not self.dist.is_main:
            return
        meta = {
            "task": self.cfg.task.name,
            "label_names": self.label_names,
            "max_length": self.cfg.model.max_length,
            "step": self.step,
            "epoch": self.epoch,
            "metrics": metrics,
            "lmreason_checkpoint": 1,
        }
        self.task.save_model(
            self.model,
            self.tokenizer,
            self.run_dir / "checkpoints" / name,
            state,
            meta,
            OmegaConf.to_yaml(self.cfg, resolve=True),
            self.cfg,
        )

    def _save_best(self) -> None:
        if self.dist.is_main:
            ckpt.link_checkpoint(self.run_dir / "checkpoints" / "last", self.run_dir / "checkpoints" / "best")

    def _log_train(self, loss: float, grad_norm: float, samples_per_s: float, adv_loss: float | None) -> None:
        if not self.writer:
            return
        self.writer.add_scalar("train/loss", loss, self.step)  # the clean loss (with adversarial training too)
        if adv_loss is not None:
            self.writer.add_scalar("train/adv_loss", adv_loss, self.step)
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
            "mode": es.mode,
            "best_metric": es.best,
            "best_step": es.best_step,
            "val": {k: v for k, v in (best_entry or {}).items() if k.startswith("val/")},
            "last_val": {k: v for k, v in (self.history[-1] if self.history else {}).items() if k.startswith("val/")},
            "val_majority_baseline": self._majority_baseline("validation"),
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
            "compile": bool(self.compiled),
            "fast_paths": self.fast_paths.as_dict(),  # {applied: [...], skipped: {name: why}}
            "adversarial": self.adversarial.describe() if self.adversarial else None,  # method and its passes
            "history": self.history,
            # who writes it, and when: tells a sweep report a live "running" run from a killed one
            "process": {"host": socket.gethostname(), "pid": os.getpid(), "updated_at": time.time()},
        }
        if self.dist.is_main:
            try:
                atomic_write_json(self.run_dir / "metrics.json", results)
            except OSError as exc:
                raise UserError(
                    f"cannot write {self.run_dir / 'metrics.json'} ({exc.strerror or exc}); the checkpoints are kept. "
                    "Free disk space, then finish with: lmreason finetune resume=" + str(self.run_dir)
                ) from None
            if self.writer and status in ("completed", "early_stopped"):
                self._log_hparams(results)
            if status != "running":
                best = f"; best {es.monitor} = {es.best:.4f} at step {es.best_step}" if es.best is not None else ""
                log.info("status: %s at step %d%s", status, self.step, best, extra=FILE_ONLY)
        return results

    def _majority_baseline(self, split: str) -> float | None:
        """Accuracy of always predicting the split's most frequent label (classification), else None."""
        counts = self.data.summary["splits"].get(split, {}).get("labels")
        return max(counts.values()) / sum(counts.values()) if counts and sum(counts.values()) else None

    def _log_hparams(self, results: dict) -> None:
        cfg = self.cfg
        hparams = {
            "model": cfg.model.name_or_path,
            "task": cfg.task.name,
            "data": cfg.data.name,
            "optimizer": cfg.optimizer.name,
            "lr": cfg.optimizer.lr,
            "scheduler": cfg.scheduler.name,
            "warmup": cfg.scheduler.warmup_steps,
            "weight_decay": cfg.regularization.weight_decay,
            "adversarial": self.adversarial.method if self.adversarial else "none",
            "batch_size": cfg.train.batch_size,
            "grad_accum": cfg.train.grad_accum_steps,
            "precision": self.precision,
            "seed": cfg.seed,
        }
        final = {f"hparam/{k}": v for k, v in results["val"].items() if isinstance(v, (int, float)) and v is not None}
        self.writer.add_hparams(hparams, final or {"hparam/none": 0.0}, run_name=".")

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        if getattr(self, "shards", None) is not None:
            self.shards.close()
        if getattr(self, "writer", None):
            self.writer.close()
        self.dist.cleanup()


def adversarial_settings(reg_cfg):
    """regularization.adversarial as resolved settings, or None when adversarial training is off."""
    if reg_cfg.get("adversarial") is None:
        return None
    from lmreason.training.adversarial import AdversarialSettings

    return AdversarialSettings.from_config(reg_cfg.adversarial)


def _fault_point_after_first(batches, name: str):
    """Yield `batches`, passing fault point `name` once the first is consumed (tests: a kill mid-validation)."""
    for number, batch in enumerate(batches):
        yield batch
        if number == 0:
            fault_point(name)
