"""distill-trainer: context distillation of causal LMs on top of the Hugging Face Trainer."""

# first: it silences a notice that importing peft (below) would print
from distill_trainer import quiet_logs  # noqa: F401
from distill_trainer.errors import UsageError
from distill_trainer.models.answer_logits import answer_logits
from distill_trainer.models.loading import load_causal_lm, load_tokenizer, prepare_student
from distill_trainer.nli.arguments import DataArguments
from distill_trainer.nli.evaluation import evaluate_task, score_label_words
from distill_trainer.nli.patterns import get_pattern
from distill_trainer.nli.tasks import get_task, load_split
from distill_trainer.teacher.output_cache import load_or_build_teacher_outputs
from distill_trainer.teacher.prefix_cache import PrefixCachedTeacher
from distill_trainer.training.config import DistillationConfig, StudentArguments, parse_config
from distill_trainer.training.losses import answer_cross_entropy, distillation_loss, sparse_distillation_loss
from distill_trainer.training.trainer import ContextDistillationTrainer
from distill_trainer.views.chat import build_chat_views
from distill_trainer.views.text import TwoViewCollator, build_views

__all__ = [
    "ContextDistillationTrainer",
    "DataArguments",
    "DistillationConfig",
    "PrefixCachedTeacher",
    "StudentArguments",
    "TwoViewCollator",
    "UsageError",
    "answer_cross_entropy",
    "answer_logits",
    "build_chat_views",
    "build_views",
    "distillation_loss",
    "evaluate_task",
    "get_pattern",
    "get_task",
    "load_causal_lm",
    "load_or_build_teacher_outputs",
    "load_split",
    "load_tokenizer",
    "parse_config",
    "prepare_student",
    "score_label_words",
    "sparse_distillation_loss",
]
