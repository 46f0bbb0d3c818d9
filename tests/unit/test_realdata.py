"""Issue 12, real data: the MovieLens importer (both layouts, on a fixture written here), the
prompt budget, early stopping, the popularity reference and the seen/cold cohorts."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from rgalign import metrics
from rgalign.data.loader import load_dataset
from rgalign.data.movielens import GENRES, import_movielens
from rgalign.data.requests import RequestArrays
from rgalign.models.prompt import CUT_MARKER, PromptFields, build_prompt, cut_text

# ---- the importer ----------------------------------------------------------------------------------

DAY = 86400
T0 = 880000000 - 880000000 % DAY  # a midnight (UTC)
MOVIES = [  # id, title, year, genres
    ("1", "Toy Story", "1995", ["Animation", "Children's", "Comedy"]),
    ("2", "GoldenEye", "1995", ["Action", "Adventure", "Thriller"]),
    ("3", "Four Rooms", "1995", ["Thriller"]),
    ("4", "Get Shorty", "1995", ["Action", "Comedy", "Drama"]),
    ("5", "Copycat", "1995", ["Crime", "Drama", "Thriller"]),
]
USERS = [("1", "24", "M", "technician", "85711"), ("2", "53", "F", "other", "94043"), ("3", "23", "M", "writer", "T8H1N")]
# user, item, rating, ts: user 1 on days 0, 0, 1, 3; user 2 on days 2, 2, 4; user 3 on day 5
RATINGS = [
    ("1", "1", 5, T0 + 100), ("1", "2", 3, T0 + 200), ("1", "3", 4, T0 + DAY + 5), ("1", "4", 2, T0 + 3 * DAY + 9),
    ("1", "5", 5, T0 + 3 * DAY + 10),
    ("2", "1", 4, T0 + 2 * DAY), ("2", "5", 1, T0 + 2 * DAY + 50), ("2", "2", 5, T0 + 4 * DAY + 1),
    ("3", "3", 4, T0 + 5 * DAY), ("3", "4", 4, T0 + 5 * DAY + 1),
    ("2", "3", 4, T0 + 6 * DAY), ("1", "2", 4, T0 + 7 * DAY), ("3", "1", 2, T0 + 8 * DAY), ("2", "4", 5, T0 + 9 * DAY),
]


def write_grouplens(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    lines = []
    for mid, title, year, genres in MOVIES:
        flags = "|".join("1" if g in genres else "0" for g in GENRES)
        lines.append(f"{mid}|{title} ({year})|01-Jan-{year}||http://x|{flags}\n")
    (root / "u.item").write_bytes("".join(lines).encode("latin-1"))
    (root / "u.user").write_text("".join("|".join(u) + "\n" for u in USERS))
    return root


def write_recbole(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                         + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    (root / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                        + "".join(f"{m}\t{t}\t{y}\t{' '.join(g)}\n" for m, t, y, g in MOVIES))
    (root / "ml-100k.user").write_text("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
                                        + "".join("\t".join(u) + "\n" for u in USERS))
    return root


@pytest.mark.parametrize("layout", ["grouplens", "recbole"])
def test_import_movielens_framing(tmp_path, layout):
    src = (write_grouplens if layout == "grouplens" else write_recbole)(tmp_path / "src" / "nested")
    out = import_movielens(tmp_path / "src", tmp_path / "data")  # found below SRC
    ds = load_dataset(out)  # what `rgalign data check` validates
    imp = ds.impressions.set_index(["request_id", "intent_id"])
    # a request = one user's ratings on one day: user 1 has days 0, 1, 3, 7
    assert sorted(r for r in imp.index.get_level_values(0).unique() if r.startswith("1-")) == sorted(
        f"1-{T0 // DAY + d}" for d in (0, 1, 3, 7))
    assert len(ds.impressions) == len(RATINGS)
    # label = rating >= 4
    assert imp.loc[(f"1-{T0 // DAY}", "1"), "label"] == 1 and imp.loc[(f"1-{T0 // DAY}", "2"), "label"] == 0
    # context: titles of the last liked movies strictly before that day, oldest first
    assert imp.loc[(f"1-{T0 // DAY}", "1"), "liked_recent"] == "none"
    assert imp.loc[(f"1-{T0 // DAY + 3}", "4"), "liked_recent"] == "Toy Story (1995); Four Rooms (1995)"
    assert imp.loc[(f"1-{T0 // DAY + 7}", "2"), "liked_recent"] == (
        "Toy Story (1995); Four Rooms (1995); Copycat (1995)")
    wd = imp.loc[(f"1-{T0 // DAY}", "1"), "weekday"]
    assert wd == ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[(T0 // DAY + 3) % 7]  # 1970-01-01 was a Thursday
    # intent text and user features
    texts = dict(zip(ds.intents["intent_id"], ds.intents["text"]))
    assert texts["1"] == "Toy Story (1995) | Animation, Children's, Comedy"
    users = ds.users.set_index("user_id")
    assert users.loc["1", "zip1"] == "8" and users.loc["3", "zip1"] == "T" and int(users.loc["2", "age"]) == 53
    assert set(ds.schema.user_categorical) == {"gender", "occupation", "zip1"}
    # split by time at request level, the last ones are test
    req = ds.impressions.groupby("request_id").agg(ts=("ts", "min"), split=("split", "first")).sort_values("ts")
    assert req["split"].iloc[-1] == "test" and req["split"].iloc[0] == "train"


def test_import_movielens_layouts_agree(tmp_path):
    a = load_dataset(import_movielens(write_grouplens(tmp_path / "g"), tmp_path / "dg"))
    b = load_dataset(import_movielens(write_recbole(tmp_path / "r"), tmp_path / "dr"))
    cols = ["request_id", "user_id", "intent_id", "label", "ts", "weekday", "liked_recent", "split"]
    key = ["request_id", "intent_id"]
    pa = a.impressions[cols].sort_values(key).reset_index(drop=True)
    pb = b.impressions[cols].sort_values(key).reset_index(drop=True)
    assert pa.astype(str).equals(pb.astype(str))
    assert list(a.intents["text"]) == list(b.intents["text"])


def test_import_movielens_refuses_other_folders(tmp_path):
    from rgalign.errors import DataError

    with pytest.raises(DataError, match="no MovieLens-100K files"):
        import_movielens(tmp_path, tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        import_movielens(write_recbole(tmp_path / "r"), tmp_path / "busy")


# ---- the prompt budget -----------------------------------------------------------------------------


def test_cut_text_keeps_the_end_at_a_word_boundary():
    text = "Alien (1979); Heat (1995); Fargo (1996)"
    assert cut_text(text, 100) == text
    cut = cut_text(text, 30)
    assert cut == "... Heat (1995); Fargo (1996)" and len(cut) <= 30
    for n in range(1, len(text)):
        c = cut_text(text, n)
        assert len(c) <= max(n, len(CUT_MARKER)) and c.startswith(CUT_MARKER)
        assert text.endswith(c[len(CUT_MARKER):].lstrip()) or c == CUT_MARKER


def test_prompt_budget_never_drops_a_structured_field():
    from rgalign.models.tokenizer import train_tokenizer
    from rgalign.training.prompt_budget import make_budget

    rng = np.random.default_rng(0)
    words = [f"movie{i} ({1950 + i})" for i in range(300)]
    fields = PromptFields(user_categorical=("gender", "occupation"), user_numeric=("age",),
                          context_categorical=("weekday",), context_text=("liked_recent",))
    raw = [{"gender": "MF"[i % 2], "occupation": f"job{i % 7}", "age": 20 + i % 40, "weekday": "Mon",
            "liked_recent": "; ".join(rng.choice(words, int(rng.integers(1, 5 if i % 10 else 60))))}
           for i in range(300)]
    tok = train_tokenizer([build_prompt(r, fields) for r in raw], vocab_size=400)
    budget, capped = make_budget(tok, {"train": raw, "test": raw[:50]}, fields, cap=64)
    assert budget.max_len <= 64 and budget.text_max_chars and budget.cut["train"] > 0
    for r in raw:
        prompt = build_prompt(r, capped)
        for name in ("gender", "occupation", "age", "weekday"):
            assert f"{name}=" in prompt
        assert prompt.startswith("user: ") and prompt.endswith("query:")
        assert len(tok(prompt)["input_ids"]) <= budget.max_len  # fits: left truncation cuts nothing
    # the caps travel with the prompt fields (serving builds the same prompts)
    again = PromptFields.from_dict(capped.to_dict())
    assert again == capped and build_prompt(raw[9], again) == build_prompt(raw[9], capped)
    assert CUT_MARKER in build_prompt(raw[0], capped) or CUT_MARKER in build_prompt(raw[10], capped)


def test_prompt_budget_cuts_nothing_when_prompts_fit():
    from rgalign.models.tokenizer import train_tokenizer
    from rgalign.training.prompt_budget import make_budget

    fields = PromptFields(user_categorical=("tier",), context_text=("recent",))
    raw = [{"tier": "gold", "recent": f"checked order {i}"} for i in range(50)]
    tok = train_tokenizer([build_prompt(r, fields) for r in raw], vocab_size=300)
    budget, capped = make_budget(tok, {"train": raw}, fields, cap=128)
    assert budget.text_max_chars == {} and budget.cut == {"train": 0} and capped == fields


# ---- early stopping --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_requests():
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.data.requests import build_requests
    from rgalign.data.synth import tiny_dataset

    ds = tiny_dataset()
    enc = FeatureEncoders.fit(ds)
    return enc, {s: build_requests(ds, enc, s) for s in ("train", "valid", "test")}


def _baseline(enc):
    from rgalign.models.baseline import AutoIntMoE, BaselineConfig

    return AutoIntMoE(BaselineConfig(cardinalities=tuple(enc.cardinalities), n_numeric=len(enc.numeric_fields),
                                     n_intents=enc.num_intents, field_dim=8, dim=16, expert_hidden=32))


def _valid_gauc(model, arrays):
    from rgalign.training.evaluate import baseline_forward, slate_logits

    logits = slate_logits(model, baseline_forward, arrays, None)
    m = arrays.mask
    return metrics.gauc(arrays.labels[m], logits[m], np.broadcast_to(arrays.groups[:, None], m.shape)[m])


def test_early_stopping_restores_the_best_check_weights(tiny_requests, monkeypatch):
    from rgalign.training import loops
    from rgalign.training.distributed import DistInfo
    from rgalign.training.evaluate import baseline_forward

    enc, sp = tiny_requests
    model = _baseline(enc)
    res = loops.train_ranker(model, baseline_forward, sp["train"], sp["valid"], epochs=30, batch_size=32, lr=3e-3,
                             weight_decay=0.0, alpha_bce=0.5, seed=0, dist=DistInfo(), quiet=True, patience=2,
                             min_check_steps=2)
    assert res.stopped_early and res.checks < 30 * 4
    # the weights in the model are those of the best check: their valid GAUC is the best one
    assert _valid_gauc(model, sp["valid"]) == pytest.approx(res.best_valid_gauc, abs=1e-9)
    gaucs = [r["valid_gauc"] for r in res.log.rows if "valid_gauc" in r]
    assert len(gaucs) == res.checks and max(gaucs) <= res.best_valid_gauc + 1e-12
    # stopped after `patience` checks without improvement
    best_at = res.best_epoch
    assert res.checks - best_at == 2 or (best_at == 0 and res.checks == 2)


def test_early_stopping_keeps_the_start_when_training_only_hurts(tiny_requests):
    from rgalign.training import loops
    from rgalign.training.distributed import DistInfo
    from rgalign.training.evaluate import baseline_forward

    enc, sp = tiny_requests
    model = _baseline(enc)
    with torch.no_grad():
        model.gate.fill_(1.0)
    start = copy.deepcopy(model.state_dict())
    # labels scrambled on the training split: whatever it learns does not carry to valid
    train = sp["train"].subset(np.arange(len(sp["train"])))
    rng = np.random.default_rng(1)
    train.labels = np.where(train.mask, rng.permutation(train.labels.ravel()).reshape(train.labels.shape), 0)
    before = _valid_gauc(model, sp["valid"])
    res = loops.train_ranker(model, baseline_forward, train, sp["valid"], epochs=10, batch_size=32, lr=5e-2,
                             weight_decay=0.0, alpha_bce=0.5, seed=0, dist=DistInfo(), quiet=True, patience=2,
                             min_check_steps=2)
    assert res.best_valid_gauc >= before - 1e-12
    if res.best_epoch == 0:
        for k, v in model.state_dict().items():
            assert torch.equal(v, start[k]), k


def test_a_gain_within_its_standard_error_keeps_the_start(tiny_requests):
    """``min_gain_se``: the best check replaces the starting weights only when its valid GAUC gain
    is more than that many standard errors of the gain. The same training, the same seed: with
    the gate at 0 the best check is kept; with the gate out of reach the start is."""
    from rgalign.training import loops
    from rgalign.training.distributed import DistInfo
    from rgalign.training.evaluate import baseline_forward

    enc, sp = tiny_requests
    kw = dict(epochs=6, batch_size=32, lr=3e-3, weight_decay=0.0, alpha_bce=0.5, seed=0, dist=DistInfo(), quiet=True,
              patience=2, min_check_steps=2)
    torch.manual_seed(0)
    trained = _baseline(enc)
    free = loops.train_ranker(trained, baseline_forward, sp["train"], sp["valid"], min_gain_se=0.0, **kw)
    assert free.best_epoch > 0 and not free.start_kept and free.best_valid_gauc > free.start_valid_gauc
    assert free.gain_se > 0  # measured on the best check
    torch.manual_seed(0)
    gated = _baseline(enc)
    start = copy.deepcopy(gated.state_dict())
    res = loops.train_ranker(gated, baseline_forward, sp["train"], sp["valid"], min_gain_se=1e9, **kw)
    assert res.start_kept and res.best_epoch == 0 and res.checks == free.checks
    assert res.best_valid_gauc == res.start_valid_gauc == pytest.approx(free.start_valid_gauc)
    assert res.gain_se == pytest.approx(free.gain_se)  # the same best check, found and then refused
    assert res.gain == pytest.approx(free.best_valid_gauc - free.start_valid_gauc) == pytest.approx(free.gain)
    for k, v in gated.state_dict().items():
        assert torch.equal(v, start[k]), k
    assert _valid_gauc(gated, sp["valid"]) == pytest.approx(res.start_valid_gauc, abs=1e-12)


# ---- popularity and cohorts ------------------------------------------------------------------------


def _arrays(shown, labels, users, groups=None) -> RequestArrays:
    shown = np.asarray(shown, dtype=np.int64)
    r = len(shown)
    return RequestArrays(
        request_ids=np.array([f"r{i}" for i in range(r)], dtype=object), user_ids=np.array(users, dtype=object),
        ts=np.arange(r, dtype=np.int64), cat=np.zeros((r, 1), np.int64), num=np.zeros((r, 0), np.float32),
        raw=[{} for _ in range(r)], shown=shown, labels=np.asarray(labels, dtype=np.float32), mask=shown >= 0,
        groups=np.array(groups or users, dtype=object))


def test_popularity_reference_against_a_hand_computation():
    from rgalign.training.evaluate import popularity_metrics, popularity_scores

    train = _arrays([[0, 1, 2], [0, 1, -1], [0, 2, -1]], [[1, 0, 0], [1, 1, 0], [0, 1, 0]], ["a", "b", "c"])
    # intent 0: 2 likes / 3 shows, 1: 1/2, 2: 1/2, 3: never shown; overall 4/7; prior 10
    p = 4 / 7
    want = [(2 + 10 * p) / 13, (1 + 10 * p) / 12, (1 + 10 * p) / 12, p]
    np.testing.assert_allclose(popularity_scores(train, 4), want)
    np.testing.assert_allclose(metrics.smoothed_like_rate([0, 0, 1], [1, 0, 1], 2, prior=2.0),
                               [(1 + 2 * 2 / 3) / 4, (1 + 2 * 2 / 3) / 3])
    # the test split scored by it: user d sees 0 (liked), 3 (not), 1 (not)
    test = _arrays([[0, 3, 1], [2, 1, -1]], [[1, 0, 0], [0, 1, 0]], ["d", "a"])
    m = popularity_metrics(train, test, 4, k=1)
    # user d: pos 0 (0.590) over 3 (0.571) and 1 (0.559): AUC 1; user a: pos 1 (0.559) vs 2 (0.559): tie 0.5
    assert m["gauc"] == pytest.approx((1.0 * 3 + 0.5 * 2) / 5)
    assert m["error_rate"] == pytest.approx(0.5)  # d's top shown is liked; a's top (first of a tie) is not


def test_cohort_masks_and_gauc():
    from rgalign.training.evaluate import cohort_masks, metrics_from_scores

    train = _arrays([[0, 1], [1, 2]], [[1, 0], [0, 1]], ["a", "b"])
    test = _arrays([[0, 3, 1], [2, 4, -1]], [[1, 0, 0], [0, 1, 0]], ["a", "z"])
    c = cohort_masks(test, train)
    np.testing.assert_array_equal(c["seen_intents"], [[True, False, True], [True, False, False]])
    np.testing.assert_array_equal(c["cold_intents"], [[False, True, False], [False, True, False]])
    np.testing.assert_array_equal(c["seen_users"], [[True, True, True], [False, False, False]])
    np.testing.assert_array_equal(c["cold_users"], [[False, False, False], [True, True, False]])
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    out = metrics_from_scores(test, logits, np.zeros((2, 5)), k=1, cohorts=c)
    assert out["gauc_seen_users"] == pytest.approx(1.0) and out["gauc_cold_users"] == pytest.approx(1.0)
    assert np.isnan(out["gauc_cold_intents"])  # one label class per user among cold intents
    assert out["share_cold_intents"] == pytest.approx(2 / 5) and out["share_seen_users"] == pytest.approx(3 / 5)
    # a cohort's GAUC is the GAUC of its impressions alone
    probs = 1 / (1 + np.exp(-logits))
    sel = c["seen_intents"]
    assert out["gauc_seen_intents"] == pytest.approx(
        metrics.gauc(test.labels[sel], probs[sel], np.broadcast_to(test.groups[:, None], sel.shape)[sel]))


def test_ranker_checkpoints_from_before_issue_12_load(tmp_path, tiny_requests):
    from safetensors.torch import load_file, save_file

    from rgalign.models.baseline import AutoIntMoE

    enc, sp = tiny_requests
    model = _baseline(enc).eval()
    model.save(tmp_path / "r")
    state = load_file(str(tmp_path / "r" / "model.safetensors"))
    # the older layout: intent_emb / intent_bias, no gate, no cold ids
    old = {{"intent_ids.emb.weight": "intent_emb.weight", "intent_ids.bias": "intent_bias"}.get(k, k): v
           for k, v in state.items() if k not in ("gate", "intent_ids.cold_emb", "intent_ids.cold_bias", "intent_ids.known")}
    save_file(old, str(tmp_path / "r" / "model.safetensors"))
    again = AutoIntMoE.load(tmp_path / "r")
    cat, num = torch.from_numpy(sp["test"].cat[:4]), torch.from_numpy(sp["test"].num[:4])
    torch.testing.assert_close(again.score_all(cat, num), model.score_all(cat, num))
