"""Loading teachers and students: dtype, 8/4-bit teachers, LoRA and BitFit students, embedded aliases.

student = prepare_student(load_causal_lm("facebook/opt-125m"), mode="lora", lora_r=16)
teacher = load_causal_lm("facebook/opt-1.3b", quantization="8bit")
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import warnings

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill_trainer.errors import UsageError
from distill_trainer.models.int8_notices import drop_int8_cast_notices
from distill_trainer.quiet_logs import PEFT_DEPRECATION

EMBEDDED_PREFIX = "embedded:"
QUANTIZATIONS = ("none", "8bit", "4bit")
logger = logging.getLogger(__name__)


def cpu_bf16_is_emulated() -> bool:
    """True on an x86 CPU without AVX512-BF16 or AMX: its bfloat16 matmuls are emulated, about 4x slower
    than float32 (measured on such cores), where with them they run ~2.5x faster (benchmarks/flops.py)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False  # not known: no warning
    native = (
        getattr(torch.cpu, name, lambda: False)()
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return not any(native)


def warn_if_bf16_is_slow(what: str) -> None:
    """One warning when `what` (a setting) asks for bfloat16 matmuls on a CPU that emulates them."""
    if not torch.cuda.is_available() and cpu_bf16_is_emulated():
        logger.warning(
            "%s: this CPU has no native bfloat16 matmuls (AVX512-BF16 or AMX), so bfloat16 runs several "
            "times slower than float32 here; use float32 on this machine",
            what,
        )


def resolve_model_path(name_or_path: str) -> str:
    """An `embedded:` alias becomes a local directory (materialised once); anything else is returned as is."""
    if not name_or_path:
        raise UsageError(
            "no model given; set model_name_or_path (a Hub id, a local directory or an embedded alias)"
        )
    if name_or_path.startswith(EMBEDDED_PREFIX):
        from distill_trainer.models.embedded import materialize_embedded_model

        return str(materialize_embedded_model(name_or_path))
    return name_or_path


def torch_dtype(name: str):
    return "auto" if name == "auto" else getattr(torch, name)


def load_tokenizer(name_or_path: str):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tokenizer.pad_token_id is None:
        # decoder-only LMs often ship without a pad token; padded positions are masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(quantization: str, compute_dtype=torch.float32):
    if quantization == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError(
            f"quantization={quantization} needs bitsandbytes; install it with pip install "
            "'distill-trainer[quant]'"
        )
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype
        )
    raise UsageError(f"quantization={quantization!r} is not valid; choose {', '.join(QUANTIZATIONS)}")


# configuration switches that give a bias-free architecture (Llama, SmolLM2, ...) bias terms
BIAS_SWITCHES = ("attention_bias", "mlp_bias")


def bias_switches_to_add(model_config) -> list[str]:
    """The switches that are off in `model_config` (BitFit turns them on: see
    `load_causal_lm(add_biases=)`)."""
    return [name for name in BIAS_SWITCHES if getattr(model_config, name, None) is False]


def load_causal_lm(
    name_or_path: str,
    dtype: str = "float32",
    quantization: str = "none",
    device_map=None,
    add_biases: bool = False,
):
    """A causal LM from the Hub, a local directory or an embedded alias.

    Quantized models are placed with `device_map`; under accelerate pass
    `{"": accelerator.local_process_index}` so each process holds its own copy (never "auto" there).
    `add_biases` (for BitFit on an architecture without biases): turn on the config's bias switches and
    start the added biases at zero, so the model computes exactly what it did; the saved model keeps them.
    """
    kwargs = {"dtype": torch_dtype(dtype)}
    if dtype == "bfloat16" and device_map is None:
        warn_if_bf16_is_slow(f"{name_or_path} in bfloat16")
    if add_biases:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
        switches = bias_switches_to_add(config)
        if switches:
            for name in switches:
                setattr(config, name, True)
            # the added biases are reported as missing from the checkpoint: expected here, so not shown
            from transformers.utils import logging as transformers_logging

            verbosity = transformers_logging.get_verbosity()
            transformers_logging.set_verbosity_error()
            try:
                model, info = AutoModelForCausalLM.from_pretrained(
                    resolve_model_path(name_or_path), config=config, output_loading_info=True, **kwargs
                )
            finally:
                transformers_logging.set_verbosity(verbosity)
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if name in info["missing_keys"] and name.endswith(".bias"):
                        parameter.zero_()
            return model
    compute_dtype = torch.float32 if dtype in ("auto", "float32") else torch_dtype(dtype)
    if _loads_on_cpu(device_map, quantization) and dtype != "auto":
        model = _load_on_cpu(name_or_path, compute_dtype, quantization)
        if model is not None:
            return model
    qconfig = quantization_config(quantization, compute_dtype=compute_dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = device_map if device_map is not None else {"": _default_device()}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    path = resolve_model_path(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as error:
        raise UsageError(
            f"cannot load model {name_or_path!r} ({str(error).splitlines()[0]}); give a local directory, an "
            "embedded alias such as embedded:smollm2-135m, or a Hub id with network access"
        ) from None
    if quantization == "8bit":
        # bitsandbytes logs "inputs will be cast to float16" on every 8-bit matmul of a float32 input
        drop_int8_cast_notices(model)
    return model


def _loads_on_cpu(device_map, quantization: str) -> bool:
    """True when the weights are loaded into this machine's memory: no device asked for (a plain model),
    or the CPU. A quantized model is placed by bitsandbytes wherever there is a GPU. Under ZeRO-3,
    from_pretrained must build the model inside deepspeed's partitioning context, so it loads it."""
    if device_map not in (None, "cpu", {"": "cpu"}):
        return False
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        return False
    return quantization == "none" or not torch.cuda.is_available()


def _load_on_cpu(name_or_path: str, compute_dtype, quantization: str):
    """A CPU load that needs the weights in the dtype they are used in and little more: streamed tensor by
    tensor (models/streaming.py), or, quantized, from the quantized cache (models/quantized_cache.py), which
    never holds a full-precision copy. None when the checkpoint cannot be streamed: the caller loads it the
    usual way."""
    folder = _local_folder(resolve_model_path(name_or_path))
    if folder is None:
        return None
    if quantization == "none":
        from distill_trainer.models.streaming import stream_load

        return stream_load(folder, compute_dtype)
    from distill_trainer.models.quantized_cache import load_quantized

    return load_quantized(folder, quantization, compute_dtype)


def _local_folder(path: str) -> str | None:
    """`path` when it is a folder; a Hub id's downloaded snapshot (configs and safetensors only: the
    checkpoint is then streamed from it); None when neither can be had (from_pretrained then says why)."""
    if os.path.isdir(path):
        return path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, allow_patterns=["*.json", "*.safetensors"])
    except Exception:  # no network, no such repository, a gated one: from_pretrained reports it
        return None


def _default_device():
    return 0 if torch.cuda.is_available() else "cpu"


def prepare_student(
    model,
    mode: str = "full",
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    lora_target_modules=None,
):
    """Make the student trainable as asked: all weights, LoRA adapters (peft), or biases only (BitFit)."""
    if mode == "full":
        model.requires_grad_(True)
        return model
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        check_lora_target_modules(model, lora_target_modules)
        config = LoraConfig(
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            task_type="CAUSAL_LM",
            target_modules=lora_target_modules,
        )
        # peft asks the model for a property transformers has deprecated: a warning about code not ours,
        # dropped here only (the warnings state is restored on leaving the block)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=PEFT_DEPRECATION, category=FutureWarning)
            return get_peft_model(model, config)
    if mode == "bitfit":
        model.requires_grad_(False)
        biases = [p for name, p in model.named_parameters() if name.endswith(".bias")]
        if not biases:
            raise UsageError(
                f"student_mode=bitfit needs bias parameters, and {type(model).__name__} has none; "
                "use student_mode=lora or full"
            )
        for p in biases:
            p.requires_grad_(True)
        return model
    raise UsageError(f"student_mode={mode!r} is not valid; choose full, lora or bitfit")


def check_lora_target_modules(model, lora_target_modules) -> None:
    """Every requested LoRA target names a module of `model` (a loaded model, or one built on the meta
    device from its config, which costs no memory)."""
    if not lora_target_modules:
        return
    full_names = [name for name, _ in model.named_modules()]
    names = {name.rsplit(".", 1)[-1] for name in full_names}
    # peft matches a module by its last name or by a dotted suffix of its full name
    missing = [
        m
        for m in lora_target_modules
        if m not in names and not any(full == m or full.endswith("." + m) for full in full_names)
    ]
    if missing:
        linear = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear)
            }
            - {"lm_head"}
        )
        raise UsageError(
            f"lora_target_modules {missing} are not modules of this model; set lora_target_modules to some "
            f"of its linear layers: {', '.join(linear[:10])}"
        )


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def output_vocab_size(model) -> int:
    weight = model.get_output_embeddings().weight
    # under DeepSpeed ZeRO-3 a parameter is a local shard (often empty); ds_shape is the full shape
    return getattr(weight, "ds_shape", weight.shape)[0]


def check_same_vocabulary(student, teacher, student_tokenizer=None, teacher_tokenizer=None) -> None:
    """Full-vocabulary KL compares logit i of one model with logit i of the other: both must mean the same
    token."""
    check_vocabulary_sizes_and_tokens(
        output_vocab_size(student), output_vocab_size(teacher), student_tokenizer, teacher_tokenizer
    )


def check_vocabulary_sizes_and_tokens(
    student_size, teacher_size, student_tokenizer=None, teacher_tokenizer=None
) -> None:
    """The check behind `check_same_vocabulary`, from logit counts (a model's, or its config's vocab_size) and
    the tokenizers' token tables when both are given."""
    s, t = student_size, teacher_size
    same_tokens = True
    if student_tokenizer is not None and teacher_tokenizer is not None:
        same_tokens = student_tokenizer.get_vocab() == teacher_tokenizer.get_vocab()
    if s != t or not same_tokens:
        raise UsageError(
            f"teacher and student vocabularies differ (teacher {t} logits, student {s}"
            f"{'' if same_tokens else ', different token tables'}); distill_vocab: full needs a shared "
            "tokenizer: set distill_vocab: label_words, or use a teacher from the student's model family"
        )
