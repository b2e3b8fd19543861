"""Patterns: how an NLI row becomes a query and a label becomes its answer word (the verbalizer).

pattern = get_pattern("gpt3", num_labels=2)
# "P question: H Yes or No? answer:", " Yes"
query, answer = pattern.query(row), pattern.answer(row["label"])
"""

from __future__ import annotations

from dataclasses import dataclass

from distill_trainer.errors import UsageError


@dataclass(frozen=True)
class Pattern:
    """A template with `{premise}` and `{hypothesis}`, and one label word per label (the verbalizer)."""

    name: str
    template: str
    label_words: tuple[str, ...]

    def query(self, row) -> str:
        # plain replacement rather than str.format, so a custom template may contain other braces
        return self.template.replace("{premise}", row["premise"].strip()).replace(
            "{hypothesis}", row["hypothesis"].strip()
        )

    def answer(self, label: int) -> str:
        return self.label_words[label]

    def demonstration(self, row) -> str:
        return self.query(row) + self.answer(row["label"])


# by number of labels; the 3-way words follow lm-evaluation-harness's MNLI task
PATTERNS = {
    "minimal": {
        2: Pattern("minimal", "{premise} {hypothesis} ?", (" Yes", " No")),
        3: Pattern("minimal", "{premise} {hypothesis} ?", (" Yes", " Maybe", " No")),
    },
    "gpt3": {
        2: Pattern("gpt3", "{premise} question: {hypothesis} Yes or No? answer:", (" Yes", " No")),
        3: Pattern(
            "gpt3", "{premise} question: {hypothesis} Yes, No, or Maybe? answer:", (" Yes", " Maybe", " No")
        ),
    },
    "eval_harness": {
        2: Pattern(
            "eval_harness", "{premise}\nQuestion: {hypothesis} True or False?\nAnswer:", (" True", " False")
        ),
        3: Pattern(
            "eval_harness",
            "{premise}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:",
            (" True", " Neither", " False"),
        ),
    },
}
CUSTOM = "custom"


def check_template(template: str) -> None:
    missing = [p for p in ("{premise}", "{hypothesis}") if p not in template]
    if missing:
        raise UsageError(
            f"template {template!r} lacks {' and '.join(missing)}; a template must contain both "
            "{premise} and {hypothesis}"
        )


def get_pattern(name: str, num_labels: int, template: str | None = None, label_words=None) -> Pattern:
    """A named pattern (label words may be overridden) or `custom` with a template and label words."""
    if name == CUSTOM:
        if not template or not label_words:
            raise UsageError(
                "pattern: custom needs both template (with {premise} and {hypothesis}) and label_words"
            )
        check_template(template)
        pattern = Pattern(CUSTOM, template, tuple(label_words))
    elif name not in PATTERNS:
        raise UsageError(f"unknown pattern {name!r}; choose one of: {', '.join([*PATTERNS, CUSTOM])}")
    elif template:
        raise UsageError(
            f"template is only read with pattern: custom (the pattern is {name!r}); set pattern: custom"
        )
    else:
        pattern = PATTERNS[name][num_labels]
        if label_words:
            pattern = Pattern(name, pattern.template, tuple(label_words))
    if len(pattern.label_words) != num_labels:
        raise UsageError(
            f"label_words has {len(pattern.label_words)} words {list(pattern.label_words)} but the task has "
            f"{num_labels} labels; give one word per label, in label order"
        )
    if len(set(pattern.label_words)) != num_labels:
        raise UsageError(
            f"label_words {list(pattern.label_words)} repeat a word; each label needs its own word"
        )
    return pattern


def label_token_ids(tokenizer, label_words) -> list[list[int]]:
    """Token ids of each label word; fails if one is empty or two share their first token.

    The first answer token is where the model decides: the full-vocabulary argmax and the trainer's
    `distill_vocab: label_words` both read it, so two label words starting alike could not be told apart.
    """
    ids = [list(tokenizer(word, add_special_tokens=False)["input_ids"]) for word in label_words]
    for word, word_ids in zip(label_words, ids):
        if not word_ids:
            raise UsageError(
                f"label word {word!r} is empty after tokenization; choose a word with text in it"
            )
    firsts = {}
    for word, word_ids in zip(label_words, ids):
        if word_ids[0] in firsts:
            other = firsts[word_ids[0]]
            raise UsageError(
                f"label words {other!r} and {word!r} collide after tokenization: both start with token "
                f"{word_ids[0]} ({tokenizer.convert_ids_to_tokens(word_ids[0])!r}); choose words whose first "
                "tokens differ (a leading space usually matters, e.g. ' Yes' / ' No')"
            )
        firsts[word_ids[0]] = word
    return ids
