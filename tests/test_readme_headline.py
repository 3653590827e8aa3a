"""The README's own figures, in both language halves, are the values in benchmarks/results/: the headline
measurements, the time and disk of the test command, and the Chinese real-mode table (both tables are written by
``benchmarks/realmode_gpu.py --readme``)."""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import realmode_gpu  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
NUMBER = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?")  # 11.0, 21968.6, 131,072; not the 2 of "Qwen2" or the 100 of "H100"


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def halves() -> tuple[str, str]:
    english, chinese = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## 中文说明\n")
    return english, chinese


def section(text: str, heading: str) -> str:
    """The lines under ``heading`` (a whole heading line) up to the next heading."""
    after = text.split(f"\n{heading}\n", 1)[1]
    return re.split(r"^#+ ", after, maxsplit=1, flags=re.MULTILINE)[0]


def numbers(text: str) -> list[str]:
    return NUMBER.findall(text)


def headline_values() -> list[list[str]]:
    """Per headline bullet, the figures it must show, formatted as the README shows them, from the result files."""
    fast = load("decode_fast_h100.json")
    q72 = fast["Qwen/Qwen2-72B-Instruct-GPTQ-Int4"]["hf-graph-compile"]["batch1"]
    plain72 = load("load_gptq72b_h100.json")["decode_batch1"]
    plain7 = fast["Qwen/Qwen2-7B-Instruct"]["hf"]["batch1"]
    fast7 = fast["Qwen/Qwen2-7B-Instruct"]["hf-graph-compile"]["batch1"]
    fused = load("decode_profile_fused_h200.json")["batches"][0]
    compiled = fused["variants"]["compiled_fused"]
    gguf = load("gguf_h100.json")
    q4 = next(r for r in gguf["runs"] if r.get("weights") == "q4_k_m" and r.get("flash_attn"))
    hf = next(r for r in gguf["runs"] if r["backend"] == "hf")
    lora = {(r["method"], r["gradient_checkpointing"]): r for r in load("lora_gpu_h100.json")["results"]}
    ddp = load("lora_ddp_h200x2.json")
    seed = {r["requested"]: r for r in load("bench_seed_h100.json")["results"]}
    vllm72 = load("bench_72b_vllm_h100.json")["results"][0]
    ratio = load("bench_seed_h100.json")["vllm_over_hf"]
    grouped = next(r for r in load("bench_grouped_hf_fast_h100.json")["results"] if r["workload"] == "seed")
    return [
        [f"{plain72['tokens_per_s']:.1f}", f"{q72['tokens_per_s']:.1f}", f"{q72['fraction_of_limit'] * 100:.0f}"],
        [f"{plain7['prompt_tokens']}", f"{plain7['new_tokens']}", f"{plain7['tokens_per_s']:.1f}",
         f"{fast7['tokens_per_s']:.1f}", f"{fast7['tokens_per_s'] / plain7['tokens_per_s']:.1f}"],
        [f"{compiled['step_s'] * 1000:.2f}", f"{compiled['tokens_per_s']:.1f}", f"{compiled['fraction_of_limit'] * 100:.1f}",
         f"{fused['step_s'] * 1000:.2f}"],
        [f"{seed['hf']['tokens_per_s']}", f"{seed['hf-fast']['tokens_per_s']}", f"{seed['vllm']['tokens_per_s']}",
         f"{seed['vllm']['fraction_of_limit'] * 100:.1f}", f"{ratio['this_run']}", f"{ratio['source_tutorial']}",
         f"{vllm72['tokens_per_s']}", f"{grouped['tokens_per_s']}"],
        [f"{gguf['workload']['prompt_tokens']}", f"{q4['eval_tokens_per_s']:.1f}", f"{hf['eval_tokens_per_s']:.1f}"],
        [f"{lora[('lora', True)]['batch']}", f"{lora[('lora', True)]['seq_len']}",
         f"{lora[('lora', True)]['peak_allocated_gib']:.2f}", f"{lora[('qlora', True)]['peak_allocated_gib']:.2f}"],
        [f"{ddp['tokens_per_s']['1']}", f"{ddp['tokens_per_s']['2']}", f"{ddp['scaling']}"],
    ]


def test_headline_measurements_show_the_result_files_values_in_both_languages():
    expected = headline_values()
    for half, heading in zip(halves(), ("## Headline measurements", "### 主要实测数字")):
        bullets = [line for line in section(half, heading).splitlines() if line.startswith("- ")]
        assert len(bullets) == len(expected), heading
        for bullet, values in zip(bullets, expected):
            shown = numbers(bullet)
            missing = [value for value in values if value not in shown]
            assert not missing, f"{heading}: {bullet[:70]}… does not show {missing} (its numbers: {shown})"


def test_the_test_commands_time_and_disk_come_from_the_result_file():
    footprint = load("ci_footprint_2core.json")
    minutes = f"{round(footprint['minutes']['all'])}"
    disk = f"{footprint['disk_gb']['checkout_with_venv'] + footprint['disk_gb']['llmkit_home']:.1f}"
    cores = f"{footprint['machine']['cpus']}"
    english, chinese = halves()
    assert f"On a machine with {cores} CPU cores and no GPU this took about {minutes} minutes and {disk} GB of disk" in english
    assert f"在 {cores} 个 CPU 核、没有 GPU 的机器上，这一步用了约 {minutes} 分钟、{disk} GB 磁盘" in chinese


def realmode_blocks() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    english = text.split("<!-- realmode-table -->\n")[1].split("\n<!-- /realmode-table -->")[0]
    chinese = text.split("<!-- realmode-table-zh -->\n")[1].split("\n<!-- /realmode-table-zh -->")[0]
    return english, chinese


def test_the_chinese_real_mode_table_says_what_the_english_one_says():
    english, chinese = realmode_blocks()
    assert chinese == realmode_gpu.readme_table_zh(english), (
        "the Chinese real-mode table is not the English one translated; `python benchmarks/realmode_gpu.py --readme` rewrites it")


def test_a_chinese_real_mode_cell_keeps_every_number():
    for cell in ["runs fully (9 cells); peak 0.51 GiB, 27.1 s", "runs; skipped by the notebook: cells 7, 11; peak 6.84 GiB, 39.3 s",
                 "stopped by the time limit after 8 cells (1 failed); peak 18.73 GiB so far", "3 of 12 cells failed",
                 "runs fully (9 cells); peak 0.5 GiB, 27.1 s on an H100 80GB HBM3", "the kernel died after 9 cells",
                 "not valid at this size: peak 24.15 GiB is over the card (1 cells failed)", "not run yet"]:
        assert sorted(numbers(realmode_gpu.chinese_cell(cell))) == sorted(numbers(cell)), cell


def test_the_course_map_lists_every_notebook_with_the_same_card_in_both_languages():
    def rows(half: str, heading: str) -> list[list[str]]:
        table = [line for line in section(half, heading).splitlines() if line.startswith("| `")]
        return [[cell.strip() for cell in line.strip("|").split("|")] for line in table]

    english, chinese = halves()
    en, zh = rows(english, "## Course map"), rows(chinese, "### 课程地图")
    notebooks = sorted(f"`{p.stem}`" for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert [row[0] for row in en] == [row[0] for row in zh] == notebooks
    for en_row, zh_row in zip(en, zh):
        assert sorted(numbers(en_row[2])) == sorted(numbers(zh_row[2])), (en_row[0], en_row[2], zh_row[2])
        assert (en_row[2] == "none") == (zh_row[2] == "不需要")

