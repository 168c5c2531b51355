"""Training micro-batches split into shards side by side on the CPU's threads (lmreason/training/shards.py): the
cuts balance the work, the shards' gradient is the micro-batch's, a run with shards is as reproducible and
resumes as exactly as one without, and where shards do not apply the report says why."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import DROPOUT_RUN, TINY_TRAIN, finetune_in_process, read_json, run_command, tiny_bert_classifier
from safetensors.torch import load_file

from lmreason.errors import UserError
from lmreason.tasks.cls import ClassificationTask
from lmreason.training.shards import Shards, balanced_cuts, check_shards

TWO_THREADS = "device.threads=2"


def padded_cost(lengths, cuts):
    bounds = zip([0, *cuts], [*cuts, len(lengths)])
    return max((b - a) * lengths[b - 1] for a, b in bounds)


def test_balanced_cuts_give_the_smallest_largest_shard_and_no_empty_one():
    rng = np.random.RandomState(0)
    for _ in range(200):
        n, parts = rng.randint(1, 11), rng.randint(1, 4)
        parts = min(parts, n)
        lengths = np.sort(rng.randint(1, 40, n))
        cuts = balanced_cuts(lengths, parts)
        assert len(cuts) == parts - 1 and cuts == sorted(set(cuts)) and all(0 < c < n for c in cuts)
        best = min(padded_cost(lengths, list(c)) for c in itertools.combinations(range(1, n), parts - 1))
        assert padded_cost(lengths, cuts) == best, (lengths, parts, cuts)


def test_a_split_keeps_every_example_once_shortest_first():
    shards = Shards(tiny_bert_classifier(), 2)
    try:
        lengths = np.array([9, 3, 7, 3, 12, 5])
        parts = shards.split(np.array([4, 0, 2, 5]), lengths)
        assert sorted(np.concatenate(parts).tolist()) == [0, 2, 4, 5] and all(len(p) for p in parts)
        assert max(lengths[parts[0]]) <= min(lengths[parts[-1]])  # sorted by length across shards
    finally:
        shards.close()


def batches_of(rows: list[list[int]], labels: list[int]) -> dict:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.tensor(labels)}


ROWS = [[5, 8, 9], [7, 3], [4, 4, 4, 4, 6], [9, 2, 2], [3, 5]]
LABELS = [0, 1, 1, 0, 1]


def shard_batches(task) -> tuple[list[dict], list[int]]:
    """Shards of ROWS (rows 0-1 and 2-4) then the whole batch, and the shards' loss terms."""
    parts = [batches_of(ROWS[:2], LABELS[:2]), batches_of(ROWS[2:], LABELS[2:])]
    return [*parts, batches_of(ROWS, LABELS)], [task.loss_terms(b) for b in parts]


def test_the_shards_gradient_is_the_micro_batchs_and_a_wrong_weighting_is_caught():
    model, task = tiny_bert_classifier(), ClassificationTask()
    shards = Shards(model, 2)
    try:

        def loss_of(batch):
            return task.forward(model, batch)[0]

        batches, terms = shard_batches(task)
        assert terms == [2, 3]
        assert check_shards(shards, model, loss_of, batches, terms) is None
        assert all(p.grad is None for p in model.parameters())  # the check leaves no gradients behind
        problem = check_shards(shards, model, loss_of, batches, [1, 1])  # shards weighed as if equal
        assert problem is not None and problem.startswith("gradients differ by")
    finally:
        shards.close()


def test_parameters_handed_one_gradient_tensor_get_their_own_sums():
    """`h = x + a + b` hands a and b the same gradient tensor: summing a's shards into it in place would
    change b's gradient too."""

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.full((3,), 0.5))
            self.b = torch.nn.Parameter(torch.full((3,), -0.25))
            self.w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))

        def forward(self, x):
            return ((x * self.w + self.a + self.b) ** 2).sum()

    model = Toy()
    data = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, -1.0, 2.0])]  # the parameters' shape: no broadcast
    (model(data[0]) + model(data[1])).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    shards = Shards(model, 2)
    try:
        shards.backward(model, data, [1, 1], 1.0)  # the toy loss is a sum: the shards weigh it 1/2
        for name, p in model.named_parameters():
            assert torch.allclose(p.grad * 2, expected[name]), name
        assert model.a.grad is not model.b.grad
    finally:
        shards.close()


@pytest.mark.parametrize("max_norm", [1e-3, 1e6, float("inf")])
def test_clipping_side_by_side_is_torchs_clip_grad_norm(max_norm):
    model, task = tiny_bert_classifier(), ClassificationTask()
    batches, _ = shard_batches(task)
    task.forward(model, batches[-1])[0].backward()
    grads = [p.grad.clone() for p in model.parameters()]
    expected = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    clipped = [p.grad.clone() for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    shards = Shards(model, 2)
    try:
        total = shards.clip_grad_norm(max_norm)
    finally:
        shards.close()
    assert torch.allclose(total, expected, rtol=1e-6)
    for p, want, before in zip(model.parameters(), clipped, grads):
        assert torch.allclose(p.grad, want, rtol=1e-5, atol=1e-9)
        if max_norm > 1:  # nothing to clip: the gradients are not touched
            assert torch.equal(p.grad, before)


def test_clipping_a_non_finite_gradient_reports_it():
    model = tiny_bert_classifier()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    next(model.parameters()).grad[0, 0] = float("nan")
    shards = Shards(model, 2)
    try:
        assert torch.isnan(shards.clip_grad_norm(1.0))  # the trainer then skips or stops (train.nonfinite)
    finally:
        shards.close()


@pytest.mark.parametrize("amsgrad", [False, True])
def test_the_optimizer_step_side_by_side_is_adamws_step_bit_for_bit(amsgrad):
    from lmreason.training.optim import parameter_groups

    def trained(side_by_side: bool):
        torch.manual_seed(0)
        model = tiny_bert_classifier()
        optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-2, amsgrad=amsgrad, fused=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))  # the lr changes
        shards = Shards(model, 2)
        try:
            for step in range(4):
                for p in model.parameters():
                    p.grad = torch.randn_like(p)
                model.classifier.bias.grad = None if step == 2 else model.classifier.bias.grad  # one without
                (shards.optimizer_step(optimizer) if side_by_side else optimizer.step())
                scheduler.step()
        finally:
            shards.close()
        return model, optimizer

    (want, want_opt), (got, got_opt) = trained(False), trained(True)
    for (name, a), b in zip(want.named_parameters(), got.parameters()):
        assert torch.equal(a, b), name
        for key, value in want_opt.state[a].items():
            assert torch.equal(value, got_opt.state[b][key]), (name, key)


def test_the_optimizer_step_falls_back_to_step_where_it_cannot_split():
    from lmreason.training.shards import _adamw_shares

    model = tiny_bert_classifier()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    fused = torch.optim.AdamW(model.parameters(), fused=True)
    assert _adamw_shares(fused, 2) is None  # the first step creates the moments: step() itself
    fused.step()
    shares = _adamw_shares(fused, 2)
    assert len(shares) == 2 and sum(len(ps) for share in shares for _, ps in share) == len(list(model.parameters()))
    for other in (torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.AdamW(model.parameters(), foreach=True)):
        other.step()
        assert _adamw_shares(other, 2) is None  # another optimizer or kernel: step() itself
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    shards = Shards(model, 2)
    try:
        shards.optimizer_step(sgd)  # goes through step(): SGD moved the weights
    finally:
        shards.close()
    assert all(torch.equal(p, b - 0.1) for p, b in zip(model.parameters(), before))


def test_size_runs_cover_every_parameter_in_order_with_balanced_totals():
    from lmreason.training.shards import _size_runs

    rng = np.random.RandomState(0)
    for _ in range(100):
        sizes = rng.randint(1, 1000, rng.randint(1, 30)).tolist()
        parts = rng.randint(1, 4)
        runs = _size_runs(sizes, parts)
        assert runs[0][0] == 0 and runs[-1][1] == len(sizes) and len(runs) <= parts
        assert all(a < b for a, b in runs) and all(b == c for (_, b), (c, _) in zip(runs, runs[1:]))
        if len(sizes) >= parts:
            assert len(runs) == parts
            largest = max(sum(sizes[a:b]) for a, b in runs)
            assert largest <= sum(sizes) / parts + max(sizes)  # within one parameter of an even share


def test_an_error_in_a_shard_reaches_the_caller():
    model = tiny_bert_classifier()
    shards = Shards(model, 2)
    try:

        def fails(batch):
            raise RuntimeError("shard failed")

        with pytest.raises(RuntimeError, match="shard failed"):
            shards.backward(fails, [{}, {}], [1, 1], 1.0)
    finally:
        shards.close()


def weights(run) -> dict:
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


def test_a_run_with_shards_is_reproducible_and_resumes_exactly(tmp_path, cache_dir, dropout_data, monkeypatch, capsys):
    """Dropout on (random masks, one generator per shard): the same seed gives the same weights bit for bit, and a
    run stopped mid-epoch and resumed gives the uninterrupted run's weights bit for bit."""
    args = [*DROPOUT_RUN, f"data.path={dropout_data}", TWO_THREADS]
    first, again, partial = tmp_path / "first", tmp_path / "again", tmp_path / "partial"
    finetune_in_process(first, cache_dir, *args)
    banner = " ".join(capsys.readouterr().out.split())
    assert "first_token_only, fast_dropout, row_gradient, batch_shards" in banner
    assert "batch_shards" in read_json(first / "metrics.json")["fast_paths"]["applied"]
    finetune_in_process(again, cache_dir, *args)
    monkeypatch.setenv("LMREASON_FAULT_AT", "train_step:10:STOP")
    with pytest.raises(UserError, match="resume="):
        finetune_in_process(partial, cache_dir, *args)
    monkeypatch.delenv("LMREASON_FAULT_AT")
    run_command(
        "finetune", f"resume={partial}", "device=cpu", TWO_THREADS, output_dir=tmp_path / "u", cache_dir=cache_dir
    )
    reference = weights(first)
    for run in (again, partial):
        assert read_json(run / "metrics.json")["history"] == read_json(first / "metrics.json")["history"]
        for name, tensor in weights(run).items():
            assert torch.equal(tensor, reference[name]), (run.name, name)


def test_without_dropout_shards_train_the_weights_of_one_pass(tmp_path, cache_dir, dropout_data):
    args = [
        *DROPOUT_RUN,
        f"data.path={dropout_data}",
        "regularization.hidden_dropout=0",
        "regularization.attention_dropout=0",
        "train.epochs=1",
    ]
    finetune_in_process(tmp_path / "shards", cache_dir, *args, TWO_THREADS)
    finetune_in_process(tmp_path / "one", cache_dir, *args, "device.threads=1")
    shards, one = (read_json(tmp_path / r / "metrics.json") for r in ("shards", "one"))
    assert "batch_shards" in shards["fast_paths"]["applied"]
    assert one["fast_paths"]["skipped"]["batch_shards"] == "one thread"
    reference = weights(tmp_path / "one")
    for name, tensor in weights(tmp_path / "shards").items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    "extra,why",
    [
        (["device.fast_paths=false"], "device.fast_paths=false"),
        (["regularization=adversarial"], "not with adversarial training"),
        (["regularization.hidden_dropout=0.1", "device.fast_paths=true", "train.batch_size=1"], "one example"),
        (["OMP_WAIT_POLICY=ACTIVE"], "OMP_WAIT_POLICY=ACTIVE"),
    ],
    ids=["fast-paths-off", "adversarial", "batch-of-one", "spinning-openmp"],
)
def test_where_shards_do_not_apply_the_report_says_why(extra, why, tmp_path, cache_dir, dropout_data, monkeypatch):
    for setting in [e for e in extra if e.startswith("OMP_")]:  # an environment variable, not an override
        monkeypatch.setenv(*setting.split("="))
        extra = [e for e in extra if e != setting]
    finetune_in_process(
        tmp_path / "run", cache_dir, "data=local", f"data.path={dropout_data}", "train.max_steps=2", TWO_THREADS, *extra
    )
    skipped = read_json(tmp_path / "run" / "metrics.json")["fast_paths"]["skipped"]
    assert why in skipped["batch_shards"]


def test_a_generation_model_trains_with_shards(tmp_path, cache_dir):
    gen = [
        "model=tiny-gpt",
        "task=gen",
        "data=chain_sum",
        "data.sizes={train: 32, validation: 8, test: 8, ood: 8}",
        "train.batch_size=8",
        "train.max_steps=3",
        "generation.max_new_tokens=2",
        TWO_THREADS,
    ]
    finetune_in_process(tmp_path / "gen", cache_dir, *[a for a in TINY_TRAIN if not a.startswith("model=")], *gen)
    metrics = read_json(tmp_path / "gen" / "metrics.json")
    assert "batch_shards" in metrics["fast_paths"]["applied"] and metrics["steps"] == 3
    assert np.isfinite(metrics["history"][-1]["val/loss"])


def test_a_multi_task_run_trains_with_shards(tmp_path, cache_dir):
    """The heads share one encoder whose attention dropout fast_dropout swaps (through the first head), so the
    shards' masks cover every random draw and shards apply."""
    tasks = (
        "task.tasks={a: {data: reasoning, sizes: {train: 32, validation: 16, test: 8, ood: 8}}, "
        "b: {data: reasoning, seed: 5, sizes: {train: 32, validation: 16, test: 8, ood: 8}}}"
    )
    finetune_in_process(tmp_path / "multi", cache_dir, "task=multi", tasks, "train.max_steps=3", TWO_THREADS)
    metrics = read_json(tmp_path / "multi" / "metrics.json")
    assert "batch_shards" in metrics["fast_paths"]["applied"] and metrics["steps"] == 3
    assert np.isfinite(metrics["history"][-1]["val/loss"])
