"""Adversarial training (regularization=adversarial): FGM, PGD and FreeLB on the word-embedding output.

The attack itself on tiny random models (a BERT classifier and a Llama decoder): each perturbation's
per-example L2 norm respects epsilon and spares pad positions, pgd/freelb run K ascent steps (and only
freelb trains on each), the ascent raises the loss. Then through `lmreason finetune`: epsilon 0 gives
exactly the plain run's weights, task=cls and task=gen train with `regularization=[l2,adversarial]` and log
train/adv_loss, a resume is exact, and bad values fail with one line before any data is read.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    TINY_GEN_TRAIN,
    assert_one_line_error,
    finetune_in_process,
    read_json,
    run_cli,
    run_command,
    tiny_bert_classifier,
    write_sentiment_csv,
)
from omegaconf import OmegaConf

from lmreason.errors import UserError
from lmreason.training.adversarial import AdversarialSettings

GEN_TRAIN = [*TINY_GEN_TRAIN, "train.log_every_steps=1"]


def settings(method: str, epsilon: float = 0.5, steps: int = 3, step_size=None, weight: float = 0.5):
    cfg = OmegaConf.create(
        {"method": method, "epsilon": epsilon, "steps": steps, "step_size": step_size, "weight": weight}
    )
    return AdversarialSettings.from_config(cfg)


def tiny_decoder():
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def padded_batch():
    """Three examples, the last two padded (lengths 7, 5, 3)."""
    torch.manual_seed(1)
    ids = torch.randint(3, 60, (3, 7))
    mask = (torch.arange(7)[None, :] < torch.tensor([7, 5, 3])[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}


def loss_of(model, batch):
    """What a task's forward returns: the mean cross-entropy (of the label, or of the next tokens for a decoder)."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if hasattr(model, "classifier"):  # the BERT sequence classifier
        return torch.nn.functional.cross_entropy(model(**inputs).logits, batch["labels"])
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return model(**inputs, labels=labels).loss


MODELS = {"cls": lambda: tiny_bert_classifier().eval(), "gen": tiny_decoder}  # eval: no dropout


def attack_once(model, batch, s: AdversarialSettings):
    """One micro-batch as the trainer runs it: (attack, clean loss, adversarial loss, passes, param backwards)."""
    passes, param_backwards = [], []
    weight = model.get_input_embeddings().weight
    handle = weight.register_hook(lambda grad: param_backwards.append(1))

    def forward(final: bool):
        passes.append(final)
        return loss_of(model, batch)

    with s.attack(model.get_input_embeddings(), batch["attention_mask"]) as attack:
        clean = forward(False)
        adversarial = attack.train(clean, forward, lambda loss: loss)
    handle.remove()
    return attack, clean.detach(), adversarial, passes, len(param_backwards)


# --------------------------------------------------------------------------- the attack
@pytest.mark.parametrize("task", ["cls", "gen"])
@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb"])
def test_each_perturbation_respects_epsilon_per_example_and_spares_pads(task, method):
    model, batch = MODELS[task](), padded_batch()
    # a step of 2 epsilon: the projection onto the ball must bind from the first step on
    s = settings(method, epsilon=0.5, steps=3, step_size=None if method == "fgm" else 1.0)
    attack, _, _, _, _ = attack_once(model, batch, s)
    norms = torch.stack(attack.norms)  # (passes, examples)
    assert norms[0].abs().max() == 0  # the clean pass
    assert (norms[1:] <= 0.5 * (1 + 1e-5)).all()
    # the bound binds per example (each example on the sphere), not on the batch's norm
    assert torch.allclose(norms[1:], torch.full_like(norms[1:], 0.5), rtol=1e-5)
    pads = batch["attention_mask"] == 0
    assert attack.delta.detach()[pads].abs().max() == 0 and attack.delta.detach()[~pads].abs().max() > 0


@pytest.mark.parametrize("task", ["cls", "gen"])
def test_fgm_ascent_raises_the_loss_and_epsilon_zero_leaves_it(task):
    model, batch = MODELS[task](), padded_batch()
    _, clean, adversarial, _, _ = attack_once(model, batch, settings("fgm", epsilon=1.0))
    assert adversarial > clean  # a step along the gradient: the loss goes up
    _, clean, adversarial, _, _ = attack_once(model, batch, settings("fgm", epsilon=0.0))
    assert adversarial == clean


@pytest.mark.parametrize("method,forwards,param_backwards", [("fgm", 2, 2), ("pgd", 5, 2), ("freelb", 5, 5)])
def test_pgd_and_freelb_run_k_ascent_steps_and_only_freelb_trains_on_each(method, forwards, param_backwards):
    model, batch = MODELS["cls"](), padded_batch()
    s = settings(method, epsilon=0.5, steps=4)
    attack, _, _, passes, backwards = attack_once(model, batch, s)
    assert len(passes) == forwards == s.passes and len(attack.norms) == forwards
    assert passes == [False] * (forwards - 1) + [True]  # DDP synchronises in the last pass only
    assert backwards == param_backwards  # pgd's intermediate passes compute delta's gradient only
    if method != "fgm":  # steps of epsilon / K: the perturbation grows by at most one step each time
        norms = [float(n.max()) for n in attack.norms]
        assert all(b <= a + 0.5 / 4 + 1e-6 for a, b in zip(norms, norms[1:]))
        assert norms[-1] > norms[1]


def test_freelb_trains_on_the_mean_of_its_ascent_losses():
    model, batch = MODELS["cls"](), padded_batch()
    losses = []

    def forward(final):
        losses.append(loss_of(model, batch))
        return losses[-1]

    with settings("freelb", steps=3).attack(model.get_input_embeddings(), batch["attention_mask"]) as attack:
        adversarial = attack.train(forward(False), forward, lambda loss: loss)
    assert adversarial == pytest.approx(float(sum(loss.detach() for loss in losses[1:])) / 3, rel=1e-6)


def test_settings_resolve_the_step_size_and_name_the_cost():
    assert settings("pgd", epsilon=0.6, steps=3).step_size == pytest.approx(0.2)  # null: epsilon / steps
    assert settings("freelb", epsilon=0.6, steps=3, step_size=0.5).step_size == 0.5
    fgm = settings("fgm", epsilon=1.0, steps=3)
    assert (fgm.steps, fgm.step_size) == (1, 1.0)  # one step of length epsilon, whatever steps says
    assert fgm.describe() == "fgm eps 1, weight 0.5: 2 forward + 2 backward per micro-batch"
    assert settings("pgd", epsilon=1.0, steps=3).describe() == (
        "pgd eps 1, K 3, step 0.333, weight 0.5: 4 forward + 4 backward per micro-batch"
    )


# --------------------------------------------------------------------------- through finetune
def final_weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))


def scalar_tags(run_dir) -> set:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event_file in (run_dir / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


NO_DROPOUT = ["regularization.hidden_dropout=0.0", "regularization.attention_dropout=0.0"]


@pytest.mark.parametrize("task,fast_paths", [("cls", "false"), ("cls", "true"), ("gen", "true")])
def test_fgm_with_epsilon_zero_gives_exactly_the_weights_of_the_plain_run(
    task, fast_paths, tmp_path, cache_dir, monkeypatch
):
    import lmreason.commands.finetune as finetune

    data = write_sentiment_csv(tmp_path / "data.csv", 60, seed=5)
    base = (
        ["model=tiny-bert", "data=local", f"data.path={data}", "device=cpu", "device.precision=fp32"]
        + ["optimizer.lr=3e-3", "scheduler.warmup_steps=0", "train.batch_size=16"]
        if task == "cls"
        else GEN_TRAIN
    )
    # no dropout: both forwards of a micro-batch must compute the same (tiny-gpt has none to turn off)
    plain_reg, adv_reg = ("dropout", "[dropout,adversarial]") if task == "cls" else ("none", "adversarial")
    common = [*base, "train.max_steps=3", "train.early_stopping.enabled=false", f"device.fast_paths={fast_paths}"]
    common += ["device.threads=1"]  # bit for bit needs the same reduction order: a busy machine would change it
    common += NO_DROPOUT if task == "cls" else []
    run_command("finetune", *common, f"regularization={plain_reg}", output_dir=tmp_path / "plain", cache_dir=cache_dir)
    monkeypatch.setattr(finetune, "validate", lambda command, cfg: None)  # epsilon 0 is refused by validate
    adversarial = [*common, f"regularization={adv_reg}"]
    run_command(
        "finetune",
        *adversarial,
        "regularization.adversarial.epsilon=0.0",
        output_dir=tmp_path / "adv",
        cache_dir=cache_dir,
    )
    plain, zero = final_weights(tmp_path / "plain"), final_weights(tmp_path / "adv")
    assert plain.keys() == zero.keys()
    assert all(torch.equal(plain[k], zero[k]) for k in plain)  # 0.5 g + 0.5 g == g, bit for bit
    # epsilon 1 does change them: the comparison can fail
    run_command("finetune", *adversarial, output_dir=tmp_path / "adv1", cache_dir=cache_dir)
    changed = final_weights(tmp_path / "adv1")
    assert not all(torch.equal(plain[k], changed[k]) for k in plain)


def test_cls_trains_with_l2_and_pgd_in_bf16_and_logs_the_adversarial_loss(tmp_path, cache_dir, capsys):
    data = write_sentiment_csv(tmp_path / "data.csv", 80, seed=6)
    results = finetune_in_process(
        tmp_path / "run",
        cache_dir,
        "data=local",
        f"data.path={data}",
        "train.max_steps=4",
        "train.log_every_steps=1",
        "regularization=[l2,adversarial]",
        "regularization.adversarial.method=pgd",
        "regularization.adversarial.steps=2",
        "device.precision=bf16",  # autocast: the perturbation joins the embedding output in its dtype
    )
    assert results["status"] == "completed" and results["steps"] == 4 and results["precision"] == "bf16"
    assert results["adversarial"] == "pgd eps 0.1, K 2, step 0.05, weight 0.5: 3 forward + 3 backward per micro-batch"
    assert "pgd eps 0.1, K 2" in capsys.readouterr().out  # the banner names it with its cost
    cfg = OmegaConf.load(tmp_path / "run" / "checkpoints" / "last" / "config.yaml")
    assert cfg.regularization.weight_decay == 0.01 and cfg.regularization.adversarial.method == "pgd"  # both
    assert {"train/loss", "train/adv_loss"} <= scalar_tags(tmp_path / "run")


def test_gen_trains_with_l2_and_freelb_and_logs_the_adversarial_loss(tmp_path, cache_dir):
    results = run_command(
        "finetune",
        *GEN_TRAIN,
        "train.max_steps=3",
        "train.grad_accum_steps=2",  # accumulation: the attack runs per micro-batch
        "regularization=[l2,adversarial]",
        "regularization.adversarial.method=freelb",
        "regularization.adversarial.steps=2",
        output_dir=tmp_path / "run",
        cache_dir=cache_dir,
    )
    assert results["status"] == "completed" and results["steps"] == 3
    assert results["adversarial"].startswith("freelb eps 0.1, K 2")
    assert {"train/loss", "train/adv_loss"} <= scalar_tags(tmp_path / "run")


def test_resume_after_an_interruption_gives_the_weights_of_an_uninterrupted_run(tmp_path, cache_dir, monkeypatch):
    data = write_sentiment_csv(tmp_path / "data.csv", 80, seed=7)
    run = [
        "data=local",
        f"data.path={data}",
        "train.max_steps=6",
        "train.early_stopping.enabled=false",
        "regularization=[dropout,adversarial]",  # dropout: the extra forwards draw masks a resume must replay
        "regularization.adversarial.method=pgd",
        "regularization.adversarial.steps=2",
        "device.threads=1",  # bit for bit needs the same reduction order in every run, however busy the machine
    ]
    finetune_in_process(tmp_path / "whole", cache_dir, *run)
    monkeypatch.setenv("LMREASON_FAULT_AT", "train_step:3:STOP")
    with pytest.raises(UserError, match="resume="):
        finetune_in_process(tmp_path / "partial", cache_dir, *run)
    assert read_json(tmp_path / "partial" / "metrics.json")["status"] == "interrupted"
    monkeypatch.delenv("LMREASON_FAULT_AT")
    run_command("finetune", f"resume={tmp_path / 'partial'}", output_dir=tmp_path / "unused", cache_dir=cache_dir)
    whole, resumed = final_weights(tmp_path / "whole"), final_weights(tmp_path / "partial")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["regularization.adversarial.epsilon=0"], "regularization.adversarial.epsilon=0.0: the perturbation's L2"),
        (["regularization.adversarial.epsilon=-1"], "regularization.adversarial.epsilon=-1.0: the perturbation's L2"),
        (["regularization.adversarial.method=pgd", "regularization.adversarial.steps=0"], "steps=0: pgd and freelb"),
        (["regularization.adversarial.method=pgd", "regularization.adversarial.step_size=0"], "step_size=0.0: must"),
        (["regularization.adversarial.step_size=0.1"], "step_size=0.1 with method=fgm: FGM takes one step"),
        (["regularization.adversarial.weight=1"], "weight=1.0: the adversarial loss's share must be in (0, 1)"),
    ],
)
def test_bad_adversarial_values_fail_with_one_line_before_any_data_is_read(overrides, expected, tmp_path, cache_dir):
    with pytest.raises(UserError) as exc:  # data.path does not exist: validation must come first
        finetune_in_process(
            tmp_path / "run", cache_dir, "data=local", f"data.path={tmp_path / 'missing.csv'}",
            "regularization=[l2,adversarial]", *overrides,
        )  # fmt: skip
    assert expected in str(exc.value) and "\n" not in str(exc.value)


def test_an_unknown_method_fails_at_compose_time(tmp_path, cache_dir):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="regularization.adversarial.method=fgsm") as exc:
        finetune_in_process(
            tmp_path / "run", cache_dir, "regularization=adversarial", "regularization.adversarial.method=fgsm"
        )
    assert "expected one of [fgm, pgd, freelb]" in str(exc.value.__cause__)


def test_the_cli_prints_a_bad_epsilon_as_one_line(tmp_path, cache_dir):
    proc = run_cli(
        "finetune", "regularization=[l2,adversarial]", "regularization.adversarial.epsilon=-0.5",
        cache_dir=cache_dir, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert_one_line_error(proc, "regularization.adversarial.epsilon=-0.5: the perturbation's L2 bound must be > 0")


@pytest.mark.slow  # torchrun: two processes
def test_two_process_ddp_with_pgd_matches_one_process(tmp_path, cache_dir):
    from test_distributed import COMMON, GLOBAL_BATCH, assert_same_training, torchrun

    data = write_sentiment_csv(tmp_path / "data.csv", 60, seed=21)
    adversarial = [
        "regularization=adversarial",
        "regularization.adversarial.method=pgd",
        "regularization.adversarial.steps=2",
    ]
    ddp = [*COMMON, *adversarial, f"data.path={data}"]
    run_command(
        "finetune", *ddp, f"train.batch_size={GLOBAL_BATCH}", output_dir=tmp_path / "single", cache_dir=cache_dir
    )
    (tmp_path / "ddp").mkdir()
    torchrun("finetune", *ddp, f"train.batch_size={GLOBAL_BATCH // 2}", cache_dir=cache_dir, cwd=tmp_path / "ddp")
    (run_dir,) = [p for p in (tmp_path / "ddp" / "outputs" / "finetune").glob("*/*") if p.is_dir()]
    assert read_json(run_dir / "metrics.json")["adversarial"].startswith("pgd eps 0.1, K 2")
    assert_same_training(run_dir, tmp_path / "single")  # the attack per example: the same on a rank's share
