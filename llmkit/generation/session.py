"""A multi-turn chat that remembers: every turn sends the whole conversation so far, not just the last message.

The seed tutorial rebuilt ``messages`` on every turn, so the model never saw earlier turns; ``ChatSession`` keeps
the history and, only when the conversation no longer fits the model's context, drops the oldest turns and then
cuts the start of a message too long on its own.

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
    prompt plus ``max_new_tokens`` would exceed it:

    1. the oldest (user, assistant) turns are dropped from the history (counted in ``dropped_turns``);
    2. if the new message does not fit even alone (with the system prompt and the chat template), it is truncated:
       its *last* tokens are kept (the question usually ends a pasted text) and decoded back to text, so the history
       holds what the model actually saw; the tokens cut are counted in ``cut_tokens``.

    Either way one warning says what was dropped or cut and why. ``ask`` raises ``llmkit.errors.BadInput`` only when
    not even the chat template, the system prompt and ``max_new_tokens`` fit. A failed turn (``BadInput``,
    ``llmkit.chat.NonFiniteLogits``, a closed stream) leaves the history unchanged.

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
        self.cut_tokens = 0

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
        history, question, cut = self._fit({"role": "user", "content": text})
        reply = generate_reply(self.model, self.tokenizer, self._with_system(history) + [question],
                               self.max_new_tokens, on_token=on_token, **self.generate_kwargs)
        self.dropped_turns += (len(self.history) - len(history)) // 2
        self.cut_tokens += cut
        self.history = history + [question, {"role": "assistant", "content": reply}]
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

    def _excess(self, history: list[dict], question: dict) -> int:
        """Tokens by which the prompt plus ``max_new_tokens`` exceeds ``max_context_tokens`` (<= 0: it fits)."""
        prompt = self.tokenizer.apply_chat_template(self._with_system(history + [question]),
                                                    add_generation_prompt=True, tokenize=True, return_dict=True)
        return len(prompt["input_ids"]) + self.max_new_tokens - self.max_context_tokens

    def _fit(self, question: dict) -> tuple[list[dict], dict, int]:
        """(history, question, tokens cut) that fit the budget: the oldest turns dropped, then the message's start
        cut; one warning says what went. The session itself is not changed."""
        if (excess := self._excess([], {"role": "user", "content": ""})) > 0:
            raise BadInput(
                f"the chat template and system prompt need {self.max_context_tokens - self.max_new_tokens + excess} "
                f"tokens before any message, plus max_new_tokens={self.max_new_tokens}: more than the context budget "
                f"of {self.max_context_tokens} tokens; lower max_new_tokens, shorten the system prompt or raise "
                "max_context_tokens")
        history = self.history
        while history and self._excess(history, question) > 0:
            history = history[2:]
        question, kept, total = self._truncate(question)
        dropped = (len(self.history) - len(history)) // 2
        budget = f"max_new_tokens={self.max_new_tokens}, no more fits max_context_tokens={self.max_context_tokens}"
        if kept < total:
            also = f"; the {dropped} oldest turn(s) were dropped too" if dropped else ""
            warnings.warn(f"the message was cut to its last {kept} of {total} tokens ({total - kept} cut from its "
                          f"start): with the chat template, the system prompt and {budget}{also}", stacklevel=3)
        elif dropped:
            warnings.warn(f"dropped the {dropped} oldest turn(s) of the conversation: with the new message and "
                          f"{budget}", stacklevel=3)
        return history, question, total - kept

    def _truncate(self, question: dict) -> tuple[dict, int, int]:
        """(question, tokens kept, tokens it had): the message's last tokens that fit without history, as text."""
        ids = self.tokenizer(question["content"], add_special_tokens=False)["input_ids"]
        kept = ids
        while (excess := self._excess([], question)) > 0:  # ends: each round keeps fewer tokens; none always fit
            kept = kept[excess:]
            question = {**question, "content": self.tokenizer.decode(kept).lstrip("\ufffd")}  # no half character
        return question, len(kept), len(ids)


class _Stopped(Exception):
    """Raised inside ``generate`` (from the streamer) when the consumer of ``ChatSession.stream`` closed it."""


_DONE = object()  # end-of-reply marker in ChatSession.stream's queue
