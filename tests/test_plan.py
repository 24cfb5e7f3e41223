"""python -m momattn.plan and global_batch: the paper's run planned, the accumulation derived for any device count."""

import importlib.util
import json

import pytest
from conftest import SMOKE, compose_train

from momattn.config import load_train_config
from momattn.errors import ConfigError
from momattn.plan import main, plan


def test_the_papers_run_planned_on_32_gpus(capsys):
    p = plan(["experiment=paper_350m", "trainer.devices=8", "trainer.num_nodes=4"])
    assert 340e6 < p["parameters"] < 360e6  # "350M" (Dai et al. 2023, Table 10)
    assert p["processes"] == 32 and p["accumulate_grad_batches"] == 2 and p["global_batch_sequences"] == 512
    assert p["tokens_per_step"] == 512 * 1024 and p["tokens"] == 500_000 * 512 * 1024
    assert p["flops"] == pytest.approx(p["flops_per_token"] * p["tokens"])
    assert 6 * p["parameters"] < p["flops_per_token"] < 8 * p["parameters"]
    assert p["memory_per_device_gib"]["fsdp"] < p["memory_per_device_gib"]["ddp"]
    assert p["gpu_hours"] == pytest.approx(p["flops"] / (0.4 * 989e12) / 3600)
    assert main(["experiment=paper_350m", "trainer.devices=8", "trainer.num_nodes=4"]) == 0
    out = capsys.readouterr().out
    assert "accumulate 2 (from global_batch=512)" in out
    # the paper's optimizer (Dai et al. 2023, Appendix): Adam (0.9, 0.98), eps 1e-6, 3e-4, 20K warm-up,
    # polynomial decay, clip 2.0
    assert ("AdamW lr 0.0003, 20,000 warm-up steps, then polynomial (power 1) to 0 x lr; betas (0.9, 0.98), "
            "eps 1e-06") in out and "gradient clip 2.0" in out
    assert "every 2000 optimizer steps (trainer.val_check_interval=4000 micro-batches; from val_every_steps)" in out
    assert plan(["experiment=paper_350m", "trainer.devices=8"])["val_check_interval"] == 16000  # accumulate 8


def test_plan_bad_input_is_one_line(capsys):
    assert main(["experiment=paper_350m", "trainer.devices=3"]) == 2
    assert "use a process count that divides 512" in capsys.readouterr().err
    assert main(["experiment=paper_35m"]) == 2
    assert "Did you mean 'paper_350m'" in capsys.readouterr().err
    assert main(["--mfu", "2"]) == 2
    assert main(["--peak-tflops", "nan"]) == 2  # printed "time nan s wall" (nan <= 0 is False; found by review)
    assert "--peak-tflops=nan must be a finite number above 0" in capsys.readouterr().err
    assert main(["model.n_layer=[1,2"]) == 2  # Hydra's own parse error: one line, no traceback
    assert "error: model.n_layer=[1,2 does not parse as a Hydra override: no viable alternative at input '[1,2'" in \
        capsys.readouterr().err
    assert main(["tokenizer=file", "tokenizer.path=/no/such/tokenizer.json"]) == 2  # not a plan at vocabulary 4096
    assert "tokenizer.path='/no/such/tokenizer.json' does not exist" in capsys.readouterr().err
    assert main(["model.n_embd=1000000000"]) == 2  # torch's "Storage size calculation overflowed" traceback
    assert "the model is too large to exist: a weight of model.n_embd=1000000000" in capsys.readouterr().err
    for bad in ("trainer.precision=bf17", "trainer.devices=-2", "model.n_head=0", "global_batch=0"):
        assert main(["debug=smoke", bad]) == 2, bad
    assert "Did you mean 'bf16'" in capsys.readouterr().err
    assert main(["trainer.accelerator=gpus"]) == 2  # planned as a GPU run, though train.py refuses it
    assert "trainer.accelerator='gpus' is not an accelerator Lightning knows" in capsys.readouterr().err
    # planned (one of them as 2 processes that train.py runs as one), where train.py refuses them (found by review)
    for bad, says in (("trainer=cpu trainer.devices=[0,1]", "trainer.devices=[0, 1]: on a CPU give a number of processes"),
                      ("trainer=cpu trainer.devices=-1", "trainer.devices=-1: on a CPU give a number of processes"),
                      ("trainer=ddp trainer.accelerator=cpu trainer.strategy=single_device trainer.devices=2",
                       "trainer.strategy=single_device runs 1 process(es), but trainer.devices x trainer.num_nodes "
                       "asks for 2"),
                      ("trainer=fsdp trainer.accelerator=cpu trainer.precision=64-true",
                       "trainer could not be created: `precision='64-true')` is not supported in FSDP")):
        assert main(bad.split()) == 2, bad
        assert says in capsys.readouterr().err, bad
    assert main(["trainer=ddp", "trainer.strategy=dpp"]) == 2  # a GPU plan: the strategy's name
    assert "trainer.strategy='dpp' is not a strategy Lightning knows" in capsys.readouterr().err
    # found by review: a speed that underflows to 0 (ZeroDivisionError traceback) or plans 10^300 hours
    for flags in (["--mfu", "1e-300", "--peak-tflops", "1e-300"], ["trainer=cpu", "--mfu", "1e-200",
                                                                     "--peak-tflops", "1e-200"]):
        assert main(flags) == 2
        assert "is below 1 MFLOP/s: too small a speed to plan with" in capsys.readouterr().err


def test_a_cpu_plan_weighs_the_ram_it_is_given_and_says_when_no_batch_fits(capsys):
    # --device-gib was ignored on a CPU plan, and a model too large at batch 1 was advised a smaller batch (review)
    assert main(["trainer=cpu", "debug=smoke", "model.block_size=8192", "--device-gib", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "fits           NO: FSDP's " in out and "RAM per process (--device-gib); even data.batch_size=1 needs " in out
    # the weights and AdamW's state alone over the limit: no batch or context frees them (the batch-1 advice said
    # "or a shorter context" there; found by review)
    assert main(["trainer=cpu", "debug=smoke", "--device-gib", "1e-6"]) == 0
    # (a CPU's processes share one machine's RAM: more of them shard nothing; more machines do: review)
    assert "(--device-gib); shard over more machines (trainer=fsdp trainer.accelerator=cpu trainer.num_nodes=N) or " \
        "train a smaller model" in \
        capsys.readouterr().out
    # attention's T x T matrices kept for dropout: model.dropout=0 frees them, as train.py's check says
    assert main(["trainer=cpu", "debug=smoke", "model.block_size=8192", "model.dropout=0.1", "--device-gib", "0.01"]) == 0
    assert "(model.block_size), or set model.dropout=0 (off CUDA" in capsys.readouterr().out


def test_the_planners_accelerator_names_hold_lightnings():
    from lightning.pytorch.accelerators import AcceleratorRegistry

    from momattn.plan import ACCELERATORS

    assert set(AcceleratorRegistry.available_accelerators()) <= set(ACCELERATORS)


def test_precision_auto_plans_a_bf16_gpu_whatever_this_machine_is():
    assert plan(["experiment=paper_350m", "trainer.precision=auto"])["precision"] == "bf16-mixed"
    assert plan(["experiment=paper_350m", "trainer.precision=32-true"])["precision"] == "32-true"


def test_global_batch_sets_the_accumulation(tmp_path):
    # the smoke config validates every 3 micro-batches: inside a step of 4, where a checkpoint written with the
    # validation (last.ckpt, a top-k file) is a state that a resume cannot continue exactly (found by review)
    with pytest.raises(ConfigError, match=r"trainer.val_check_interval=3 micro-batches is not a whole number of "
                                          r"optimizer steps \(trainer.accumulate_grad_batches=4\).*e.g. val_every_steps=1 "
                                          r"\(every 4 micro-batches\)"):
        load_train_config(compose_train(tmp_path, [*SMOKE, "global_batch=16", "data.batch_size=4"]))
    c = load_train_config(compose_train(tmp_path, [*SMOKE, "global_batch=16", "data.batch_size=4", "val_every_steps=1"]))
    assert c.accumulate == 4 and c.trainer["accumulate_grad_batches"] == 4 and c.trainer["val_check_interval"] == 4
    c = load_train_config(compose_train(tmp_path, [*SMOKE, "global_batch=16", "data.batch_size=4",
                                                   "trainer.devices=2", "trainer.accelerator=cpu",
                                                   "trainer.val_check_interval=4"]))
    assert c.accumulate == 2
    with pytest.raises(ConfigError, match="global_batch=10 is not a multiple of data.batch_size=4"):
        load_train_config(compose_train(tmp_path, [*SMOKE, "global_batch=10", "data.batch_size=4"]))
    with pytest.raises(ConfigError, match="global_batch=16 gives trainer.accumulate_grad_batches=4 .* but it is set to 2"):
        load_train_config(compose_train(tmp_path, [*SMOKE, "global_batch=16", "data.batch_size=4",
                                                   "trainer.accumulate_grad_batches=2"]))  # not silently replaced


def test_several_nodes_need_a_launcher_and_a_free_port():
    import socket

    from momattn.config import check_launch_environment

    with pytest.raises(ConfigError, match="trainer.num_nodes=2 but no launcher environment.*srun.*torchrun"):
        check_launch_environment({"num_nodes": 2}, {})
    check_launch_environment({"num_nodes": 2}, {"SLURM_JOB_ID": "1"})  # srun sets it up
    check_launch_environment({"num_nodes": 1}, {})
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": "0"}
        with pytest.raises(ConfigError, match=f"MASTER_PORT={port} is in use on this machine"):
            check_launch_environment({"num_nodes": 2}, env)
        check_launch_environment({"num_nodes": 2}, {**env, "NODE_RANK": "1"})  # the others connect, not listen
        # one node of two processes: rank 0 failed at once, as "did not all meet within dist_timeout_s", and the
        # process it had started waited twice that long, orphaned
        ddp = {"num_nodes": 1, "devices": 2, "accelerator": "cpu", "strategy": "ddp"}
        with pytest.raises(ConfigError, match=f"MASTER_PORT={port} is in use on this machine .*; the first process "
                                              "listens there for the others it starts"):
            check_launch_environment(ddp, {"MASTER_PORT": str(port)})
        check_launch_environment({**ddp, "devices": 1}, {"MASTER_PORT": str(port)})  # one process: no rendezvous
        check_launch_environment(ddp, {"MASTER_PORT": str(port), "LOCAL_RANK": "1"})  # the ones it starts connect
        # srun's second task of one node: rank 0's store may be listening already (it connects, it does not listen)
        check_launch_environment(ddp, {"MASTER_PORT": str(port), "SLURM_PROCID": "1", "SLURM_JOB_ID": "7"})
    # local rank 1 of a node of one process (started by hand): Lightning's IndexError traceback (flows review)
    with pytest.raises(ConfigError, match=r"^LOCAL_RANK=1 but trainer.devices gives 1 process\(es\) per node: a "
                                          r"node's local ranks are 0..0"):
        check_launch_environment({"num_nodes": 2, "devices": 1, "accelerator": "cpu"},
                                 {"LOCAL_RANK": "1", "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"})
    check_launch_environment({"num_nodes": 1, "devices": 2, "accelerator": "cpu"}, {"LOCAL_RANK": "1"})


def test_launch_values_torch_fails_on_later_are_refused_before_any_work(capsys):
    # tracebacks (MASTER_PORT=abc, 70000, empty; MASTER_ADDR empty) or a wait of 1.7 x dist_timeout_s blamed on a
    # firewall (a name that does not resolve, NODE_RANK=2 of 2 nodes): found by review
    from momattn.config import check_launch_environment

    two = {"num_nodes": 2}
    for env, says in (({"MASTER_PORT": "abc"}, "MASTER_PORT='abc' must be a port number in 1..65535"),
                      ({"MASTER_PORT": "70000"}, "MASTER_PORT='70000' must be a port number"),
                      ({"MASTER_PORT": ""}, "MASTER_PORT='' must be a port number"),
                      ({"MASTER_ADDR": " "}, "MASTER_ADDR is set but empty"),
                      ({"MASTER_ADDR": "127.0.0.1", "NODE_RANK": "2"}, r"NODE_RANK='2' must be a node index in 0..1")):
        with pytest.raises(ConfigError, match=says):
            check_launch_environment(two, env)
    with pytest.raises(ConfigError, match=r"NODE_RANK='1' must be a node index in 0..0"):  # one node, 2 processes
        check_launch_environment({"num_nodes": 1, "devices": 2, "accelerator": "cpu"}, {"NODE_RANK": "1"})
    check_launch_environment(two, {"MASTER_ADDR": "localhost", "MASTER_PORT": "29599", "NODE_RANK": "1"})
    check_launch_environment({"num_nodes": 1}, {"SLURM_NODEID": "3"})  # one node of a larger allocation: its own
    # one process reads none of them: a stale value left in the environment is no concern
    check_launch_environment({"num_nodes": 1, "devices": 1, "accelerator": "cpu"},
                             {"MASTER_ADDR": "", "MASTER_PORT": "", "NODE_RANK": "5"})
    # a name that does not resolve yet (a master's DNS may appear only once it starts): said, not refused
    check_launch_environment(two, {"MASTER_ADDR": "bogus.invalid", "NODE_RANK": "1"})
    assert "warning: MASTER_ADDR=bogus.invalid does not resolve to an address now" in capsys.readouterr().err


def test_strategies_that_spawn_or_fork_are_refused_and_auto_ddp_waits_dist_timeout_s():
    # ddp_spawn: a pickling traceback after the data was built; ddp_fork: trained, then refused the weights file
    # Lightning handed back; auto with several processes (Lightning's ddp) waited torch's 30 minutes, not
    # dist_timeout_s, deaf to SIGTERM (found by review)
    from datetime import timedelta

    from momattn.config import _trainer
    from momattn.training import _timed_strategy

    for name in ("ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_spawn_find_unused_parameters_true"):
        with pytest.raises(ConfigError, match=f"^trainer.strategy={name} starts its processes from this one"):
            _trainer({"max_steps": 3, "accelerator": "cpu", "devices": 2, "strategy": name})
    for name, unused in ((None, False), ("auto", False), ("ddp", False), ("ddp_find_unused_parameters_true", True)):
        s = _timed_strategy({"accelerator": "cpu", "devices": 2, "strategy": name}, 7)["strategy"]
        assert s._timeout == timedelta(seconds=7) and s._ddp_kwargs.get("find_unused_parameters", False) == unused
    assert _timed_strategy({"accelerator": "cpu", "devices": 1, "strategy": "auto"}, 7) == {}  # one process


def test_a_cpu_run_is_planned_as_train_py_runs_it_and_a_plan_that_fits_nothing_says_so(capsys, monkeypatch, tmp_path):
    from momattn import memory
    from momattn.config import resolve_precision

    # trainer=cpu was planned as a bf16 GPU run with full logits: 6.5x under what train.py refused it for
    big = ["trainer=cpu", "model=gpt_350m", "data.batch_size=512", f"paths.cache_dir={tmp_path / 'cache'}"]
    p = plan(big)
    assert p["accelerator"] == "cpu" and p["precision"] == resolve_precision("auto", "cpu") and p["gpu_hours"] is None
    c = load_train_config(compose_train(tmp_path, big))  # what train.py checks (memory.check_fits, off CUDA)
    need = memory.estimate_train_memory(c.model_for(p["vocab_size"]), 512, c.trainer["precision"], blocked_loss=True)
    assert p["memory_per_device_gib"]["ddp"] == pytest.approx(need.total / 2**30)
    assert p["fits"] == "no" and p["wall_hours"] is None  # no datasheet peak for a CPU
    assert main(big) == 0
    out = capsys.readouterr().out
    assert "of the RAM available per process here; lower data.batch_size" in out and "on the CPU" in out
    assert "time           not estimated for a CPU run" in out and "GPU-hours" not in out
    # two processes on one machine share its RAM; a CPU peak given times it per machine
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 8 * 2**30)
    two = plan(["trainer=cpu", "trainer.devices=2"], peak_tflops=2.0)
    assert two["memory_limit_gib"] == 4 and two["fits"] == "ddp"
    assert two["wall_hours"] == pytest.approx(two["flops"] / (0.4 * 2e12) / 3600)
    # without --peak-tflops: the matmul peak train.py's runs recorded for this CPU in the run's precision
    import json

    import torch

    from momattn import hardware
    from momattn.callbacks import precision_dtype, recorded_peak_flops

    record = tmp_path / "cache" / "cpu_peak_flops.json"
    record.parent.mkdir()
    key = hardware.cpu_peak_key(str(precision_dtype(p["precision"])).removeprefix("torch."), torch.get_num_threads(),
                                torch.__version__)
    recorded_peak_flops(record, key, 3e11)
    recorded_peak_flops(record, key, 2e11)  # the best of two runs
    other = json.loads(record.read_text())
    other[key.replace("threads", "threads (another)")] = {"flops": 9e15, "runs": 1}  # another CPU's, not read
    record.write_text(json.dumps(other))
    timed = plan(big, mfu=0.5)
    assert timed["wall_hours"] == pytest.approx(timed["flops"] / (0.5 * 3e11) / 3600)
    assert timed["peak_recorded"] == {"runs": 2, "record": str(record)}
    assert main(big) == 0
    assert ("at an ASSUMED MFU of 40% of 0.3 TFLOPS per machine (this CPU's matmul peak: the best start-up "
            f"measurement of 2 train.py run(s), {record}; --peak-tflops overrides it)") in capsys.readouterr().out
    assert plan(big, peak_tflops=1.0)["peak_recorded"] is None  # given: the record is not read
    assert plan([*big, "trainer.devices=2"])["wall_hours"] is None  # processes sharing the cores: not that peak
    # a GPU run over --device-gib: said, not planned silently
    assert plan(["model=gpt_350m", "data.batch_size=512"])["fits"] == "no"
    assert plan(["model=gpt_350m", "data.batch_size=512"], device_gib=1000)["fits"] == "ddp"
    fsdp = plan(["experiment=paper_350m", "trainer.devices=8"], device_gib=15)
    assert fsdp["memory_per_device_gib"]["fsdp"] < 15 < fsdp["memory_per_device_gib"]["ddp"] and fsdp["fits"] == "fsdp"
    assert main(["model=gpt_350m", "data.batch_size=512"]) == 0
    assert "fits           NO: FSDP's 512.6 GiB is over 80.0 GiB per device (--device-gib)" in capsys.readouterr().out
    assert main(["--device-gib", "0"]) == 2
    # a small model's figures are readable (it printed 0.0M parameters, 0.00 GFLOP per token, DDP ~0.0 GiB)
    assert main(["experiment=ginc", "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=128"]) == 0
    out = capsys.readouterr().out
    assert "attention: 27.5K parameters" in out and "263.4 KFLOP per token" in out and "DDP ~7.4 MiB" in out


def test_the_planner_plans_devices_auto_without_a_gpu(capsys):
    main(["experiment=paper_350m", "attention=momentum", "trainer=ddp"])  # the command atop paper_350m.yaml
    assert "memory/device" in capsys.readouterr().out


def test_the_planner_reads_a_tokenizer_files_vocabulary(tmp_path):
    from momattn.tokenizer import train_bpe

    train_bpe(lambda: ["a tiny corpus of words"] * 50, 300, tmp_path / "tok.json")
    p = plan(["tokenizer=file", f"tokenizer.path={tmp_path / 'tok.json'}"])
    assert 300 <= p["vocab_size"] < 364  # the file's 300 tokens (padded to a multiple of 64), not 4096


def test_the_planner_reads_the_bpe_train_py_trained_and_says_when_there_is_none(tmp_path, capsys):
    """A corpus with fewer merges than asked trains a smaller BPE (train.py embeds its n_ids): the plan was of the
    size asked for (parameters, FLOPs and memory of a model train.py does not build). Found by review."""
    from momattn.tokenizer import bpe_cache_file, train_bpe

    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"document {i} of a tiny corpus, number {7 * i}\n\n" for i in range(60)))
    args = ["data=text_files", f"data.paths=[{corpus}]", "tokenizer.vocab_size=2048", f"paths.cache_dir={tmp_path}"]
    before = plan(args)
    assert before["vocab_size"] == 2048 and "not trained yet" in before["vocab_note"]
    c = load_train_config(compose_train(tmp_path / "run", args))
    trained = train_bpe(lambda: c.data.documents("train"), 2048, bpe_cache_file(2048, c.data, c.cache_dir))
    assert trained.n_ids < 400  # what this corpus gives
    after = plan(args)
    assert after["vocab_size"] == c.model_for(trained.n_ids).vocab_size and after["vocab_note"] is None
    assert after["parameters"] < before["parameters"]
    main(args)
    out = capsys.readouterr().out
    assert f"{after['vocab_size']:,} embedding rows, vanilla" in out
    # the FLOPs line names the N it uses (without the position embeddings), which the parameters line does not
    assert f"N = {after['parameters_in_flops'] / 1e6:.2f}M: the parameters without the position embeddings" in out
    assert after["flops_per_token"] == 6 * after["parameters_in_flops"] + 12 * 4 * 256 * 512
    # a corpus that is not here (a plan made on a login node): planned at the size asked, as before (diff review)
    gone = ["data=text_files", f"data.paths=[{tmp_path / 'gone.txt'}]", f"paths.cache_dir={tmp_path}"]
    assert "not trained yet" in plan(gone)["vocab_note"]


def test_a_gpu_plan_takes_the_peak_of_its_precision(capsys):
    """A 32-true or 64-true GPU run was timed against the bf16 peak (989 TFLOPS), 15-30x too fast; its run measures
    its MFU against Lightning's fp32 / fp64 figures. Found by review."""
    for precision, peak in (("bf16-mixed", 989.0), ("16-mixed", 989.0), ("32-true", 66.9), ("64-true", 33.5)):
        p = plan(["model=gpt2_124m", "tokenizer=gpt2", f"trainer.precision={precision}"])
        assert p["peak_tflops_per_device"] == peak
        assert p["wall_hours"] == pytest.approx(p["flops"] / (0.4 * peak * 1e12) / 3600)
    main(["model=gpt2_124m", "tokenizer=gpt2", "trainer.precision=32-true"])
    assert "of 66.9 TFLOPS per device (an H100 SXM's dense fp32 (no TF32) peak" in capsys.readouterr().out
    # Transformer Engine's FP8: at the bf16 peak, not fp32's (found by the diff review)
    assert plan(["model=gpt2_124m", "tokenizer=gpt2", "trainer.precision=transformer-engine"])[
        "peak_tflops_per_device"] == 989.0
    main(["model=gpt2_124m", "tokenizer=gpt2", "trainer.precision=32-true", "--peak-tflops", "100"])
    out = capsys.readouterr().out
    assert "of 100 TFLOPS per device" in out and "H100" not in out


def test_the_planner_needs_no_wandb_key_and_lightnings_wandb_logger_is_online_by_default(tmp_path, monkeypatch,
                                                                                         capsys):
    # planning starts no W&B run: WANDB_MODE=online without a key refused the plan; and Lightning's own WandbLogger,
    # online unless told otherwise, was judged offline (its log_model refused, its missing key not seen)
    from momattn.wandb_runs import check_train_wandb

    for k in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_MODE", "online")
    assert main(["model=gpt2_124m", "logger=wandb"]) == 0 and "FLOPs" in capsys.readouterr().out
    monkeypatch.delenv("WANDB_MODE")
    lightning = {"_target_": "lightning.pytorch.loggers.WandbLogger", "log_model": True}
    with pytest.raises(ConfigError, match="no W&B API key was found"):
        check_train_wandb(lightning, "logger.wl")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    check_train_wandb(lightning, "logger.wl")  # online, with a key: log_model is fine
    with pytest.raises(ConfigError, match="log_model=True uploads checkpoints, which an offline run cannot do"):
        check_train_wandb({**lightning, "offline": True}, "logger.wl")


def test_the_estimate_takes_the_loss_a_run_takes(monkeypatch):
    # float16 builds the full (B T, V) logits on a CPU too (momattn/loss.py): 16-true there was planned with the
    # blocked loss, 4x under a measured step (found by review)
    import torch

    from momattn import loss
    from momattn.memory import blocked_loss_for, estimate_train_memory
    from momattn.model import GPTConfig

    taken = []
    monkeypatch.setattr(loss, "_blocked_loss", lambda *a: taken.append("blocked") or torch.zeros(()))
    for precision, dtype in (("16-true", torch.float16), ("bf16-true", torch.bfloat16), ("32-true", torch.float32)):
        taken.clear()
        loss.lm_loss(torch.randn(4, 8, dtype=dtype), torch.randn(16, 8, dtype=dtype), torch.zeros(4, dtype=torch.long))
        assert bool(taken) == blocked_loss_for(precision, on_gpu=False), precision
    assert not blocked_loss_for("bf16-mixed", on_gpu=True)
    c = GPTConfig(vocab_size=50304, block_size=256, n_layer=1, n_embd=64, n_head=2)
    full = estimate_train_memory(c, 8, "16-true", blocked_loss=blocked_loss_for("16-true", False), off_cuda=True)
    assert full.logits >= 8 * 256 * 50304 * 12


def test_a_gpu_plan_on_a_machine_without_one_says_how_to_plan_the_cpu_run(capsys):
    # the default plan on a CPU-only machine was an H100's, while train.py would run here on the CPU (review)
    import torch

    assert main(["debug=smoke"]) == 0
    err = capsys.readouterr().err
    assert ("add trainer=cpu to plan that run" in err) is (not torch.cuda.is_available())
    assert main(["debug=smoke", "trainer=cpu"]) == 0
    assert "add trainer=cpu" not in capsys.readouterr().err


def test_the_planner_reads_the_vocabulary_of_a_data_sources_own_tokenizer():
    # tokenizer=source on a source other than GINC was planned at the BPE's 4,096 (with its "not trained yet" note),
    # 2.7x the parameters of a 1,001-id source's model (found by review)
    from types import SimpleNamespace

    from momattn.plan import _vocab

    source = SimpleNamespace(tokenizer=lambda: SimpleNamespace(n_ids=1001))
    assert _vocab(SimpleNamespace(tokenizer=SimpleNamespace(kind="source", vocab_size=4096), data=source)) == (1001, None)
    ginc = plan(["experiment=ginc"])  # GINC's, from its n_symbols, without building the world
    assert ginc["vocab_note"] is None and ginc["vocab_size"] >= 51


def test_a_sweep_is_planned_by_its_first_run_and_said_so(capsys):
    """experiment=reproduce (27 runs, mostly GINC at 1,500 steps) was planned as one default text run without a
    word; values with commas failed with Hydra's advice to add --multirun, which the planner refused (found by
    review)."""
    assert main(["experiment=reproduce", "trainer=cpu", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["sweep"].startswith("a sweep of 27 runs, which differ in recipe, attention, seed: "
                                                   "planned is its first, recipe=ginc attention=vanilla seed=1")
    assert "[momattn] note: a sweep of 27 runs" in out.err
    assert main(["-m", "experiment=ginc", "attention=vanilla,momentum", "trainer=cpu"]) == 0
    assert "a sweep of 2 runs, which differ in attention: planned is its first, attention=vanilla" in \
        capsys.readouterr().err
    assert main(["trainer=cpu"]) == 0 and "note: a sweep" not in capsys.readouterr().err
    # each job's values are checked, and Optuna's interval() is named (diff review: planned, and 'add --multirun')
    assert main(["-m", "attention=vanilla,bogus", "trainer=cpu"]) == 2
    assert "attention=bogus is not an option" in capsys.readouterr().err
    assert main(["-m", "optim.lr=interval(1e-4,1e-2)", "trainer=cpu"]) == 2
    assert "interval() is a range of floats that an Optuna search samples" in capsys.readouterr().err
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None:  # a search's own space: planned
        # at its base values (it was composed as one run's value: "requires --multirun", -m given; flows review)
        assert main(["-m", "hparams_search=optuna", "optim.lr=interval(1e-4,1e-3)", "trainer=cpu"]) == 0
        assert "an Optuna search" in capsys.readouterr().err
    assert main(['+hydra.sweeper.params.optim.lr="1e-3,2e-3"', "trainer=cpu"]) == 2  # (a traceback of OmegaConf's)
    assert "Hydra cannot set the sweeper's params from the command line" in capsys.readouterr().err
