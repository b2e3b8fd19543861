"""distill-trainer: context distillation of causal LMs on top of the Hugging Face Trainer."""

from .config import DistillationConfig, StudentArguments, parse_config
from .errors import UsageError
from .evaluation import evaluate_task, score_label_words
from .losses import answer_cross_entropy, distillation_loss
from .models import load_causal_lm, load_tokenizer, prepare_student
from .tasks import DataArguments, get_pattern, get_task, load_split
from .trainer import ContextDistillationTrainer, answer_logits
from .views import TwoViewCollator, build_views

__all__ = [
    "ContextDistillationTrainer",
    "DataArguments",
    "DistillationConfig",
    "StudentArguments",
    "TwoViewCollator",
    "UsageError",
    "answer_cross_entropy",
    "answer_logits",
    "build_views",
    "distillation_loss",
    "evaluate_task",
    "get_pattern",
    "get_task",
    "load_causal_lm",
    "load_split",
    "load_tokenizer",
    "parse_config",
    "prepare_student",
    "score_label_words",
]
