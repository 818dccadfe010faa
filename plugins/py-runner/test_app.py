"""Unit tests of app.py's logic, natively, with the Python SDK on the path:
PYTHONPATH=sdk/python python3 -m unittest discover -s plugins/py-runner -p 'test_*.py'"""

import unittest

import app


def ask(question):
    code, tree = app.find_code(question)
    return app.answer(*app.run(code, tree))


class Runs(unittest.TestCase):
    # Expected outputs are CPython 3's for the same code.
    def test_prints_like_python(self):
        self.assertEqual(ask("What does this print?\nprint(6 * 7 - 2)"), "40")
        self.assertEqual(ask("What is printed?\nfor i in range(3):\n    print(i * 10)"), "0\n10\n20")
        self.assertEqual(ask("Python:\nprint(sorted([3, 1, 2]), 'x' + 'y' * 2)"), "[1, 2, 3] xyy")
        self.assertEqual(ask("What does this Python evaluate to?\n2 ** 10"), "It prints nothing; its value is 1024")

    def test_exceptions_and_endless_loops_are_answers(self):
        self.assertEqual(ask("What does this print?\nprint('a')\nprint(1 / 0)"), "a\nIt raises ZeroDivisionError: division by zero")
        self.assertIn("did not finish", ask("What does this Python print?\nwhile True:\n    pass"))
        out = ask("What does this Python print?\nfor i in range(100000):\n    print('x' * 100)")
        self.assertIn("output cut", out)
        self.assertLess(len(out), app.MAX_OUTPUT + 100)

    def test_refuses_other_languages_and_questions_without_code(self):
        for q in [
            "What does this JavaScript log?\nconsole.log(7 % 3);",
            "What is logged?\nlet s = 0; s += 1; console.log(s);",
            "What is the capital of France?",
        ]:
            with self.assertRaises(ValueError, msg=q):
                app.find_code(q)


if __name__ == "__main__":
    unittest.main()
