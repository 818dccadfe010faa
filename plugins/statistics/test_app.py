"""Unit tests of app.py natively, with the Python SDK on the path:
PYTHONPATH=sdk/python python3 -m unittest discover -s plugins/statistics -p 'test_*.py'

Expected values are worked by hand (and agree with a calculator), not
taken from the code under test."""

import unittest

import app
from tessera_sdk import InvalidInput


def figures(question):
    return dict(app.answer(question)[1])


class Exact(unittest.TestCase):
    def test_means_and_medians(self):
        self.assertEqual(figures("What is the mean of 3, 5, 10 and 12?"), {"mean": "7.5"})
        self.assertEqual(figures("Find the median of 7, 1, 4, 9, 2"), {"median": "4"})
        self.assertEqual(figures("median of 1, 2, 3, 4"), {"median": "2.5"})
        self.assertEqual(figures("average of 1, 1 and 2"), {"mean": "4/3 (≈ 1.33333)"})
        self.assertEqual(figures("What is the average of 0.1 and 0.2?"), {"mean": "0.15"})

    def test_spread(self):
        # 2,4,4,4,5,5,7,9: mean 5, squared deviations sum 32, sample variance 32/7.
        self.assertEqual(
            figures("variance and standard deviation of 2, 4, 4, 4, 5, 5, 7, 9"),
            {"sample variance": "32/7 (≈ 4.57143)", "sample standard deviation": "≈ 2.13809"},
        )
        # 1,3: mean 2, deviations 1 and 1, variance 2, stdev √2.
        self.assertEqual(figures("std of 1 and 3"), {"sample standard deviation": "≈ 1.41421"})
        # 0, 2, 4: variance (4+0+4)/2 = 4, stdev exactly 2.
        self.assertEqual(figures("stdev of 0, 2, 4"), {"sample standard deviation": "2"})
        self.assertEqual(figures("range of 15, 3, 27, 8"), {"range": "24"})

    def test_modes_sums_and_extremes(self):
        self.assertEqual(figures("mode of 1, 2, 2, 3, 3, 3"), {"mode": "3"})
        self.assertEqual(figures("most common of 1, 1, 2, 2"), {"mode": "1, 2"})
        self.assertEqual(figures("mode of 4, 5, 6"), {"mode": "none (every value appears once)"})
        self.assertEqual(figures("sum of -1.5, 2 and 1/2"), {"sum": "1"})
        self.assertEqual(figures("smallest and largest of 8, -3, 12"), {"minimum": "-3", "maximum": "12"})

    def test_no_statistic_named_gives_a_summary(self):
        self.assertEqual(
            figures("numbers: 1, 2, 3, 10"),
            {"mean": "4", "median": "2.5", "minimum": "1", "maximum": "10"},
        )

    def test_a_wording_that_changes_a_figure_or_the_count_is_not_kept(self):
        figs = [("mean", "7.5")]
        self.assertTrue(app.kept_figures("The mean of the 4 numbers is 7.5.", figs, 4))
        self.assertTrue(app.kept_figures("The mean is 7.5.", figs, 4))
        self.assertFalse(app.kept_figures("The mean of 3 numbers is 7.5.", figs, 4))
        self.assertFalse(app.kept_figures("The mean is 7.", figs, 4))

    def test_refusals_name_the_problem(self):
        for question, why in [
            ("What is the capital of France?", "no numbers"),
            ("std of 5", "at least two"),
            ("mean of " + "9" * 50, "characters"),
        ]:
            with self.assertRaises(InvalidInput) as caught:
                app.answer(question)
            self.assertIn(why, caught.exception.message)


if __name__ == "__main__":
    unittest.main()
