"""The development set of issue 14: tune thresholds, manifest examples and
experts on this one, never on test.jsonl. Same categories and checkers as
the test set, other prompts. Expected values are computed here, in
Python.

    python3 tests/data/eval/make_dev_set.py   # writes dev.jsonl beside it
"""

import datetime
import json
import re

items = []


def add(cat, prompt, check):
    n = sum(1 for i in items if i["category"] == cat) + 1
    items.append({"id": f"dev-{cat}-{n:02d}", "category": cat, "prompt": prompt, "check": check})


def num(v, tol=None):
    c = {"type": "number", "value": v}
    if tol is not None:
        c["tolerance"] = tol
    return c


def rx(p):
    return {"type": "regex", "pattern": p}


for p, v in [
    ("Add 629 and 1874.", 629 + 1874), ("What is 4000 minus 1234?", 4000 - 1234),
    ("Divide 900 by 36.", 900 / 36), ("Multiply 37 by 29.", 37 * 29),
    ("What is 12% of 250?", 0.12 * 250), ("Take 85 away from 310.", 310 - 85),
    ("What is 6 cubed?", 216), ("How much is 3.2 + 4.75?", 3.2 + 4.75),
    ("What is the product of 14 and 15?", 210), ("What is 2^9 + 1?", 513),
]:
    add("arithmetic", p, num(v, 0.01))

for p, v, tol in [
    ("How many kilometers is 26.2 miles?", 26.2 * 1.609344, 0.05),
    ("Convert 212 degrees Fahrenheit to Celsius.", 100, 0.1),
    ("How many ounces are in 500 grams?", 500 / 28.349523125, 0.05),
    ("Convert 6 feet to meters.", 6 * 0.3048, 0.01),
    ("How many minutes are in 4.5 hours?", 270, 0.1),
    ("Convert 3 liters to milliliters.", 3000, 0.5),
    ("How many pounds is 2.5 kilograms?", 2.5 / 0.45359237, 0.02),
]:
    add("units", p, num(v, tol))

for p, pat in [
    ("Australia's capital city is called what?", r"(?i)canberra"),
    ("Iron has which element symbol?", r"\bFe\b"),
    ("How many sides does a hexagon have?", r"\b6\b|(?i)\bsix\b"),
    ("Who painted the Mona Lisa?", r"(?i)leonardo|da vinci"),
    ("Which planet has the most famous rings?", r"(?i)saturn"),
    ("What is the tallest mountain on Earth?", r"(?i)everest"),
]:
    add("facts", p, rx(pat))

for p, fields in [
    ("Pull out JSON with fields name and city: Jonas lives in Hamburg.", {"name": "Jonas", "city": "Hamburg"}),
    ("JSON with the fields game and players for: Chess is played by 2 players.", {"game": "Chess", "players": 2}),
    ("Give a JSON object with keys drink and size: I'd like a large coffee.", {"drink": "coffee", "size": "large"}),
    ("As JSON with fields planet and moons: Mars has 2 moons.", {"planet": "Mars", "moons": 2}),
    ("Extract fields name and member (a boolean) as JSON: Lena is not a member.", {"name": "Lena", "member": False}),
    ("Return JSON with fields book and year from: Emma was published in 1815.", {"book": "Emma", "year": 1815}),
]:
    add("json", p, {"type": "json", "fields": fields})


def esc(t):
    e = "".join("\\" + ch if ch in ".+*?()|[]{}^$#&-~\\" else ch for ch in t)
    if t[:1].isalnum():
        e = r"\b" + e
    if t[-1:].isalnum():
        e = e + r"\b"
    return e


import contextlib
import io

for p, js in [
    ("Tell me the output of this Python snippet:\nprint(6 * 7 - 2)", None),
    ("What is the output?\nprint(len([1, 2, 3, 4, 5]))", None),
    ("What does this Python code print?\nprint('x' + 'y' * 2)", None),
    ("What does this print?\nn = 5\nprint(n * (n + 1) // 2)", None),
    ("What does this JavaScript log?\nconsole.log(7 % 3);", "1"),
    ("What is logged?\nconsole.log([5, 1, 4].sort().join('-'));", "1-4-5"),
]:
    if js is None:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(p.split("\n", 1)[1], {})
        out = buf.getvalue().strip()
    else:
        out = js
    add("code", p, rx(r"[\s\S]*?".join(esc(l) for l in out.split("\n"))))

for text, mentions in [
    ("The town will open a new swimming pool next June. It has a fifty-metre lane pool, a children's pool and a sauna. Entry will be free for pupils on weekday mornings.", ["pool"]),
    ("Engineers repaired the old bridge over the canal after cracks were found last winter. The bridge reopened to cars on Friday, two weeks earlier than planned.", ["bridge"]),
    ("Our team moved its weekly meeting from Monday to Wednesday so that everyone can attend. The meeting will also be shorter, thirty minutes instead of an hour.", ["meeting"]),
    ("A local zoo welcomed twin snow leopard cubs this spring. Both cubs are healthy and will be shown to visitors in July once they are old enough.", ["cubs"]),
]:
    add("summary", f"Summarize briefly: {text}", {"type": "summary", "max_ratio": 0.8, "mentions": mentions})

for s in ["green apples taste sour", "we walked along the quiet beach at dawn"]:
    add("text-stats", f'Count the words in: "{s}"', num(len(s.split())))
for w in ["elephant", "programming"]:
    add("text-stats", f'How long is the word "{w}" in letters?', num(len(w)))
for w, c in [("assessment", "s"), ("balloon", "l")]:
    add("text-stats", f'Count the letter "{c}" in "{w}".', num(w.count(c)))
for w in ["lived", "tessera"]:
    add("text-stats", f'Write "{w}" backwards.', rx(r"\b" + w[::-1] + r"\b"))

D = datetime.date
WD = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
for d in [D(2021, 9, 11), D(2012, 12, 21), D(2026, 1, 1)]:
    add("dates", f"Which weekday was {d.isoformat()}?", rx(r"(?i)" + WD[d.weekday()]))
for a, b in [(D(2024, 4, 1), D(2024, 5, 15)), (D(2021, 1, 1), D(2022, 1, 1))]:
    add("dates", f"Count the days from {a.isoformat()} to {b.isoformat()}.", num((b - a).days))
d, n = D(2024, 12, 20), 15
r = d + datetime.timedelta(days=n)
add("dates", f"Which date comes {n} days after {d.isoformat()}?", rx(r"\b" + r.isoformat() + r"\b|(?i)" + r.strftime("%B") + r"\s+" + str(r.day) + r"\b"))
add("dates", "Was 1900 a leap year?", rx(r"(?i)^\W*no\b|not a leap"))

for p, pat in [
    ("Does Harbor Lane Books welcome customers on Tuesdays?", r"(?i)yes|tuesday to sunday"),
    ("Who is the founder of Harbor Lane Books?", r"(?i)mira okafor"),
    ("Can I pay with a gift card at Harbor Lane Books, and what values exist?", r"\$10"),
]:
    add("bookshop", p, rx(pat))

with open(__file__.replace("make_dev_set.py", "dev.jsonl"), "w") as f:
    for it in items:
        f.write(json.dumps(it) + "\n")
from collections import Counter
print(len(items), Counter(i["category"] for i in items))
