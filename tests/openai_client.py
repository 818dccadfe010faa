"""The official `openai` Python client against a running `tessera serve`.

Usage: python tests/openai_client.py http://127.0.0.1:8080/v1
Run by tests/serve.rs (the_openai_python_client_works_unchanged).
"""

import sys

import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0)

ids = [m.id for m in client.models.list().data]
assert "SmolLM2-135M-Instruct" in ids and "assistant" in ids, ids
print("models:", ids)

reply = client.chat.completions.create(
    model="SmolLM2-135M-Instruct",
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    temperature=0,
    max_tokens=24,
)
text = reply.choices[0].message.content
assert "Paris" in text, text
assert reply.usage.completion_tokens > 0, reply.usage
print("chat:", text)

pieces = []
for chunk in client.chat.completions.create(
    model="assistant",
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    temperature=0,
    max_tokens=24,
    stream=True,
):
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
streamed = "".join(pieces)
assert len(pieces) > 3 and "Paris" in streamed, pieces
print("stream:", len(pieces), "chunks:", streamed)

completion = client.completions.create(
    model="SmolLM2-135M-Instruct", prompt="The capital of France is", max_tokens=3, temperature=0
)
assert completion.choices[0].text.startswith(" Paris"), completion
print("completion:", completion.choices[0].text)

vectors = client.embeddings.create(
    model="all-MiniLM-L6-v2",
    input=["A man is eating food.", "A man is eating a piece of bread."],
)
a, b = (d.embedding for d in vectors.data)
cosine = sum(x * y for x, y in zip(a, b))
assert len(a) == 384 and abs(cosine - 0.755) < 0.01, cosine
print("embeddings: cosine", round(cosine, 3))

try:
    client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404 and "does not exist" in str(e), e
print("errors: 404 for an unknown model")

print("all checks passed")
