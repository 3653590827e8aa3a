"""``llmkit chat [MODEL] -p PROMPT``: one-shot chat; with no MODEL the qwen2-chat stand-in answers."""

from __future__ import annotations

from llmkit.pick import banner, pick_model
from llmkit.standins import standin_path

DEFAULT_STANDIN = "qwen2-chat"


def register(sub) -> None:
    parser = sub.add_parser("chat", help="ask a chat model one question")
    parser.add_argument("model", nargs="?", help="model id or path (default: the embedded qwen2-chat stand-in)")
    parser.add_argument("-p", "--prompt", required=True, help="the question")
    parser.add_argument("--system", help="system prompt (default: the model's chat template default)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of the model's sampling settings")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run, render=render)


def run(args) -> tuple[dict, int]:
    from llmkit.chat import generate_reply
    from llmkit.loading import load

    if args.model:
        model_ref = pick_model(args.model)
    else:
        model_ref = str(standin_path(DEFAULT_STANDIN))
        print(banner("the default chat model", DEFAULT_STANDIN, model_ref,
                     hint='Name a model for a real answer, e.g. llmkit chat Qwen/Qwen2-7B-Instruct -p "你好".'))
    model, tokenizer = load(model_ref)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]
    extra = {"do_sample": False} if args.greedy else {}
    reply = generate_reply(model, tokenizer, messages, max_new_tokens=args.max_new_tokens, stream=not args.json, **extra)
    return {"model": model_ref, "prompt": args.prompt, "reply": reply}, 0


def render(data: dict) -> None:
    """The reply was streamed already; nothing more to print."""
