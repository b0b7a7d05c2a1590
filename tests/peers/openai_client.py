"""The `openai` Python client against a running `tunelab serve` (started by tests/openai_client.rs).

usage: python openai_client.py BASE_URL API_KEY ADAPTER_NAME
Checks: models list with the adapter's parent, chat, streaming with usage, an adapter chosen by
`model`, completions, and the exception classes for 401, 404 and 400. Prints "ok" at the end.
"""
import sys

import openai

base_url, key, adapter = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)

models = client.models.list()
ids = [m.id for m in models.data]
assert ids[1:] == [adapter], ids
base = ids[0]
assert getattr(models.data[1], "parent", None) == base, models.data[1]

messages = [{"role": "user", "content": "Who are you?"}]
reply = client.chat.completions.create(model=base, messages=messages, max_tokens=12, temperature=0)
text = reply.choices[0].message.content
assert reply.choices[0].finish_reason in ("stop", "length")
assert reply.usage.completion_tokens >= 1

pieces, usage, finish = [], None, None
stream = client.chat.completions.create(
    model=base, messages=messages, max_tokens=12, temperature=0, stream=True,
    stream_options={"include_usage": True})
for chunk in stream:
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    else:
        usage = chunk.usage
assert "".join(pieces) == text, ("".join(pieces), text)
assert usage is not None and usage.completion_tokens == reply.usage.completion_tokens
assert finish == reply.choices[0].finish_reason

tuned = client.chat.completions.create(model=adapter, messages=messages, max_tokens=12, temperature=0)
assert tuned.model == adapter
assert tuned.choices[0].message.content != text, "the adapter changes the answer"

done = client.completions.create(model=base, prompt="Once upon a time", max_tokens=5, temperature=0)
assert done.choices[0].text is not None

def raises(cls, call):
    try:
        call()
    except cls as e:
        assert isinstance(e.body, dict) and "message" in e.body, e.body
        return
    raise AssertionError(f"expected {cls.__name__}")

bad_key = openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0)
raises(openai.AuthenticationError, lambda: bad_key.models.list())
raises(openai.NotFoundError, lambda: client.chat.completions.create(model="nope", messages=messages))
raises(openai.BadRequestError, lambda: client.chat.completions.create(model=base, messages=messages, n=2))
raises(openai.BadRequestError, lambda: client.chat.completions.create(model=base, messages=[]))
print("ok")
