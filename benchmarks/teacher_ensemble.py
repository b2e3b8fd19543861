"""How steady and how biased is a few-shot teacher, and what do ensembles and calibration change?

    python -m benchmarks.teacher_ensemble [--config recipes/configs/embedded/teacher-ensemble.yaml]

For every demonstration seed of an icl_eval config (`demonstration_seeds`, `demonstration_sets` sets per
seed), it scores each set once (through the evaluation cache: sets scored before are read back, and the
model is loaded only if one is missing) and then compares, on the same rows:
- one set (set 0, the single-set teacher of that seed);
- the ensemble averaged as probabilities (a mixture: what the library does);
- the ensemble averaged as log-probabilities, renormalised (a product of experts);
- one set and the mixture with content-free calibration, and with batch calibration (each set's mean
  answer on the scored rows divided out).
For each: accuracy, margin AUC and the share answered with label 0, mean / min / max over seeds. Writes
results/teacher-ensemble/variants.{md,json} (the directory is --output-dir).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoConfig

from distill_trainer import parse_config
from distill_trainer.models.loading import load_causal_lm, load_tokenizer, resolve_model_path
from distill_trainer.nli.data import model_max_length, prepare_data, reseeded
from distill_trainer.nli.metrics.nli import roc_auc
from distill_trainer.nli.task_evaluation import content_free_scores, evaluate_set
from distill_trainer.teacher.ensemble import combine_members, content_free_distribution
from distill_trainer.teacher.teacher import teacher_source_fingerprint

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {  # name -> (sets used, average, calibration)
    "one set": (1, "probabilities", "none"),
    "ensemble, mean of probabilities": (None, "probabilities", "none"),
    "ensemble, mean of log-probabilities": (None, "logprobs", "none"),
    "one set, content-free calibration": (1, "probabilities", "content_free"),
    "ensemble (probabilities), content-free calibration": (None, "probabilities", "content_free"),
    "one set, batch calibration": (1, "probabilities", "batch"),
    "ensemble (probabilities), batch calibration": (None, "probabilities", "batch"),
}


def figures(logprobs: torch.Tensor, labels: list[int]) -> dict:
    predictions = logprobs.argmax(-1).tolist()
    margins = (logprobs[:, 0] - logprobs[:, 1]).tolist()
    return {
        "accuracy": sum(p == y for p, y in zip(predictions, labels)) / len(labels),
        "auc": roc_auc(margins, [y == 0 for y in labels]),
        "label0_share": predictions.count(0) / len(predictions),
    }


def variant_figures(members: list, free: list, labels: list[int]) -> dict:
    """{variant: its figures}: the members' scores combined and calibrated as each variant says."""
    result = {}
    for variant, (count, average, calibration) in VARIANTS.items():
        chosen = members[: count or len(members)]
        content_free = {
            "none": None,
            "content_free": free[: len(chosen)],
            "batch": [content_free_distribution(scores) for scores in chosen],
        }[calibration]
        if count == 1 and calibration == "none":
            scores = torch.log_softmax(chosen[0].double(), -1)
        else:
            scores = combine_members(chosen, content_free, average=average)
        result[variant] = figures(scores, labels)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="recipes/configs/embedded/teacher-ensemble.yaml")
    parser.add_argument("--output-dir", default=str(REPO / "results" / "teacher-ensemble"))
    args = parser.parse_args(argv)
    from recipes.icl_eval import CONFIG_TYPES

    (student_args, data_args, config), _ = parse_config(CONFIG_TYPES, ["--config", args.config])
    seeds = data_args.demonstration_seeds or [data_args.demonstration_seed]
    name = student_args.model_name_or_path
    tokenizer = load_tokenizer(name)
    model_id = teacher_source_fingerprint(name, student_args.dtype)
    max_length = model_max_length(AutoConfig.from_pretrained(resolve_model_path(name)), data_args)
    loaded = {}

    def model():  # loaded only when a set's scores are not cached yet
        if "model" not in loaded:
            loaded["model"] = load_causal_lm(name, dtype=student_args.dtype)
        return loaded["model"]

    data = prepare_data(data_args, with_train=False)
    per_seed: dict[str, dict] = {}
    for seed in seeds:
        seeded = reseeded(data, data_args, seed)
        free = [content_free_scores(model, tokenizer, seeded, s, config, model_id) for s in seeded.samplers]
        per_seed[str(seed)] = {}
        for task, rows in seeded.eval_sets.items():
            labels = [int(row["label"]) for row in rows]
            members = [
                torch.tensor(
                    [
                        r["logprobs"]
                        for r in evaluate_set(
                            model,
                            tokenizer,
                            seeded,
                            config,
                            data_args,
                            task,
                            rows,
                            s.for_query,
                            max_length,
                            model_id,
                        )[1]
                    ]
                )
                for s in seeded.samplers
            ]
            per_seed[str(seed)][task] = variant_figures(members, free, labels)
    report = {"config": args.config, "model": name, "demonstration_sets": len(members), "seeds": per_seed}
    report["spread"] = spread(per_seed)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "variants.json").write_text(json.dumps(report, indent=1))
    (output / "variants.md").write_text(markdown(report))
    print(markdown(report))
    return report


def spread(per_seed: dict) -> dict:
    tasks = next(iter(per_seed.values()))
    result = {}
    for task in tasks:
        for variant in VARIANTS:
            for figure in ("accuracy", "auc", "label0_share"):
                values = [seed[task][variant][figure] for seed in per_seed.values()]
                values = [v for v in values if v is not None]
                if values:
                    result.setdefault(task, {}).setdefault(variant, {})[figure] = {
                        "mean": sum(values) / len(values),
                        "min": min(values),
                        "max": max(values),
                        "range": max(values) - min(values),
                    }
    return result


def markdown(report: dict) -> str:
    lines = [
        f"# Teacher ensembles and calibration: {report['model']}",
        "",
        f"`python -m benchmarks.teacher_ensemble --config {report['config']}`: "
        f"{report['demonstration_sets']} demonstration sets per seed, seeds {', '.join(report['seeds'])}; "
        "mean [min, max] over seeds (max - min in the last column of each figure).",
        "",
        "| task | teacher | accuracy | acc. max - min | margin AUC | AUC max - min | answers label 0 |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, variants in report["spread"].items():
        for variant, f in variants.items():
            a, auc, share = f["accuracy"], f.get("auc"), f["label0_share"]
            auc_text = (
                f"{auc['mean']:.3f} [{auc['min']:.3f}, {auc['max']:.3f}] | {auc['range']:.3f}"
                if auc
                else "- | -"
            )
            accuracy = f"{a['mean']:.3f} [{a['min']:.3f}, {a['max']:.3f}] | {a['range']:.3f}"
            lines.append(f"| {task} | {variant} | {accuracy} | {auc_text} | {share['mean']:.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
