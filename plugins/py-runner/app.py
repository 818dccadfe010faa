"""Python runner: answers "what does this code print?" by running the code
in CPython, compiled into this component by componentize-py.

What the snippet can reach is the interpreter and its standard library:
the component gets no files, no network and no clock from the host, so
`open`, sockets and the like fail inside it. A snippet runs at most
MAX_STEPS lines (counted with sys.settrace); the host's deadline and memory
limit bound the rest. The answer is what it printed (cut at MAX_OUTPUT
bytes) or, when it printed nothing, the value of its last expression, as
the Python prompt shows it. An uncaught exception is part of the answer
("It raises ZeroDivisionError: division by zero"). Code that looks like
JavaScript, or a question with no code, is refused with invalid-input so
that tessera/auto falls back to the next candidate.
"""

import ast
import io
import sys

from tessera_sdk import Expert, InvalidInput, Request, Response, export_expert, log

MAX_CODE = 32 * 1024
MAX_OUTPUT = 16 * 1024
MAX_STEPS = 1_000_000


class TooLong(Exception):
    """The snippet ran more than MAX_STEPS lines."""


class CappedOutput(io.StringIO):
    """stdout that keeps at most MAX_OUTPUT characters."""

    def __init__(self):
        super().__init__()
        self.cut = False

    def write(self, text):
        room = MAX_OUTPUT - self.tell()
        if len(text) > room:
            self.cut = True
            text = text[: max(room, 0)]
        return super().write(text)


def find_code(question):
    """The snippet in a question: a fenced block, else what follows the
    first line, else what follows the first colon."""
    if "```" in question:
        block = question.split("```", 2)[1] if question.count("```") >= 2 else ""
        first, _, rest = block.partition("\n")
        code = rest if first.strip().isidentifier() or not first.strip() else block
    elif "\n" in question:
        code = question.split("\n", 1)[1]
    elif ":" in question:
        code = question.split(":", 1)[1]
    else:
        code = ""
    code = code.strip("\n")
    if not code.strip():
        raise ValueError("no code found: put the snippet after the question, on its own lines or in a ``` block")
    if len(code) > MAX_CODE:
        raise ValueError(f"the snippet is {len(code)} characters; at most {MAX_CODE}")
    lower = question.lower()
    says_python = "python" in lower
    says_other = any(w in lower for w in ("javascript", "node", "typescript", "rust", "ruby", "bash", "sql"))
    if says_other and not says_python:
        raise ValueError("this is not Python; this expert runs Python only")
    if not says_python and ("console." in code or "=>" in code or ";\n" in code or code.rstrip().endswith(";")):
        raise ValueError("this looks like JavaScript; this expert runs Python only")
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        if says_python:
            return code, None
        raise ValueError(f"this is not Python ({e.msg}, line {e.lineno}); say \"Python\" in the question to run it anyway")
    return code, tree


def run(code, tree):
    """Run a snippet; returns (output, cut, value, error)."""
    out = CappedOutput()
    steps = 0

    def tracer(frame, event, arg):
        nonlocal steps
        if event == "line":
            steps += 1
            if steps > MAX_STEPS:
                raise TooLong()
        return tracer

    env = {"__name__": "__main__"}
    value = None
    error = None
    old_stdout = sys.stdout
    sys.stdout = out
    sys.settrace(tracer)
    try:
        if tree is None:
            tree = ast.parse(code)
        last = tree.body[-1] if tree.body else None
        if isinstance(last, ast.Expr):
            body = ast.Module(body=tree.body[:-1], type_ignores=[])
            exec(compile(body, "<snippet>", "exec"), env)
            result = eval(compile(ast.Expression(last.value), "<snippet>", "eval"), env)
            if result is not None:
                value = repr(result)
        else:
            exec(compile(tree, "<snippet>", "exec"), env)
    except TooLong:
        error = f"it did not finish within {MAX_STEPS:,} steps"
    except BaseException as e:  # the snippet's own exceptions are its answer
        error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    finally:
        sys.settrace(None)
        sys.stdout = old_stdout
    return out.getvalue(), out.cut, value, error


def answer(output, cut, value, error):
    text = output
    if cut:
        text += f"[output cut at {MAX_OUTPUT} characters]\n"
    if error is not None:
        text += ("It stopped: " if error.startswith("it did not") else "It raises ") + error + "\n"
    elif not output:
        text += f"It prints nothing; its value is {value}\n" if value is not None else "It prints nothing.\n"
    return text.rstrip()


class PyRunner(Expert):
    def handle(self, req: Request) -> Response:
        question = req.require_user_message()
        try:
            code, tree = find_code(question)
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        output, cut, value, error = run(code, tree)
        log.info("ran", chars=len(code), error=error or "")
        resp = Response(answer(output, cut, value, error)).with_confidence(1.0).with_metadata("language", "python")
        if error is not None:
            resp.with_metadata("error", error)
        return resp


WitWorld = export_expert(PyRunner)
