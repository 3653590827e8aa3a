"""Safety across llmkit: no token or password is ever printed (CLI errors, --debug tracebacks, doctor, server logs),
and every server the course starts listens on 127.0.0.1 unless a host is given."""

import json
import re
import sys
from pathlib import Path

import pytest

from llmkit.deploy import serving
from llmkit.cli import main
from llmkit.errors import mask_secrets

TOKEN = "hf_" + "Zq8" * 12  # shaped like a real Hugging Face token
SECRETS = {"HF_TOKEN": TOKEN, "MODELSCOPE_API_TOKEN": "ms-token-5f1e2d", "OPENAI_API_KEY": "sk-proj-abc123xyz"}
MIRROR_PASSWORD = "mirror-pw-42"
NOTEBOOKS = sorted(Path(__file__).parents[1].glob("notebooks/*.ipynb"))


@pytest.fixture
def secrets(monkeypatch, tmp_path):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_ENDPOINT", f"http://student:{MIRROR_PASSWORD}@127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "modelscope"))
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.chdir(tmp_path)
    return [*SECRETS.values(), MIRROR_PASSWORD]


def leaked(text: str, secrets: list[str]) -> list[str]:
    return [secret for secret in secrets if secret in text]


COMMANDS = [
    ["doctor"], ["doctor", "--json"], ["locate", "Org/Missing"], ["download", "Org/Missing"],
    ["estimate", "Org/Missing"], ["chat", "/no/such/model", "-p", "hi"], ["standin", "no-such-kind"],
]


@pytest.mark.parametrize("debug", [[], ["--debug"]], ids=["plain", "debug"])
@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_no_command_prints_a_token_or_password(argv, debug, secrets, capsys):
    main(debug + argv)
    out, err = capsys.readouterr()
    assert not leaked(out + err, secrets)


def test_an_error_that_carries_a_token_is_masked_in_the_line_and_the_traceback(secrets, monkeypatch, capsys):
    def failing_locate(model):
        raise RuntimeError(f"GET https://huggingface.co/{model} with Authorization: Bearer {TOKEN} gave 401")

    monkeypatch.setattr("llmkit.cli.locate_cmd.locate", failing_locate)
    for debug in ([], ["--debug"]):
        assert main(debug + ["locate", "Org/Name"]) == 1
        out, err = capsys.readouterr()
        assert not leaked(out + err, secrets)
        assert err.strip().splitlines()[-1].startswith("llmkit: error: unexpected RuntimeError: GET https://huggingface.co")
        assert ("Traceback" in err) == bool(debug), "the traceback only with --debug"


def test_doctor_shows_that_a_token_is_set_without_its_value(secrets, capsys):
    main(["doctor", "--json"])
    settings = json.loads(capsys.readouterr().out)
    row = next(row for row in settings["rows"] if "HF_TOKEN" in json.dumps(row))
    assert "set (hidden)" in json.dumps(row)


def test_a_server_log_that_prints_a_token_is_masked_in_the_error(secrets, tmp_path):
    script = "import os; print('config: token=' + os.environ['HF_TOKEN'] + ' key=' + os.environ['OPENAI_API_KEY']); exit(1)"
    command = [sys.executable, "-c", script, "--host", "127.0.0.1", "--port", str(serving.free_port()),
               "--api-key", SECRETS["OPENAI_API_KEY"]]
    with pytest.raises(serving.ServerFailed) as failed:
        with serving.serve(command, log_path=tmp_path / "server.log", timeout_s=30):
            pass
    assert "config: token=" in str(failed.value), "the log tail is shown"
    assert not leaked(str(failed.value), secrets)


@pytest.mark.parametrize("text, hidden", [
    (f"token {TOKEN} expired", TOKEN),
    ("https://me:pa55word@hf-mirror.example/api", "pa55word"),
    ("Authorization: Bearer eyJhbGciOi.x.y", "eyJhbGciOi.x.y"),
    ("vllm serve m --api-key=sk-local-1", "sk-local-1"),
])
def test_mask_secrets_hides_token_shapes_without_knowing_the_value(text, hidden):
    assert hidden not in mask_secrets(text) and "***" in mask_secrets(text)


def server_commands(source: str) -> list[str]:
    """Lines of notebook code that start a server: `transformers serve`, `vllm serve`, streamlit, llama.cpp's."""
    starts = re.compile(r'"serve"|streamlit_command\(|llama_cpp\.server|"streamlit", "run"')
    return [line for line in source.splitlines() if starts.search(line) and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_every_server_a_notebook_starts_binds_loopback(notebook):
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    for line in server_commands("\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")):
        assert '"--host", "127.0.0.1"' in line or "streamlit_command(" in line, f"{notebook.name}: {line.strip()}"


def test_the_notebooks_start_servers_at_all():
    """The check above must look at something: notebook 10 starts transformers serve and vllm serve."""
    source = json.loads(Path(NOTEBOOKS[0].parent, "10_serving.ipynb").read_text(encoding="utf-8"))["cells"]
    assert len(server_commands("\n".join("".join(c["source"]) for c in source if c["cell_type"] == "code"))) >= 2


def test_serve_refuses_a_command_without_a_host():
    with pytest.raises(Exception, match="names no --host"):
        serving.server_address(["vllm", "serve", "m", "--port", "8000"])  # vllm would listen on every interface
