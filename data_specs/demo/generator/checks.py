"""Nothing overlaps that was not planted: the planted list is the whole truth."""

from __future__ import annotations

from collections import defaultdict

from overlap import answer_grams, eval_grams, pipeline_words, shares_ngram
from rendering import TEXT, jaccard, shingles
from settings import NGRAM


def check(files: dict[str, list], planted: list[dict]) -> tuple[dict, list[dict]]:
    """Fail if anything overlaps that was not planted; return overlap counts for the record
    and the unplanted rows whose text shares a 13-gram with an eval item's gold answer."""
    flagged = {(p["source"], p["row"]) for p in planted}
    train = [
        (name, i + 1, TEXT[name](row))
        for name in ("instructions", "boolq", "knowledge", "math")
        for i, row in enumerate(files[name])
    ]
    # near/exact duplicates: shingle index over every training row
    index: dict = defaultdict(set)
    for k, (_, _, text) in enumerate(train):
        for s in shingles(text):
            index[s].add(k)
    pairs: dict = defaultdict(int)
    for members in index.values():
        if len(members) > 1 and len(members) < 200:  # very common shingles are template text
            ms = sorted(members)
            for a in range(len(ms)):
                for b in range(a + 1, len(ms)):
                    pairs[(ms[a], ms[b])] += 1
    worst = 0.0
    for (a, b), _ in pairs.items():
        if (train[a][0], train[a][1]) in flagged or (train[b][0], train[b][1]) in flagged:
            continue
        score = jaccard(train[a][2], train[b][2])
        worst = max(worst, score)
        assert score < 0.7, (
            f"unplanted near duplicate: {train[a][:2]} ~ {train[b][:2]} ({score:.2f})"
        )
    # contamination: 13-grams shared with eval prompts (ignoring boilerplate n-grams)
    leaks = 0
    for name, eval_file in (
        ("knowledge", "knowledge_eval"),
        ("boolq", "boolq_eval"),
        ("math", "math_eval"),
    ):
        grams = eval_grams(name, files[eval_file])
        for source, row, text in train:
            if shares_ngram(text, grams):
                leaks += 1
                assert (source, row) in flagged, f"unplanted eval overlap: {source} row {row}"
    # incidental: training rows (not planted) sharing a 13-gram with an eval answer
    incidental = []
    suite_of = {"knowledge": "knowledge_mc", "boolq": "boolq_mc", "math": "math_gen"}
    for name, eval_file in (("boolq", "boolq_eval"), ("math", "math_eval")):
        grams = answer_grams(name, files[eval_file])
        for source, row, text in train:
            if (source, row) in flagged:
                continue
            w = pipeline_words(text)
            hits = {
                j for i in range(len(w) - NGRAM + 1) for j in grams.get(tuple(w[i : i + NGRAM]), ())
            }
            if hits:
                of = {"file": eval_file, "rows": sorted(hits)}
                incidental.append(
                    {
                        "kind": "answer_13gram",
                        "source": source,
                        "row": row,
                        "suite": suite_of[name],
                        "of": of,
                    }
                )
    stats = {"max_unplanted_jaccard": round(worst, 3), "rows_with_eval_13gram": leaks}
    return stats, incidental


# ---------------------------------------------------------------- writing
