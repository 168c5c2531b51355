"""Generation: fine-tune a causal LM on prompt -> completion pairs and score the answers it writes.

An example is `[prompt tokens][completion tokens][eos]`. The prompt is formatted with
the tokenizer's chat template where it has one (`task.use_chat_template`), else with
`task.prompt_template`; the loss covers the completion and its eos only (labels -100
on the prompt and on padding). SmolLM2's pad token *is* its eos token, so masks come
from lengths, never from comparing ids with the pad id.

Answers are generated in batches with left padding (the new tokens of every row then
start at the same column), scored with the task's own reasoning-gym scorer when the
data comes from reasoning-gym, else by normalised exact match.

LoRA (`model.lora.enabled`) wraps the model with `peft`; checkpoints hold either the
merged weights (a plain model dir, plus the adapter under `adapter/` for resume) or
the adapter only (`save_merged: false`; `from_pretrained` loads it on its base when
`peft` is installed).
"""

from __future__ import annotations

import copy
import json
import math
import string
from pathlib import Path

import numpy as np

from lmreason.errors import UserError

IGNORE = -100  # label of tokens without loss (prompt, padding)
# Bookkeeping columns of reasoning rows: never slices.
_NOT_SLICES = {"answer", "entry", "generator_config", "source_seed", "source_index", "prompt_length"}


def task_settings(task_cfg):
    """The task group with every GenTaskConfig default filled in (a plain model dir's evaluate passes only a name)."""
    from omegaconf import OmegaConf

    from lmreason.config import GenTaskConfig

    given = {} if task_cfg is None else OmegaConf.to_container(task_cfg, resolve=True) if OmegaConf.is_config(task_cfg) else dict(task_cfg)
    return OmegaConf.merge(OmegaConf.structured(GenTaskConfig), given)


def format_prompts(tokenizer, prompts: list[str], settings) -> tuple[list[str], bool]:
    """(model input texts, whether the tokenizer should add its special tokens).

    Raises:
        UserError: a plain prompt_template without `{prompt}`.
    """
    if settings.use_chat_template and getattr(tokenizer, "chat_template", None):
        system = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
        texts = [tokenizer.apply_chat_template(system + [{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=False) for p in prompts]
        return texts, False  # the template writes its own special tokens
    template = settings.prompt_template
    if "{prompt}" not in template:
        raise UserError(f"task.prompt_template={template!r} has no {{prompt}} placeholder; add one, e.g. 'Question: {{prompt}}\\nAnswer: '")
    head = f"{settings.system_prompt}\n\n" if settings.system_prompt else ""
    return [head + template.replace("{prompt}", p) for p in prompts], True


def encode_prompts(tokenizer, prompts: list[str], settings, max_length: int | None = None) -> list[list[int]]:
    """Token ids of the formatted prompts; longer than `max_length`, a prompt keeps its end."""
    texts, special = format_prompts(tokenizer, prompts, settings)
    ids = tokenizer(texts, add_special_tokens=special)["input_ids"]
    return [p[-max_length:] if max_length and len(p) > max_length else p for p in ids]


def eos_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end an answer: the tokenizer's eos plus the model's generation eos (e.g. SmolLM2's <|im_end|>)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in (extra if isinstance(extra, (list, tuple)) else [extra]):
        if i is not None and i not in ids:
            ids.append(int(i))
    return ids


def normalize_answer(text: str) -> str:
    """Lower case, no surrounding punctuation or quotes, single spaces: '  The Cat. ' == 'the cat'."""
    text = " ".join(str(text).lower().split())
    return text.strip(string.punctuation + " ")


def generate_texts(model, tokenizer, prompt_ids: list[list[int]], gen_cfg, device, precision, streamer=None) -> tuple[list[str], list[bool]]:
    """Greedy or sampled completions for token-id prompts, batched longest-first with left padding.

    Returns (texts in input order, whether each stopped at eos rather than at max_new_tokens).
    `streamer` (a transformers TextStreamer) prints tokens as they come; it needs one prompt.
    """
    tokens, finished = generate_ids(model, tokenizer, prompt_ids, gen_cfg, device, precision, streamer)
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens], finished


def generate_ids(model, tokenizer, prompt_ids: list[list[int]], gen_cfg, device, precision, streamer=None) -> tuple[list[list[int]], list[bool]]:
    """As `generate_texts`, but the new token ids of each answer (up to, not including, its eos)."""
    import torch
    from transformers import GenerationConfig

    from lmreason.training.batching import sorted_batches
    from lmreason.training.device import autocast

    if gen_cfg.max_new_tokens < 1 or gen_cfg.batch_size < 1:
        raise UserError("generation.max_new_tokens and generation.batch_size must be >= 1")
    if gen_cfg.do_sample and not (gen_cfg.temperature > 0 and 0 < gen_cfg.top_p <= 1):
        raise UserError(f"generation.temperature={gen_cfg.temperature}, top_p={gen_cfg.top_p}: sampling needs temperature > 0 and 0 < top_p <= 1")
    stops = eos_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    settings = {"max_new_tokens": int(gen_cfg.max_new_tokens), "do_sample": bool(gen_cfg.do_sample),
                "pad_token_id": pad, "eos_token_id": stops}
    if gen_cfg.do_sample:
        settings.update(temperature=float(gen_cfg.temperature), top_p=float(gen_cfg.top_p), top_k=0)
    config = GenerationConfig(**settings)
    lengths = np.array([len(p) for p in prompt_ids])
    if (lengths == 0).any():
        raise UserError(f"prompt {int(np.argmin(lengths)) + 1} has no tokens; every prompt needs some text")
    answers, finished = [[] for _ in prompt_ids], [False] * len(prompt_ids)
    stop_set = torch.tensor(stops)
    for batch in sorted_batches(lengths, 1 if streamer is not None else gen_cfg.batch_size):
        width = int(lengths[batch].max())
        ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, T) left-padded
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, width - lengths[i]:] = torch.tensor(prompt_ids[i])
            mask[row, width - lengths[i]:] = 1
        with torch.inference_mode(), autocast(device, precision):
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                                 streamer=streamer)
        new = out[:, width:].cpu()  # (B, new tokens): after eos come pad tokens
        for row, i in enumerate(batch):
            tokens = new[row]
            at_stop = torch.isin(tokens, stop_set).nonzero()
            end = int(at_stop[0]) if len(at_stop) else len(tokens)
            finished[i] = bool(len(at_stop))
            answers[i] = tokens[:end].tolist()
    return answers, finished


class GenerationTask:
    name = "gen"
    monitor_default = "val/loss"
    # Columns of a prepared dataset that are model inputs, and their padding values.
    input_columns = {"input_ids": "pad"}
    label_padding = IGNORE  # labels are (T,) per example: padded with "no loss"
    gap_keys = ("exact_match", "score", "loss", "perplexity")

    def __init__(self):
        self.streamed = False  # infer printed the answer as it came: nothing left to render

    # ------------------------------------------------------------------ data
    def tokenize(self, frame, tokenizer, cfg, label_names: list[str]) -> dict:
        """input_ids = prompt + completion + eos, labels = -100 on the prompt, lengths.

        Past `model.max_length`, the prompt loses its start first (down to half the budget),
        then the completion its end.

        Raises:
            UserError: a tokenizer without an eos token; a bad prompt_template.
        """
        settings = task_settings(cfg.task)
        eos = tokenizer.eos_token_id
        if eos is None:
            raise UserError(f"tokenizer of {cfg.model.name_or_path} has no eos token; set model.tokenizer to one that has")
        budget = int(cfg.model.max_length)
        prompts = encode_prompts(tokenizer, frame["prompt"].tolist(), settings)
        completions = tokenizer(frame["completion"].tolist(), add_special_tokens=False)["input_ids"]
        columns = {"input_ids": [], "labels": [], "length": [], "full_length": [], "prompt_length": []}
        for prompt, completion in zip(prompts, completions):
            completion = completion + [eos]
            full = len(prompt) + len(completion)
            if full > budget:
                keep_prompt = max(budget - len(completion), min(len(prompt), budget // 2))
                prompt = prompt[len(prompt) - keep_prompt:]
                completion = completion[: budget - len(prompt)]
            columns["input_ids"].append(prompt + completion)
            columns["labels"].append([IGNORE] * len(prompt) + completion)
            columns["length"].append(len(prompt) + len(completion))
            columns["full_length"].append(full)
            columns["prompt_length"].append(len(prompt))
        return columns

    # ------------------------------------------------------------------ model
    def build_model(self, cfg, label_names: list[str]):
        from lmreason.models.loading import build_causal_lm

        model = build_causal_lm(cfg.model, cfg.cache_dir, cfg.get("regularization"))
        if model.config.pad_token_id is None and model.config.eos_token_id is not None:
            eos = model.config.eos_token_id
            model.config.pad_token_id = eos[0] if isinstance(eos, list) else eos
        if cfg.model.lora.enabled:
            model = self._wrap_lora(model, cfg.model)
        return model

    @staticmethod
    def _wrap_lora(model, model_cfg):
        from peft import LoraConfig, get_peft_model

        lora = model_cfg.lora
        if model_cfg.from_scratch and not lora.save_merged:
            raise UserError("model.lora.save_merged=false with model.from_scratch=true: an adapter alone cannot rebuild "
                            "a random-init base; save merged weights or start from pretrained weights")
        if lora.rank < 1:
            raise UserError(f"model.lora.rank={lora.rank}: must be >= 1")
        config = LoraConfig(r=int(lora.rank), lora_alpha=int(lora.alpha), lora_dropout=float(lora.dropout),
                            target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
        try:
            return get_peft_model(model, config)
        except ValueError as exc:
            names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
            raise UserError(f"model.lora.target_modules={list(lora.target_modules)}: {str(exc).splitlines()[0][:160]}; "
                            f"linear layers of this model: {', '.join(names)}") from None

    def load_model(self, checkpoint, cfg):
        """The model of a checkpoint dir on the CPU (to resume; LoRA: the same base + the saved adapter)."""
        from transformers import AutoModelForCausalLM

        checkpoint = Path(checkpoint)
        if not cfg.model.lora.enabled:
            return AutoModelForCausalLM.from_pretrained(checkpoint, use_safetensors=True,
                                                        trust_remote_code=cfg.model.trust_remote_code)
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        from lmreason.training.trainer import seed_everything

        seed_everything(cfg.seed)  # the same base as build_model (a random-init base included)
        model = self.build_model(cfg, [])
        adapter = checkpoint / "adapter" if (checkpoint / "adapter").is_dir() else checkpoint
        set_peft_model_state_dict(model, load_file(str(adapter / "adapter_model.safetensors")))
        return model

    def save_model(self, model, tokenizer, target, trainer_state, meta, config_yaml, cfg) -> None:
        from lmreason.training.checkpoint import save_checkpoint

        if cfg.model.lora.enabled:
            meta = {**meta, "lora": {"merged": bool(cfg.model.lora.save_merged)}}
            if cfg.model.lora.save_merged:
                model = _MergedWithAdapter(model)
        save_checkpoint(target, model, tokenizer, trainer_state, meta, config_yaml)

    # ------------------------------------------------------------------ loss
    def token_losses(self, model, batch: dict):
        """(sum of completion-token losses, completion tokens, logits (B, T', V) of the kept positions).

        Only positions from the first completion token of the batch on go through the
        LM head (`logits_to_keep`): prompts are most of the tokens, and the head over a
        49k vocabulary is a fifth of SmolLM2's compute.
        """
        import torch.nn.functional as F

        labels = batch["labels"]  # (B, T), -100 on prompt and padding
        width = labels.shape[1]
        has_target = (labels[:, 1:] != IGNORE).any(0)  # (T-1,): position j predicts token j+1
        first = int(has_target.nonzero()[0]) if bool(has_target.any()) else max(width - 2, 0)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=width - first)
        logits = out.logits[:, :-1]  # (B, T-1-first, V): predictions for positions first+1 .. T-1
        targets = labels[:, first + 1:]
        total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                ignore_index=IGNORE, reduction="sum")
        return total, int((targets != IGNORE).sum()), logits

    def forward(self, model, batch: dict):
        """(mean loss per completion token, logits)."""
        total, count, logits = self.token_losses(model, batch)
        return total / max(count, 1), logits

    def evaluate(self, model, batches, label_names: list[str], recipe=None) -> dict:
        """Validation loss and perplexity; every `task.generate_every_evals` validations (and at the
        end of training) also exact match and mean score of answers generated for the first
        `task.generate_samples` validation examples."""
        total, count = 0.0, 0
        for batch in batches:
            loss_sum, n, _ = self.token_losses(model, batch)
            total += float(loss_sum)
            count += n
        loss = total / max(count, 1)
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        if recipe is not None and self._generate_now(recipe):
            metrics.update(self._sample_generation(model, recipe))
        return metrics

    @staticmethod
    def _generate_now(recipe) -> bool:
        every = int(task_settings(recipe.cfg.task).generate_every_evals)
        if every <= 0:
            return False
        number = len(getattr(recipe, "history", [])) + 1  # this validation's number (survives resume)
        return number % every == 0 or recipe.step >= recipe.total_steps

    def _sample_generation(self, model, recipe) -> dict:
        settings = task_settings(recipe.cfg.task)
        dataset = recipe.data.splits["validation"]
        rows = dataset.select(range(min(int(settings.generate_samples), len(dataset))))
        prompts = [ids[:n] for ids, n in zip(rows["input_ids"], rows["prompt_length"])]
        texts, _ = generate_texts(model, recipe.tokenizer, prompts, recipe.cfg.generation, recipe.device, recipe.precision)
        scores = score_rows(rows, texts)
        return {"exact_match": float(np.mean(scores >= 1.0)), "score": float(np.mean(scores))}

    # ------------------------------------------------------------------ evaluate command
    def evaluate_split(self, model, tokenizer, dataset, split, data, cfg, eval_cfg, device, precision, out_dir, slice_columns) -> dict:
        """Generate and score answers for one split; loss/perplexity, slices, generations.jsonl and metrics.json in `out_dir`."""
        import torch

        from lmreason.evaluation.report import generation_slices_table, generation_table
        from lmreason.training.batching import TokenizedSplit, sorted_batches, to_device
        from lmreason.training.device import autocast
        from lmreason.ui import console

        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        examples = TokenizedSplit(dataset, self, pad_id)
        total, count = 0.0, 0
        with torch.inference_mode(), autocast(device, precision):
            for indices in sorted_batches(examples.lengths, cfg.batch_size):
                loss_sum, n, _ = self.token_losses(model, to_device(examples.collate(indices), device))
                total += float(loss_sum)
                count += n
        loss = total / max(count, 1)
        prompts = [ids[:n] for ids, n in zip(dataset["input_ids"], dataset["prompt_length"])]
        texts, finished = generate_texts(model, tokenizer, prompts, cfg.generation, device, precision)
        scores = score_rows(dataset, texts)
        correct = scores >= 1.0
        # A column with one value says nothing; one with a value per row is an id (e.g. the expression).
        slice_columns = [c for c in slice_columns if c not in _NOT_SLICES and 1 < len(set(dataset[c])) < len(dataset)]
        metrics = {
            "split": split, "n": len(texts), "exact_match": float(correct.mean()), "score": float(scores.mean()),
            "loss": loss, "perplexity": math.exp(min(loss, 50.0)), "completion_tokens": count,
            "unfinished": float(1 - np.mean(finished)),  # answers cut at generation.max_new_tokens
            "scorer": "reasoning-gym" if _is_reasoning(dataset) else "normalised exact match",
            "generation": {k: cfg.generation[k] for k in ("do_sample", "max_new_tokens", "temperature", "top_p", "batch_size")},
            "slices": {col: generation_slices(correct, scores, dataset[col]) for col in slice_columns},
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "generations.jsonl", "w") as handle:
            meta = {c: dataset[c] for c in slice_columns}
            for i, (prompt, reference) in enumerate(zip(dataset["prompt"], dataset["completion"])):
                row = {"prompt": prompt, "reference": reference, "generated": texts[i], "score": float(scores[i]),
                       "correct": bool(correct[i])}
                row.update({c: values[i] for c, values in meta.items()})
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        console.print(generation_table(metrics, f"{split}: {metrics['n']} examples"))
        for col, slices in metrics["slices"].items():
            console.print(generation_slices_table(slices, col))
        return metrics

    # ------------------------------------------------------------------ infer command
    def infer(self, model, tokenizer, texts, pairs, cfg, device, precision, max_length, saved_cfg) -> list[dict]:
        """A completion per prompt, in input order; a single prompt shown on the terminal streams as it is generated."""
        if pairs is not None:
            raise UserError("text_pair_column is for sentence-pair classification; a generation prompt is one text (set text_pair_column=null)")
        settings = task_settings(saved_cfg.task if saved_cfg is not None else None)
        prompts = encode_prompts(tokenizer, texts, settings, max_length)
        streamer = None
        self.streamed = len(texts) == 1 and not cfg.output
        if self.streamed:
            from transformers import TextStreamer

            streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        generated, finished = generate_texts(model, tokenizer, prompts, cfg.generation, device, precision, streamer)
        return [{"text": text, "generated": out, "finished": done} for text, out, done in zip(texts, generated, finished)]

    def render_predictions(self, predictions: list[dict], cfg) -> None:
        from rich.table import Table

        from lmreason.ui import console

        if self.streamed:  # already printed token by token
            return
        table = Table(title=f"{len(predictions)} generation(s)", title_justify="left")
        table.add_column("prompt", overflow="fold", max_width=60)
        table.add_column("generated", overflow="fold", max_width=60)
        for row in predictions[:200]:
            table.add_row(row["text"], row["generated"])
        console.print(table)
        if len(predictions) > 200:
            console.print(f"... {len(predictions) - 200} more; use output=<file.jsonl> for all of them")


class _MergedWithAdapter:
    """What a LoRA checkpoint saves: merged weights as a plain model dir, the adapter under adapter/ (to resume)."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    def save_pretrained(self, path, **kwargs) -> None:
        merged = copy.deepcopy(self.peft_model).merge_and_unload()  # a copy: training goes on with the adapter
        merged.save_pretrained(path, **kwargs)
        self.peft_model.save_pretrained(Path(path) / "adapter", **kwargs)


def _is_reasoning(dataset) -> bool:
    return {"task", "entry"} <= set(dataset.column_names)


def score_rows(dataset, texts: list[str]) -> np.ndarray:
    """Score per generated answer in [0, 1]: the reasoning-gym scorer for reasoning rows, else
    1.0 for a normalised exact match with the completion, 0.0 otherwise."""
    if _is_reasoning(dataset):
        from lmreason.data.reasoning import score_answer

        columns = {c: dataset[c] for c in ("task", "entry", "generator_config", "prompt", "answer", "completion")
                   if c in dataset.column_names}
        rows = [{c: values[i] for c, values in columns.items()} for i in range(len(texts))]
        return np.array([score_answer(row["task"], text, row) for row, text in zip(rows, texts)], dtype=np.float64)
    references = dataset["completion"]
    return np.array([float(normalize_answer(t) == normalize_answer(r)) for t, r in zip(texts, references)])


def generation_slices(correct: np.ndarray, scores: np.ndarray, values) -> dict[str, dict]:
    """{value: {n, exact_match, score}} per distinct value of a metadata column (numbers in numeric order)."""
    from lmreason.evaluation.metrics import _slice_sort_key

    groups: dict[str, list[int]] = {}
    for i, value in enumerate(values):
        groups.setdefault(str(value), []).append(i)
    return {key: {"n": len(rows), "exact_match": float(correct[rows].mean()), "score": float(scores[rows].mean())}
            for key, rows in sorted(groups.items(), key=lambda kv: _slice_sort_key(kv[0]))}

