"""Reasoning-gym problems as lmreason splits: easy settings in distribution, harder ones out of it.

`generate_reasoning_splits` draws train/validation/test from a generator with
`id_config` and an `ood` split from the same generator with harder `ood_config`,
so the gap between test and ood accuracy measures how far the model's skill
carries beyond what it was trained on. `score_answer` scores generated text with
the task's own reasoning-gym scorer.

Every row, in both modes, carries the same slicing columns:
  task, distribution ("id"/"ood"), source_seed, source_index  where the problem came from:
      `reasoning_gym.create_dataset(task, seed=source_seed, size=source_index + 1, **config)[source_index]`
  meta_<key>         scalar fields of the entry's `metadata` (nested dicts flattened with `_`)
  cfg_<knob>[_min|_max]  the generator's difficulty settings stamped on the entry (`metadata.difficulty`)
  difficulty         one number per problem where the task has a meaningful one (see
                     `difficulty_definition`); the column is absent for tasks without one
A metadata key is kept only where every row of every split has it with one scalar type,
so the splits share one schema and can be concatenated.

Per-task `difficulty` (the explicit table `_DIFFICULTY`; other tasks use the generic rule
in `_generic_difficulty`: the generator's single difficulty knob, per problem when the
metadata records it):
  family_relationships  people in the family (metadata.family_size)
  propositional_logic   premises given (len(metadata.premises))
  circuit_logic         terms in the circuit (len(metadata.term_strings))
  knights_knaves        people on the island (n_people setting)
  letter_counting       words in the text span (len(metadata.span))
  basic_arithmetic, chain_sum, decimal_chain_sum, products   terms in the expression
  leg_counting          kinds of animals (metadata.num_animals)
  course_schedule       courses (len(metadata.courses))
  syllogism, aiw        none (no per-problem difficulty knob)
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import random
from collections import Counter
from collections.abc import Mapping
from typing import Any, Callable

from lmreason.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test", "ood")  # generation order: eval splits are deduplicated against earlier ones
MODES = ("cls", "gen")
MAX_CLS_LABELS = 50  # more distinct answers than this in train is not a label set
MAX_ROUNDS = 10  # generator draws per split before deduplication gives up
MAX_META_STR = 64  # longer metadata strings (puzzles, code) are not slicing keys
_RESERVED_CONFIG_KEYS = ("seed", "size")  # lmreason sets these from `seed` and `sizes`

# task -> (what the number means, how to read it from an entry's metadata)
_DIFFICULTY: dict[str, tuple[str, Callable[[dict], Any]]] = {
    "family_relationships": ("people in the family", lambda m: m["family_size"]),
    "propositional_logic": ("premises given", lambda m: len(m["premises"])),
    "circuit_logic": ("terms in the circuit", lambda m: len(m["term_strings"])),
    "knights_knaves": ("people on the island", lambda m: m["difficulty"]["n_people"]),
    "letter_counting": ("words in the text span", lambda m: len(m["span"])),
    "basic_arithmetic": ("terms in the expression", lambda m: m["num_terms"]),
    "chain_sum": ("terms in the expression", lambda m: m["num_terms"]),
    "decimal_chain_sum": ("terms in the expression", lambda m: m["num_terms"]),
    "products": ("terms in the expression", lambda m: m["num_terms"]),
    "leg_counting": ("kinds of animals", lambda m: m["num_animals"]),
    "course_schedule": ("courses", lambda m: len(m["courses"])),
    "syllogism": ("none", lambda m: None),
    "aiw": ("none", lambda m: None),
}


# ---------------------------------------------------------------------------------------------
# public API


def difficulty_definition(task: str) -> str | None:
    """What the `difficulty` column means for `task`, or None when rows have no such column.

    Raises:
        UserError: unknown task.
    """
    _check_task(task)
    if task in _DIFFICULTY:
        meaning = _DIFFICULTY[task][0]
        return None if meaning == "none" else meaning
    _, config_cls = _registry()[task]
    knobs = [f.name for f in dataclasses.fields(config_cls) if f.name not in _RESERVED_CONFIG_KEYS]
    return (
        f"the generator's single difficulty knob (metadata.difficulty; settings: {', '.join(knobs)}), when it has one"
    )


def generate_reasoning_splits(
    task: str,
    sizes: dict[str, int],
    seed: int,
    id_config: dict,
    ood_config: dict | None,
    mode: str = "cls",
) -> dict[str, list[dict]]:
    """Generate split name -> rows for a reasoning-gym task.

    train/validation/test come from `id_config`, ood from `ood_config` (skipped when it is
    None). Each split draws from its own seed derived from `seed`; validation, test and ood
    drop any problem whose question is already in train or an earlier split (or repeats
    within the split) and draw again until they have the asked size. Splits of size 0 are
    left out of the result.

    Rows for mode "cls": text, label (+ slicing columns, see the module docstring).
    Rows for mode "gen": prompt, completion, answer, entry (the reasoning-gym entry as JSON),
    generator_config (the settings as JSON; some scorers read them) (+ slicing columns).

    Raises:
        UserError: unknown task, mode or split name; a size that is not a non-negative int;
            an unknown or invalid generator setting; ood_config without an ood size or equal
            to id_config; a cls task whose answers are missing, single or too many
            (> MAX_CLS_LABELS) to be a label set; a split that deduplication cannot fill.
    """
    sizes, seed, id_config, ood_config = check_request(task, sizes, seed, id_config, ood_config, mode)
    if ood_config is None and sizes.get("ood"):
        log.info("sizes.ood=%d ignored: ood_config is null, so there is no ood split", sizes["ood"])
    plan = [(split, id_config, "id") for split in ("train", "validation", "test")]
    if ood_config is not None:
        plan.append(("ood", ood_config, "ood"))

    entries: dict[str, list[tuple[dict, int, int]]] = {}  # split -> [(entry, source_seed, source_index)]
    seen: set[str] = set()  # questions of train and earlier eval splits
    for split, config, _distribution in plan:
        n = sizes.get(split, 0)
        if n == 0:
            continue
        entries[split] = _draw(task, config, n, seed, split, seen, dedupe=split != "train")
        seen.update(entry["question"] for entry, _, _ in entries[split])
        if split == "train":
            _check_answers(task, [e for e, _, _ in entries[split]], mode)
    if mode == "cls":
        _warn_unseen_labels(entries)

    distribution_of = {split: dist for split, _, dist in plan}
    config_of = {split: config for split, config, _ in plan}
    rows = {
        split: [_row(task, entry, s, i, distribution_of[split], config_of[split], mode) for entry, s, i in items]
        for split, items in entries.items()
    }
    return _common_schema(rows)


def score_answer(task: str, generated: str, row: dict) -> float:
    """Score generated text against a row with the task's own reasoning-gym scorer (0..1).

    Uses the row's `entry` (gen rows) when present, else a minimal entry from the row's
    question and answer (cls rows), and the generator settings in `generator_config`.

    Raises:
        UserError: unknown task.
    """
    _check_task(task)
    if row.get("entry"):
        entry = json.loads(row["entry"])
    else:
        question = row.get("prompt", row.get("text", ""))
        answer = row.get("answer", row.get("completion", row.get("label")))
        entry = {"question": question, "answer": answer, "metadata": {}}
    dataset = _scoring_dataset(task, row.get("generator_config") or "{}")
    return float(dataset.score_answer(generated, entry))


# ---------------------------------------------------------------------------------------------
# validation


def check_request(task: str, sizes: Mapping, seed: Any, id_config: Any, ood_config: Any, mode: str = "cls"):
    """The checks of `generate_reasoning_splits` that draw nothing: (sizes, seed, id_config, ood_config), plain.

    `lmreason.validation` runs them for `data=reasoning` before any tokenizer or model is loaded.

    Raises:
        UserError: unknown task, mode or split name; a size that is not a non-negative int; an unknown or
            invalid generator setting; ood_config without an ood size or equal to id_config; no examples asked.
    """
    _check_task(task)
    if mode not in MODES:
        raise UserError(f"mode='{mode}' is unknown; use one of {', '.join(MODES)} (task=cls or task=gen)")
    sizes = _check_sizes(sizes)
    seed = _check_seed(seed)
    id_config = _check_config(task, id_config, "id_config")
    if ood_config is not None:
        ood_config = _check_config(task, ood_config, "ood_config")
        if "ood" not in sizes:
            raise UserError(
                "ood_config is set but sizes has no 'ood' entry; add sizes.ood=N (0 to skip it) or set ood_config=null"
            )
        if _full_config(task, ood_config) == _full_config(task, id_config):
            raise UserError(
                f"ood_config {ood_config} gives the same {task} settings as id_config {id_config}; "
                "set harder settings in ood_config (e.g. larger sizes or ranges) or set ood_config=null"
            )
    splits = ("train", "validation", "test") + (("ood",) if ood_config is not None else ())
    if not any(sizes.get(split, 0) for split in splits):
        raise UserError(f"sizes={sizes} asks for no examples; give e.g. sizes.train=2000, sizes.test=500")
    return sizes, seed, id_config, ood_config


def _registry() -> dict[str, tuple[type, type]]:
    import reasoning_gym  # noqa: F401  (importing registers the generators)
    from reasoning_gym.factory import DATASETS

    return DATASETS


def _check_task(task: str) -> None:
    names = _registry()
    if not isinstance(task, str) or task not in names:
        close = difflib.get_close_matches(str(task), names, n=3, cutoff=0.5)
        hint = (
            f"did you mean {', '.join(close)}?"
            if close
            else f"see {len(names)} names in reasoning_gym.factory.DATASETS"
        )
        raise UserError(f"reasoning task '{task}' is not a reasoning-gym generator; {hint}")


def _check_sizes(sizes: Mapping) -> dict[str, int]:
    sizes = _plain(sizes)
    if not isinstance(sizes, Mapping):
        raise UserError(f"sizes={sizes!r} must be a mapping of split -> count, e.g. {{train: 2000, test: 500}}")
    out = {}
    for split, n in sizes.items():
        if split not in SPLITS:
            close = difflib.get_close_matches(str(split), SPLITS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"sizes.{split}: unknown split{hint}; use {', '.join(SPLITS)}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UserError(f"sizes.{split}={n!r} must be a whole number >= 0")
        out[split] = n
    return out


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"seed={seed!r} must be an integer")
    return seed


def _check_config(task: str, config: Any, where: str) -> dict:
    """Check generator settings against the task's config dataclass; return a plain dict."""
    config = {} if config is None else _plain(config)
    if not isinstance(config, Mapping):
        raise UserError(f"{where}={config!r} must be a mapping of generator settings, e.g. {{min_family_size: 3}}")
    _, config_cls = _registry()[task]
    valid = [f.name for f in dataclasses.fields(config_cls) if f.name not in _RESERVED_CONFIG_KEYS]
    for key in config:
        if key in _RESERVED_CONFIG_KEYS:
            raise UserError(f"{where}.{key}: lmreason sets the generator's {key}; use data.seed / data.sizes instead")
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(f"{where}.{key}: not a {task} setting; {hint}valid settings: {', '.join(valid)}")
    try:
        _full_config(task, dict(config))
    except (AssertionError, ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"{where}={dict(config)}: invalid {task} settings ({reason}); fix the values") from None
    return dict(config)


def _full_config(task: str, config: dict) -> Any:
    """The generator's config object with defaults filled in (validated)."""
    _, config_cls = _registry()[task]
    obj = config_cls(**config)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _check_answers(task: str, train: list[dict], mode: str) -> None:
    if any(e.get("answer") is None for e in train):
        raise UserError(
            f"task {task} has no single reference answer (answer is None) to train on; "
            "pick another reasoning task, or use it only for evaluation (sizes.train=0) with task=gen"
        )
    if mode != "cls":
        return
    labels = Counter(str(e["answer"]) for e in train)
    if len(labels) > MAX_CLS_LABELS:
        raise UserError(
            f"task {task}: train has {len(labels)} distinct answers (more than {MAX_CLS_LABELS}), too many for "
            "a classification label set; use task=gen to generate the answer instead"
        )
    if len(labels) < 2:
        raise UserError(
            f"task {task}: every train answer is '{next(iter(labels))}', nothing to classify; "
            "change id_config so answers vary, or use task=gen"
        )


def _warn_unseen_labels(entries: dict[str, list[tuple[dict, int, int]]]) -> None:
    if "train" not in entries:
        return
    known = {str(e["answer"]) for e, _, _ in entries["train"]}
    for split, items in entries.items():
        unseen = Counter(str(e["answer"]) for e, _, _ in items if str(e["answer"]) not in known)
        if unseen:
            share = sum(unseen.values()) / len(items)
            log.warning(
                "%s: %.0f%% of rows have labels never seen in train (%s); a classifier cannot predict them",
                split,
                100 * share,
                ", ".join(sorted(unseen)),
            )


def _plain(obj: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists; anything else unchanged."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover
        return obj
    if OmegaConf.is_config(obj):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


# ---------------------------------------------------------------------------------------------
# generation


def _split_seed(seed: int, split: str, round_num: int) -> int:
    # Generators seed item i with Random(seed + i), so neighbouring seeds share items: draw each
    # split's seed at random from a wide range (string seeding is stable across processes).
    return random.Random(f"lmreason:{seed}:{split}:{round_num}").getrandbits(30)


def _draw(
    task: str, config: dict, n: int, seed: int, split: str, seen: set[str], dedupe: bool
) -> list[tuple[dict, int, int]]:
    """n entries for one split: (entry, source_seed, source_index), skipping `seen` questions when dedupe."""
    import reasoning_gym

    out: list[tuple[dict, int, int]] = []
    taken: set[str] = set()
    drawn = 0
    for round_num in range(MAX_ROUNDS):
        need = n - len(out)
        # After the first round, over-draw: the rate at which draws collide is already known to be high.
        want = need if round_num == 0 else max(2 * need, 32)
        source_seed = _split_seed(seed, split, round_num)
        dataset = reasoning_gym.create_dataset(task, seed=source_seed, size=want, **config)
        for index in range(want):
            entry = dataset[index]
            drawn += 1
            question = entry["question"]
            if dedupe and (question in seen or question in taken):
                continue
            taken.add(question)
            out.append((entry, source_seed, index))
            if len(out) == n:
                return out
    raise UserError(
        f"sizes.{split}={n}: only {len(out)} {task} problems not already in train or an earlier split came out of "
        f"{drawn} draws with settings {config or 'defaults'}; the settings allow too few distinct problems: "
        f"lower sizes.{split} or widen the settings"
    )


# ---------------------------------------------------------------------------------------------
# rows


def _row(task: str, entry: dict, source_seed: int, index: int, distribution: str, config: dict, mode: str) -> dict:
    answer = "" if entry.get("answer") is None else str(entry["answer"])
    if mode == "cls":
        row: dict[str, Any] = {"text": entry["question"], "label": answer}
    else:
        row = {"prompt": entry["question"], "completion": answer, "answer": answer}
    row.update(task=task, distribution=distribution, source_seed=source_seed, source_index=index)
    metadata = entry.get("metadata") or {}
    row.update(_flatten_metadata(metadata))
    difficulty = _difficulty(task, metadata)
    if difficulty is not None:
        row["difficulty"] = difficulty
    if mode == "gen":
        row["entry"] = json.dumps(entry, default=_json_default, ensure_ascii=False)
        row["generator_config"] = json.dumps(config, sort_keys=True, default=_json_default)
    return row


def _scalar(value: Any) -> Any:
    """value as a str/int/float/bool, or None when it is not a scalar."""
    if hasattr(value, "item") and type(value).__module__ == "numpy":  # numpy scalar
        value = value.item()
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= MAX_META_STR else None
    return None


def _flatten_metadata(metadata: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Any, depth: int) -> None:
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping):
                if depth < 2:
                    walk(f"{name}_", value, depth + 1)
            elif (scalar := _scalar(value)) is not None:
                out[name] = scalar

    meta = {k: v for k, v in metadata.items() if k not in ("source_dataset", "source_index", "difficulty")}
    walk("meta_", meta, 0)
    knobs = metadata.get("difficulty")
    if isinstance(knobs, Mapping):
        for key, value in knobs.items():
            if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
                out[f"cfg_{key}_min"], out[f"cfg_{key}_max"] = _scalar(value[0]), _scalar(value[1])
            elif _is_number(value) or isinstance(value, (str, bool)):
                if (scalar := _scalar(value)) is not None:
                    out[f"cfg_{key}"] = scalar
    elif _is_number(knobs):
        out["cfg_difficulty"] = _scalar(knobs)
    return out


def _is_number(value: Any) -> bool:
    value = _scalar(value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _difficulty(task: str, metadata: dict) -> int | float | None:
    if task in _DIFFICULTY:
        try:
            value = _DIFFICULTY[task][1](metadata)
        except (KeyError, TypeError):
            return None
    else:
        value = _generic_difficulty(metadata)
    return _scalar(value) if _is_number(value) else None


def _generic_difficulty(metadata: dict) -> Any:
    """The generator's one difficulty knob: its per-problem value in the metadata, else the setting.

    `metadata.difficulty` records the generator's difficulty settings. With exactly one knob,
    e.g. {"n": [10, 30]}, the problem's own value (`metadata.n`) is its difficulty; a fixed
    setting (e.g. {"difficulty": 5}) is used as is. Several knobs: no single difficulty.
    """
    knobs = metadata.get("difficulty")
    if _is_number(knobs):
        return knobs
    if not isinstance(knobs, Mapping) or len(knobs) != 1:
        return None
    ((key, setting),) = knobs.items()
    if _is_number(metadata.get(key)):
        return metadata[key]
    return setting if _is_number(setting) else None


def _common_schema(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Keep only keys every row has with one scalar type (int mixed with float becomes float)."""
    all_rows = [row for split_rows in rows.values() for row in split_rows]
    keys = set(all_rows[0])
    types: dict[str, set[type]] = {}
    for row in all_rows:
        keys &= set(row)
        for key, value in row.items():
            types.setdefault(key, set()).add(type(value))
    as_float = {k for k in keys if types[k] == {int, float}}
    keep = [k for k in all_rows[0] if k in keys and (len(types[k]) == 1 or k in as_float)]
    dropped = sorted(set(types) - set(keep))
    if dropped:
        log.debug("metadata keys dropped (missing in some rows or of mixed types): %s", ", ".join(dropped))
    return {
        split: [{k: (float(row[k]) if k in as_float else row[k]) for k in keep} for row in split_rows]
        for split, split_rows in rows.items()
    }


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return str(obj)


@functools.lru_cache(maxsize=32)
def _scoring_dataset(task: str, config_json: str) -> Any:
    """A generator instance to call `score_answer` on (some scorers read their settings)."""
    import reasoning_gym

    return reasoning_gym.create_dataset(task, seed=0, size=1, **json.loads(config_json))
