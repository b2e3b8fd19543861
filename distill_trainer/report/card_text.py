"""The model card's readable body, section by section (summary, usage, training, results, memory,
recipe, limitations, citation, versions); `model_card.build_model_card` puts its metadata on top.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import yaml

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


def card_sections(card, base, adapter: bool, recipe) -> list[str]:
    """The body's sections in reading order (empty ones left out by the caller)."""
    return [
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


def unique(items):
    return list(dict.fromkeys(items))


def name_with_size(r) -> str:
    """The dataset's name with the number of rows evaluated, which is most often a subset of the split."""
    return f"{r.dataset}, {r.num_examples} rows" if r.num_examples else r.dataset


def _summary(card, base) -> str:
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
    if card.teacher and card.context:
        replies = card.settings.get("replies", "off-policy (the teacher's replies)")
        text += (
            f".\n\nThe teacher read this context before each prompt: {card.context!r}. The student sees the "
            f"prompt alone and was trained to reply as the teacher would with it, token by token, {replies}; "
            "trained with distill-trainer."
        )
    elif card.teacher:
        text += (
            ".\n\nThe teacher read a few solved examples (demonstrations) before each query; the "
            "student sees the query alone and was trained to answer as the teacher did, so it needs no "
            "demonstrations in its prompt. Method: arXiv [2412.13243](https://arxiv.org/abs/2412.13243); "
            "trained with distill-trainer."
        )
    else:
        text += "."
    if base.note:
        text += f"\n\nBase model: `{base.name}`, {base.note}."
    return text


def _usage(card, adapter: bool) -> str:
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


def _training(card, base) -> str:
    rows = [("student", f"`{base.name}` ({card.student_mode})"), ("method", card.method)]
    if card.teacher:
        rows.append(("teacher", f"`{card.teacher}`"))
    if card.training_data:
        rows.append(("training data", "; ".join(card.training_data)))
    if card.datasets:
        rows.append(("datasets", ", ".join(f"`{d}`" for d in card.datasets)))
    rows += [(k, _fmt(v)) for k, v in card.settings.items()]
    return "## Training\n\n" + _table(["setting", "value"], rows)


def _results(results) -> str:
    if not results:
        return "## Results\n\nNo evaluation was recorded for this student."
    metrics = unique(m for r in results for m in r.metrics)
    rows = [
        (r.domain, r.dataset, r.split, _fmt(r.num_examples), *(_fmt(r.metrics.get(m)) for m in metrics))
        for r in results
    ]
    text = "## Results\n\n" + _table(["domain", "dataset", "split", "examples", *metrics], rows)
    text += "\n\n" + "\n".join(f"- {_data_line(r)}" for r in results)
    for r in results:
        if r.breakdown:
            columns = unique(m for values in r.breakdown.values() for m in values)
            text += f"\n\n### {r.dataset} by heuristic\n\n" + _table(
                ["heuristic", *columns],
                [(h, *(_fmt(v.get(c)) for c in columns)) for h, v in r.breakdown.items()],
            )
    return text


def _data_line(r) -> str:
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
        columns = unique(k for row in memory for k in row)
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


def _limitations(card) -> str:
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
