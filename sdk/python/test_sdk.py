"""Unit tests of the Python SDK in plain CPython (no component):
PYTHONPATH=sdk/python python3 -m unittest discover -s sdk/python -p 'test_*.py'"""

import unittest

import tessera_sdk as t
from tessera_sdk import _errors


class Types(unittest.TestCase):
    def test_requests_find_the_last_user_message(self):
        req = t.Request([t.Message.system("be brief"), t.Message.user("first"), t.Message.assistant("ok"), t.Message.user("second")])
        self.assertEqual(req.require_user_message(), "second")
        with self.assertRaises(t.InvalidInput) as caught:
            t.Request([t.Message.system("only a system prompt")]).require_user_message()
        self.assertIn("no user message", caught.exception.message)

    def test_metadata_keeps_order_and_repeats(self):
        req = t.Request([t.Message.user("x")], metadata=[("answer", "a"), ("schema", "{}"), ("answer", "b")])
        self.assertEqual(req.get_metadata("schema"), "{}")
        self.assertEqual(list(req.metadata_all("answer")), ["a", "b"])
        self.assertIsNone(req.get_metadata("missing"))

    def test_sampling_is_copied_not_changed(self):
        base = t.Sampling()
        tuned = base.replace(max_tokens=64, stop=["\n"])
        self.assertIsNone(base.max_tokens)
        self.assertEqual(tuned.max_tokens, 64)
        self.assertEqual(tuned.stop, ("\n",))
        self.assertEqual(t.Sampling.greedy().temperature, 0.0)

    def test_responses_chain(self):
        done = t.Completion("hi", t.FinishReason.LENGTH, t.Usage(3, 4))
        resp = t.Response.from_completion(done).with_confidence(0.5).with_metadata("k", "v")
        self.assertEqual((resp.content, resp.usage, resp.confidence, resp.metadata), ("hi", t.Usage(3, 4), 0.5, [("k", "v")]))
        self.assertTrue(done.was_truncated)
        self.assertEqual(t.Usage(1, 2) + t.Usage(10, 20), t.Usage(11, 22))


class Errors(unittest.TestCase):
    def test_wit_errors_become_the_matching_exception(self):
        # Stand-ins shaped like the generated bindings' cases.
        class Error_Denied:
            value = "model not granted"

        class Error_Strange:
            value = "?"

        err = _errors.from_wit(Error_Denied())
        self.assertIsInstance(err, t.Denied)
        self.assertEqual(err.message, "model not granted")
        self.assertIsInstance(_errors.from_wit(Error_Strange()), t.Internal)

    def test_every_case_has_its_exception(self):
        cases = {cls.case for cls in (t.InvalidInput, t.Denied, t.LimitExceeded, t.ModelError, t.Internal)}
        self.assertEqual(cases, set(_errors._WIT_NAMES))


class Export(unittest.TestCase):
    def test_export_makes_a_world_class_natively(self):
        class Echo(t.Expert):
            def handle(self, req):
                return t.Response(req.require_user_message())

        world = t.export_expert(Echo)
        self.assertEqual(world.__name__, "WitWorld")
        self.assertTrue(callable(world().handle) and callable(world().describe))
        self.assertEqual(Echo().handle(t.Request.from_prompt("hi")).content, "hi")
        manifest = t.ExpertInfo("echo", "0.1.0", "Echoes.")
        self.assertIs(Echo().describe(manifest), manifest)


if __name__ == "__main__":
    unittest.main()
