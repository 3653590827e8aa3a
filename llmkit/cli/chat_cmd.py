"""``llmkit chat [MODEL]``: an interactive chat that remembers the conversation, or one answer with ``-p PROMPT``.

``-p`` may be given several times: each question is answered on its own (a fresh conversation), with the model
loaded once. With ``--json`` one question prints ``{"model", "prompt", "reply"}``, several print
``{"model", "answers": [{"prompt", "reply"}, ...]}``.

With no MODEL the qwen2-chat stand-in answers. In the interactive loop: ``/reset`` forgets the conversation,
``/system TEXT`` sets a new system prompt (and forgets), ``/exit``, ``/quit``, Ctrl-D or Ctrl-C end it.
A message longer than the context is truncated as ``llmkit.ChatSession`` documents, with a warning on stderr.
"""

from __future__ import annotations

import sys
import warnings

from llmkit.errors import BadInput, LlmkitError
from llmkit.pick import model_or_default

DTYPES = ("auto", "bfloat16", "float16", "float32")
PROMPT = "你 / you> "
COMMANDS_HELP = "commands: /reset (forget the conversation), /system TEXT (new system prompt), /exit (or Ctrl-D)"


def register(sub) -> None:
    parser = sub.add_parser("chat", help="chat with a model (interactive, or one question with -p)",
                            description="Chat with a chat-template model. Without -p: an interactive loop that "
                                        "remembers the conversation. " + COMMANDS_HELP + ".")
    parser.add_argument("model", nargs="?", help="model id or path (default: the embedded qwen2-chat stand-in)")
    parser.add_argument("-p", "--prompt", action="append",
                        help="ask this question and exit (default: interactive chat); repeat -p to ask several, "
                             "each on its own, with the model loaded once")
    parser.add_argument("--system", help="system prompt (default: the model's chat template default)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="longest reply in tokens (default: 512)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of the model's sampling settings")
    parser.add_argument("--repetition-penalty", type=float,
                        help="1.0 turns it off (default: the model's generation_config, 1.05 for Qwen2-Instruct)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="dtype to load with (default auto: bf16 on GPUs that have it, else fp16; on CPU the "
                             "checkpoint's own)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pickle (*.bin) weights: only for a source you trust, unpickling can run code")
    parser.add_argument("--json", action="store_true", help="print JSON (with -p only)")
    parser.set_defaults(run=run, render=render)


def run(args) -> tuple[dict, int]:
    if args.json and args.prompt is None:
        raise BadInput("--json needs -p PROMPT (the interactive chat prints text)")
    from llmkit.loading import load
    from llmkit.generation.session import ChatSession

    model_ref = model_or_default(args.model,
                                 hint='Name a model for a real answer, e.g. llmkit chat Qwen/Qwen2-7B-Instruct -p "你好".')
    model, tokenizer = load(model_ref, dtype=args.dtype, allow_pickle=args.allow_pickle)
    session = ChatSession(model, tokenizer, system=args.system, max_new_tokens=args.max_new_tokens,
                          **({"do_sample": False} if args.greedy else {}),
                          **({} if args.repetition_penalty is None else {"repetition_penalty": args.repetition_penalty}))
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # a cut message warns on every turn, not only the first
        warnings.showwarning = print_warning
        if args.prompt is None:
            return {"model": model_ref, "turns": interact(session)}, 0
        answers = [answer_alone(session, prompt, stream=not args.json, show_prompt=len(args.prompt) > 1)
                   for prompt in args.prompt]
    if len(answers) == 1:
        return {"model": model_ref, **answers[0]}, 0
    return {"model": model_ref, "answers": answers}, 0


def answer_alone(session, prompt: str, stream: bool, show_prompt: bool) -> dict:
    """Ask ``prompt`` in a fresh conversation; the reply is streamed to stdout when ``stream``.

    >>> answer_alone(session, "你好", stream=False, show_prompt=False)  # doctest: +SKIP
    {'prompt': '你好', 'reply': '你好！我是 llmkit 的小测试模型。'}
    """
    session.reset()
    if stream and show_prompt:
        print(f"{PROMPT}{prompt}")
    reply = session.ask(prompt, on_token=print_piece if stream else None)
    if stream:
        print()
    return {"prompt": prompt, "reply": reply}


def print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Show a warning as one ``llmkit: warning: ...`` line on stderr (a ``warnings.showwarning`` replacement).

    >>> print_warning(UserWarning("the message was cut"), UserWarning, "session.py", 1, file=sys.stdout)
    llmkit: warning: the message was cut
    """
    print(f"llmkit: warning: {message}", file=file or sys.stderr, flush=True)


def print_piece(text: str) -> None:
    """Print one streamed piece of a reply as it arrives.

    >>> print_piece("你好")
    你好
    """
    print(text, end="", flush=True)


def interact(session) -> int:
    """Read lines from stdin and answer each with ``session`` (streamed) until /exit, EOF or Ctrl-C; returns the
    number of questions answered. A turn that fails with an ``LlmkitError`` (no room left in the context, NaN
    logits) is reported and the loop goes on; a message too long for the context is truncated with a warning.

    >>> interact(ChatSession(model, tokenizer))  # doctest: +SKIP
    commands: /reset (forget the conversation), ...
    你 / you> 我叫小明。
    你好，小明！
    你 / you> /exit
    1
    """
    print(COMMANDS_HELP)
    turns = 0
    try:
        while (line := input(PROMPT).strip()) not in ("/exit", "/quit"):
            if line == "/reset":
                session.reset()
                print("(conversation forgotten)")
            elif line == "/system" or line.startswith("/system "):
                session.system = line.removeprefix("/system").strip() or None
                session.reset()
                print("(new system prompt; conversation forgotten)")
            elif line.startswith("/"):
                print(COMMANDS_HELP)
            elif line:
                try:
                    session.ask(line, on_token=print_piece)
                except LlmkitError as error:
                    print(f"llmkit: error: {error}", file=sys.stderr)
                    continue
                print()
                turns += 1
    except (EOFError, KeyboardInterrupt):
        print()
    return turns


def render(data: dict) -> None:
    """The reply was streamed already; nothing more to print."""
