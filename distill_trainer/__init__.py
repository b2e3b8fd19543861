"""distill-trainer: context distillation of causal LMs on top of the Hugging Face Trainer.

The public names below load on first use (PEP 562): importing the package, or a light module of it such as
`distill_trainer.run.interrupt`, costs milliseconds, so a command can catch Ctrl-C before torch and
transformers load (seconds).

Importing it changes no global state (logging, warnings): programs that want the known noise of
peft and bitsandbytes dropped call `distill_trainer.quiet_logs.install_quiet_logs()`, as the recipes and
the `distill-trainer` command do.
"""

import importlib

from distill_trainer.errors import UsageError

# public name -> the module that defines it
_PUBLIC = {
    "answer_logits": "distill_trainer.models.answer_logits",
    "load_causal_lm": "distill_trainer.models.loading",
    "load_tokenizer": "distill_trainer.models.loading",
    "prepare_student": "distill_trainer.models.loading",
    "DataArguments": "distill_trainer.nli.arguments",
    "evaluate_task": "distill_trainer.nli.evaluation",
    "score_label_words": "distill_trainer.nli.evaluation",
    "get_pattern": "distill_trainer.nli.patterns",
    "get_task": "distill_trainer.nli.tasks",
    "load_split": "distill_trainer.nli.tasks",
    "load_or_build_teacher_outputs": "distill_trainer.teacher.output_cache",
    "PrefixCachedModel": "distill_trainer.teacher.prefix_cache",
    "Teacher": "distill_trainer.teacher.teacher",
    "DistillationConfig": "distill_trainer.training.config",
    "StudentArguments": "distill_trainer.training.config",
    "parse_config": "distill_trainer.training.parsing",
    "answer_cross_entropy": "distill_trainer.training.losses",
    "distillation_loss": "distill_trainer.training.losses",
    "sparse_distillation_loss": "distill_trainer.training.losses",
    "ContextDistillationTrainer": "distill_trainer.training.trainer",
    "build_chat_views": "distill_trainer.views.chat",
    "TwoViewCollator": "distill_trainer.views.text",
    "build_views": "distill_trainer.views.text",
}

__all__ = sorted([UsageError.__name__, *_PUBLIC])


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'distill_trainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__():
    return sorted([*globals(), *_PUBLIC])
