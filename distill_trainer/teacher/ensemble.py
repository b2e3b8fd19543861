"""A steadier teacher: its label-word distribution averaged over several demonstration sets, and each set
calibrated against content-free queries (Zhao et al. 2021, "Calibrate before use").

    members = [set_0_logprobs, set_1_logprobs]          # (rows, labels) label-word log-probs per set
    content_free = [content_free_distribution(cf_0), content_free_distribution(cf_1)]   # or None
    teacher = combine_members(members, content_free)    # (rows, labels) log-probs, normalised over labels

One set without calibration is returned untouched, so an ensemble of one is exactly the single-set
teacher. Otherwise every set's scores are first normalised over the label words, then (calibration)
divided by that set's content-free distribution and renormalised, and the sets are averaged as
probabilities: a mixture, which keeps each set's confidence (a mean of log-probabilities would be a
product of experts, sharper than any member, and one set that is sure and wrong would dominate it).

The same functions serve evaluation (scores of rows) and the teacher output cache (stored label-word
log-probs at a temperature, which `at_temperature_one` undoes exactly).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from distill_trainer.integrity import sha256_text

# inputs that carry no evidence for any label: what a set answers to them is its bias
CONTENT_FREE_TEXTS = ("N/A", "", "[MASK]")


def content_free_rows(label: int = 0) -> list[dict]:
    """Rows whose premise and hypothesis are content-free (the label only places the answer position)."""
    return [{"premise": text, "hypothesis": text, "label": label} for text in CONTENT_FREE_TEXTS]


def content_free_distribution(logprobs: torch.Tensor) -> torch.Tensor:
    """(labels,) log of the mean label distribution of (n, labels) scores: of content-free queries, or
    (batch calibration) of the rows being scored themselves."""
    probabilities = torch.log_softmax(logprobs.double(), dim=-1).exp().mean(0)
    return probabilities.log()


def calibrate(logprobs: torch.Tensor, content_free: torch.Tensor) -> torch.Tensor:
    """(rows, labels) scores divided by the content-free distribution, renormalised (log space)."""
    normalised = torch.log_softmax(logprobs.double(), dim=-1)
    return torch.log_softmax(normalised - content_free.double(), dim=-1)


def combine_members(
    members: list[torch.Tensor],
    content_free: list[torch.Tensor] | None = None,
    average: str = "probabilities",
) -> torch.Tensor:
    """The ensemble teacher's (rows, labels) log-probs from each set's scores (see the module doc).

    `average="logprobs"` (a renormalised mean of log-probabilities) is kept for measuring the two."""
    if not members:
        raise ValueError("an ensemble needs at least one demonstration set")
    if len(members) == 1 and content_free is None:
        return members[0]
    if content_free is not None and len(content_free) != len(members):
        raise ValueError(f"{len(content_free)} content-free distributions for {len(members)} sets")
    per_set = [
        calibrate(scores, content_free[j])
        if content_free is not None
        else torch.log_softmax(scores.double(), dim=-1)
        for j, scores in enumerate(members)
    ]
    stacked = torch.stack(per_set)
    if average == "logprobs":
        return torch.log_softmax(stacked.mean(0), dim=-1).to(members[0].dtype)
    mixture = torch.logsumexp(stacked, dim=0) - math.log(len(per_set))
    return mixture.to(members[0].dtype)


def at_temperature_one(logprobs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Label log-probs stored at `temperature` (log_softmax(z / T)) back at T=1: log_softmax(T * that)."""
    return torch.log_softmax(logprobs.double() * temperature, dim=-1)


def at_temperature(logprobs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T=1 label log-probs softened (or sharpened) to `temperature`, as the output cache stores them."""
    return torch.log_softmax(logprobs.double() / temperature, dim=-1)


def ensemble_key(member_keys: list[str], calibration: str, content_free_keys: list[str] | None = None) -> str:
    """A digest naming the ensemble teacher's outputs: its sets' own cache keys, in order, and the
    calibration (with the content-free caches it read)."""
    text = json.dumps(
        {"members": list(member_keys), "calibration": calibration, "content_free": content_free_keys or []}
    )
    return sha256_text(text)


@dataclass
class TeacherEnsembleViews:
    """What the trainer needs to build an ensemble teacher's outputs in its output-cache pass.

    `members`: the training rows' view datasets under demonstration sets 1.. (set 0's is the trainer's
    train_dataset), rows in the same order; `content_free`: one view dataset of `content_free_rows()` per
    set (sets 0..) for `calibration="content_free"`, else None (batch calibration reads the members).
    Each is cached like any dataset (its own key), so a set scored before is never scored again, and
    `combine` then builds the ensemble's label-word outputs.
    """

    members: list
    content_free: list | None
    calibration: str = "none"

    def extra_datasets(self) -> dict:
        datasets = {f"train_set{j}": dataset for j, dataset in enumerate(self.members, start=1)}
        for j, dataset in enumerate(self.content_free or []):
            datasets[f"content_free_set{j}"] = dataset
        return datasets

    def combine(self, done: dict, cache_info: dict, temperature: float):
        """The train dataset with `teacher_label_logprobs` replaced by the ensemble's (at `temperature`);
        records in `cache_info["train"]["ensemble"]` the sets' caches and a key naming the result."""
        from datasets import List, Value

        names = ["train", *(f"train_set{j}" for j in range(1, len(self.members) + 1))]
        order = done["train"]["example_index"]
        for name in names[1:]:
            if done[name]["example_index"] != order:
                raise ValueError(
                    f"{name} holds other rows than train: build every set's views from the same rows"
                )
        members = [self._at_one(done[name], temperature) for name in names]
        free_names = [f"content_free_set{j}" for j in range(len(names))] if self.content_free else []
        content_free = [content_free_distribution(self._at_one(done[n], temperature)) for n in free_names]
        if self.calibration == "batch":  # each set's mean answer over the training queries
            content_free = [content_free_distribution(scores) for scores in members]
        combined = at_temperature(combine_members(members, content_free or None), temperature)
        train = done["train"].remove_columns(["teacher_label_logprobs"])
        train = train.add_column(
            "teacher_label_logprobs", combined.float().tolist(), feature=List(Value("float32"))
        )
        # cache names, not paths: the same sets give the same key wherever the caches live
        caches = [Path(cache_info[name]["path"]).name for name in names]
        free_caches = [Path(cache_info[name]["path"]).name for name in free_names]
        cache_info["train"]["ensemble"] = {
            "key": ensemble_key(caches, self.calibration, free_caches),
            "demonstration_sets": len(names),
            "calibration": self.calibration,
            "set_caches": caches,
            "content_free_caches": free_caches,
            "bias": [c.exp().tolist() for c in content_free] or None,
        }
        return train

    @staticmethod
    def _at_one(dataset, temperature: float) -> torch.Tensor:
        return at_temperature_one(torch.tensor(dataset["teacher_label_logprobs"]), temperature)
