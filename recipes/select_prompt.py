"""Choose the teacher's in-context prompt (pattern, k, demonstration seed) on a dev split carved from the
training pool, never on the evaluation rows.

    accelerate launch --config_file recipes/configs/accelerate/cpu.yaml recipes/select_prompt.py \
        --config recipes/configs/embedded/select-prompt.yaml

The dev rows are class-balanced rows of the training pool that are neither evaluation rows nor any
candidate's demonstrations. Every candidate scores the same dev rows with the configured teacher (prefix
KV cache on). Prints a table and writes selection.md / selection.json (and the dev rows, dev.jsonl) into
output_dir: accuracy with its standard error, margin AUC and the share of rows predicted as label 0 (a
teacher that answers one label for nearly every row is degenerate, whatever its accuracy). Pin the winner
in the main job's YAML (pattern, k, demonstration_ids) and say there which selection it came from.
"""

from __future__ import annotations

import distill_trainer.run.quiet_start  # noqa: F401  (first: Ctrl-C while the imports below load)

# isort: split
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from distill_trainer import DataArguments, DistillationConfig, StudentArguments, parse_config
from distill_trainer.code_digest import code_record
from distill_trainer.code_stamp import stamp_json, stamp_markdown
from distill_trainer.integrity import write_text_atomically
from distill_trainer.models.loading import load_causal_lm, load_tokenizer
from distill_trainer.nli.data import prepare_data
from distill_trainer.nli.demonstrations import balanced_subset, row_key
from distill_trainer.nli.evaluation import evaluate_task
from distill_trainer.nli.tasks import load_split
from distill_trainer.run.runner import run_recipe


@dataclass
class SelectionArguments:
    """The candidates, and the dev split they are scored on."""

    candidate_patterns: list[str] = field(
        default_factory=lambda: ["gpt3"], metadata={"help": "Patterns to try."}
    )
    candidate_ks: list[int] = field(
        default_factory=lambda: [4], metadata={"help": "Demonstration counts to try."}
    )
    candidate_seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2], metadata={"help": "Demonstration seeds to try."}
    )
    dev_examples: int = field(
        default=100, metadata={"help": "Class-balanced dev rows from the training pool."}
    )
    dev_seed: int = field(default=1234, metadata={"help": "Seed for carving the dev rows."})

    def __post_init__(self):
        from distill_trainer import UsageError

        if self.dev_examples < 2:
            raise UsageError(f"dev_examples must be >= 2, got {self.dev_examples}")


CONFIG_TYPES = (StudentArguments, DataArguments, SelectionArguments, DistillationConfig)


def candidates_and_dev_rows(data_args, selection):
    """Every candidate's data (its demonstrations drawn as the recipes draw them) and the dev rows."""
    candidates = []
    for pattern in selection.candidate_patterns:
        for k in selection.candidate_ks:
            for seed in selection.candidate_seeds:
                args = dataclasses.replace(
                    data_args,
                    pattern=pattern,
                    k=k,
                    demonstration_seed=seed,
                    demonstration_ids=None,
                    label_words=None,
                )
                candidates.append(
                    {"pattern": pattern, "k": k, "seed": seed, "data": prepare_data(args, with_train=False)}
                )
    # the dev rows: no evaluation row, no candidate's demonstration
    first = candidates[0]["data"]
    taken = {row_key(row) for rows in first.eval_sets.values() for row in rows}
    taken |= {key for c in candidates for key in c["data"].sampler.fixed_keys}
    dev = balanced_subset(
        first.pool,
        selection.dev_examples,
        first.task.num_labels,
        selection.dev_seed,
        exclude_keys=taken,
        what="dev rows (dev_examples)",
    )
    return candidates, dev


def write_dev_rows(dev, task, path: Path) -> None:
    """The dev rows as a JSONL file in the data's label ids (for `distill-trainer evaluate --data`)."""
    inverse = {ours: theirs for theirs, ours in (task.label_map or {}).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(
        path,
        "".join(
            json.dumps(
                {
                    "premise": row["premise"],
                    "hypothesis": row["hypothesis"],
                    "label": inverse.get(int(row["label"]), int(row["label"])),
                }
            )
            + "\n"
            for row in dev
        ),
    )


def main(argv=None) -> list[dict]:
    (student_args, data_args, selection, config), _ = parse_config(CONFIG_TYPES, argv)
    teacher = config.teacher_model_name_or_path or student_args.model_name_or_path
    output_dir = Path(config.output_dir)

    # ------------------------------------------------------------ candidates, and dev rows none of them saw
    candidates, dev = candidates_and_dev_rows(data_args, selection)
    first = candidates[0]["data"]
    write_dev_rows(dev, first.task, output_dir / "dev.jsonl")

    # the pool's own row ids, so that the winner can be pinned with demonstration_ids
    with_idx = load_split(
        first.task, first.task.train_split, data_args.data_source, data_args.data_dir, keep_idx=True
    )
    idx_of = {row_key(row): int(row["idx"]) for row in with_idx} if "idx" in with_idx.column_names else {}

    # ------------------------------------------------------------ score every candidate on the same rows
    tokenizer = load_tokenizer(teacher)
    model = load_causal_lm(teacher, dtype=config.teacher_dtype).eval()
    results = []
    for candidate in candidates:
        data, start = candidate.pop("data"), time.perf_counter()
        metrics, _ = evaluate_task(
            model,
            tokenizer,
            dev,
            data.task,
            data.pattern,
            data.sampler.for_query,
            batch_size=config.per_device_eval_batch_size,
            progress=not config.disable_tqdm,
        )
        demonstration_ids = [idx_of.get(row_key(row)) for row in data.sampler.rows]
        results.append(
            {
                **candidate,
                "demonstration_ids": demonstration_ids,
                "n": metrics["n"],
                "accuracy": metrics["accuracy"],
                "accuracy_stderr": metrics["accuracy_stderr"],
                "auc": metrics["auc"],
                "predicted_label_0": next(iter(metrics["predicted_label_balance"].values())),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(_line(results[-1]), flush=True)

    # ------------------------------------------------------------ report (stamped with the code that made it)
    code = code_record(["recipes/select_prompt.py"])
    write_text_atomically(
        output_dir / "selection.json",
        json.dumps(
            {
                "teacher": teacher,
                "dev_examples": len(dev),
                "dev_seed": selection.dev_seed,
                "candidates": results,
                "code": stamp_json(code),
            },
            indent=1,
        ),
    )
    table = [
        "| pattern | k | seed | demonstration_ids | dev acc | AUC | pred. label 0 | s |",
        "|---|---:|---:|---|---|---:|---:|---:|",
        *(_line(r) for r in results),
    ]
    write_text_atomically(
        output_dir / "selection.md",
        stamp_markdown(
            f"Teacher `{teacher}`, {len(dev)} dev rows carved from the training pool (seed "
            f"{selection.dev_seed}).\n\n" + "\n".join(table) + "\n",
            code,
        ),
    )
    print(f"wrote {output_dir / 'selection.md'}")
    return results


def _line(r: dict) -> str:
    return (
        f"| {r['pattern']} | {r['k']} | {r['seed']} | {r['demonstration_ids']} | {r['accuracy']:.3f} "
        f"±{r['accuracy_stderr']:.3f} | {r['auc']:.3f} | {r['predicted_label_0']:.0%} | {r['seconds']} |"
    )


if __name__ == "__main__":
    run_recipe(main)
