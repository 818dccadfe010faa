#!/usr/bin/env python3
"""Write data/train.jsonl, what train.sh trains the adapter on, from the
hand-written chats in data/chats.jsonl: each system prompt gets the facts
the question asks about, chosen as src/lib.rs chooses them at run time
(keywords in data/facts.txt, most matches first, at most MAX_FACTS).

The adapter learns to answer from the facts it is given; without them in
training it learnt to recall facts it only half memorised. A unit test in
src/lib.rs checks that every prompt written here is the one the hook
builds for the same question.

    python3 plugins/harbor-lane-books/make_train.py
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_FACTS = 3  # src/lib.rs: MAX_FACTS


def facts():
    for line in open(os.path.join(HERE, "data", "facts.txt"), encoding="utf-8"):
        line = line.strip()
        if not line or line.startswith("#") or " | " not in line:
            continue
        keys, fact = line.split(" | ", 1)
        yield keys.split(), fact.strip()


def relevant_facts(question):
    words, word = [], ""
    for c in question.lower() + " ":
        if c.isalnum() or c == "-":
            word += c
        elif word:
            words.append(word)
            word = ""

    def matches(k):
        return any(w.startswith(k) if len(k) >= 4 else w == k for w in words)

    scored = []
    for i, (keys, fact) in enumerate(facts()):
        n = sum(1 for k in keys if matches(k))
        if n:
            scored.append((-n, i, fact))
    scored.sort()
    return [fact for _, _, fact in scored[:MAX_FACTS]]


def main():
    out = []
    for line in open(os.path.join(HERE, "data", "chats.jsonl"), encoding="utf-8"):
        if not line.strip():
            continue
        chat = json.loads(line)
        msgs = chat["messages"]
        question = next(m["content"] for m in reversed(msgs) if m["role"] == "user")
        found = relevant_facts(question)
        system = next(m for m in msgs if m["role"] == "system")
        if found:
            system["content"] += " Facts: " + " ".join(found)
        out.append(json.dumps(chat, ensure_ascii=False))
    path = os.path.join(HERE, "data", "train.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {len(out)} chats to {path}")


if __name__ == "__main__":
    main()
