"""Evaluation: the language-model helpers every scorer shares, multiple-choice scoring, greedy generation, suite formats and the base-model score cache."""
