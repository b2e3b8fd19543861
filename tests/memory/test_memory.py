import ctypes
import json
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from distill_trainer import ContextDistillationTrainer, DistillationConfig, TwoViewCollator, build_views
from distill_trainer.errors import UsageError
from distill_trainer.memory.breakdown import memory_breakdown, model_bytes
from distill_trainer.memory.estimate import architecture_config, estimate_peak_memory, quantized_teacher_bytes
from distill_trainer.memory.peak import CpuMemoryMeter, MemoryCallback, MemoryTracker
from distill_trainer.memory.units import MIB
from distill_trainer.models.loading import load_causal_lm, prepare_student

REPO = Path(__file__).resolve().parents[2]
CPU_METHODS = ["sampling"] + (["kernel_hwm"] if CpuMemoryMeter().method == "kernel_hwm" else [])


def _allocate_and_hold(mib: int, seconds: float = 0.05):
    big = torch.ones(mib * MIB // 4)  # written, so every page is resident
    time.sleep(seconds)  # long enough for the sampling thread to see it
    del big
    # glibc may keep a freed large block resident once earlier tests have raised its mmap threshold;
    # hand it back so the next interval starts low whatever ran before
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


@pytest.mark.parametrize("method", CPU_METHODS)
def test_phase_that_allocates_a_large_tensor_has_the_larger_peak(method):
    tracker = MemoryTracker(device="cpu", cpu_method=method)
    try:
        with tracker.phase("outer"):
            with tracker.phase("large"):
                _allocate_and_hold(256)
            with tracker.phase("small"):
                torch.ones(16)
        large, small = tracker.peak("large")["cpu_rss"], tracker.peak("small")["cpu_rss"]
        assert large - small > 200 * MIB
        # a parent's peak includes its children's, although each child reset the meter
        assert tracker.peak("outer")["cpu_rss"] >= large
        summary = tracker.as_dict()
        assert summary["cpu_method"] == method
        assert (
            summary["phases"]["large"]["cpu_peak_rss_mib"]
            > summary["phases"]["small"]["cpu_peak_rss_mib"] + 200
        )
    finally:
        tracker.close()


def test_mark_records_the_interval_since_the_previous_mark():
    tracker = MemoryTracker(device="cpu")
    tracker.mark(None)
    _allocate_and_hold(128)
    tracker.mark("with_tensor")
    torch.ones(16)
    tracker.mark("without")
    assert tracker.peak("with_tensor")["cpu_rss"] - tracker.peak("without")["cpu_rss"] > 100 * MIB
    tracker.close()


def test_phases_must_end_innermost_first():
    tracker = MemoryTracker(device="cpu")
    tracker.begin("a")
    tracker.begin("b")
    with pytest.raises(UsageError, match="innermost"):
        tracker.end("a")
    with pytest.raises(UsageError, match="no memory phase"):
        tracker.peak("never")
    tracker.close()


def _adamw_step(model):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(1, model.config.vocab_size, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    return optimizer


def _tiny_opt(vocab_size=300, seed=0):
    from transformers import AutoModelForCausalLM, OPTConfig

    torch.manual_seed(seed)
    config = OPTConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        ffn_dim=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=32,
        word_embed_proj_dim=16,
    )
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


@pytest.mark.parametrize("mode", ["full", "lora", "bitfit"])
def test_breakdown_terms_are_exact_counts(teacher, mode):
    model = prepare_student(_tiny_opt(), mode, lora_r=4)  # OPT: has biases for BitFit, tied embeddings
    optimizer = _adamw_step(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    breakdown = memory_breakdown(
        10**9, student=model, optimizer=optimizer, teacher=teacher, runtime_bytes=10**6
    )
    assert breakdown.parameters == 4 * n_total
    assert breakdown.gradients == 4 * n_trainable
    # AdamW: exp_avg and exp_avg_sq per trainable weight, plus one fp32 step counter per tensor
    assert breakdown.optimizer_state == 2 * 4 * n_trainable + 4 * len(trainable)
    assert breakdown.teacher_weights == 4 * sum(p.numel() for p in teacher.parameters()) + 4 * sum(
        b.numel() for b in teacher.buffers()
    )
    assert (
        breakdown.rest
        == 10**9
        - 10**6
        - breakdown.parameters
        - breakdown.gradients
        - breakdown.optimizer_state
        - breakdown.teacher_weights
    )
    # the analytic model, given the same (meta-device) model, predicts the same exact terms
    estimate = estimate_peak_memory(model, teacher, batch_size=2, student_tokens=8, teacher_tokens=16)
    assert (estimate.parameters, estimate.gradients, estimate.optimizer_state) == (
        breakdown.parameters,
        breakdown.gradients,
        breakdown.optimizer_state,
    )


def test_tied_weights_count_once():
    model = _tiny_opt()
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight
    assert model_bytes(model) == 4 * sum(p.numel() for p in model.parameters())  # parameters() dedupes too


@pytest.mark.parametrize("quantization", ["none", "8bit", "4bit"])
def test_quantized_teacher_bytes_match_a_loaded_teacher(tmp_path, quantization):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, OPTConfig

    # dimensions in multiples of 64: bitsandbytes' 4-bit CPU kernel needs them
    config = OPTConfig(
        vocab_size=256,
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=64,
    )
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(tmp_path)
    loaded = load_causal_lm(str(tmp_path), quantization=quantization)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    # the CPU 8-bit layers also store their rotation's block size, one int64 per layer
    settings = 8 * sum(1 for m in loaded.modules() if "rotation_block" in getattr(m, "state_tensors", dict)())
    assert model_bytes(loaded) == quantized_teacher_bytes(meta, quantization) + settings
    if quantization != "none":
        assert model_bytes(loaded) < quantized_teacher_bytes(meta, "none")


def test_published_architectures_have_the_papers_sizes():
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        counts = {
            name: sum(
                p.numel() for p in AutoModelForCausalLM.from_config(architecture_config(name)).parameters()
            )
            for name in ("opt-125m", "opt-1.3b")
        }
    assert 125e6 < counts["opt-125m"] < 126e6
    assert 1.31e9 < counts["opt-1.3b"] < 1.32e9
    with pytest.raises(UsageError, match="opt-1.3b"):
        architecture_config("opt-13b")


@pytest.mark.integration
def test_callback_records_train_steps_and_evaluation(tmp_path, tokenizer, student, teacher):
    demos = "The cat sat on the mat question: A cat is sitting. Yes or No? answer: Yes"
    rows = [
        build_views(
            tokenizer, "Two dogs run in the park question: Dogs run. Yes or No? answer:", " Yes", demos
        )
    ] * 8
    args = DistillationConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    tracker = MemoryTracker(device="cpu")
    trainer = ContextDistillationTrainer(
        model=student,
        teacher=teacher,
        args=args,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows),
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        callbacks=[MemoryCallback(tracker)],
    )
    trainer.train()
    metrics = trainer.evaluate()
    phases = tracker.as_dict()["phases"]
    assert phases["train_step"]["count"] == 2 and phases["train"]["count"] == 1
    assert phases["train"]["cpu_peak_rss_mib"] >= phases["train_step"]["cpu_peak_rss_mib"] > 0
    assert metrics["eval_mem_cpu_peak_rss_mib"] == phases["evaluate"]["cpu_peak_rss_mib"]
    logged = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logged) == 2 and all(log["mem_cpu_peak_rss_mib"] > 0 for log in logged)
    tracker.close()


def _load_benchmark():
    from benchmarks import memory

    return memory


@pytest.mark.integration
def test_benchmark_runs_end_to_end_on_tiny_models(tmp_path):
    pytest.importorskip("bitsandbytes")
    benchmark = _load_benchmark()
    out = tmp_path / "tiny"
    common = ["--tiny", "--output-dir", str(out), "--micro-batch-size", "2", "--in-process"]
    benchmark.main(common + ["--scenarios", "disk,pbft-opt-125m,cd-8bit-lora,cd-cached-lora"])
    # a budget nothing fits in: the scenario is reported with its estimate, not run and not dropped
    benchmark.main(common + ["--scenarios", "pbft-opt-1.3b", "--memory-budget-gb", "0.001"])
    report = json.loads((out / "memory.json").read_text())
    rows = {row["scenario"]: row for row in report["scenarios"]}
    assert {"pbft-opt-1.3b", "pbft-opt-125m", "cd-8bit-lora", "cd-cached-lora"} <= set(rows)
    assert rows["pbft-opt-1.3b"]["status"] == "does_not_fit" and rows["pbft-opt-1.3b"]["estimate_bytes"] > 0
    for name in ("pbft-opt-125m", "cd-8bit-lora", "cd-cached-lora"):
        assert rows[name]["status"] == "measured", rows[name]
        assert rows[name]["measured_bytes"] > 0 and rows[name]["breakdown"]["parameters"] > 0
        assert rows[name]["reduction"] is not None
    assert rows["cd-8bit-lora"]["breakdown"]["teacher_weights"] > 0
    assert rows["cd-cached-lora"]["breakdown"]["teacher_weights"] == 0  # the teacher is gone while training
    assert report["reference"]["source"] == "analytic estimate"
    assert (
        report["disk"]["sizes_bytes"]["student LoRA r=16 adapters only (fp32)"]
        < report["disk"]["sizes_bytes"]["student OPT-125M fp32 (full, or BitFit saved whole)"]
    )
    markdown = (out / "memory.md").read_text()
    assert "does not fit" in markdown and "## Goals" in markdown
    assert (out / "memory.png").stat().st_size > 1000


@pytest.mark.integration
def test_benchmark_scenario_runs_in_a_fresh_process(tmp_path):
    benchmark = _load_benchmark()
    out = tmp_path / "sub"
    benchmark.main(
        ["--tiny", "--output-dir", str(out), "--micro-batch-size", "2", "--scenarios", "pbft-opt-125m"]
    )
    result = json.loads((out / "scenarios" / "pbft-opt-125m.json").read_text())
    assert result["status"] == "measured", result
    phases = result["memory"]["phases"]
    # a fresh interpreter: the load starts from the runtime alone, and training adds the optimizer state
    assert abs(phases["model_load"]["cpu_start_rss_mib"] - result["memory"]["baseline_cpu_rss_mib"]) < 5
    assert phases["train"]["cpu_peak_rss_mib"] > phases["model_load"]["cpu_end_rss_mib"]


def test_unknown_scenario_is_rejected():
    benchmark = _load_benchmark()
    with pytest.raises(UsageError, match="unknown scenario"):
        benchmark.main(["--tiny", "--scenarios", "pbft-opt-66b", "--report-only"])


def test_needed_memory_counts_anonymous_memory_not_a_released_file_mapping(tmp_path):
    """A large file mapped and read (a checkpoint being converted) raises the resident set but not what the
    phase needs once the mapping is released; an anonymous allocation counts in both."""
    import mmap

    path = tmp_path / "weights.bin"
    with path.open("wb") as handle:
        handle.truncate(256 * MIB)
    tracker = MemoryTracker(device="cpu")
    try:
        if not tracker.needed.available:
            pytest.skip("no RssAnon in /proc/self/status")
        with tracker.phase("mapped_file"):
            with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                for offset in range(0, len(view), 4096):  # every page read, so every page is resident
                    view[offset]
                time.sleep(0.05)
        with tracker.phase("anonymous"):
            _allocate_and_hold(256)
        with tracker.phase("quiet"):
            torch.ones(16)
        phases = tracker.as_dict()["phases"]
        mapped, anonymous, quiet = phases["mapped_file"], phases["anonymous"], phases["quiet"]
        assert mapped["cpu_peak_rss_mib"] - quiet["cpu_peak_rss_mib"] > 200  # resident: the page cache
        assert mapped["cpu_needed_mib"] - quiet["cpu_needed_mib"] < 32  # needed: nothing once released
        assert anonymous["cpu_needed_mib"] - quiet["cpu_needed_mib"] > 200
        assert anonymous["cpu_peak_rss_mib"] - quiet["cpu_peak_rss_mib"] > 200
    finally:
        tracker.close()


def test_needed_memory_counts_a_file_that_live_data_still_maps(tmp_path):
    import mmap

    path = tmp_path / "weights.bin"
    with path.open("wb") as handle:
        handle.truncate(128 * MIB)
    tracker = MemoryTracker(device="cpu")
    handle = path.open("rb")
    view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if not tracker.needed.available:
            pytest.skip("no RssAnon in /proc/self/status")
        with tracker.phase("quiet"):
            torch.ones(16)
        with tracker.phase("held"):
            for offset in range(0, len(view), 4096):
                view[offset]
        phases = tracker.as_dict()["phases"]
        assert phases["held"]["cpu_needed_mib"] - phases["quiet"]["cpu_needed_mib"] > 100
    finally:
        view.close()
        handle.close()
        tracker.close()


def _saved_activation_bytes(model, batch: int, length: int) -> int:
    """Bytes the autograd graph keeps for backward in one bf16-autocast forward, each storage once,
    the model's own weights excluded."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, model.config.vocab_size, (batch, length))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1).logits.sum()
    return sum(seen.values())


@pytest.mark.parametrize(
    ("mode", "dtype"), [("full", "float32"), ("lora", "bfloat16"), ("bitfit", "float32")]
)
def test_activation_estimate_of_a_llama_style_student_matches_what_autograd_keeps(mode, dtype):
    """RMSNorm in float32 and a gated MLP: the estimate counts what backward really keeps."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from distill_trainer.memory.estimate import student_activation_bytes

    config = LlamaConfig(
        vocab_size=128, hidden_size=128, intermediate_size=384, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        attention_bias=mode == "bitfit", mlp_bias=mode == "bitfit",  # as BitFit loads a Llama student
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model = prepare_student(model, mode, lora_r=4)
    batch, length = 4, 96
    kept = _saved_activation_bytes(model, batch, length)
    estimate = student_activation_bytes(config, batch * length, "bfloat16", trains_weights=mode == "full")
    assert 0.85 < estimate / kept < 1.15, (estimate, kept)
