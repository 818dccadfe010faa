"""The near-copy check of the evaluation sets: for each prompt, the
highest word-set Jaccard similarity (lowercase [a-z0-9]+ words) to any
manifest example in plugins/*/tessera.toml, any user turn of the example
fine-tune's training data, and any prompt of the other sets given; the
first set (the held-out one) is also checked against every string literal
of 12 characters or more in the example experts' sources (their unit
tests), so that no expert is tested on a held-out prompt. A prompt at
0.75 or more is a near-copy and is not allowed in a set.

    python3 tests/data/eval/near_copies.py tests/data/eval/test.jsonl tests/data/eval/dev.jsonl
"""

import glob
import json
import re
import sys
import tomllib

root = __file__.rsplit("/tests/", 1)[0]
examples = []
for manifest in glob.glob(f"{root}/plugins/*/tessera.toml"):
    examples += tomllib.load(open(manifest, "rb")).get("examples", [])
for line in open(f"{root}/plugins/harbor-lane-books/data/train.jsonl"):
    examples += [m["content"] for m in json.loads(line)["messages"] if m["role"] == "user"]


sources = []
for path in glob.glob(f"{root}/plugins/*/src/**/*.rs", recursive=True) + glob.glob(
    f"{root}/plugins/*/*.py"
):
    text = open(path).read()
    sources += [m.replace('\\"', '"') for m in re.findall(r'"((?:[^"\\\n]|\\.){12,}?)"', text)]
    sources += re.findall(r"'([^'\n]{12,}?)'", text) if path.endswith(".py") else []


def words(s):
    return set(re.findall(r"[a-z0-9]+", s.lower()))


def jaccard(a, b):
    a, b = words(a), words(b)
    return len(a & b) / len(a | b) if a | b else 0.0


sets = {path: [json.loads(line)["prompt"] for line in open(path)] for path in sys.argv[1:]}
worst = 0.0
held_out = next(iter(sets), None)
for path, prompts in sets.items():
    others = [p for other, ps in sets.items() if other != path for p in ps]
    if path == held_out:
        others += sources
    for prompt in prompts:
        score, example = max((jaccard(prompt, e), e) for e in examples + others)
        worst = max(worst, score)
        if score >= 0.75:
            print(f"near-copy ({score:.2f}): {prompt!r} ~ {example!r}")
print(f"highest similarity to an example: {worst:.2f} (limit 0.75)")
sys.exit(1 if worst >= 0.75 else 0)
