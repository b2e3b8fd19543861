"""In-context learning baseline: any causal LM (the teacher, or a student zero-shot with k: 0) scored on
the label words after k demonstrations, on every evaluation task.

    accelerate launch --config_file recipes/configs/accelerate/cpu.yaml recipes/icl_eval.py \
        --config recipes/configs/paper/icl.yaml [--k 0] [--model_name_or_path facebook/opt-125m]

Writes metrics.json, predictions_<task>.jsonl and resolved_config.yaml into output_dir. With
`--demonstration_seeds 0 1 2 3 4`, once per seed (predictions_<task>_seed<s>.jsonl) and the spread over
seeds (metrics.json "seed_spread", also printed). `--demonstration_sets 4` ensembles the model over 4
demonstration sets; `--teacher_calibration content_free` calibrates each set (Zhao et al. 2021).
"""

from __future__ import annotations

import distill_trainer.run.quiet_start  # noqa: F401  (first: Ctrl-C while the imports below load)

# isort: split
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from distill_trainer import DataArguments, DistillationConfig, StudentArguments, parse_config
from distill_trainer.memory.peak import MemoryTracker
from distill_trainer.models.loading import (
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    resolve_model_path,
)
from distill_trainer.nli.data import first_token_ids, model_max_length, reseeded
from distill_trainer.nli.task_evaluation import evaluate_on_tasks, format_spread, seed_spread
from distill_trainer.run.runner import (
    nli_metrics,
    no_partial_output_dir,
    print_summary,
    run_recipe,
    write_outputs,
)
from distill_trainer.run.validate import validate_recipe
from distill_trainer.teacher.teacher import teacher_source_fingerprint
from distill_trainer.training.parsing import GivenSettings, given_or_inferred

RECIPE = "icl_eval"
CONFIG_TYPES = (StudentArguments, DataArguments, DistillationConfig)


def evaluate_per_seed(loaded_model, tokenizer, data, config, data_args, max_length, model_id) -> dict:
    """{demonstration seed: its evaluation results}, the first seed being the run's own."""
    per_seed = {}
    for seed in data_args.demonstration_seeds or [data_args.demonstration_seed]:
        seeded = data if seed == data_args.demonstration_seed else reseeded(data, data_args, seed)
        per_seed[seed] = evaluate_on_tasks(
            loaded_model,
            tokenizer,
            seeded,
            config,
            data_args,
            seeded.sampler.for_query if data_args.k else None,
            max_length=max_length,
            model_id=model_id,
            teacher_ensemble=True,
        )
    return per_seed


def write_run(configs, given, name: str, total: int, data, per_seed: dict, metrics: dict) -> None:
    """Results files (with every seed's predictions when there are several) and the printed summary."""
    student_args, data_args, config = configs
    seeds = list(per_seed)
    results = per_seed[seeds[0]]
    predictions = results.predictions
    if data_args.demonstration_seeds:
        metrics["demonstration_seeds"] = {str(seed): r.metrics for seed, r in per_seed.items()}
        metrics["seed_spread"] = seed_spread({seed: r.metrics for seed, r in per_seed.items()})
        predictions = {
            f"{task}_seed{seed}": records
            for seed, r in per_seed.items()
            for task, records in r.predictions.items()
        }
    paths = write_outputs(config.output_dir, metrics, predictions, configs, RECIPE, given)
    print_summary(
        f"in-context learning: {name}",
        {
            "model": f"{name} ({total:,} parameters, {student_args.dtype})",
            "prompt": f"pattern {data.pattern.name}, k={data_args.k} demonstrations"
            f"{' resampled per query' if data_args.resample_demonstrations else ''}, "
            + (
                f"pinned ids {data_args.demonstration_ids}"
                if data_args.demonstration_ids
                else f"seed {data_args.demonstration_seed}"
            ),
            "teacher": (
                f"{data_args.demonstration_sets} demonstration set(s), calibration "
                f"{data_args.teacher_calibration}"
            ),
            "eval": f"{metrics['eval_seconds']:.1f} s",
        },
        results.metrics,
        paths,
    )
    if data_args.demonstration_seeds:
        print(format_spread(metrics["seed_spread"], seeds))


def run_icl_eval(
    student_args: StudentArguments,
    data_args: DataArguments,
    config: DistillationConfig,
    model=None,
    tokenizer=None,
    given: GivenSettings | None = None,
) -> dict:
    """Evaluate `model_name_or_path` (or an already loaded `model` + `tokenizer`) with k demonstrations;
    `given`: the settings given explicitly (`parse_config`), None for configs built in Python."""
    # ------------------------------------------------------------ validate (no model loaded yet) and data
    given = given_or_inferred(given, (student_args, data_args, config))
    data = validate_recipe(
        RECIPE, student_args, data_args, config, given=given, tokenizer=tokenizer, check_models=model is None
    ).data

    # ------------------------------------------------------------ model
    name = student_args.model_name_or_path if model is None else getattr(model, "name_or_path", "model")
    if tokenizer is None:
        tokenizer = load_tokenizer(student_args.model_name_or_path)
    first_token_ids(tokenizer, data.pattern)  # label-word collisions fail here, before any loading
    tracker = MemoryTracker()  # peaks per phase: load, eval
    # a model on disk is identified by its files: its results on the same rows and prompt are read back
    model_id = None
    if model is None and data_args.reuse_evaluations:
        model_id = teacher_source_fingerprint(student_args.model_name_or_path, student_args.dtype)
    model_config = (
        model.config
        if model is not None
        else AutoConfig.from_pretrained(resolve_model_path(student_args.model_name_or_path))
    )
    max_length = model_max_length(model_config, data_args)

    loaded = model is not None

    def loaded_model():  # loaded on first use: not at all when every result is read back
        nonlocal model, loaded
        loaded = True
        if model is None:
            with tracker.phase("model_load"):
                model = load_causal_lm(student_args.model_name_or_path, dtype=student_args.dtype).to(
                    config.device
                )
        return model

    # ------------------------------------------------------------ evaluate with k demonstrations
    # (per demonstration seed when demonstration_seeds is set; the first seed's results are the "eval")
    seeds = data_args.demonstration_seeds or [data_args.demonstration_seed]
    with tracker.phase("eval"):
        per_seed = evaluate_per_seed(loaded_model, tokenizer, data, config, data_args, max_length, model_id)
    results = per_seed[seeds[0]]

    # ------------------------------------------------------------ report
    if model is None:  # the parameter count without the weights
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config)
    _, total = count_parameters(model)
    metrics = nli_metrics(
        RECIPE,
        "icl" if data_args.k else "zero_shot",
        name,
        data,
        results,
        tracker,
        k=data_args.k,
        demonstration_seed=data_args.demonstration_seed,
        resample_demonstrations=data_args.resample_demonstrations,
        demonstration_sets=data_args.demonstration_sets,
        teacher_calibration=data_args.teacher_calibration,
        parameters={"total": total},
        eval_seconds=round(sum(r.seconds for r in per_seed.values()), 2),
        # every score came from the evaluation cache: no model ran, so no memory of the method was measured
        scores_read_back=not loaded,
    )
    write_run((student_args, data_args, config), given, name, total, data, per_seed, metrics)
    return metrics


def main(argv=None) -> dict:
    configs, given = parse_config(CONFIG_TYPES, argv)
    with no_partial_output_dir(configs[-1].output_dir):
        return run_icl_eval(*configs, given=given)


if __name__ == "__main__":
    run_recipe(main)
