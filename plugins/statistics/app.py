"""statistics: the mean, median, mode, range, sum, minimum, maximum,
variance and standard deviation of the numbers in a question, computed
exactly with fractions (Python's `fractions` and `statistics` modules,
inside the sandbox). The model only words the answer; when its wording
drops a figure, the plain figures are the answer.

A question with no numbers is refused with invalid-input, so that
tessera/auto falls back to the next candidate.
"""

import math
import re
import statistics
from fractions import Fraction

from tessera_sdk import (
    Expert,
    InvalidInput,
    Message,
    ModelError,
    LimitExceeded,
    Request,
    Response,
    Sampling,
    export_expert,
    log,
    model,
)

MAX_NUMBERS = 10_000
MAX_DIGITS = 40
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:/\d+)?(?![\w.])")

# What people call each statistic, in the order answers list them.
ASKED = [
    ("mean", ("mean", "average", "avg")),
    ("median", ("median", "middle value")),
    ("mode", ("mode", "most common", "most frequent")),
    ("range", ("range", "spread")),
    ("sum", ("sum", "total", "add up", "added")),
    ("minimum", ("minimum", "min", "smallest", "lowest")),
    ("maximum", ("maximum", "max", "largest", "biggest", "highest")),
    ("variance", ("variance",)),
    ("standard deviation", ("standard deviation", "std dev", "stdev", "std", "sd")),
]


def numbers(question):
    """The numbers in a question, as exact fractions."""
    found = []
    for token in NUMBER.findall(question):
        if len(token) > MAX_DIGITS:
            raise InvalidInput(f"{token[:20]}… has more than {MAX_DIGITS} characters; use shorter numbers")
        found.append(Fraction(token))
        if len(found) > MAX_NUMBERS:
            raise InvalidInput(f"more than {MAX_NUMBERS} numbers; send fewer")
    return found


def asked(question):
    """The statistics a question asks for (all of the common ones when it
    names none)."""
    lower = question.lower()
    words = set(re.findall(r"[a-z]+", lower))
    wanted = []
    for name, phrases in ASKED:
        if any((p in lower) if " " in p else (p in words) for p in phrases):
            wanted.append(name)
    return wanted or ["mean", "median", "minimum", "maximum"]


def show(value):
    """An exact number as people write it: 7, 2.75, or 1/3 (≈ 0.333333)."""
    if isinstance(value, float):
        return f"≈ {value:.6g}"
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:  # a terminating decimal: print it exactly
        digits = 0
        scaled = value
        while scaled.denominator != 1:
            scaled *= 10
            digits += 1
        sign = "-" if scaled < 0 else ""
        text = str(abs(scaled.numerator)).rjust(digits + 1, "0")
        return f"{sign}{text[:-digits]}.{text[-digits:]}"
    return f"{value.numerator}/{value.denominator} (≈ {float(value):.6g})"


def sqrt(value):
    """√value: exact when it is a square of a fraction, else a float."""
    n, d = value.numerator, value.denominator
    rn, rd = math.isqrt(n), math.isqrt(d)
    if rn * rn == n and rd * rd == d:
        return Fraction(rn, rd)
    return math.sqrt(value)


def compute(name, xs):
    """One statistic of `xs` (fractions), exactly where it can be."""
    if name == "mean":
        return statistics.mean(xs)
    if name == "median":
        return Fraction(statistics.median(xs))
    if name == "mode":
        counts = {}
        for x in xs:
            counts[x] = counts.get(x, 0) + 1
        top = max(counts.values())
        if top == 1 and len(xs) > 1:
            return "none (every value appears once)"
        return ", ".join(show(x) for x in sorted(x for x, c in counts.items() if c == top))
    if name == "range":
        return max(xs) - min(xs)
    if name == "sum":
        return sum(xs, Fraction(0))
    if name == "minimum":
        return min(xs)
    if name == "maximum":
        return max(xs)
    if len(xs) < 2:
        raise InvalidInput(f"the sample {name} needs at least two numbers")
    variance = statistics.variance(xs)  # sample variance, exact on fractions
    return variance if name == "variance" else sqrt(variance)


def answer(question):
    """(plain answer, figures) for a question; InvalidInput when it has no numbers."""
    xs = numbers(question)
    if not xs:
        raise InvalidInput("no numbers found: ask like \"What is the mean of 3, 5, 10?\"")
    figures = []
    for name in asked(question):
        value = compute(name, xs)
        text = value if isinstance(value, str) else show(value)
        if name in ("variance", "standard deviation"):
            name = f"sample {name}"
        figures.append((name, text))
    plain = "; ".join(f"{name}: {text}" for name, text in figures)
    return f"Of {len(xs)} numbers, {plain}.", figures


def kept_figures(wording, figures, count):
    """Whether the model's wording states every figure and the count as
    computed (a small model miscounts and recomputes)."""
    counts = re.findall(r"(?<![\d.])\d+(?= numbers| values| data)", wording)
    if any(int(c) != count for c in counts):
        return False
    return all(text.split(" (")[0] in wording for _, text in figures)


class Statistics(Expert):
    def handle(self, req: Request) -> Response:
        question = req.require_user_message()
        plain, figures = answer(question)
        count = len(numbers(question))
        log.info("computed", figures=len(figures))
        content, usage = plain, None
        try:
            wording = model.chat(
                [
                    Message.system(
                        "You state statistics results. Reply with one short sentence that gives every result "
                        "exactly as written. Do not recompute, and do not list the numbers."
                    ),
                    Message.user(f"Question: {question}\nResults: {plain}"),
                ],
                Sampling.greedy().replace(max_tokens=64),
            )
            usage = wording.usage
            if kept_figures(wording.text, figures, count):
                content = wording.text.strip()
            else:
                log.warn("the model's wording dropped a figure; answering plainly")
        except (ModelError, LimitExceeded) as e:
            log.warn(f"no wording from the model ({e.message}); answering plainly")
        resp = Response(content).with_confidence(1.0)
        if usage is not None:
            resp.with_usage(usage)
        for name, text in figures:
            resp.with_metadata(name, text)
        return resp


WitWorld = export_expert(Statistics)
