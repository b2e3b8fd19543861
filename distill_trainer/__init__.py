"""distill-trainer: context distillation of causal LMs on top of the Hugging Face Trainer."""

# first: it silences a notice that importing peft (below) would print
from . import quiet_logs  # noqa: F401
from .answer_logits import answer_logits
from .chat_views import build_chat_views
from .config import DistillationConfig, StudentArguments, parse_config
from .data_arguments import DataArguments
from .errors import UsageError
from .evaluation import evaluate_task, score_label_words
from .losses import answer_cross_entropy, distillation_loss, sparse_distillation_loss
from .models import load_causal_lm, load_tokenizer, prepare_student
from .output_cache import load_or_build_teacher_outputs
from .prefix_cache import PrefixCachedTeacher
from .tasks import get_pattern, get_task, load_split
from .trainer import ContextDistillationTrainer
from .views import TwoViewCollator, build_views

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
