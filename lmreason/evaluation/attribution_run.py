"""`evaluate diagnostics=attribution`: per split, attributions of chosen examples with faithfulness, a sanity
check and (task=cls) the words the model leans on; with robustness, its flipped examples before and after.

The classifier's figures are computed by lmreason.evaluation.attribution, a generation model's by
lmreason.evaluation.gen_attribution; this module picks one per task, writes the files and prints the tables.
"""

from __future__ import annotations

from pathlib import Path

from lmreason.evaluation.attribution import (
    attribution_of_split,
    check_config,
    faithfulness_table,
    label_association,
    leaned_on_table,
)


def run_attribution(
    session, task, requests, acfg, run_dir: Path | None = None, train_dataset=None, label_names: list[str] | None = None
) -> dict:
    """`diagnostics=attribution` on each split request: eval/<split>/attributions.jsonl (every attributed example) and
    eval/<split>/attribution.json (faithfulness vs random, sanity check, words leaned on); prints the tables.

    The examples per split: the `errors` most confident errors and `correct` correct ones (seeded draw).
    Word association (PMI) comes from `train_dataset` when given (the run's training split).
    Raises:
        UserError: bad settings.
    """
    from lmreason.evaluation.outputs import write_json, write_jsonl
    from lmreason.ui import console

    check_config(acfg, key="diagnostics.attribution")
    association = None
    if task.name == "cls" and train_dataset is not None and label_names:
        association = label_association(list(train_dataset["text"]), [label_names[y] for y in train_dataset["labels"]])
    results = {}
    for request in requests:
        if task.name == "gen":
            from lmreason.evaluation.gen_attribution import gen_attribution_of_split

            payload, records = gen_attribution_of_split(session, task, request, acfg)
        else:
            payload, records = attribution_of_split(session, request, acfg, association)
        write_jsonl(request.out_dir / "attributions.jsonl", records)
        write_json(request.out_dir / "attribution.json", payload)
        results[request.name] = payload
        if payload["delta"]["warning"]:
            console.print(f"[yellow]{request.name}: {payload['delta']['warning']}[/]")
    console.print(faithfulness_table(results))
    for split, payload in results.items():
        s = payload.get("sanity_check")
        if s and s["verdict"]:
            console.print(
                f"sanity check ({split}): rank correlation with a re-initialised encoder {s['rank_correlation']:.2f} "
                f"over {s['n']} examples — {s['verdict']}"
            )
        if task.name == "cls":  # a generated answer is not a label: no words-per-label table
            console.print(leaned_on_table(split, payload["leaned_on"]))
    return results
