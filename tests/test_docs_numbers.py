"""The measured numbers in the README and the docs pages it links quote the result files in benchmarks/results/:
the llama.cpp and 72B split tables, the decode profile, vLLM's start-up and the vLLM bench tables in docs/results.md, the DDP table in docs/multi-gpu-slurm.md, the real-mode table
in README.md, and the disk and time of a full run in docs/setup.md (the README's headline figures: test_readme_headline.py)."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts that write the result files


def test_gguf_table_quotes_the_result_file():
    readme = (ROOT / "docs" / "results.md").read_text()
    report = json.loads((ROOT / "benchmarks" / "results" / "gguf_h100.json").read_text())
    for run in report["runs"]:
        assert f"{run['eval_tokens_per_s']} tok/s" in readme, run
        assert f"{run['prompt_eval_tokens_per_s']:,.0f} tok/s" in readme, run
        assert f"{run['load_s']} s" in readme, run
    for step in report["offload_sweep"]:
        assert str(step["eval_tokens_per_s"]) in readme, step
    builds = json.loads((ROOT / "benchmarks" / "results" / "llamacpp_build.json").read_text())["builds"]
    assert all(f"{b['seconds']}" in readme for b in builds)


def test_decode_profile_numbers_quote_the_result_files():
    docs = (ROOT / "docs" / "results.md").read_text()
    readme = (ROOT / "README.md").read_text()
    results = ROOT / "benchmarks" / "results"
    first = json.loads((results / "decode_profile_h200.json").read_text())
    batch1, batch25 = first["batches"]
    quoted = [batch1["step_s"], batch25["step_s"]] + [v["step_s"] for v in batch1["variants"].values()]
    assert all(f"{s * 1000:.2f} ms" in docs for s in quoted)
    assert f"{first['bandwidth_limit_steps_per_s']} steps/s" in docs
    fused = json.loads((results / "decode_profile_fused_h200.json").read_text())
    row = fused["batches"][0]["variants"]["compiled_fused"]
    for text in (docs, readme):
        assert f"{row['step_s'] * 1000:.2f} ms" in text and f"{row['tokens_per_s']} tok/s" in text
        assert f"{row['fraction_of_limit'] * 100:.1f}%" in text
    assert f"{fused['batches'][0]['step_s'] * 1000:.2f} ms" in readme


def test_split_table_quotes_the_result_file():
    readme = (ROOT / "docs" / "results.md").read_text()
    split = json.loads((ROOT / "benchmarks" / "results" / "split72b_h200x2.json").read_text())
    quoted = (split["weights_gib_per_gpu"] + split["peak_reserved_gib_per_gpu"] + split["llmkit_estimate"]["per_gpu_gib"]
              + [split["generate_s"], split["new_tokens_per_s_incl_prefill"]])
    assert all(f"{value}" in readme for value in quoted)
    assert f"{split['layers_per_gpu']['0']} (+ embeddings) | {split['layers_per_gpu']['1']} (+ `lm_head`)" in readme
    worst = max(abs(1 - r) for r in split["estimate_over_measured_per_gpu"])
    assert f"within {worst * 100:.1f}%" in readme


def test_ddp_table_quotes_the_result_files():
    readme = (ROOT / "docs" / "multi-gpu-slurm.md").read_text()
    for name in ("lora_ddp_h200x2.json", "lora_ddp_h200x2_batch32.json"):
        ddp = json.loads((ROOT / "benchmarks" / "results" / name).read_text())
        assert f"{ddp['scaling']}×" in readme and f"{ddp['settings']['global_batch_size']}" in readme
    ddp = json.loads((ROOT / "benchmarks" / "results" / "lora_ddp_h200x2.json").read_text())
    assert ddp["pass"] and ddp["scaling"] >= 1.8
    for gpus, run in ddp["runs"].items():
        assert f"| {gpus} | {run['gradient_accumulation_steps']} | {ddp['tokens_per_s'][gpus]} | {run['train_runtime_s']:.1f} s |" in readme
    assert f"{ddp['loss_max_rel_diff']:.1e}" in readme


def test_real_mode_table_is_made_from_the_result_files():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import realmode_gpu

    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- realmode-table -->\n")[1].split("\n<!-- /realmode-table -->")[0]
    assert block == realmode_gpu.readme_table()


def test_a_real_mode_run_on_another_gpu_says_which(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import realmode_gpu

    run = {"passed": 9, "failed": 0, "skipped_by_notebook": 0, "failures": [], "peak_gpu_gib": 0.5, "card_gb": 24,
           "wall_s": 27.1}
    notebooks = {"00_environment": {**run, "gpu": "NVIDIA H100 80GB HBM3"}, "01_download": {**run, "gpu": "NVIDIA H200"}}
    (tmp_path / "realmode_24gb.json").write_text(json.dumps({"notebooks": notebooks}))
    table = realmode_gpu.readme_table(tmp_path, cards=(24,))
    assert "| `00_environment` | runs fully (9 cells); peak 0.5 GiB, 27.1 s on an H100 80GB HBM3 |" in table
    assert "| `01_download` | runs fully (9 cells); peak 0.5 GiB, 27.1 s |" in table



def test_disk_and_time_of_a_full_run_come_from_the_result_file():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ci_footprint

    import doctest

    assert doctest.testmod(ci_footprint).failed == 0  # the sentence builder's own examples (log parsing, both languages)
    result = json.loads((ROOT / "benchmarks" / "results" / "ci_footprint_2core.json").read_text())
    page = (ROOT / "docs" / "setup.md").read_text().splitlines()  # "The test command: what it builds and needs"
    for sentence in ci_footprint.readme_sentences(result):  # English and Chinese, each on a line of its own
        assert sentence in page


def test_a_gpu_calls_results_merge_into_the_files_and_the_readme_table(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import realmode_gpu

    run = {"passed": 3, "failed": 0, "skipped_by_notebook": 0, "failures": [], "peak_gpu_gib": 1.0, "card_gb": 24,
           "wall_s": 5.0, "gpu": "NVIDIA H200"}
    results, fetched = tmp_path / "results", tmp_path / "fetched"
    results.mkdir()
    fetched.mkdir()
    (results / "realmode_24gb.json").write_text(json.dumps({"card_gb": 24, "machine": {}, "notebooks": {
        "00_environment": run, "01_download": run}}))
    (fetched / "realmode_24gb.json").write_text(json.dumps({"card_gb": 24, "machine": {"gpu": "NVIDIA H200"},
                                                            "notebooks": {"01_download": {**run, "passed": 8}}}))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- realmode-table -->\nold table\n<!-- /realmode-table -->\nrest\n")
    assert realmode_gpu.merge(fetched, results, readme) == ["24 GB: 01_download"]
    notebooks = json.loads((results / "realmode_24gb.json").read_text())["notebooks"]
    assert notebooks["00_environment"] == run and notebooks["01_download"]["passed"] == 8  # the new run replaced the old
    text = readme.read_text()
    assert text.startswith("intro\n<!-- realmode-table -->\n| notebook |") and text.endswith("<!-- /realmode-table -->\nrest\n")
    assert "| `01_download` | runs fully (8 cells)" in text and "old table" not in text


def test_vllm_startup_figures_quote_the_result_file():
    from vllm_startup import startup

    results = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    measured = json.loads((ROOT / "benchmarks" / "results" / "vllm_startup_h100.json").read_text())
    for key in ("model_load_s", "torch_compile_s", "cuda_graphs_s", "engine_init_s"):
        assert results.count(f"{measured[key]} s") >= 2, (key, "both halves of docs/results.md quote it")
    assert f"weights {measured['weights_gib']} GiB" in results and measured["gpu"] == "NVIDIA H100 80GB HBM3"
    # the parser reads vLLM's own lines
    log = "Model loading took 14.29 GiB and 7.183515 seconds\ninit engine (profile, create kv cache, warmup model) took 56.94 s"
    assert startup(log) == {"weights_gib": 14.29, "model_load_s": 7.18, "engine_init_s": 56.94}


def test_vllm_bench_tables_quote_the_result_files():
    results = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    english, chinese = results.split("\n## 中文\n")
    for name in ("bench_seed_h100.json", "bench_batch1_h100.json", "bench_72b_vllm_h100.json"):
        bench = json.loads((ROOT / "benchmarks" / "results" / name).read_text())
        assert f"{bench['bandwidth_limit']['limit_steps_per_s']} steps/s" in english and name in chinese
        for row in bench["results"]:
            share = f"{row['fraction_of_limit'] * 100:.1f}%"
            if name == "bench_72b_vllm_h100.json":
                cells = [f"{row['tokens_per_s']} tok/s", share]
            else:
                cells = [f"| `{row['requested']}` | {row['tokens_per_s']} | {share} | {row['requests_per_s']} |",
                         f"| {row['warm_up_s']} s | {row['peak_memory_gib']} GiB |"]
            assert all(cell in english and cell in chinese for cell in cells), (name, row["requested"])
    seed = json.loads((ROOT / "benchmarks" / "results" / "bench_seed_h100.json").read_text())
    assert f"**{seed['vllm_over_hf']['this_run']}×**" in english and f"**{seed['vllm_over_hf']['this_run']} 倍**" in chinese
    assert f"{seed['vllm_over_hf']['source_tutorial']}×" in english
    other_host = json.loads((ROOT / "benchmarks" / "results" / "bench_seed_h100_other_host.json").read_text())
    plain = next(row for row in other_host["results"] if row["requested"] == "hf")
    assert all(f"{plain['tokens_per_s']} tok/s" in half and "bench_seed_h100_other_host.json" in half
               for half in (english, chinese))
    vllm = next(row for row in seed["results"] if row["requested"] == "vllm")
    assert f"{vllm['details']['load_s']} s" in english
    grouped = {r["workload"]: r for r in json.loads(
        (ROOT / "benchmarks" / "results" / "bench_grouped_hf_fast_h100.json").read_text())["results"]}
    profile = json.loads((ROOT / "benchmarks" / "results" / "decode_profile_grouped_h100.json").read_text())
    steps = next(b for b in profile["batches"] if b["batch"] == 25)["variants"]
    for half in (english, chinese):
        assert f"{grouped['seed']['tokens_per_s']} tok/s" in half and f"{grouped['batch1']['tokens_per_s']} tok/s" in half
        assert all(f"{grouped[w]['fraction_of_limit'] * 100:.1f}%" in half for w in grouped)
        assert f"{steps['compiled_fused']['step_s'] * 1000:.2f} ms" in half
        assert f"{steps['compiled_fused_grouped_sdpa']['step_s'] * 1000:.2f} ms" in half
    runs10 = {card: json.loads((ROOT / "benchmarks" / "results" / f"notebook10_vllm_kernel_{card}gb_h100.json").read_text())
              for card in (24, 80)}
    for card, run10 in runs10.items():
        notebook, bench10 = run10["notebooks"]["10_serving"], run10["vllm_bench_throughput"]
        cells = notebook["passed"] + notebook["failed"]
        assert notebook["failed"] == 0 and f"all {cells} cells passed" in english and f"{cells} 格全部通过" in chinese
        for half in (english, chinese):
            assert f"{notebook['peak_gpu_gib']} GiB, {notebook['wall_s']} s" in half.replace("，", ", ")
            assert f"{card} GB | {bench10['vllm']['requests_per_s']} requests/s" in half
            assert all(f"{bench10[b]['total_tokens_per_s']} tokens/s" in half for b in ("vllm", "hf"))
            assert f"**{bench10['vllm_over_hf']}" in half and notebook["commit"] in half
    for half in (english, chinese):
        assert all(f"{runs10[24]['cell_seconds'][cell]} s" in half for cell in ("21", "23", "25"))
    throughput = json.loads((ROOT / "benchmarks" / "results" / "vllm_bench_throughput_h100.json").read_text())
    assert all(f"{throughput['total_tokens_per_s']} tokens/s" in half and f"{throughput['peak_gpu_memory_mib_nvidia_smi']} MiB"
               in half for half in (english, chinese))
    card24 = json.loads((ROOT / "benchmarks" / "results" / "vllm_startup_24gb_h100.json").read_text())
    assert f"{card24['kv_cache_gib']} GiB" in english and f"{card24['kv_cache_tokens']:,} tokens" in english
    profiles = {"decode_profile_attention_h100.json": ("compiled_fused", "compiled_fused_grouped_matmul"),
                "decode_profile_variants_b25_h100.json": ("compiled_fused", "compiled_fused_efficient_sdpa",
                                                          "compiled_fused_autotune")}
    for name, shown in profiles.items():
        profile = json.loads((ROOT / "benchmarks" / "results" / name).read_text())
        variants = profile["batches"][0]["variants"]
        for half in (english, chinese):
            assert f"{profile['bandwidth_limit_steps_per_s']} steps/s" in half and profile["commit"] in half
            assert all(f"{variants[v]['step_s'] * 1000:.2f} ms" in half and f"{variants[v]['fraction_of_limit'] * 100:.1f}%"
                       in half for v in shown), name


def test_fused_marlin_and_same_run_seed_numbers_quote_the_result_files():
    """docs/results.md's 72B hf-fast, its Marlin profile, the seed workload with hf-fast and vLLM in one run and the
    two rejected tries (FlexAttention, a compiled prefill), in English and Chinese."""
    results = ROOT / "benchmarks" / "results"
    english, chinese = (ROOT / "docs" / "results.md").read_text(encoding="utf-8").split("\n## 中文\n")

    def load(name):
        return json.loads((results / name).read_text())

    big = load("bench_72b_hf_fast_h100.json")
    row = big["results"][0]
    marlin = load("decode_profile_marlin_72b_h100.json")["batches"][0]["variants"]
    seed = {r["requested"]: r for r in load("bench_seed_hf_fast_vllm_h100.json")["results"]}
    prefill = load("decode_profile_prefill_h100.json")["batches"][0]["variants"]
    batch1 = load("bench_batch1_compiled_prefill_h100.json")["results"][0]
    quoted = [f"{row['tokens_per_s']} tok/s", f"{row['fraction_of_limit'] * 100:.1f}%", f"{row['warm_up_s']} s",
              f"{big['bandwidth_limit']['limit_steps_per_s']} steps/s",
              f"{seed['hf-fast']['tokens_per_s']} tok/s",
              f"{seed['vllm']['tokens_per_s']} tok/s", f"{batch1['warm_up_s']} s"]
    quoted += [f"{marlin[v]['step_s'] * 1000:.2f} ms" for v in ("compiled_fused", "compiled_fused_marlin")]
    quoted += [f"{marlin[v]['fraction_of_limit'] * 100:.1f}%" for v in ("compiled_fused", "compiled_fused_marlin")]
    quoted += [f"{prefill[v]['step_s'] * 1000:.3f} ms" for v in ("compiled_fused", "compiled_fused_flex")]
    quoted += [f"{prefill[v]['prefill_s'] * 1000:.1f} ms" for v in ("compiled_fused", "compiled_fused_compiled_prefill")]
    quoted += [f"{prefill[v]['first_call_s']} s" for v in ("compiled_fused", "compiled_fused_compiled_prefill")]
    for half in (english, chinese):
        missing = [q for q in quoted if q not in half]
        assert not missing, missing
    assert row["fraction_of_limit"] > marlin["compiled_fused"]["fraction_of_limit"]  # the fused run is the faster one


def test_triton_decode_attention_numbers_quote_the_result_files():
    """The seed workload and batch 1 with hf-fast's Triton decode attention, in docs/results.md (English and Chinese)
    and the README's results line."""
    results = ROOT / "benchmarks" / "results"
    english, chinese = (ROOT / "docs" / "results.md").read_text(encoding="utf-8").split("\n## 中文\n")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    seed, batch1 = (json.loads((results / name).read_text()) for name in
                    ("bench_seed_triton_h100.json", "bench_batch1_triton_h100.json"))
    s, b = seed["results"][0], batch1["results"][0]
    assert s["backend"] == b["backend"] == "hf-graph-compile" and seed["commit"] == batch1["commit"] == "6768074"
    quoted = [f"{s['tokens_per_s']} tok/s", f"{s['fraction_of_limit'] * 100:.1f}%", f"{b['tokens_per_s']} tok/s",
              f"{b['fraction_of_limit'] * 100:.1f}%", f"{s['warm_up_s']} s"]
    in_docs = quoted + [f"{b['warm_up_s']} s", f"{seed['bandwidth_limit']['limit_steps_per_s']} steps/s",
                        f"{s['details']['graph_decoder_timings_last_run']['decode_s']} s"]
    for text, numbers in ((english, in_docs), (chinese, in_docs), (readme, quoted)):
        missing = [q for q in numbers if q not in text]
        assert not missing, missing


def test_custom_operator_numbers_quote_the_result_files():
    """The Triton kernel as a custom operator: the cold and warm warm-ups, hf-fast beside vLLM in one run and batch 1
    before the merge kernel, in docs/results.md (English and Chinese)."""
    results = ROOT / "benchmarks" / "results"
    english, chinese = (ROOT / "docs" / "results.md").read_text(encoding="utf-8").split("\n## 中文\n")
    cold, batch1, both = (json.loads((results / name).read_text()) for name in
                          ("bench_seed_custom_op_h100.json", "bench_batch1_custom_op_h100.json",
                           "bench_seed_hf_fast_vllm_custom_op_h100.json"))
    assert cold["commit"] == batch1["commit"] == both["commit"] == "cbd451a"
    rows = {row["requested"]: row for row in both["results"]}
    first, one = cold["results"][0], batch1["results"][0]
    warm, vllm = rows["hf-fast"], rows["vllm"]
    assert first["warm_up_s"] > warm["warm_up_s"]  # the second process found inductor's cache warm
    percent = lambda row: f"{row['fraction_of_limit'] * 100:.1f}%"  # noqa: E731
    quoted = [f"{first['warm_up_s']} s", f"{first['details']['graph_decoder_timings_warm_up']['capture_s']:.2f} s",
              f"{first['tokens_per_s']} tok/s", percent(first), f"{warm['warm_up_s']} s",
              f"{warm['tokens_per_s']} tok/s", percent(warm), f"{vllm['tokens_per_s']} tok/s", percent(vllm),
              f"{both['bandwidth_limit']['limit_steps_per_s']} steps/s",
              f"{both['bandwidth_limit']['copy_bandwidth_gb_s']} GB/s",
              f"{warm['details']['graph_decoder_timings_last_run']['decode_s']} s",
              f"{warm['time_to_first_token_s']} s", f"{vllm['time_to_first_token_s']} s",
              f"{one['tokens_per_s']} tok/s", percent(one)]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    in_readme = [f"{first['warm_up_s']} s", f"{warm['warm_up_s']} s", str(warm["tokens_per_s"]),
                 f"{vllm['tokens_per_s']} tok/s"]
    for text, numbers in ((english, quoted), (chinese, quoted), (readme, in_readme)):
        missing = [q for q in numbers if q not in text]
        assert not missing, missing


def test_merge_kernel_numbers_quote_the_result_files():
    """The Triton merge kernel's seed and batch-1 runs, in docs/results.md (English and Chinese)."""
    results = ROOT / "benchmarks" / "results"
    english, chinese = (ROOT / "docs" / "results.md").read_text(encoding="utf-8").split("\n## 中文\n")
    seed, batch1 = (json.loads((results / name).read_text()) for name in
                    ("bench_seed_merge_h100.json", "bench_batch1_merge_h100.json"))
    assert seed["commit"] == batch1["commit"] == "ee9df8d"
    first, one = seed["results"][0], batch1["results"][0]
    phases = first["details"]["compile_phases_s"]
    quoted = [f"{first['tokens_per_s']} tok/s", f"{first['fraction_of_limit'] * 100:.1f}%", f"{first['warm_up_s']} s",
              f"{phases['_compile.compile_inner']} s", f"{phases['pass.joint_graph_passes.pass_pattern_0']} s",
              f"{one['tokens_per_s']} tok/s", f"{one['fraction_of_limit'] * 100:.1f}%"]
    for run in (seed, batch1):
        quoted += [f"{run['bandwidth_limit']['limit_steps_per_s']} steps/s",
                   f"{run['bandwidth_limit']['copy_bandwidth_gb_s']} GB/s"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    in_readme = [f"{first['tokens_per_s']} tok/s", f"{first['warm_up_s']} s", f"{one['tokens_per_s']} tok/s",
                 f"{one['fraction_of_limit'] * 100:.1f}%"]
    for text, numbers in ((english, quoted), (chinese, quoted), (readme, in_readme)):
        missing = [q for q in numbers if q not in text]
        assert not missing, missing
