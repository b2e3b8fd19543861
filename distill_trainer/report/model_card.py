"""The model card of a distilled NLI student: training, in-domain (MNLI) and out-of-domain (HANS) results,
memory, recipe, citations and versions (hub.py saves it with the weights and pushes it).

    card = card_for_recipe(student_args, config, metrics, train_task="mnli", memory={"train": 812.0},
                           data_reports=data.reports)   # what the rows are (run_data.NLIData)
    build_model_card(card, recipe_text, adapter=False)    # a huggingface_hub.ModelCard

or by hand: `StudentCard(model_name=..., base_model=..., teacher=..., results=[EvalSummary("MNLI",
"validation_matched", {"accuracy": 0.61}), EvalSummary("HANS", "validation", {"accuracy": 0.5},
domain="out-of-domain", breakdown={"lexical_overlap": {...}})], memory=[{...}])`.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from distill_trainer.models.provenance import HUB_ID, describe_base
from distill_trainer.teacher.teacher import is_self

RECIPE_FILE = "recipe.yaml"  # the recipe's file name next to the weights
PAPER_CITATION = """@article{duan2024incontext,
  title   = {In-Context Learning Distillation for Efficient Few-Shot Fine-Tuning},
  author  = {Duan, Yifei and Li, Liu and Zhai, Zirui and Yao, Jinxia},
  journal = {arXiv preprint arXiv:2412.13243},
  year    = {2024}
}"""

PROJECT_CITATION = """@software{distill_trainer,
  title   = {distill-trainer: context distillation of causal language models on the Hugging Face Trainer},
  version = {%s},
  year    = {2026}
}"""


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
        datasets=_unique(r.source.hub_id for r in trained_on if r.source.hub_id),
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
        tags=_unique(
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
    sections = [
        f"# {card.model_name}",
        _summary(card, base),
        _usage(card, adapter),
        _training(card, base),
        _results(card.results),
        _memory(card.memory),
        _recipe(recipe),
        _limitations(card),
        _citation(),
        _versions(),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(s for s in sections if s) + "\n")


def _unique(items):
    return list(dict.fromkeys(items))


def _model_index(results: list[EvalSummary]) -> list[EvalResult]:
    return [
        EvalResult(
            task_type="text-classification",
            task_name="Natural Language Inference",
            dataset_type=r.dataset_id,
            dataset_name=_name_with_size(r),
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


def _name_with_size(r: EvalSummary) -> str:
    """The dataset's name with the number of rows evaluated, which is most often a subset of the split."""
    return f"{r.dataset}, {r.num_examples} rows" if r.num_examples else r.dataset


def _summary(card: StudentCard, base) -> str:
    student = {"full": "fully fine-tuned", "lora": "LoRA", "bitfit": "BitFit"}.get(
        card.student_mode, card.student_mode
    )
    text = f"A {student} student of `{base.name}`, trained with **{card.method}**"
    if is_self(card.teacher):
        text += (
            " from its own base model (self context distillation: the teacher is the student's base model "
            "with the adapters switched off)"
        )
    elif card.teacher:
        text += f" from the teacher `{card.teacher}`"
    text += (
        ".\n\nThe teacher read a few solved examples (demonstrations) before each query; the student sees "
        "the query alone and was trained to answer as the teacher did, so it needs no demonstrations in its "
        "prompt. Method: arXiv [2412.13243](https://arxiv.org/abs/2412.13243); trained with distill-trainer."
        if card.teacher
        else "."
    )
    if base.note:
        text += f"\n\nBase model: `{base.name}`, {base.note}."
    return text


def _usage(card: StudentCard, adapter: bool) -> str:
    name = card.repo_id or card.model_name  # the repository it is pushed to, else the saved folder
    if adapter:
        load = (
            "from peft import AutoPeftModelForCausalLM\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{name}")'
            f'\ntokenizer = AutoTokenizer.from_pretrained("{name}")'
        )
    else:
        load = (
            f'model = AutoModelForCausalLM.from_pretrained("{name}")'
            f'\ntokenizer = AutoTokenizer.from_pretrained("{name}")'
        )
    # plain replacement, as the training prompts were built (a template may hold other braces)
    query = card.prompt_template.replace("{premise}", "A man is playing a guitar.").replace(
        "{hypothesis}", "Nobody plays music."
    )
    return (
        "## How to use\n\n"
        "The student reads the query alone (no demonstrations) and answers with a label word; score the "
        "label words at the next position:\n\n"
        "```python\nimport torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"{load}\n\n"
        f"query = {query!r}  # the template {card.prompt_template!r}\n"
        f"label_words = {list(card.label_words)!r}\n"
        "label_ids = [tokenizer(w, add_special_tokens=False).input_ids[0] for w in label_words]\n"
        "with torch.no_grad():\n"
        '    logits = model(**tokenizer(query, return_tensors="pt")).logits[0, -1]\n'
        "print(label_words[int(logits[label_ids].argmax())])\n```"
    )


def _training(card: StudentCard, base) -> str:
    rows = [("student", f"`{base.name}` ({card.student_mode})"), ("method", card.method)]
    if card.teacher:
        rows.append(("teacher", f"`{card.teacher}`"))
    if card.training_data:
        rows.append(("training data", "; ".join(card.training_data)))
    if card.datasets:
        rows.append(("datasets", ", ".join(f"`{d}`" for d in card.datasets)))
    rows += [(k, _fmt(v)) for k, v in card.settings.items()]
    return "## Training\n\n" + _table(["setting", "value"], rows)


def _results(results: list[EvalSummary]) -> str:
    if not results:
        return "## Results\n\nNo evaluation was recorded for this student."
    metrics = _unique(m for r in results for m in r.metrics)
    rows = [
        (r.domain, r.dataset, r.split, _fmt(r.num_examples), *(_fmt(r.metrics.get(m)) for m in metrics))
        for r in results
    ]
    text = "## Results\n\n" + _table(["domain", "dataset", "split", "examples", *metrics], rows)
    text += "\n\n" + "\n".join(f"- {_data_line(r)}" for r in results)
    for r in results:
        if r.breakdown:
            columns = _unique(m for values in r.breakdown.values() for m in values)
            text += f"\n\n### {r.dataset} by heuristic\n\n" + _table(
                ["heuristic", *columns],
                [(h, *(_fmt(v.get(c)) for c in columns)) for h, v in r.breakdown.items()],
            )
    return text


def _data_line(r: EvalSummary) -> str:
    """Where a result's rows come from, and whether the card's metadata reports it."""
    split = "" if r.split in r.dataset else f" ({r.split})"
    text = f"{r.dataset}{split}: {_fmt(r.num_examples)} rows evaluated"
    if r.source_rows is not None:
        text += f", drawn from the {r.source_rows} usable rows read"
    if r.dataset_id:
        config = f" ({r.dataset_config})" if r.dataset_config else ""
        return text + f"; rows of the Hub dataset `{r.dataset_id}`{config}, split {r.split}"
    # the Hub would show a model-index entry as a result on the official dataset
    return text + "; not a Hub dataset's split, so this result is not in the card's model-index metadata"


def _memory(memory) -> str:
    if not memory:
        return ""
    if isinstance(memory, dict):
        rows, columns = list(memory.items()), ["phase", "peak memory (MiB)"]
    else:
        columns = _unique(k for row in memory for k in row)
        rows = [tuple(row.get(c) for c in columns) for row in memory]
    return "## Memory\n\n" + _table(columns, [tuple(_fmt(v) for v in row) for row in rows])


def _recipe(recipe) -> str:
    text = recipe_yaml(recipe)
    if not text:
        return ""
    return (
        f"## Recipe\n\nThe configuration this student was trained with (also in `{RECIPE_FILE}` next to the "
        f"weights):\n\n```yaml\n{text.rstrip()}\n```"
    )


def _limitations(card: StudentCard) -> str:
    return (
        "## Limitations\n\nA small student inherits its teacher's errors and biases. On HANS, small models "
        "(the teacher included) often sit near chance, and accuracy then reflects a yes/no bias more than "
        "reasoning: read the per-heuristic table, not only the average. Accuracies over a few hundred "
        "examples carry a standard error of 2-3 points."
    )


def _citation() -> str:
    return (
        "## Citation\n\nThe method:\n\n```bibtex\n" + PAPER_CITATION + "\n```\n\nThe training library:\n\n"
        "```bibtex\n" + PROJECT_CITATION % _version("distill-trainer") + "\n```"
    )


def _versions() -> str:
    names = ("distill-trainer", "transformers", "peft", "torch", "accelerate")
    return "## Framework versions\n\n" + "\n".join(f"- {n} {_version(n)}" for n in names)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(columns, rows) -> str:
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def recipe_yaml(recipe) -> str:
    """The recipe as YAML text: from a mapping (tokens removed), a YAML string, or a file path."""
    if recipe is None:
        return ""
    if isinstance(recipe, Path) or (
        isinstance(recipe, str) and "\n" not in recipe and Path(recipe).is_file()
    ):
        return Path(recipe).read_text(encoding="utf-8")
    if isinstance(recipe, str):
        return recipe
    # a token in a card would be published with the model
    safe = {k: v for k, v in dict(recipe).items() if "token" not in k.lower()}
    return yaml.safe_dump(safe, sort_keys=False, allow_unicode=True)
