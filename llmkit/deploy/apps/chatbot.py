"""A streamlit chatbot for a chat-template model (notebook 11).

Start it with the launcher, which checks that the model is on disk and runs streamlit bound to 127.0.0.1::

    python -m llmkit.deploy.apps.chatbot --model Qwen/Qwen2-7B-Instruct --port 8501

or with streamlit itself (the app's own options go after ``--``)::

    streamlit run llmkit/deploy/apps/chatbot.py --server.address 127.0.0.1 --server.port 8501 -- --model Qwen/Qwen2-7B-Instruct

The model comes from ``llmkit.pick_model`` (its tiny stand-in when ``LLMKIT_STANDIN=1``) and is loaded once per
server process (``st.cache_resource``): every browser tab shares it. Each tab keeps its own ``llmkit.ChatSession``
(history and system prompt) in ``st.session_state``; the sidebar's max-new-tokens and temperature apply to the next
reply, which streams into the page from ``ChatSession.stream``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import NoReturn

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from llmkit.errors import EXIT_BAD_INPUT, EXIT_NOT_FOUND, LlmkitError
from llmkit.hub import ModelNotFound, locate
from llmkit.pick import NoStandInError, banner, pick_model, standin_mode
from llmkit.standins import standin_for

DEFAULT_MODEL = "Qwen/Qwen2-7B-Instruct"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8501
SCRIPT = Path(__file__).resolve()
MAX_TEMPERATURE = 2.0


def temperature(text: str) -> float:
    """Parse a temperature option: a number from 0 (greedy decoding) to 2.

    >>> temperature("0.7")
    0.7
    >>> temperature("5")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: temperature must be between 0 (greedy) and 2, got 5.0
    """
    value = float(text)
    if not 0 <= value <= MAX_TEMPERATURE:
        raise argparse.ArgumentTypeError(f"temperature must be between 0 (greedy) and {MAX_TEMPERATURE:g}, got {value}")
    return value


def add_app_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the app's own options (``--model``, ``--temperature``) to ``parser`` and return it.

    >>> add_app_arguments(argparse.ArgumentParser()).parse_args([]).model
    'Qwen/Qwen2-7B-Instruct'
    """
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"model id or path, passed through llmkit.pick_model (default: {DEFAULT_MODEL})")
    parser.add_argument("--temperature", type=temperature,
                        help="initial value of the temperature slider, 0 = greedy (default: the model's generation_config)")
    return parser


def app_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The app's options from ``argv``, by default from the command line.

    ``streamlit run chatbot.py -- --model M`` sets ``sys.argv`` to ``[chatbot.py, --model, M]``. When this script runs
    another way (streamlit's AppTest, a notebook) ``sys.argv`` belongs to that program and the defaults apply.

    >>> app_arguments(["--model", "Qwen/Qwen2-1.5B-Instruct", "--temperature", "0"])
    Namespace(model='Qwen/Qwen2-1.5B-Instruct', temperature=0.0)
    """
    if argv is None:
        argv = sys.argv[1:] if sys.argv and Path(sys.argv[0]).resolve() == SCRIPT else []
    return add_app_arguments(argparse.ArgumentParser(prog="chatbot.py")).parse_args(argv)


@st.cache_resource(show_spinner="加载模型 / Loading the model …")
def load_model(model_id: str):
    """``(model, tokenizer, path)`` for ``llmkit.pick_model(model_id)``, loaded once per server process: every
    rerun and every browser tab gets the same objects. A failed load is not cached (reloading the page retries).

    >>> model, tokenizer, path = load_model("Qwen/Qwen2-7B-Instruct")  # doctest: +SKIP
    """
    path = pick_model(model_id)
    from llmkit.loading import load  # torch and transformers: imported by the page, not by the launcher

    return (*load(path), path)


def default_temperature(model) -> float:
    """The model's own sampling temperature (its generation_config), or 0 (greedy) when it does not sample.

    >>> from transformers import GenerationConfig
    >>> default_temperature(type("M", (), {"generation_config": GenerationConfig(do_sample=True, temperature=0.7)}))
    0.7
    """
    config = model.generation_config
    return float(config.temperature or 1.0) if config.do_sample else 0.0


def generation_settings(temperature: float) -> dict:
    """``generate()`` keyword arguments for the temperature slider: 0 means greedy decoding.

    >>> generation_settings(0.0), generation_settings(0.7)
    ({'do_sample': False}, {'do_sample': True, 'temperature': 0.7})
    """
    return {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}


def chat_page(args: argparse.Namespace) -> None:
    """Draw the page: sidebar controls, the conversation so far, and the streamed reply to a new message.

    Streamlit runs this script again on every interaction; the model comes from the cache, the conversation from
    ``st.session_state``.

    >>> chat_page(app_arguments())  # doctest: +SKIP
    """
    from llmkit.generation.session import ChatSession  # torch and transformers: imported by the page, not by the launcher

    st.set_page_config(page_title="llmkit chatbot", page_icon="💬")
    st.title("💬 llmkit chatbot")
    try:
        model, tokenizer, path = load_model(args.model)
    except (ModelNotFound, NoStandInError, LlmkitError) as error:  # not on disk, incomplete, won't fit, ...
        st.error(f"模型无法加载 / The model could not be loaded ({type(error).__name__}). "
                 "Fix the problem below, then reload this page.")
        st.code(str(error), language=None)
        st.stop()
    if standin_mode():
        st.warning(banner(args.model, standin_for(args.model), path).replace("\n", "  \n"))
    if "chat" not in st.session_state:
        st.session_state.chat = ChatSession(model, tokenizer)
    chat = st.session_state.chat

    with st.sidebar:
        st.markdown(f"**模型 / Model:** `{args.model}`")
        chat.system = st.text_area("系统提示 / System prompt",
                                   placeholder="empty: the chat template's default", key="system").strip() or None
        chat.max_new_tokens = st.slider("最多生成的词元数 / Max new tokens", 1, 2048, 512, key="max_new_tokens")
        start = args.temperature if args.temperature is not None else default_temperature(model)
        chat.generate_kwargs = generation_settings(
            st.slider("温度 / Temperature (0 = greedy)", 0.0, MAX_TEMPERATURE, start, 0.05, key="temperature"))
        if st.button("清空对话 / Clear history", key="clear"):
            chat.reset()

    for message in chat.history:
        st.chat_message(message["role"]).markdown(message["content"])
    if text := st.chat_input("输入消息 / Type a message"):
        st.chat_message("user").markdown(text)
        dropped, cut = chat.dropped_turns, chat.cut_tokens
        with st.chat_message("assistant"):
            try:
                st.write_stream(chat.stream(text))
            except LlmkitError as error:  # no room in the context, NaN logits, ...: the conversation is unchanged
                st.error(str(error))
        if chat.dropped_turns > dropped:
            st.info(f"为放进上下文，最早的 {chat.dropped_turns - dropped} 轮对话已被丢弃 / "
                    f"the {chat.dropped_turns - dropped} oldest turn(s) were dropped to fit the context")
        if chat.cut_tokens > cut:
            st.info(f"消息太长，开头的 {chat.cut_tokens - cut} 个词元已被截去 / "
                    f"the message was too long: its first {chat.cut_tokens - cut} tokens were cut to fit the context")


def page_url(host: str, port: int) -> str:
    """Where a browser on the server reaches the app (every-interface addresses are reached through 127.0.0.1).

    >>> page_url("0.0.0.0", 6006)
    'http://127.0.0.1:6006'
    """
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"


def streamlit_command(app_args: list[str], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> list[str]:
    """The ``streamlit run`` command (argv) that serves this app on ``host``:``port``, this Python's streamlit.

    >>> shlex.join(streamlit_command(["--model", "Qwen/Qwen2-7B-Instruct"]))
    '... -m streamlit run .../llmkit/deploy/apps/chatbot.py --server.address 127.0.0.1 --server.port 8501 --server.headless true --browser.gatherUsageStats false -- --model Qwen/Qwen2-7B-Instruct'
    """
    return [sys.executable, "-m", "streamlit", "run", str(SCRIPT), "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--", *app_args]


def forwarding_hint(host: str, port: int) -> str:
    """How to open the app: the URL on the server, and the SSH port forwarding to use it from a laptop.

    >>> print(forwarding_hint("127.0.0.1", 8501))
    Open http://127.0.0.1:8501 in a browser on this machine. From your laptop, forward the port first:
      AutoDL: ssh -CN -L 8501:127.0.0.1:8501 root@<host> -p <ssh-port>
    ...
    """
    lines = [f"Open {page_url(host, port)} in a browser on this machine. From your laptop, forward the port first:",
             f"  AutoDL: ssh -CN -L {port}:127.0.0.1:{port} root@<host> -p <ssh-port>",
             f"  SCOW:   ssh -CN -J <user>@<login-node> -L {port}:127.0.0.1:{port} <user>@<compute-node>",
             f"then open http://127.0.0.1:{port} on the laptop (Ctrl-C here stops the app)."]
    if host in ("0.0.0.0", "::", ""):
        lines.append(f"WARNING: listening on every interface: anyone who can reach port {port} of this machine can "
                     "use the model, there is no login. Use it only behind a platform's proxy (AutoDL port 6006).")
    return "\n".join(lines)


def launch(argv: list[str] | None = None) -> NoReturn:
    """``python -m llmkit.deploy.apps.chatbot``: check the model is on disk, print the command, URL and port-forwarding
    hint, then replace this process with the streamlit server. A missing model exits 3, a model without a
    stand-in in stand-in mode 2 (as the ``llmkit`` CLI does).

    >>> launch(["--model", "Qwen/Qwen2-7B-Instruct", "--port", "8501"])  # doctest: +SKIP
    running: .../python -m streamlit run .../chatbot.py --server.address 127.0.0.1 --server.port 8501 ...
    """
    parser = add_app_arguments(argparse.ArgumentParser(
        prog="python -m llmkit.deploy.apps.chatbot", description="Serve the llmkit chatbot with streamlit."))
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    args = parser.parse_args(argv)
    try:
        found = locate(pick_model(args.model))
    except (ModelNotFound, NoStandInError) as error:
        print(f"llmkit: error: {error}", file=sys.stderr)
        sys.exit(EXIT_NOT_FOUND if isinstance(error, ModelNotFound) else EXIT_BAD_INPUT)
    app_args = ["--model", args.model] + ([] if args.temperature is None else ["--temperature", str(args.temperature)])
    command = streamlit_command(app_args, args.host, args.port)
    print(f"model: {found.path}\nrunning: {shlex.join(command)}\n{forwarding_hint(args.host, args.port)}", flush=True)
    os.execv(sys.executable, command)


if __name__ == "__main__":
    if get_script_run_ctx(suppress_warning=True) is None:  # `python -m llmkit.deploy.apps.chatbot`: start the server
        launch()
    else:  # `streamlit run` (or AppTest) runs this file as the page script
        chat_page(app_arguments())
