"""Server commands in the README and docs/ are safe to copy onto a shared node: every `vllm serve` and llama.cpp
server line binds 127.0.0.1 and asks for an API key (other users of the node can reach 127.0.0.1), and no SSH tunnel
example opens its port to the network (`ssh -g`)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SERVER = re.compile(r"(vllm serve|llama_cpp\.server)\s")


def server_lines(text: str) -> list[str]:
    """Command lines (in code blocks or `inline code`) that start a vLLM or llama.cpp server."""
    blocks = re.findall(r"^```.*?^```", text, re.DOTALL | re.MULTILINE)
    lines = [line for block in blocks for line in block.splitlines()]
    lines += re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE))
    return [line.strip() for line in lines if SERVER.search(line) and not line.lstrip().startswith("#")]


def unsafe(line: str) -> bool:
    return "--host 127.0.0.1" not in line or not re.search(r"--api[-_]key \S", line)


def test_every_server_command_binds_loopback_and_asks_for_a_key():
    found = {page.name: server_lines(page.read_text(encoding="utf-8")) for page in PAGES}
    assert sum(map(len, found.values())) >= 3  # vllm serve, its tensor-parallel form and llama.cpp's server
    bad = [(name, line) for name, lines in found.items() for line in lines if unsafe(line)]
    assert not bad


def test_no_tunnel_example_opens_its_port_to_the_network():
    assert not [page.name for page in PAGES if re.search(r"\bssh\b[^\n`]*\s-g\b", page.read_text(encoding="utf-8"))]


def test_a_server_line_without_a_key_is_caught():
    text = "```bash\nvllm serve Qwen/Qwen2-7B-Instruct --host 127.0.0.1 --port 8000\n```\nor `python -m llama_cpp.server --model m.gguf`"
    lines = server_lines(text)
    assert len(lines) == 2 and all(unsafe(line) for line in lines)
    assert not unsafe('vllm serve M --host 127.0.0.1 --api-key "$SERVER_API_KEY"')
