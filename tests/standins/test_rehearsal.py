"""Real-mode rehearsal (llmkit.standins.rehearsal) and card-size emulation (llmkit.card), on the CPU at toy sizes.

The GPU run writes the same files at full size (benchmarks/realmode_gpu.py); here the layouts, the places they land,
what llmkit finds and loads, and the refusals are checked."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llmkit import card
from llmkit.environment.env import llmkit_commit
from llmkit.standins import rehearsal
from llmkit.cli import main
from llmkit.errors import BadInput
from llmkit.hub import ModelNotFound, locate

TOY_QWEN2 = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2}
TOY_GPTQ = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2}
TOY_XVERSE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "vocab_size": 512}


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty Hugging Face / ModelScope caches and model folder, so only what a test writes is found."""
    for name, sub in (("HF_HOME", "hf"), ("MODELSCOPE_CACHE", "ms"), ("LLMKIT_MODEL_DIR", "models")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("LLMKIT_STANDIN", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_qwen2_rehearsal_lands_in_the_hf_cache_and_loads_like_a_download(caches):
    info = rehearsal.write("Qwen/Qwen2-7B-Instruct", "hf", device="cpu", overrides=TOY_QWEN2)
    found = locate("Qwen/Qwen2-7B-Instruct")
    assert found.where == "Hugging Face cache" and found.report["ok"] and str(found.path) == info["path"]
    assert (found.path.parent.parent / "refs" / "main").read_text() == found.path.name
    assert info["files"] == ["model-00001-of-00001.safetensors"] and rehearsal.is_rehearsal(found.path)
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(found.path, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(found.path)
    assert model.dtype == torch.bfloat16 and model.config.vocab_size == 152064
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()  # untied, as published
    assert tokenizer("你好")["input_ids"] == [108386]
    assert GenerationConfig.from_pretrained(found.path).repetition_penalty == 1.05
    norms = [p for n, p in model.named_parameters() if n.endswith("norm.weight")]
    assert norms and all(bool((p == 1).all()) for p in norms)


def test_shards_follow_the_size_limit_and_the_index_names_every_tensor(caches, monkeypatch):
    monkeypatch.setitem(rehearsal.REHEARSAL_MODELS, "Qwen/Qwen2-7B-Instruct",
                        rehearsal.Layout("safetensors", 0.02, "qwen2"))  # 20 MB shards: the toy model needs several
    info = rehearsal.write("Qwen/Qwen2-7B-Instruct", "model-dir", device="cpu", overrides=TOY_QWEN2)
    folder = caches / "models" / "Qwen" / "Qwen2-7B-Instruct"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(info["files"]) > 1 and info["files"][-1].endswith(f"-of-{len(info['files']):05d}.safetensors")
    assert set(index["weight_map"].values()) == set(info["files"])
    assert index["metadata"]["total_size"] == info["bytes"]
    assert locate("Qwen/Qwen2-7B-Instruct").where == "$LLMKIT_MODEL_DIR"


def test_gptq_rehearsal_is_gptq_v1_and_loads_through_optimum_and_gptqmodel(caches):
    rehearsal.write("Qwen/Qwen1.5-7B-Chat-GPTQ-Int4", "modelscope", device="cpu", overrides=TOY_GPTQ)
    found = locate("Qwen/Qwen1.5-7B-Chat-GPTQ-Int4")
    assert found.where.startswith("ModelScope") and found.path.name == "Qwen1___5-7B-Chat-GPTQ-Int4"
    from safetensors import safe_open

    shard = next(found.path.glob("*.safetensors"))
    with safe_open(str(shard), "pt") as f:
        names = set(f.keys())
        assert f.get_tensor("model.layers.0.mlp.down_proj.qweight").shape == (512 // 8, 256)
        assert f.get_tensor("model.layers.0.mlp.down_proj.scales").dtype == torch.float16
    assert "model.layers.1.self_attn.q_proj.bias" in names and "model.layers.1.self_attn.o_proj.bias" not in names
    import llmkit

    model, tokenizer = llmkit.load("Qwen/Qwen1.5-7B-Chat-GPTQ-Int4")
    layer = model.model.layers[0].mlp.down_proj
    assert type(layer).__module__.startswith("gptqmodel.") and model.config.quantization_config.bits == 4
    out = model.generate(**tokenizer("你好", return_tensors="pt"), max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == 1 + 3


def test_xverse_rehearsal_is_pickle_only_and_loads_only_when_allowed(caches):
    rehearsal.write("xverse/XVERSE-7B-Chat", "hf", device="cpu", overrides=TOY_XVERSE)
    folder = locate("xverse/XVERSE-7B-Chat").path
    assert not list(folder.glob("*.safetensors")) and (folder / "pytorch_model.bin.index.json").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "xverse" and "auto_map" in config
    import llmkit

    with pytest.raises(BadInput, match="only pickle weights"):
        llmkit.load("xverse/XVERSE-7B-Chat")
    model, _ = llmkit.load("xverse/XVERSE-7B-Chat", allow_pickle=True)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size == 64


def test_an_existing_rehearsal_is_reused_and_a_real_model_is_never_replaced(caches):
    first = rehearsal.write("Qwen/Qwen2-7B-Instruct", "model-dir", device="cpu", overrides=TOY_QWEN2)
    again = rehearsal.write("Qwen/Qwen2-7B-Instruct", "model-dir", device="cpu", overrides=TOY_QWEN2)
    assert again["reused"] and again["path"] == first["path"]
    real = caches / "models" / "Qwen" / "Qwen2-72B-Instruct-GPTQ-Int4"
    real.mkdir(parents=True)
    (real / "config.json").write_text("{}")
    with pytest.raises(BadInput, match="not a rehearsal checkpoint"):
        rehearsal.write("Qwen/Qwen2-72B-Instruct-GPTQ-Int4", "model-dir", device="cpu")
    with pytest.raises(BadInput, match="left untouched"):
        rehearsal.remove("Qwen/Qwen2-72B-Instruct-GPTQ-Int4", "model-dir")
    assert (real / "config.json").read_text() == "{}"
    assert rehearsal.remove("Qwen/Qwen2-7B-Instruct", "model-dir") and not os.path.exists(first["path"])


def test_rehearse_without_a_gpu_is_one_line_and_exit_5(caches, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["rehearse", "Qwen/Qwen2-7B-Instruct"]) == 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU" in err
    assert main(["rehearse", "Qwen/Qwen9-Unknown"]) == 2
    assert "choose one of" in capsys.readouterr().err


def test_pick_model_in_real_mode_returns_the_located_folder_or_says_how_to_download(caches, monkeypatch, capsys):
    import llmkit
    from llmkit import pick

    with pytest.raises(ModelNotFound, match="llmkit download Qwen/Qwen2-7B-Instruct"):
        llmkit.pick_model("Qwen/Qwen2-7B-Instruct")
    fetched = []
    monkeypatch.setattr("llmkit.hub.download", lambda model_id: fetched.append(model_id) or caches / "got")
    assert pick.pick_model("Qwen/Qwen2-7B-Instruct", download=True) == str(caches / "got")
    assert fetched == ["Qwen/Qwen2-7B-Instruct"] and "about 15.2 GB" in capsys.readouterr().out
    info = rehearsal.write("Qwen/Qwen2-7B-Instruct", "hf", device="cpu", overrides=TOY_QWEN2)
    assert llmkit.pick_model("Qwen/Qwen2-7B-Instruct") == info["path"]


@pytest.mark.parametrize("value", ["0", "-24", "24GB", "5000"])
def test_a_card_size_that_is_not_one_is_a_clear_error(monkeypatch, value, capsys):
    monkeypatch.setenv(card.CARD_ENV, value)
    with pytest.raises(BadInput, match="is not a card size"):
        card.card_gib()
    assert main(["doctor"]) == 1   # the doctor's card-emulation row FAILs and says what to set
    assert "LLMKIT_CARD_GB" in capsys.readouterr().out


def test_an_emulated_card_is_what_fit_checks_and_the_doctor_see(monkeypatch):
    monkeypatch.setenv(card.CARD_ENV, "24")
    gib = card.GIB
    assert card.emulate(130 * gib, 140 * gib, card=24) == (int(24 * gib) - 10 * gib, int(24 * gib))
    assert card.emulate(100 * gib, 140 * gib, card=24) == (0, int(24 * gib))  # others use more than the card: nothing free
    smi = {"gpus": [{"index": 0, "name": "NVIDIA H200", "compute_capability": "9.0",
                     "memory_total_gib": 139.8, "memory_free_gib": 139.2}], "driver_cuda": "13.0"}
    from llmkit.environment.doctor import run_checks
    from llmkit.environment.env import as_emulated_card

    rows = {r.check: r for r in run_checks({"nvidia_smi": as_emulated_card(smi), "settings": {card.CARD_ENV: "24"}})}
    assert "23.4 of 24.0 GiB free (emulating a 24 GB card)" in rows["GPU 0"].value
    assert rows["card emulation"].status == "WARN" and "24 GB card" in rows["card emulation"].value
    # the allocator cap leaves room for the CUDA context inside the card
    assert card.allocator_fraction(24, 140 * gib) * 140 + card.CONTEXT_GIB == pytest.approx(24)


def test_emulating_the_label_of_the_card_one_has_is_that_card():
    """An 80 GB H100 or A100 shows CUDA 79.2 GiB: LLMKIT_CARD_GB=80 there is the card itself, not an error."""
    gib, h100 = card.GIB, int(79.2 * card.GIB)
    assert card.allocator_fraction(80, h100) * 79.2 + card.CONTEXT_GIB == pytest.approx(79.2)
    assert card.emulate(70 * gib, h100, card=80) == (70 * gib, h100)
    assert card.allocator_fraction(40, h100) * 79.2 + card.CONTEXT_GIB == pytest.approx(40)
    with pytest.raises(BadInput, match="larger than this GPU"):
        card.allocator_fraction(96, h100)


def test_python_processes_started_with_child_env_queue_the_cap_for_cuda_start(monkeypatch):
    env = card.child_env({**os.environ, card.CARD_ENV: "24"})
    probe = ("import sys; assert 'torch' not in sys.modules; import torch; "
             "print(any('_queue_cap' in c[0].__qualname__ for c in torch.cuda._queued_calls) or torch.cuda.is_initialized())")
    with_hook = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    env.pop(card.CARD_ENV)
    without = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert with_hook.stdout.strip() == "True" and without.stdout.strip() == "False"


@pytest.mark.parametrize("looked_up_first", [False, True])
def test_mem_get_info_reports_the_card_from_the_moment_torch_is_imported(looked_up_first):
    # its first call may be the one that starts CUDA (transformers' continuous batching sizes its cache with it);
    # `transformers serve` looks torch up (importlib.util.find_spec, as is_torch_available does) before importing it
    env = card.child_env({**os.environ, card.CARD_ENV: "24"})
    probe = ("import importlib.util; importlib.util.find_spec('torch'); " if looked_up_first else "") + \
        "import torch; print(hasattr(torch.cuda.mem_get_info, '__wrapped__'), " \
        "hasattr(torch.accelerator.get_memory_info, '__wrapped__'), torch.cuda.is_initialized())"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True True False"


def test_both_memory_queries_report_the_emulated_card(monkeypatch):
    # transformers and accelerate ask torch.cuda.mem_get_info; vLLM sizes its gpu_memory_utilization share of the card
    # with torch.accelerator.get_memory_info: on a big GPU it would take 0.85 of 140 GiB inside a 24 GiB card
    monkeypatch.setenv(card.CARD_ENV, "24")
    real = lambda device=None: (130 * card.GIB, 140 * card.GIB)  # noqa: E731
    fake = SimpleNamespace(cuda=SimpleNamespace(mem_get_info=real, memory=SimpleNamespace()),
                           accelerator=SimpleNamespace(get_memory_info=real, memory=SimpleNamespace()))
    card._emulate_mem_get_info(fake)
    emulated = (14 * card.GIB, 24 * card.GIB)
    assert fake.cuda.mem_get_info() == fake.cuda.memory.mem_get_info() == emulated
    assert fake.accelerator.get_memory_info(0) == fake.accelerator.memory.get_memory_info() == emulated


def test_the_gpu_runner_tells_which_processes_the_card_emulation_reaches():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import realmode_gpu

    env = card.child_env({**os.environ, card.CARD_ENV: "24"})
    no_hook = {**env, "PYTHONPATH": ""}  # a kernel: llmkit applies the cap itself when it loads the model
    sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=e)
                for e in (env, no_hook, {k: v for k, v in env.items() if k != card.CARD_ENV})]
    try:
        seen = [realmode_gpu.describe_process(str(p.pid)) for p in sleepers]
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
    assert seen[0].endswith("card emulation on (card_hook)") and seen[2].endswith("card emulation OFF")
    assert seen[1].endswith("card emulation on if llmkit loads the model")
    assert "time.sleep(30)" in seen[0]
    assert realmode_gpu.describe_process("999999999").startswith("not readable")


def test_importing_gptqmodel_after_llmkit_leaves_the_hugging_face_cache_where_it_was(tmp_path):
    """tokenicer (imported by gptqmodel) sets HF_HOME=/tmp/tokenicer_hf_home when it is unset."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE")}
    env["HOME"] = str(tmp_path)
    probe = "import llmkit, gptqmodel; from llmkit.hub import hf_cache_dir; print(hf_cache_dir())"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / ".cache" / "huggingface" / "hub")


def test_a_python_without_llmkits_dependencies_says_the_card_is_not_emulated_and_runs_on(tmp_path):
    # LLaMA-Factory's fresh venv runs pip with the hook on PYTHONPATH; it must say so in one line, not fail
    import venv

    venv.create(tmp_path / "bare", with_pip=False)
    env = card.child_env({**os.environ, card.CARD_ENV: "24"})
    env["PYTHONPATH"] += os.pathsep + str(Path(card.__file__).parents[1])
    done = subprocess.run([str(tmp_path / "bare" / "bin" / "python"), "-c", "print('ran')"], env=env,
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "ran" and "LLMKIT_CARD_GB is not applied" in done.stderr


def test_the_course_map_says_when_a_notebook_ran_out_of_time():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import realmode_gpu

    run = {"passed": 6, "failed": 2, "skipped_by_notebook": 0, "peak_gpu_gib": 15.49, "card_gb": 24, "wall_s": 280.0,
           "failures": [{"cell": 11, "error": "AssertionError: "},
                        {"cell": None, "error": "NotebookTimeLimit: stopped after 280 s (--notebook-timeout)"}]}
    assert realmode_gpu._course_map_cell(run) == "stopped by the time limit after 7 cells (1 failed); peak 15.49 GiB so far"
    run["failures"] = run["failures"][:1]
    run["failed"] = 1
    assert realmode_gpu._course_map_cell(run) == "1 of 7 cells failed"


def test_a_process_that_crashes_leaves_its_python_stack_for_the_runner(tmp_path):
    """A Jupyter kernel's fd 2 goes to the notebook, so the runner's fault hook writes a crash's stacks to a file."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import realmode_gpu

    env = {**os.environ, "LLMKIT_FAULT_LOG_DIR": str(tmp_path / "faults"),
           "PYTHONPATH": os.pathsep.join([str(realmode_gpu.FAULT_HOOK), os.environ.get("PYTHONPATH", "")])}
    fine = subprocess.run([sys.executable, "-c", "print('ok')"], env=env, capture_output=True, text=True)
    crash = subprocess.run([sys.executable, "-c", "def draw_figure():\n    import faulthandler; faulthandler._sigsegv()\n"
                            "draw_figure()"], env=env, capture_output=True, text=True)
    assert fine.returncode == 0 and crash.returncode != 0
    stacks = realmode_gpu.fault_stacks(tmp_path / "faults")["fault_stacks"]
    assert len(list((tmp_path / "faults").glob("*.log"))) == 2 and len(stacks) == 1  # the process that ran fine: empty
    text = "\n".join(next(iter(stacks.values())))
    assert "Segmentation fault" in text and "draw_figure" in text
    assert realmode_gpu.fault_stacks(tmp_path / "none") == {}


def test_the_lora_free_probe_still_patches_notebook_06():
    """benchmarks/lora_free_probe.py rewrites notebook 06's text; it must fail here, not on the GPU, when 06 changes."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import lora_free_probe

    cells = lora_free_probe.probe_notebook().cells
    assert "assert trained()" not in cells[-2].source and "del model" in cells[-2].source
    assert "PROBE_MODEL()" in cells[-1].source


def test_result_files_name_the_commit_and_mark_a_tree_that_was_changed(tmp_path, monkeypatch):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("a")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    monkeypatch.delenv("LLMKIT_COMMIT", raising=False)
    commit = llmkit_commit(tmp_path)
    assert commit and not commit.endswith("-dirty")
    (tmp_path / "f").write_text("b")  # a newer tree copied over a stale .git
    assert llmkit_commit(tmp_path) == f"{commit}-dirty"
    monkeypatch.setenv("LLMKIT_COMMIT", "abc1234")  # what the GPU runner is told
    assert llmkit_commit(tmp_path) == "abc1234"
