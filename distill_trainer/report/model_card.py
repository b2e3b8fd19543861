"""The model card of a distilled NLI student: training, in-domain (MNLI) and out-of-domain (HANS) results,
memory, recipe, citations and versions (hub.py saves it with the weights and pushes it).

    card = card_for_recipe(student_args, config, metrics, train_task="mnli", memory={"train": 812.0},
                           data_reports=data.reports)   # what the rows are (nli.data.NLIData)
    build_model_card(card, recipe_text, adapter=False)    # a huggingface_hub.ModelCard

or by hand: `StudentCard(model_name=..., base_model=..., teacher=..., results=[EvalSummary("MNLI",
"validation_matched", {"accuracy": 0.61}), EvalSummary("HANS", "validation", {"accuracy": 0.5},
domain="out-of-domain", breakdown={"lexical_overlap": {...}})], memory=[{...}])`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from distill_trainer.models.provenance import HUB_ID, describe_base
from distill_trainer.report.card_text import card_sections, name_with_size, unique


@dataclass
class EvalSummary:
    """One evaluation of the student, as the card's results table and `model-index` show it."""

    dataset: str  # what the rows are, e.g. "MNLI validation_matched (local copy)"
    split: str  # e.g. "validation_matched"
    metrics: dict[str, float]  # e.g. {"accuracy": 0.61, "auc": 0.66}
    domain: str = "in-domain"  # or "out-of-domain"
    num_examples: int | None = None  # the rows evaluated
    # the Hub dataset (and configuration) the rows are rows of, e.g. "nyu-mll/glue" "mnli"; only such
    # results go into the model-index, which the Hub reads as results on that dataset
    dataset_id: str | None = None
    dataset_config: str | None = None
    source_rows: int | None = None  # the rows the data read held (the evaluated rows are drawn from them)
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)  # e.g. per HANS heuristic


@dataclass
class StudentCard:
    """What the model card says about a trained student."""

    model_name: str
    base_model: str  # a Hub id, an embedded alias (named by its upstream Hub id) or a local folder
    method: str = "context distillation"
    teacher: str | None = None
    student_mode: str = "full"
    datasets: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # the hyperparameters worth reading on the card
    results: list[EvalSummary] = field(default_factory=list)
    memory: list[dict] | dict | None = None  # rows of a table, or {phase: peak MiB}
    # how the student was prompted: the query template and the label words it answers with
    prompt_template: str = "{premise} question: {hypothesis} Yes or No? answer:"
    label_words: tuple[str, ...] = (" Yes", " No")
    license: str = "apache-2.0"
    language: str = "en"
    tags: list[str] = field(default_factory=list)
    repo_id: str | None = None  # the Hub repository the student is pushed to (the usage example loads it)
    training_data: list[str] = field(default_factory=list)  # what the training rows are, with their count
    context: str | None = None  # the context distilled away (a system prompt...), when not demonstrations

    @classmethod
    def from_run(
        cls, student_args, config, *, results=(), memory=None, datasets=(), **overrides
    ) -> StudentCard:
        """A card from a recipe's parsed `StudentArguments` and `DistillationConfig`."""
        distilled = config.alpha > 0 and config.teacher_model_name_or_path is not None
        settings = {
            "learning_rate": config.learning_rate,
            # max_steps, when set, overrides the epoch count
            "epochs": config.num_train_epochs if config.max_steps <= 0 else None,
            "max_steps": config.max_steps if config.max_steps > 0 else None,
            "per_device_train_batch_size": config.per_device_train_batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "seed": config.seed,
        }
        if distilled:
            settings.update(
                alpha=config.alpha,
                loss=config.loss,
                temperature=config.temperature,
                distill_vocab=config.distill_vocab,
                teacher_dtype=config.teacher_dtype,
                teacher_quantization=config.teacher_quantization,
            )
            if config.loss == "jsd":
                settings["beta"] = config.beta
            if config.lmbda > 0:  # whose replies the loss was taken on, and how the student's were sampled
                settings.update(
                    replies=reply_source(config.lmbda),
                    lmbda=config.lmbda,
                    rollout_temperature=config.rollout_temperature,
                    rollout_top_p=config.rollout_top_p,
                    rollout_max_new_tokens=config.rollout_max_new_tokens,
                    **({} if config.rollout_do_sample else {"rollout_do_sample": False}),
                )
        if student_args.student_mode == "lora":
            settings.update(lora_r=student_args.lora_r, lora_alpha=student_args.lora_alpha)
        values = dict(
            model_name=config.hub_model_id or Path(config.output_dir).name,
            repo_id=config.hub_model_id,
            base_model=student_args.model_name_or_path,
            method="context distillation" if distilled else "pattern-based fine-tuning",
            teacher=config.teacher_model_name_or_path if distilled else None,
            student_mode=student_args.student_mode,
            datasets=list(datasets),
            settings={k: v for k, v in settings.items() if v is not None},
            results=list(results),
            memory=memory,
        )
        values.update(overrides)
        return cls(**values)


def eval_summaries(metrics_by_task: dict, train_task: str, data_reports=()) -> list[EvalSummary]:
    """The recipes' evaluation metrics ({task: metrics}, see `distill_trainer.nli.evaluation.task_metrics`) as
    card results: the training task is in-domain, every other task out-of-domain; HANS gets its per-heuristic
    breakdown (accuracy on each label matters there: at chance, accuracy alone hides a yes/no bias).
    `data_reports` (the `DataReport`s of the files read) name each task's rows by what they are; a task
    without one is named by the task only, and is not claimed as a Hub dataset's result."""
    from distill_trainer.nli.tasks import TASKS

    read = _reports_by_split(data_reports)
    summaries = []
    for name, metrics in metrics_by_task.items():
        task = TASKS.get(name)
        breakdown = {
            group: _headline(values)
            for key, groups in metrics.items()
            if key.startswith("per_") and key not in ("per_label_accuracy",) and isinstance(groups, dict)
            for group, values in groups.items()
            if isinstance(values, dict)
        }
        split = task.eval_split if task else "validation"
        report = read.get((name, split))
        source = report.source if report is not None else None
        summaries.append(
            EvalSummary(
                dataset=source.name if source else f"{name.upper()} (data source not recorded)",
                split=(source.hub_split or source.split) if source else split,
                metrics=_headline(metrics, per_label=False),
                domain="in-domain" if name.split("_")[0] == train_task.split("_")[0] else "out-of-domain",
                num_examples=metrics.get("n"),
                dataset_id=source.hub_id if source else None,
                dataset_config=source.hub_config if source else None,
                source_rows=report.kept if report is not None else None,
                breakdown=breakdown,
            )
        )
    return summaries


def _reports_by_split(data_reports) -> dict:
    """{(task, split): DataReport} of the reports that know their rows' source."""
    return {
        (r.source.task, r.source.split): r
        for r in data_reports or ()
        if getattr(r, "source", None) is not None
    }


def reply_source(lmbda: float) -> str:
    """Whose replies the distillation loss is taken on, in words (`DistillationConfig.lmbda`)."""
    if lmbda == 0:
        return "off-policy (the teacher's replies)"
    if lmbda == 1:
        return "on-policy (the student's own replies, sampled at every step)"
    return f"mixed (the student's own replies at {lmbda:.0%} of the steps, the teacher's at the rest)"


def card_for_recipe(
    student_args,
    config,
    metrics_by_task: dict,
    train_task: str,
    memory=None,
    pattern=None,
    teacher=None,
    data_reports=(),
) -> StudentCard:
    """A recipe's student card: settings (plus `teacher`: its demonstration sets, calibration), evaluation
    ({task: metrics} as recipes record them), its prompt (a `tasks.Pattern`), and, from `data_reports`
    (`NLIData.reports`), what the training and evaluation rows are: the card's `datasets` lists the Hub
    datasets the training rows are rows of, nothing it cannot name."""
    from distill_trainer.nli.tasks import TASKS

    task = TASKS.get(train_task)
    trained_on = [
        r
        for (name, split), r in _reports_by_split(data_reports).items()
        if task is not None and name == train_task and split == task.train_split
    ]
    card = StudentCard.from_run(
        student_args,
        config,
        results=eval_summaries(metrics_by_task, train_task, data_reports),
        memory=memory,
        datasets=unique(r.source.hub_id for r in trained_on if r.source.hub_id),
        training_data=[f"{r.source.name}, {r.kept} rows" for r in trained_on],
        **(
            {"prompt_template": pattern.template, "label_words": tuple(pattern.label_words)}
            if pattern
            else {}
        ),
    )
    card.settings.update((teacher or {}) if card.teacher else {})
    return card


def _headline(metrics: dict, per_label: bool = True) -> dict[str, float]:
    keys = ("accuracy", "accuracy_stderr", "macro_f1", "auc")
    values = {k: float(metrics[k]) for k in keys if isinstance(metrics.get(k), (int, float))}
    if per_label:
        for label, value in (metrics.get("per_label_accuracy") or {}).items():
            if value is not None:
                values[f"accuracy on {label}"] = float(value)
    return values


def build_model_card(card: StudentCard, recipe=None, adapter: bool = False) -> ModelCard:
    """The Hub model card: YAML metadata (with `model-index`) and a readable body."""
    base = describe_base(card.base_model)
    data = ModelCardData(
        model_name=card.model_name,
        base_model=base.hub_id,
        # a LoRA student ships as an adapter on its base; full, BitFit and merged students are the base's
        # weights fine-tuned
        base_model_relation=("adapter" if adapter else "finetune") if base.hub_id else None,
        datasets=[d for d in card.datasets if HUB_ID.match(d)] or None,
        license=card.license,
        language=card.language,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=unique(
            [
                "distill-trainer",
                "context-distillation" if card.teacher else "fine-tuning",
                "natural-language-inference",
                *(["lora"] if card.student_mode == "lora" else []),
                *card.tags,
            ]
        ),
        eval_results=_model_index(card.results) or None,
    )
    sections = [f"# {card.model_name}", *card_sections(card, base, adapter, recipe)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(s for s in sections if s) + "\n")


def _model_index(results: list[EvalSummary]) -> list[EvalResult]:
    return [
        EvalResult(
            task_type="text-classification",
            task_name="Natural Language Inference",
            dataset_type=r.dataset_id,
            dataset_name=name_with_size(r),
            dataset_split=r.split,
            dataset_config=r.dataset_config,
            metric_type=name,
            metric_name=f"{name} ({r.domain})",
            metric_value=round(float(value), 4),
        )
        for r in results
        if r.dataset_id and r.split  # only results on a Hub dataset's named split
        for name, value in r.metrics.items()
        if not name.endswith("_stderr")
    ]
