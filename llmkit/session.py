"""A multi-turn chat that remembers: every turn sends the whole conversation so far, not just the last message.

The seed tutorial rebuilt ``messages`` on every turn, so the model never saw earlier turns; ``ChatSession`` keeps
the history and drops the oldest turns only when the conversation no longer fits the model's context.

>>> import llmkit
>>> chat = llmkit.ChatSession(*llmkit.load("Qwen/Qwen2-7B-Instruct"), do_sample=False)  # doctest: +SKIP
>>> chat.ask("我叫小明。")  # doctest: +SKIP
'你好，小明！'
>>> chat.ask("我叫什么名字？")  # doctest: +SKIP
'你叫小明。'
"""

from __future__ import annotations

import queue
import threading
import warnings
from typing import Callable, Iterator

from llmkit.chat import generate_reply
from llmkit.errors import BadInput


class ChatSession:
    """A conversation with a chat-template model; ``ask`` sends the system prompt and the whole history.

    ``generate_kwargs`` go to ``model.generate`` on every turn (e.g. ``do_sample=False``); otherwise the model's
    own generation_config applies.

    The context budget is ``max_context_tokens`` (default ``model.config.max_position_embeddings``). When the
    prompt plus ``max_new_tokens`` would exceed it, the oldest (user, assistant) turns are dropped from the
    history, counted in ``dropped_turns``, and one warning says how many and why. If the new message alone (with
    the system prompt) does not fit, ``ask`` raises ``llmkit.errors.BadInput`` and the history is unchanged.

    >>> chat = ChatSession(model, tokenizer, max_new_tokens=128, do_sample=False)  # doctest: +SKIP
    >>> reply = chat.ask("My name is Alice.", on_token=lambda text: print(text, end=""))  # doctest: +SKIP
    Nice to meet you, Alice!
    """

    def __init__(self, model, tokenizer, system: str | None = None, max_new_tokens: int = 512,
                 max_context_tokens: int | None = None, **generate_kwargs):
        self.model, self.tokenizer = model, tokenizer
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.max_context_tokens = max_context_tokens if max_context_tokens is not None else (
            model.config.max_position_embeddings)
        self.generate_kwargs = generate_kwargs
        self.history: list[dict] = []
        self.dropped_turns = 0

    @property
    def messages(self) -> list[dict]:
        """The system message (if any) and the history: what the model sees on the next turn.

        >>> ChatSession(model, tokenizer, system="Be brief.").messages  # doctest: +SKIP
        [{'role': 'system', 'content': 'Be brief.'}]
        """
        return self._with_system(self.history)

    def ask(self, text: str, on_token: Callable[[str], None] | None = None) -> str:
        """One turn: send the conversation plus ``text``, return the reply and add both to the history.

        ``on_token`` (optional) gets each new piece of the reply as it is generated.

        >>> chat.ask("What is my name?")  # doctest: +SKIP
        'Your name is Alice.'
        """
        question = {"role": "user", "content": text}
        self._fit(question)
        reply = generate_reply(self.model, self.tokenizer, self.messages + [question], self.max_new_tokens,
                               on_token=on_token, **self.generate_kwargs)
        self.history += [question, {"role": "assistant", "content": reply}]
        return reply

    def stream(self, text: str) -> Iterator[str]:
        """``ask`` as a generator: yields the reply piece by piece while ``generate`` runs in a background thread
        (what a web page needs, e.g. ``st.write_stream``). The turn joins the history once the reply is complete;
        errors from ``ask`` (e.g. ``BadInput``) are raised from the generator.

        Closing the generator early (a page that reruns, a client that goes away) stops generation at the next
        token and leaves the history unchanged.

        >>> "".join(chat.stream("Hello"))  # doctest: +SKIP
        'Hello! I am the tiny llmkit test model.'
        """
        pieces: queue.Queue = queue.Queue()
        stop = threading.Event()
        failure: list[BaseException] = []

        def on_token(piece: str) -> None:
            if stop.is_set():
                raise _Stopped
            pieces.put(piece)

        def run() -> None:
            try:
                self.ask(text, on_token=on_token)
            except BaseException as error:  # handed to the consumer below
                failure.append(error)
            finally:
                pieces.put(_DONE)

        worker = threading.Thread(target=run, name="ChatSession.stream", daemon=True)
        worker.start()
        try:
            while (piece := pieces.get()) is not _DONE:
                yield piece
        finally:
            stop.set()
            worker.join()
        if failure:
            raise failure[0]

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays).

        >>> chat.reset(); chat.history  # doctest: +SKIP
        []
        """
        self.history = []

    def _with_system(self, history: list[dict]) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + history

    def _prompt_tokens(self, history: list[dict], question: dict) -> int:
        prompt = self.tokenizer.apply_chat_template(self._with_system(history + [question]),
                                                    add_generation_prompt=True, tokenize=True, return_dict=True)
        return len(prompt["input_ids"])

    def _fit(self, question: dict) -> None:
        """Drop the oldest turns until the next prompt plus ``max_new_tokens`` fits ``max_context_tokens``."""
        history = self.history
        while (tokens := self._prompt_tokens(history, question)) + self.max_new_tokens > self.max_context_tokens:
            if not history:
                raise BadInput(
                    f"the message needs {tokens} tokens (with the system prompt and chat template) plus "
                    f"max_new_tokens={self.max_new_tokens}: more than the context budget of "
                    f"{self.max_context_tokens} tokens; shorten it or raise max_context_tokens")
            history = history[2:]
        dropped = (len(self.history) - len(history)) // 2
        if dropped:
            self.history = history
            self.dropped_turns += dropped
            warnings.warn(f"dropped the {dropped} oldest turn(s) of the conversation: with max_new_tokens="
                          f"{self.max_new_tokens} they no longer fit max_context_tokens={self.max_context_tokens}",
                          stacklevel=3)


class _Stopped(Exception):
    """Raised inside ``generate`` (from the streamer) when the consumer of ``ChatSession.stream`` closed it."""


_DONE = object()  # end-of-reply marker in ChatSession.stream's queue
