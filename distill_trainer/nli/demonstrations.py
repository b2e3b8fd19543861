"""Rows for a run: class-balanced subsets, few-shot demonstrations (seeded or pinned by id), and the guard
that keeps a prompt within the model's length.

    demos = sample_demonstrations(pool, num_labels=2, k=16, seed=0)
    prompt = render_demonstrations(demos, pattern)        # the teacher's few-shot block, one per row
    sampler = DemonstrationSampler(pool, pattern, 2, k=4, seed=0)   # sampler.for_query(row) -> demonstrations
"""

from __future__ import annotations

import random

from datasets import Dataset

from distill_trainer.errors import UsageError
from distill_trainer.nli.patterns import Pattern
from distill_trainer.nli.row_checks import column_values
from distill_trainer.views.text import SEPARATOR


def row_key(row) -> tuple[str, str]:
    return (row["premise"], row["hypothesis"])


def _per_label_counts(total: int, labels, rng: random.Random) -> dict[int, int]:
    """`total` split as evenly as possible over `labels`; the remainder goes to randomly chosen labels."""
    labels = list(labels)
    counts = {label: total // len(labels) for label in labels}
    for label in rng.sample(labels, total % len(labels)):
        counts[label] += 1
    return counts


def balanced_indices(
    labels: list[int],
    total: int,
    num_labels: int,
    seed: int,
    exclude: set[int] = frozenset(),
    what: str = "examples",
) -> list[int]:
    """`total` indices, class-balanced, shuffled, seeded, never one of `exclude`."""
    rng = random.Random(seed)
    by_label = {label: [] for label in range(num_labels)}
    for index, label in enumerate(labels):
        if index not in exclude:
            by_label[label].append(index)
    chosen = []
    for label, count in _per_label_counts(total, range(num_labels), rng).items():
        if count > len(by_label[label]):
            raise UsageError(
                f"{total} {what} need {count} of label {label} but only {len(by_label[label])} are "
                "available; ask for fewer or use a larger pool"
            )
        chosen += rng.sample(by_label[label], count)
    rng.shuffle(chosen)
    return chosen


def balanced_subset(
    dataset: Dataset,
    total: int | None,
    num_labels: int,
    seed: int,
    exclude_keys=frozenset(),
    what: str = "rows",
) -> Dataset:
    """`total` class-balanced rows (None: all), none whose (premise, hypothesis) is in `exclude_keys`."""
    exclude = {i for i, key in enumerate(_keys(dataset)) if key in exclude_keys}
    if total is None:
        return dataset.select([i for i in range(len(dataset)) if i not in exclude]) if exclude else dataset
    if total > len(dataset) - len(exclude):
        raise UsageError(
            f"asked for {total} {what} but the data has only {len(dataset) - len(exclude)}; ask for fewer"
        )
    return dataset.select(
        sorted(balanced_indices(column_values(dataset, "label"), total, num_labels, seed, exclude, what=what))
    )


def _keys(dataset) -> list[tuple[str, str]]:
    """Each row's (premise, hypothesis), the key that tells rows apart."""
    return list(zip(column_values(dataset, "premise"), column_values(dataset, "hypothesis")))


def per_subcase_subset(dataset: Dataset, per_subcase: int | None, seed: int) -> Dataset:
    """Up to `per_subcase` rows of each HANS subcase, seeded, keeping the file's order."""
    if per_subcase is None:
        return dataset
    rng = random.Random(seed)
    by_subcase: dict[str, list[int]] = {}
    for index, subcase in enumerate(column_values(dataset, "subcase")):
        by_subcase.setdefault(subcase, []).append(index)
    chosen = [i for rows in by_subcase.values() for i in rng.sample(rows, min(per_subcase, len(rows)))]
    return dataset.select(sorted(chosen))


def sample_demonstrations(
    pool: Dataset, num_labels: int, k: int, seed: int, exclude_keys=frozenset()
) -> list[dict]:
    """k class-balanced, shuffled pool rows; none whose (premise, hypothesis) is in `exclude_keys`."""
    if k == 0:
        return []
    exclude = {i for i, key in enumerate(_keys(pool)) if key in exclude_keys}
    labels = column_values(pool, "label")
    indices = balanced_indices(labels, k, num_labels, seed, exclude, what=f"demonstrations (k={k})")
    return [pool[i] for i in indices]


def member_seed(seed: int, member: int) -> int:
    """The demonstration seed of set `member` in an ensemble drawn with `seed`: set 0 is the single set that
    `seed` draws alone (so an ensemble of one is exactly today's teacher), the others are derived from it."""
    if member == 0:
        return seed
    return random.Random(f"demonstration set {member} of seed {seed}").getrandbits(31)


def pinned_demonstrations(pool: Dataset, ids, exclude_keys=frozenset()) -> list[dict]:
    """The pool rows whose `idx` is in `ids`, in the order of `ids`."""
    if "idx" not in pool.column_names:
        raise UsageError(
            "demonstration_ids needs a pool with an idx column (MNLI has one; load it with "
            "keep_idx=True); remove demonstration_ids to draw demonstrations with a seed"
        )
    position = {int(i): n for n, i in enumerate(pool["idx"])}
    missing = [i for i in ids if int(i) not in position]
    if missing:
        raise UsageError(
            f"demonstration_ids {missing} are not idx values of the training pool; "
            "choose ids of rows of the task's training split"
        )
    rows = [pool[position[int(i)]] for i in ids]
    clashing = [row["idx"] for row in rows if row_key(row) in exclude_keys]
    if clashing:
        raise UsageError(f"demonstration_ids {clashing} are also evaluation rows; choose other ids")
    return rows


def render_demonstrations(rows: list[dict], pattern: Pattern) -> list[str]:
    """Each demonstration as query + its gold label word; joined with SEPARATOR to form the prompt."""
    return [pattern.demonstration(row) for row in rows]


class DemonstrationSampler:
    """Demonstrations for any query: one fixed set per run, or a fresh draw per query (`resample`).

    A per-query draw is seeded by (seed, query) so the same run gives the same prompts, and never holds
    the query itself.
    """

    def __init__(
        self,
        pool: Dataset,
        pattern: Pattern,
        num_labels: int,
        k: int,
        seed: int,
        resample: bool = False,
        exclude_keys=frozenset(),
        demonstration_ids=None,
    ):
        self.pool, self.pattern, self.num_labels, self.k, self.seed = pool, pattern, num_labels, k, seed
        self.resample = resample
        self._labels = column_values(pool, "label")
        self._index_of = {key: i for i, key in enumerate(_keys(pool))}
        if demonstration_ids is not None:
            rows = pinned_demonstrations(pool, demonstration_ids, exclude_keys)
        else:
            rows = [] if resample else sample_demonstrations(pool, num_labels, k, seed, exclude_keys)
        self.rows = rows  # the fixed demonstrations, in prompt order
        self.fixed = None if resample else render_demonstrations(rows, pattern)
        self.fixed_keys = {row_key(row) for row in rows}  # training queries are drawn from outside these

    def for_query(self, row) -> list[str]:
        if not self.resample:
            return self.fixed
        if self.k == 0:
            return []
        own = self._index_of.get(row_key(row))
        exclude = {own} if own is not None else set()
        indices = balanced_indices(
            self._labels,
            self.k,
            self.num_labels,
            self._seed_for(row),
            exclude,
            what=f"demonstrations (k={self.k})",
        )
        return [self.pattern.demonstration(self.pool[i]) for i in indices]

    def _seed_for(self, row) -> int:
        # str seeds are hashed deterministically by random.Random (unlike hash(), which is salted per process)
        return random.Random(f"{self.seed}|{row['premise']}|{row['hypothesis']}").getrandbits(63)


# ---------------------------------------------------------------- length guard


def fit_demonstrations(
    tokenizer, demonstrations: list[str], query: str, answer: str, max_length: int | None, drop: bool = False
) -> list[str]:
    """The demonstrations to put before `query`, checked against the teacher's `max_length`.

    The query and answer are never truncated. When the prompt is too long this fails with the lengths,
    or, with `drop`, leaves out trailing demonstrations until it fits.
    """
    from distill_trainer.views.text import build_views

    if max_length is None:
        return demonstrations
    bare = len(build_views(tokenizer, query, answer)["teacher_input_ids"])
    if bare > max_length:
        raise UsageError(
            f"a query with its answer is {bare} tokens, more than max_length={max_length}; queries are never "
            f"truncated: raise max_length (query starts {query[:60]!r})"
        )
    kept = list(demonstrations)
    while kept:
        length = len(
            build_views(tokenizer, query, answer, SEPARATOR.join(kept), SEPARATOR)["teacher_input_ids"]
        )
        if length <= max_length:
            return kept
        if not drop:
            raise UsageError(
                f"the prompt is {length} tokens ({len(kept)} demonstrations: {length - bare} tokens; query "
                f"and answer: {bare}) but max_length={max_length}; lower k, raise max_length, or set "
                "drop_demonstrations_to_fit: true"
            )
        kept.pop()
    return kept
