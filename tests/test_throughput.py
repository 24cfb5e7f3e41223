"""MFU: a stated, repeatable CPU peak in the run's dtype, and never an MFU above 100%."""

from __future__ import annotations

import json
import math

import pytest
import torch
from lightning.pytorch.trainer.states import RunningStage

from momattn import lightning_compat as compat
from momattn.callbacks import (
    BoundedThroughput,
    Throughput,
    measured_peak_flops,
    precision_dtype,
    throughput_summary,
)


@pytest.mark.parametrize("precision,dtype", [("32-true", torch.float32), ("32", torch.float32),
                                             ("bf16-mixed", torch.bfloat16), ("bf16-true", torch.bfloat16),
                                             ("16-mixed", torch.float16), ("64-true", torch.float64)])
def test_the_peak_is_measured_in_the_dtype_the_run_trains_in(precision, dtype):
    assert precision_dtype(precision) == dtype


def test_measuring_the_peak_leaves_the_global_rng_alone():
    # the number of sizes tried depends on timing; drawing from the global RNG would make dropout irreproducible
    before = torch.get_rng_state()
    measured_peak_flops(torch.float32, repeats=1, max_n=512, target_s=1e-4)
    assert torch.equal(torch.get_rng_state(), before)


def test_measured_peak_is_positive_sized_and_cached():
    flops, n = measured_peak_flops(torch.float32, repeats=2, max_n=384, target_s=10.0)
    assert n == 384 and flops > 1e6  # grew to max_n: one 384^2 matmul takes far less than 10 s
    assert measured_peak_flops(torch.float32, repeats=2, max_n=384, target_s=10.0) == (flops, n)  # cached
    _, n_small = measured_peak_flops(torch.float32, repeats=1, max_n=2048, target_s=0.0)
    assert n_small == 256  # a matmul slower than the target stops the growth at once


def _monitor(peak: float | None, flops_per_batch: float, seconds_per_batch: float) -> Throughput:
    m = Throughput(batch_size_fn=len, window_size=3)
    m.available_flops = peak
    t = BoundedThroughput(available_flops=peak, window_size=3)
    compat.stage_throughputs(m)[RunningStage.TRAINING] = t
    for i in range(1, 5):
        t.update(time=i * seconds_per_batch, batches=i, samples=4 * i, lengths=64 * i, flops=flops_per_batch)
    return m


def test_summary_reports_tokens_flops_and_mfu():
    s = throughput_summary(_monitor(peak=1e10, flops_per_batch=1e9, seconds_per_batch=0.5))
    assert s["tokens_per_sec"] == pytest.approx(128.0) and s["flops_per_sec"] == pytest.approx(2e9)
    assert s["mfu"] == pytest.approx(0.2) and s["peak_flops_per_sec"] == 1e10 and "mfu_note" not in s
    assert s["tokens_per_sec_mean"] == pytest.approx(128.0)  # 256 tokens in 2 s: steady, so the same


def test_with_several_processes_the_jobs_tokens_per_second_is_reported_beside_the_devices():
    m = Throughput(batch_size_fn=len, window_size=3)
    t = BoundedThroughput(available_flops=None, window_size=3, world_size=4)
    compat.stage_throughputs(m)[RunningStage.TRAINING] = t
    for i in range(1, 5):
        t.update(time=i * 0.5, batches=i, samples=4 * i, lengths=64 * i)
    s = throughput_summary(m)
    assert s["tokens_per_sec"] == pytest.approx(128.0)  # rank 0's device, as before
    assert s["devices"] == 4 and s["tokens_per_sec_all_devices"] == pytest.approx(512.0)
    assert "devices" not in throughput_summary(_monitor(peak=None, flops_per_batch=1.0, seconds_per_batch=0.5))


def test_the_mean_counts_every_token_over_the_whole_time():
    m = Throughput(batch_size_fn=len, window_size=2)
    t = BoundedThroughput(available_flops=None, window_size=2)
    compat.stage_throughputs(m)[RunningStage.TRAINING] = t
    for i, at in enumerate([3.0, 3.5, 4.0, 4.5], start=1):  # a slow first step, then 0.5 s each
        t.update(time=at, batches=i, samples=4 * i, lengths=64 * i)
    s = throughput_summary(m)
    assert s["tokens_per_sec"] == pytest.approx(128.0) and s["tokens_per_sec_mean"] == pytest.approx(256 / 4.5)


def test_a_device_without_a_known_peak_says_why_it_has_no_mfu():
    # an H200 ('NVIDIA H200') was not in Lightning's table: no MFU, and nothing said why (found by review)
    from momattn.hardware import gpu_bf16_peak

    s = throughput_summary(_monitor(peak=None, flops_per_batch=1e9, seconds_per_batch=0.5))
    assert s["mfu"] is None and s["mfu_note"].startswith("no MFU: no datasheet peak is known for this device")
    assert gpu_bf16_peak("NVIDIA H200") == gpu_bf16_peak("NVIDIA H100 80GB HBM3") == 989e12  # dense, not 2,000
    assert gpu_bf16_peak("NVIDIA H100 PCIe") == 756e12 and gpu_bf16_peak("Tesla T4") is None
    assert gpu_bf16_peak("NVIDIA L40") == 181e12 and gpu_bf16_peak("NVIDIA L4") == 121e12  # not L4's for an L40
    assert gpu_bf16_peak("NVIDIA L40S") == 362e12 and gpu_bf16_peak("NVIDIA A10G") == 70e12
    # NVL parts had the SXM figure, GH200 none, and a MIG slice the whole GPU's (MFU up to 7x low; found by review)
    assert gpu_bf16_peak("NVIDIA H100 NVL") == gpu_bf16_peak("NVIDIA H200 NVL") == 835e12
    assert gpu_bf16_peak("NVIDIA GH200 480GB") == 989e12
    assert gpu_bf16_peak("NVIDIA A100-SXM4-40GB MIG 1g.5gb") is None


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_a_mig_slices_run_has_no_mfu_against_the_whole_gpus_peak(monkeypatch, precision):
    # the callback fell back to Lightning's table, which gave a 1g.10gb slice of an H100 all of its 989 TFLOP/s
    # (found by review)
    from types import SimpleNamespace as NS

    from lightning.pytorch.plugins.precision import MixedPrecision, Precision
    from lightning.pytorch.trainer.states import RunningStage, TrainerFn

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3 MIG 1g.10gb")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))  # (Lightning's fp32 lookup asks)
    trainer = NS(precision_plugin=MixedPrecision("bf16-mixed", "cuda") if precision == "bf16-mixed" else Precision(),
                 precision=precision, strategy=NS(root_device=torch.device("cuda", 0)), enable_validation=False,
                 world_size=1, state=NS(stage=RunningStage.TRAINING, fn=TrainerFn.FITTING), is_global_zero=True)
    monitor = Throughput(batch_size_fn=len)
    monitor.setup(trainer, None, "fit")
    assert monitor.available_flops is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")  # the whole GPU: its own
    monitor.setup(trainer, None, "fit")
    assert monitor.available_flops == (989e12 if precision == "bf16-mixed" else 66.9e12)  # fp32 (matmul precision "highest")


def test_an_mfu_above_100_percent_is_not_reported():
    m = _monitor(peak=1e9, flops_per_batch=1e9, seconds_per_batch=0.5)  # 2 GFLOP/s against a 1 GFLOP/s "peak"
    assert math.isnan(compat.throughput_metrics(m)["device/mfu"])  # what Lightning logs each window
    s = throughput_summary(m)
    assert s["mfu"] is None and "exceeds the assumed peak" in s["mfu_note"]
    assert s["flops_per_sec"] == pytest.approx(2e9)  # the measurement itself is kept


def test_summary_before_a_full_window_is_empty_not_an_error():
    m = Throughput(batch_size_fn=len, window_size=50)
    assert throughput_summary(m) == {"tokens_per_sec": None, "flops_per_sec": None, "mfu": None,
                                     "peak_flops_per_sec": None}
    t = BoundedThroughput(available_flops=1e9, window_size=50)
    t.update(time=1.0, batches=1, samples=1)
    compat.stage_throughputs(m)[RunningStage.TRAINING] = t
    assert throughput_summary(m)["mfu"] is None


def test_the_cpu_peak_is_the_best_of_every_runs_measurement(tmp_path):
    from momattn.callbacks import recorded_peak_flops

    path = tmp_path / "sub" / "cpu_peak_flops.json"
    assert recorded_peak_flops(path, "cpu A | float32", 100e9) == (100e9, 1)
    assert recorded_peak_flops(path, "cpu A | float32", 60e9) == (100e9, 2)  # a contended start-up reads low
    assert recorded_peak_flops(path, "cpu A | float32", 120e9) == (120e9, 3)
    assert recorded_peak_flops(path, "cpu A | bfloat16", 1e9) == (1e9, 1)  # per dtype (and CPU, threads, torch)
    assert recorded_peak_flops(None, "cpu A | float32", 5e9) == (5e9, 1)  # no record: this run alone
    # no temp file left behind; the lock file stays (removing it would race with a writer that opened it)
    assert sorted(p.name for p in path.parent.iterdir()) == [".cpu_peak_flops.json.lock", "cpu_peak_flops.json"]


def _record_many(path, i, n):
    from momattn.callbacks import recorded_peak_flops

    for j in range(n):
        recorded_peak_flops(path, "cpu A | float32", float(1000 * i + j + 1))  # a speed: > 0


def test_runs_starting_together_keep_every_update_of_the_peak_record(tmp_path):
    """Parallel sweep jobs measure at the same moment: each read-modify-write of the record holds a lock, so no
    run's count or measurement is lost (unlocked, 4 processes x 40 updates kept about half of them)."""
    import multiprocessing

    from momattn.callbacks import recorded_peak_flops

    path = tmp_path / "cpu_peak_flops.json"
    ctx = multiprocessing.get_context("fork")  # the test process has the modules loaded already
    procs = [ctx.Process(target=_record_many, args=(path, i, 40)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert recorded_peak_flops(path, "cpu A | float32", 1.0) == (3040.0, 161)  # the highest of all, every run counted


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"cpu A | float32": {"flops": "fast"}}'])
def test_an_unreadable_peak_record_starts_afresh(tmp_path, content):
    from momattn.callbacks import recorded_peak_flops

    path = tmp_path / "cpu_peak_flops.json"
    path.write_text(content)
    assert recorded_peak_flops(path, "cpu A | float32", 7e9) == (7e9, 1)
    assert recorded_peak_flops(path, "cpu A | float32", 1e9) == (7e9, 2)  # and the rewritten record works


def test_a_peak_record_that_cannot_be_written_is_skipped(tmp_path):
    from momattn.callbacks import recorded_peak_flops

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert recorded_peak_flops(blocker / "cpu_peak_flops.json", "k", 3e9) == (3e9, 1)  # parent is a file


@pytest.mark.parametrize("name,precision,lightning_peak,expected", [
    ("NVIDIA H200", "bf16-mixed", None, 989e12),  # not in Lightning's table: momattn's dense datasheet figure
    ("NVIDIA H100 80GB HBM3", "bf16-true", 1979e12, 989e12),  # Lightning's is the sparse figure
    ("Tesla T4", "16-mixed", 65e12, 65e12),  # unknown to momattn: Lightning's
    ("NVIDIA H200", "32-true", 67e12, 67e12)])  # fp32: Lightning's (momattn's table is bf16 and fp16)
def test_on_cuda_mfu_is_against_the_datasheet_peak(monkeypatch, name, precision, lightning_peak, expected):
    # the CUDA branch of setup, run without a GPU: the device name and Lightning's table are stand-ins
    from types import SimpleNamespace

    import lightning.pytorch.callbacks.throughput_monitor as tm

    monkeypatch.setattr(tm, "get_available_flops", lambda device, dtype: lightning_peak)
    monkeypatch.setattr(tm, "_plugin_to_compute_dtype", lambda plugin: precision_dtype(precision))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), precision=precision,
                              precision_plugin=None, enable_validation=True, world_size=1,
                              state=SimpleNamespace(stage=RunningStage.TRAINING))
    m = Throughput(batch_size_fn=len, window_size=3)
    m.setup(trainer, None, "fit")
    assert m.available_flops == expected and Throughput.peak_note is None  # no CPU matmul measured
    t = compat.stage_throughputs(m)[RunningStage.TRAINING]
    for i in range(1, 5):  # 1 % of the peak per second
        t.update(time=float(i), batches=i, samples=4 * i, lengths=64 * i, flops=expected / 100)
    s = throughput_summary(m)
    assert s["peak_flops_per_sec"] == expected and s["mfu"] == pytest.approx(0.01)


def test_one_process_records_its_cpu_peak_once_however_many_runs_it_starts(tmp_path, monkeypatch, capsys):
    # each trial of an Optuna search (one process) recorded the one cached measurement again: "the best of N runs"
    # counted repeats (found by review)
    import json
    from types import SimpleNamespace

    import lightning.pytorch.callbacks.throughput_monitor as tm

    monkeypatch.setattr(tm, "get_available_flops", lambda device, dtype: None)
    monkeypatch.setattr(tm, "_plugin_to_compute_dtype", lambda plugin: torch.float32)
    record = tmp_path / "cpu_peak_flops.json"
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")), precision="32-true",
                              precision_plugin=None, enable_validation=True, world_size=1, is_global_zero=True,
                              state=SimpleNamespace(stage=RunningStage.TRAINING))
    for _ in range(3):  # three runs in one process, each with its own callback
        Throughput(batch_size_fn=len, window_size=3, peak_record=record).setup(trainer, None, "fit")
    ((key, entry),) = json.loads(record.read_text()).items()
    assert entry["runs"] == 1
    assert capsys.readouterr().err.count("the best start-up measurement of 1 run(s)") == 3
    # the key holds what decides the speed: one CPU name covers hosts with and without AMX (found by review)
    from momattn import hardware

    units = "amx" if hardware.cpu_has_amx() else "avx512_bf16" if hardware.cpu_has_native_bf16() else "-"
    assert f" | {units} | float32 | " in key


@pytest.mark.parametrize("kept", ["NaN", '"nan"', "Infinity", "-5.0", "0"])
def test_a_cpu_peak_record_that_is_not_a_speed_starts_afresh(tmp_path, kept):
    # a NaN peak was kept forever (max(nan, x) is nan), and every later run had no MFU and no note (found by review)
    import json

    from momattn.callbacks import recorded_peak_flops

    record = tmp_path / "cpu_peak_flops.json"
    record.write_text('{"k": {"flops": ' + kept + ', "runs": 7}}')
    assert recorded_peak_flops(record, "k", 2e9) == (2e9, 1)
    assert json.loads(record.read_text())["k"] == {"flops": 2e9, "runs": 1}
    record.write_text('{"k": {"flops": 3e9, "runs": -5}}')
    assert recorded_peak_flops(record, "k", 2e9) == (2e9, 1)
    s = throughput_summary(_monitor(peak=float("nan"), flops_per_batch=1e9, seconds_per_batch=0.5))
    assert s["mfu"] is None and s["mfu_note"].startswith("no MFU")


def test_the_throughput_window_spans_whole_optimizer_steps(tmp_path):
    # under accumulate_grad_batches=4 the window of 2 entries timed the last micro-batch alone, its optimizer step
    # included (735 tokens/s where the last step ran at 1,482; found by review)
    from types import SimpleNamespace

    from momattn.training import _throughput_monitor

    # (window - 1) / accumulate whole steps, and full by the first logging step and within the run (a window of one
    # entry more than that step held reported no speed for a run of max_steps = log_every_n_steps: review)
    for log_every, accumulate, max_steps, window in ((1, 4, 100, 5), (10, 4, 100, 37), (10, 1, 100, 10),
                                                     (None, 2, 100, 39), (50, 1, 100, 20), (10, 2, 5, 9)):
        c = SimpleNamespace(trainer={"log_every_n_steps": log_every}, accumulate=accumulate, cache_dir=tmp_path,
                            max_steps=max_steps)
        assert _throughput_monitor(c).kwargs["window_size"] == window
    from conftest import SMOKE, compose_train, read_metrics

    from momattn.training import run_train

    run_train(compose_train(tmp_path / "run", [*SMOKE, "trainer.log_every_n_steps=6", "trainer.max_steps=7",
                                               "trainer.accumulate_grad_batches=2", "val_every_steps=3",
                                               "data.val_batches=4"]))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["tokens_per_sec"] > 0 and summary["tokens_per_sec_mean"] > 0
    # a validation's rates, in a window of its own 4 batches (the training window of 11 micro-batches never
    # filled: no val/device/* was logged), and the last step's, off the logging interval (summary.json's
    # tokens_per_sec was in no row of metrics.csv): both found by review
    rows = read_metrics(tmp_path / "run")
    assert [int(r["step"]) for r in rows if r.get("val/device/items_per_sec")] == [2, 5, 6]
    last = [r for r in rows if r.get("train/device/items_per_sec")][-1]
    assert int(last["step"]) == 6 and float(last["train/device/items_per_sec"]) == pytest.approx(summary["tokens_per_sec"])


def test_a_segment_too_short_to_measure_says_so(tmp_path, capsys):
    # a short resumed segment's summary left the throughput line out without a word (found by review)
    from conftest import SMOKE, compose_train

    from momattn.training import run_train

    run_train(compose_train(tmp_path, [*SMOKE, "trainer.max_steps=6"]))
    before = json.loads((tmp_path / "summary.json").read_text())
    capsys.readouterr()
    run_train(compose_train(tmp_path, [*SMOKE, "trainer.max_steps=7", "trainer.log_every_n_steps=20", "ckpt_path=last",
                                       f"hydra.run.dir={tmp_path}"]))
    # the last window the run measured, from its checkpoint, said so (summary.json had no tokens/s or MFU: review)
    err, after = capsys.readouterr().err, json.loads((tmp_path / "summary.json").read_text())
    assert "(the last steps' rate is " in err and "this process trained 1 step," in err
    assert after["tokens_per_sec"] == pytest.approx(before["tokens_per_sec"]) and after["tokens_per_sec_mean"] > 0
    assert (after.get("mfu") is None) == (before.get("mfu") is None)
    for key in ("flops_per_sec", "peak_flops_per_sec"):  # the MFU's own peak, not this process's (flows review)
        assert after[key] == pytest.approx(before[key]), key
    # a second short resume: the rate carried on in the checkpoint (it had none again: flows review)
    run_train(compose_train(tmp_path, [*SMOKE, "trainer.max_steps=8", "trainer.log_every_n_steps=20", "ckpt_path=last",
                                       f"hydra.run.dir={tmp_path}"]))
    capsys.readouterr()
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["tokens_per_sec"] == pytest.approx(before["tokens_per_sec"]) and again["steps"] == 8
    # a run too short for one window: said, with the mean over its steps that summary.json has (it was left out)
    run_train(compose_train(tmp_path / "short", [*SMOKE, "trainer.max_steps=1", "trainer.log_every_n_steps=20"]))
    err = capsys.readouterr().err
    assert "  throughput of the last steps not measured: this process trained too few optimizer steps to fill its " \
           "window (up to min(20, trainer.log_every_n_steps) steps); " in err and " tokens/s over all the run's " \
           "training steps, validation excluded; fit took" in err and "done: 1 step\n" in err


def test_the_checkpoint_written_after_a_validation_is_not_training_time(tmp_path, monkeypatch):
    """Lightning's monitor moved the training clock on by the validation alone: the checkpoint saved after it
    (ModelCheckpoint's hook runs last) counted as training time (found by review: 300 tokens/s logged against the
    progress line's 1.0K with a 1 s save)."""
    import time

    from conftest import SMOKE, compose_train

    import momattn.callbacks
    from momattn.training import run_train

    real = momattn.callbacks.ModelCheckpoint.on_validation_end

    def slow_save(self, trainer, pl_module):
        time.sleep(1.5)  # a large model's fsynced save (before the state it writes is taken)
        real(self, trainer, pl_module)

    monkeypatch.setattr(momattn.callbacks.ModelCheckpoint, "on_validation_end", slow_save)
    run_train(compose_train(tmp_path / "run", [*SMOKE, "trainer.max_steps=6", "trainer.val_check_interval=2",
                                               "trainer.log_every_n_steps=1"]))
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        import csv

        times = [float(r["train/time"]) for r in csv.DictReader(f) if r.get("train/time")]
    assert times and times[-1] < 3.0, times  # two saves (after steps 2 and 4) inside: 3 s or more
    # and the time a checkpoint records (a resume starts from it) stops where the clock stopped: it held the last
    # validation and save, so each resume added one (flows review)
    from momattn.checkpoint import read_checkpoint

    states = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["callbacks"]
    saved = next(v["time"] for k, v in states.items() if k.startswith("Throughput"))
    assert times[-1] <= saved < times[-1] + 0.5, (saved, times)
