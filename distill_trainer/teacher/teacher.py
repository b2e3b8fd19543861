"""The teacher, and every rule about it, in one place: what `self` means, how a teacher is loaded and placed,
who it is (the identity every cache is keyed on), how it runs and what it checks first.

    check_self_teacher(config.teacher_model_name_or_path, student_is_lora=student_args.student_mode == "lora")
    teacher = Teacher.for_model(student, "self", student_path)     # or a loaded model and its path
    teacher = Teacher.from_source("embedded:qwen2.5-0.5b", "bfloat16")  # loaded when first needed
    with teacher.active() as model:                                # `self`: the adapters are off in here
        ...
    logits = teacher.answer_logits(batch)                          # with the prefix KV cache
    teacher.release()                                              # a loaded teacher's weights go

A `self` teacher is the student's own base model with its LoRA adapters switched off: no second copy of
the weights, so it is never loaded, placed or quantized, and it needs a LoRA student. A teacher teaches
with frozen weights: its answer logits reuse one prefix KV cache for as long as it lives.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from pathlib import Path

import torch

from distill_trainer.errors import UsageError
from distill_trainer.models.loading import check_same_vocabulary, load_causal_lm, resolve_model_path
from distill_trainer.models.output_head import output_head_removed
from distill_trainer.teacher.prefix_cache import TeacherAnswerLogits

SELF = "self"


def is_self(teacher) -> bool:
    """True for the name `self` (a teacher may also be a model, a path, or None)."""
    return isinstance(teacher, str) and teacher == SELF


# ---- checks, before anything is loaded ----


def check_self_teacher(teacher, student_is_lora: bool, fix: str = "it needs student_mode: lora") -> None:
    """A `self` teacher is the base model under the student's LoRA adapters: without them there is none."""
    if is_self(teacher) and not student_is_lora:
        raise UsageError(
            "teacher 'self' is the student's base model with its LoRA adapters switched off, so it needs a "
            f"LoRA student; {fix}"
        )


def check_self_quantization(teacher, quantization: str) -> None:
    """A `self` teacher is the student's own weights, in the student's dtype: there is nothing to quantize."""
    if is_self(teacher) and quantization != "none":
        raise UsageError(
            f"teacher_quantization: {quantization} cannot apply to teacher 'self' (the student's own "
            "base model, trained in its own dtype); remove teacher_quantization or name a teacher"
        )


# ---- loading and placement ----


def load_teacher(name_or_path: str, dtype: str, quantization: str, process_index: int | None = None):
    """A teacher from a Hub id, a folder or an embedded alias, placed at load time when quantized."""
    # one copy per process, on that process's GPU (default: the launcher's LOCAL_RANK): never
    # device_map="auto" in a multi-process run, which would spread one copy over all GPUs
    if process_index is None:
        process_index = int(os.environ.get("LOCAL_RANK", 0))
    device_map = {"": process_index} if torch.cuda.is_available() else None
    return load_causal_lm(name_or_path, dtype=dtype, quantization=quantization, device_map=device_map)


def place_teacher(teacher, accelerator, device):
    """(the teacher ready to run forward, the DeepSpeed engine holding it or None).

    The teacher is never given to the optimizer or wrapped in DDP: it only runs forward, in eval mode."""
    from accelerate.utils import DistributedType

    teacher.eval()
    teacher.requires_grad_(False)
    if getattr(teacher, "is_loaded_in_8bit", False) or getattr(teacher, "is_loaded_in_4bit", False):
        return teacher, None  # placed when loaded
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        from distill_trainer.teacher.deepspeed import prepare_teacher_for_deepspeed

        # the engine owns the ZeRO-3 hooks that gather each layer for its forward; keep it alive and run
        # its module, a plain model to everything downstream (prefix cache, output cache)
        engine = prepare_teacher_for_deepspeed(teacher, accelerator)
        return engine.module, engine
    return teacher.to(device), None


@contextlib.contextmanager
def adapters_off(model):
    """The `self` teacher: `model` with its LoRA adapters off and in eval mode (a teacher runs without
    dropout, like a loaded one); the adapters and the student's mode are back on after."""
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            yield model
    finally:
        model.train(was_training)


# ---- identity: what every teacher cache is keyed on ----


def teacher_fingerprint(model) -> str:
    """A digest of the teacher's class, config (incl. quantization) and weights.

    The weights enter through a per-tensor float64 sum, which changes when any weight does; LoRA
    adapter tensors are left out, so a `self` teacher keeps its identity while its adapters train.
    """
    digest = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None:
        settings = config.to_dict()
        settings.pop("transformers_version", None)
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if "lora_" in name or not torch.is_tensor(tensor):
                continue
            total = float(torch.sum(tensor.detach(), dtype=torch.float64))
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:{total:.10e};".encode())
    return digest.hexdigest()


def teacher_source_fingerprint(
    name_or_path: str, dtype: str = "float32", quantization: str = "none"
) -> str | None:
    """A digest of a teacher on disk, taken without loading it (None if it is not a local directory).

    It hashes config.json and every weight file's name, size and modification time, plus the dtype and
    quantization it would be loaded with. A cache keyed on it is found again without the teacher in
    memory, so a rerun (or a second student) never loads the teacher at all; rewriting the weights in
    place gives a new digest and a fresh pass.
    """
    directory = Path(resolve_model_path(name_or_path))
    if not (directory / "config.json").is_file():
        return None
    digest = hashlib.sha256(f"{dtype}:{quantization}:".encode())
    digest.update((directory / "config.json").read_bytes())
    for path in sorted(directory.iterdir()):
        if path.suffix in (".safetensors", ".bin", ".json") and path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


# ---- a teacher that runs ----


class Teacher:
    """A teacher model, or a LoRA student's base with the adapters off (`is_self`), the id that keys what
    it writes (completions, answer distributions), and the runner of its answer logits.

    Built with `for_model` (a model in memory, or "self") or `from_source` (a folder, Hub id or embedded
    alias, loaded on first use, so a run that finds everything cached never loads it)."""

    def __init__(
        self, model=None, *, is_self=False, source=None, dtype="float32", quantization="none", load=None
    ):
        self._model = model
        self._load = load  # () -> the model, for a teacher loaded when first needed
        self.is_self = is_self
        self.source, self.dtype, self.quantization = source, dtype, quantization
        self.loaded = False  # whether this teacher loaded weights itself
        self.engine = None  # under DeepSpeed, the engine that holds the weights (kept alive with the teacher)
        self._placed = is_self
        # batch -> answer logits, with the prefix KV cache; the trainer sets its own (prefix cache, packing)
        self.runner = TeacherAnswerLogits(use_prefix_cache=True)

    @classmethod
    def for_model(cls, model, name: str, source: str | None = None, dtype="float32", quantization="none"):
        """`name` "self" uses `model` (a LoRA student) with its adapters off; `source` is the path or alias
        the teacher's weights come from (the student's, for "self"), None when they are only in memory."""
        check_self_teacher(
            name, student_is_lora=hasattr(model, "disable_adapter"), fix="this model has no adapters"
        )
        return cls(model, is_self=is_self(name), source=source, dtype=dtype, quantization=quantization)

    @classmethod
    def from_source(cls, name_or_path: str, dtype="float32", quantization="none", process_index=None):
        """A teacher on disk or on the Hub, loaded (one copy for this process) when first used."""
        if is_self(name_or_path):
            raise UsageError(
                "teacher 'self' has no weights of its own to load: use Teacher.for_model(student, 'self')"
            )

        def load():
            return load_teacher(name_or_path, dtype, quantization, process_index).eval()

        return cls(source=name_or_path, dtype=dtype, quantization=quantization, load=load)

    @property
    def model(self):
        """The teacher's model (the student itself for "self"), loaded now if it was not yet."""
        if self._model is None:
            if self._load is None:
                raise UsageError("this teacher was released; build a new Teacher to use it again")
            self._model = self._load()
            self.loaded = True
        return self._model

    @property
    def separate_model(self):
        """The teacher's own weights in memory, if any (None for "self", or before a lazy load)."""
        return None if self.is_self else self._model

    # ---- identity ----

    @property
    def source_id(self) -> str | None:
        """The teacher's identity from its files, without loading it (None if they are not a local folder)."""
        if self.source is None:
            return None
        return teacher_source_fingerprint(self.source, self.dtype, self.quantization)

    @functools.cached_property
    def teacher_id(self) -> str:
        """What every teacher cache is keyed on: its files when on disk, otherwise its weights (LoRA left
        out, so a `self` teacher keeps its identity while the adapters train)."""
        return self.source_id or teacher_fingerprint(self.model)

    # ---- checks and placement ----

    def check_vocabulary(self, student, student_tokenizer=None, teacher_tokenizer=None) -> None:
        """Full-vocabulary losses compare logit i of both models: they must mean the same token."""
        if not self.is_self:
            check_same_vocabulary(student, self.model, student_tokenizer, teacher_tokenizer)

    def place(self, accelerator, device) -> None:
        """Loads the teacher if needed and makes it ready to run forward in this process (eval mode, no
        gradients, on `device`, or inside a DeepSpeed engine); a `self` teacher is already in place."""
        if not self._placed:
            self._model, self.engine = place_teacher(self.model, accelerator, device)
            self._placed = True

    def release(self) -> None:
        """Drops the teacher's weights and its prefix cache (the caller then returns the freed memory); a
        teacher on disk loads again if it is used after."""
        self.runner = TeacherAnswerLogits(
            use_prefix_cache=self.runner.use_prefix_cache, pack=self.runner.pack
        )
        self.engine = None
        if not self.is_self:
            self._model = None
            self._placed = False

    # ---- running ----

    @contextlib.contextmanager
    def active(self):
        """The teacher model, ready to run (for "self": the student with adapters off, in eval mode)."""
        if self.is_self:
            with adapters_off(self.model) as model:
                yield model
            return
        model = self.model
        was_training = model.training
        model.eval()
        try:
            yield model
        finally:
            model.train(was_training)

    @torch.no_grad()
    def answer_logits(self, batch: dict) -> torch.Tensor:
        """The teacher's logits at the answer positions of the teacher view (batch, answer_len, vocab), on
        the teacher's device (the batch is moved there if it is elsewhere)."""
        with self.active() as model:
            return self.runner(model, _on_device_of(model, batch))

    @torch.no_grad()
    def answer_hidden(self, batch: dict):
        """(the teacher's final hidden states at the teacher view's answer positions, its output head): the
        chunked sequence loss applies the head a few positions at a time. A `self` teacher's head runs
        with the adapters off too, should LoRA wrap the head itself."""
        with self.active() as model, output_head_removed(model) as head:
            hidden = self.runner(model, _on_device_of(model, batch))
        wrapped = self.is_self and hasattr(head.module, "lora_A")  # LoRA on the head itself
        return hidden, _BaseHead(head, self.model) if wrapped else head


class _BaseHead:
    """A `self` teacher's output head, applied with the student's adapters off."""

    def __init__(self, head, model):
        self.head, self.model = head, model

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        with self.model.disable_adapter():
            return self.head(hidden)


def _on_device_of(model, batch: dict) -> dict:
    """`batch` with its tensors on `model`'s device: a recipe's teacher may sit on a GPU while the
    student it is compared with, and so the batch, is still on the CPU."""
    device = next(model.parameters()).device
    return {k: v.to(device) if torch.is_tensor(v) and v.device != device else v for k, v in batch.items()}
