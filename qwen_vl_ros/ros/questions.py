"""The questions a ~/describe request or a ~/describe_stream goal asks: prompt, then prompts."""

from __future__ import annotations

MAX_QUESTIONS = 32


def questions(prompt: str, prompts, default: str) -> list:
    """Return the questions in order: ``prompt`` (when set), then each of ``prompts``.

    Neither given = ``[default]`` (the node's parameter "prompt"). An empty entry of ``prompts``
    or more than MAX_QUESTIONS raise ValueError saying which: a blank question is a mistake
    the caller should hear about, not a silent default.
    """
    asked = [prompt] if prompt.strip() else []
    for i, p in enumerate(prompts):
        if not p.strip():
            raise ValueError(f'bad request: prompts[{i}] is empty')
        asked.append(p)
    if len(asked) > MAX_QUESTIONS:
        raise ValueError(f'bad request: {len(asked)} questions, at most {MAX_QUESTIONS} '
                         'per call')
    return asked or [default]
