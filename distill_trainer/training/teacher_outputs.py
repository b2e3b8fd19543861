"""The trainer's use of the teacher output cache (teacher/output_cache.py): swap the datasets for copies
carrying the teacher's answers, loading the teacher only when some are not cached yet, then train without it.
A mixin of `ContextDistillationTrainer`, which provides the teacher (`_load_teacher`) and the memory phases.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from distill_trainer.memory.peak import release_freed_memory
from distill_trainer.teacher.output_cache import cached_teacher_outputs, load_or_build_teacher_outputs
from distill_trainer.teacher.store import build_record, record_build
from distill_trainer.training.trainer_internals import prepare_inputs

logger = logging.getLogger(__name__)


class TeacherOutputsMixin:
    def _use_teacher_output_cache(self) -> None:
        """Swap the datasets for copies carrying the teacher's outputs (loaded or computed once), then drop
        the teacher: training reads those outputs and never runs it again. A teacher known by its files
        is loaded only if some dataset's outputs are not cached yet."""
        args = self.args
        options = dict(
            distill_vocab=args.distill_vocab,
            temperature=args.temperature,
            top_k=args.teacher_cache_top_k,
            label_token_ids=self.teacher_label_token_ids,
            cache_dir=args.teacher_cache_dir,
        )
        datasets = {"train": self.train_dataset}
        if isinstance(self.eval_dataset, dict):
            datasets.update({f"eval_{name}": dataset for name, dataset in self.eval_dataset.items()})
        elif self.eval_dataset is not None:
            datasets["eval"] = self.eval_dataset
        datasets = {name: dataset for name, dataset in datasets.items() if dataset is not None}
        ensemble = getattr(self, "teacher_ensemble", None)
        if ensemble is not None:  # the other demonstration sets' views and the content-free queries
            datasets.update(ensemble.extra_datasets())
        done, self.teacher_output_cache_info = {}, {}
        teacher_id = self.teacher.source_id  # None for a teacher known only by its weights
        if teacher_id is not None:
            for name, dataset in datasets.items():
                cached, path = cached_teacher_outputs(dataset, teacher_id=teacher_id, **options)
                if cached is not None:
                    done[name] = cached
                    self.teacher_output_cache_info[name] = {
                        "path": str(path),
                        "reused": True,
                        "seconds": 0.0,
                        "when_built": build_record(path),
                    }
                    logger.info("teacher output cache reused: %s (the teacher is not loaded)", path)
        if len(done) < len(datasets):
            self._load_teacher()
            build = dict(
                options,
                batch_size=args.per_device_eval_batch_size,
                show_progress=not args.disable_tqdm,
                teacher_id=self.teacher.teacher_id,
                logits_fn=lambda batch: self.teacher_answer_logits(prepare_inputs(self, batch)),
            )
            with args.main_process_first(desc="teacher output cache"), self._phase("teacher_pass"):
                for name, dataset in datasets.items():
                    if name not in done:
                        done[name] = self._build_teacher_outputs(self.teacher.model, dataset, build, name)
            self._record_builds()
        if ensemble is not None:
            done["train"] = ensemble.combine(done, self.teacher_output_cache_info, args.temperature)
        self.train_dataset = done["train"]
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {name: done[f"eval_{name}"] for name in self.eval_dataset}
        elif self.eval_dataset is not None:
            self.eval_dataset = done["eval"]
        dropped_a_model = self.teacher.separate_model is not None
        self.teacher.release()  # its weights, its prefix cache and, under DeepSpeed, the engine holding them
        self.teacher = None  # the trainer then reads the teacher's signal from the datasets
        if dropped_a_model:  # its weights are garbage now: training's peak should not include them
            release_freed_memory()

    def _record_builds(self) -> None:
        """Beside each cache built here: its time and the teacher's peak memory (load, pass), so that the
        runs which reuse it can report what the teacher cost."""
        phases = self._phase_tracker.as_dict()["phases"] if self._phase_tracker is not None else {}
        for entry in self.teacher_output_cache_info.values():
            if entry["reused"] or not self.is_world_process_zero():
                continue
            entry["when_built"] = {
                "seconds": entry["seconds"],
                "teacher_quantization": self.args.teacher_quantization,
                **{
                    f"{phase}_peak_mib": phases[phase].get("cpu_peak_rss_mib")
                    for phase in ("teacher_load", "teacher_pass")
                    if phase in phases
                },
            }
            record_build(Path(entry["path"]), entry["when_built"])

    def _build_teacher_outputs(self, teacher, dataset, options, name: str):
        start = time.perf_counter()
        dataset, path, reused = load_or_build_teacher_outputs(teacher, dataset, self.data_collator, **options)
        self.teacher_output_cache_info[name] = {
            "path": str(path),
            "reused": reused,
            "seconds": round(time.perf_counter() - start, 2),
        }
        logger.info("teacher output cache %s: %s", "reused" if reused else "built", path)
        return dataset

    # ---- loss ----
