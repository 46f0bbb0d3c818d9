"""RGA stages 3-5 as functions (rgalign.training.rga): Best-of-N candidates and their rewards under
the frozen QE ranker, DPO pairs and loss, batched log-probabilities, InfoNCE, frozen-model guards.
Hand-computed numbers are written out in the tests."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rgalign import metrics
from rgalign.errors import ConfigError, TrainError
from rgalign.models.losses import listnet_loss
from rgalign.models.prompt import build_prompt
from tiny import TINY_FIELDS, tiny_encoded, tiny_kb, tiny_qe_ranker, tiny_reasoner, tiny_requests
from rgalign.models.tokenizer import encode_pairs, encode_prompts
from rgalign.training import rga

R, S, N = 6, 5, 50


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reasoner():
    return tiny_reasoner(seed=0)


@pytest.fixture(scope="module")
def kb_texts() -> list[str]:
    return tiny_kb(N)[1]


@pytest.fixture(scope="module")
def requests():
    return tiny_requests(R, seed=3)


@pytest.fixture(scope="module")
def prompts(requests) -> list[str]:
    return [build_prompt(r, TINY_FIELDS) for r in requests]


@pytest.fixture(scope="module")
def ranker(reasoner, kb_texts):
    m = tiny_qe_ranker(n_intents=N, d_query=reasoner.config.d_query, text_dim=reasoner.hidden_size)
    m.set_intent_text_emb(reasoner.encode_texts(kb_texts))
    return m


@pytest.fixture(scope="module")
def slate(requests):
    """cat, num, shown (R, S), labels, mask: row 1 has two padded slots, row 4 has no click."""
    cat, num = tiny_encoded(requests)
    gen = torch.Generator().manual_seed(7)
    shown = torch.stack([torch.randperm(N, generator=gen)[:S] for _ in range(R)])
    labels = torch.zeros(R, S, dtype=torch.long)
    labels[0, 2] = labels[1, 0] = labels[2, 4] = labels[3, 1] = labels[3, 3] = labels[5, 0] = 1
    mask = torch.ones(R, S, dtype=torch.long)
    mask[1, 3:] = 0
    return cat, num, shown, labels, mask


class _StubGenerator:
    """Stands in for a reasoner whose samples are fixed: duplicates, case variants, empty."""

    def __init__(self, samples: list[str]):
        self.samples = samples
        self.calls: list[dict] = []

    def generate_query(self, prompts, tokenizer=None, n=4, **kw):
        self.calls.append({"prompts": list(prompts), "n": n, **kw})
        return [list(self.samples[:n]) for _ in prompts]


# ---- DPO loss -----------------------------------------------------------------------------------


def test_dpo_loss_equals_hand_computation():
    # beta 0.1; pair 1: (pc - rc) - (pr - rr) = (-1 + 1.5) - (-3 + 2) = 1.5 -> z = 0.15
    #           pair 2: (-2 + 1.5) - (-1 + 2) = -1.5 -> z = -0.15
    # loss = mean(log(1 + e^-0.15), log(1 + e^0.15)) = mean(0.6209570, 0.7709570) = 0.6959570
    pc = torch.tensor([-1.0, -2.0], requires_grad=True)
    pr = torch.tensor([-3.0, -1.0], requires_grad=True)
    rc = torch.tensor([-1.5, -1.5], requires_grad=True)
    rr = torch.tensor([-2.0, -2.0], requires_grad=True)
    loss, stats = rga.dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert loss.item() == pytest.approx(0.6959570, abs=1e-6)
    assert loss.item() == pytest.approx((math.log1p(math.exp(-0.15)) + math.log1p(math.exp(0.15))) / 2, abs=1e-7)
    assert stats["reward_accuracy"] == pytest.approx(0.5)
    assert stats["chosen_reward"] == pytest.approx((0.05 - 0.05) / 2, abs=1e-7)  # beta * (pc - rc)
    assert stats["rejected_reward"] == pytest.approx((-0.1 + 0.1) / 2, abs=1e-7)  # beta * (pr - rr)
    assert stats["reward_margin"] == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    # d loss / d pc_i = -beta * sigmoid(-z_i) / 2: sigmoid(-0.15) = 0.4625702, sigmoid(0.15) = 0.5374298
    torch.testing.assert_close(pc.grad, torch.tensor([-0.1 * 0.4625702 / 2, -0.1 * 0.5374298 / 2]))
    assert rc.grad is None and rr.grad is None  # the reference is a constant


def test_dpo_loss_rejects_mismatched_shapes():
    with pytest.raises(ConfigError):
        rga.dpo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))


# ---- Best-of-N ----------------------------------------------------------------------------------


def test_best_of_n_argmax_argmin_and_ties_to_lowest_index():
    rewards = torch.tensor([
        [0.1, 0.9, 0.3, 0.9],  # tie at the max -> 1; min at 0
        [2.0, 2.0, 2.0, 2.0],  # all tie -> best 0, worst 0, margin 0
        [-1.0, -3.0, 5.0, -3.0],  # tie at the min -> 1
    ])
    best, worst, margin = rga.best_of_n(rewards)
    assert best.tolist() == [1, 0, 2]
    assert worst.tolist() == [0, 0, 1]
    torch.testing.assert_close(margin, torch.tensor([0.8, 0.0, 8.0]))
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(64, 8, generator=gen)
    b, w, _ = rga.best_of_n(r)
    assert torch.equal(r[torch.arange(64), b], r.max(dim=1).values)
    assert torch.equal(r[torch.arange(64), w], r.min(dim=1).values)
    with pytest.raises(TrainError):
        rga.best_of_n(torch.tensor([[0.0, float("nan")]]))


# ---- candidates ---------------------------------------------------------------------------------


def test_candidate_queries_dedups_and_fills_from_kb_by_prior(kb_texts):
    stub = _StubGenerator(["Where is my parcel", "where is  MY parcel", "", "Refund me"])
    prior = torch.zeros(2, N)
    prior[0, [10, 3, 0]] = torch.tensor([3.0, 2.0, 1.0])  # KB order for request 0: 10, 3, 0, 1, 2...
    prior[1, 7] = 5.0
    pools = rga.candidate_queries(stub, None, ["p0", "p1"], kb_texts, prior, n=6, n_sampled=4, seed=11)
    assert stub.calls[0]["n"] == 4 and stub.calls[0]["seed"] == 11
    # 4 samples give 2 distinct non-empty ones, so 4 KB texts fill the pool; KB intent 0 is
    # "Where is my parcel" itself, already in the pool, so intents 1 and 2 come after it
    assert kb_texts[0] == "Where is my parcel"
    assert pools[0] == ["Where is my parcel", "Refund me", kb_texts[10], kb_texts[3], kb_texts[1], kb_texts[2]]
    assert pools[1][:3] == ["Where is my parcel", "Refund me", kb_texts[7]]
    for pool in pools:
        assert len(pool) == 6 and len({" ".join(t.split()).casefold() for t in pool}) == 6


def test_candidate_queries_skips_kb_text_equal_to_a_sample(kb_texts):
    stub = _StubGenerator([kb_texts[5].upper()])
    prior = torch.zeros(1, N)
    prior[0, 5], prior[0, 6] = 2.0, 1.0
    pools = rga.candidate_queries(stub, None, ["p"], kb_texts, prior, n=3, n_sampled=1)
    assert pools == [[kb_texts[5].upper(), kb_texts[6], kb_texts[0]]]


def test_candidate_queries_pads_only_when_kb_is_too_small():
    stub = _StubGenerator([])
    pools = rga.candidate_queries(stub, None, ["p"], ["a", "b"], torch.tensor([[0.0, 1.0]]), n=4, n_sampled=0)
    assert pools == [["b", "a", "a", "a"]]
    assert stub.calls == []  # nothing to sample
    with pytest.raises(ConfigError):
        rga.candidate_queries(stub, None, ["p"], ["a", "b"], torch.zeros(2, 2), n=2)  # prior rows != prompts
    with pytest.raises(ConfigError):
        rga.candidate_queries(stub, None, ["p"], ["a", "b"], None, n=2, n_sampled=3)


def test_candidate_queries_with_the_reasoner(reasoner, prompts, kb_texts, ranker, slate):
    cat, num, *_ = slate
    prior = ranker.score_all(cat, num, reasoner.encode_prompts(prompts)).detach()
    top = prior.argsort(dim=1, descending=True)
    kw = dict(n=8, max_new_tokens=8, seed=3, batch_size=4)  # two generate chunks
    pools = rga.candidate_queries(reasoner, reasoner.tokenizer, prompts, kb_texts, prior, **kw)
    assert pools == rga.candidate_queries(reasoner, reasoner.tokenizer, prompts, kb_texts, prior, **kw)
    kb = set(kb_texts)
    for i, pool in enumerate(pools):
        assert len(pool) == 8
        assert len({" ".join(t.split()).casefold() for t in pool}) == 8
        assert sum(t in kb for t in pool) >= 4  # default split: half sampled, half KB
        assert kb_texts[int(top[i, 0])] in pool  # the reward model's favourite intent is a candidate
    # no prior: KB candidates drawn at random, still n distinct per request
    pools = rga.candidate_queries(reasoner, reasoner.tokenizer, prompts[:2], kb_texts, None, n=6, max_new_tokens=4)
    assert all(len(p) == 6 and sum(t in kb for t in p) >= 3 for p in pools)


@pytest.mark.parametrize("share_prompt", [True, False])
def test_candidate_latents_match_the_reasoner_on_each_text(reasoner, prompts, share_prompt):
    cands = [["Where is my parcel", "Refund status"], ["Payment failed", "x"],
             ["a b c", "Reset my password now please"]]
    reasoner.train()
    try:  # batch_size 4: two chunks of requests, padded prompts and candidates in each
        z = rga.candidate_latents(
            reasoner, reasoner.tokenizer, prompts[:3], cands, batch_size=4, share_prompt=share_prompt
        )
        assert reasoner.training  # mode restored
    finally:
        reasoner.eval()
    assert z.shape == (3, 2, reasoner.config.d_query) and not z.requires_grad
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3, 2))
    with torch.no_grad():
        for i in range(3):
            for j in range(2):
                b = encode_prompts(reasoner.tokenizer, [f"{prompts[i]} {cands[i][j]}"], reasoner.config.max_len)
                torch.testing.assert_close(z[i, j], reasoner(b["input_ids"], b["attention_mask"])[0], atol=1e-5, rtol=0)


# ---- reward -------------------------------------------------------------------------------------


class _ModeSpy(torch.nn.Module):
    """Wraps a ranker and records, at every forward, its mode and whether grad was enabled."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[bool, bool, bool]] = []

    def forward(self, cat, num, query, intent_idx):
        dropout_modes = {m.training for m in self.inner.modules() if isinstance(m, torch.nn.Dropout)}
        self.seen.append((self.training, any(dropout_modes), torch.is_grad_enabled()))
        return self.inner(cat, num, query, intent_idx)


def _latents(r, n, d, seed=0):
    return torch.nn.functional.normalize(torch.randn(r, n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_reward_runs_the_ranker_in_eval_mode_without_grad_and_restores_it(ranker, slate):
    cat, num, shown, labels, mask = slate
    lat = _latents(R, 4, ranker.config.d_query)
    ranker_copy = copy.deepcopy(ranker).train()  # dropout 0.1 on: a train-mode reward would be noisy
    assert ranker_copy.config.dropout > 0
    spy = _ModeSpy(ranker_copy).train()
    r1 = rga.reward_scores(spy, cat, num, lat, shown, labels, mask, batch_size=7)  # several ranker calls
    r2 = rga.reward_scores(spy, cat, num, lat, shown, labels, mask, batch_size=7)
    assert torch.equal(r1, r2)  # dropout off: bit-identical
    r3 = rga.reward_scores(spy, cat, num, lat, shown, labels, mask)  # one ranker call
    torch.testing.assert_close(r1, r3, atol=1e-5, rtol=0)
    assert spy.seen and all(s == (False, False, False) for s in spy.seen)
    assert spy.training and all(m.training for m in ranker_copy.modules())  # restored
    assert not r1.requires_grad
    # same numbers as the ranker in eval mode, by hand
    with torch.no_grad():
        for j in range(4):
            logits = ranker(cat, num, lat[:, j], shown)
            torch.testing.assert_close(r1[:, j], rga.listnet_loglik(logits, labels, mask), atol=1e-5, rtol=0)
    # RequestArrays pads ``shown`` with -1: same rewards as any other (masked) padding value
    padded = shown.masked_fill(mask == 0, -1)
    torch.testing.assert_close(rga.reward_scores(ranker, cat, num, lat, padded, labels, mask), r3, atol=1e-5, rtol=0)
    # a ranker whose parts were in different modes comes back exactly as it was
    mixed = copy.deepcopy(ranker).train()
    mixed.fields.eval()
    rga.reward_scores(mixed, cat, num, lat, shown, labels, mask)
    assert mixed.training and not mixed.fields.training


def test_reward_kinds_agree_with_losses_and_metrics(ranker, slate):
    cat, num, shown, labels, mask = slate
    lat = _latents(R, 3, ranker.config.d_query, seed=1)
    ln = rga.reward_scores(ranker, cat, num, lat, shown, labels, mask, kind="listnet")
    nd = rga.reward_scores(ranker, cat, num, lat, shown, labels, mask, kind="ndcg")
    assert ln.shape == nd.shape == (R, 3)
    assert torch.all(ln[4] == 0) and torch.all(nd[4] == 0)  # request 4 has no click
    assert torch.all(ln <= 0) and torch.all((nd >= 0) & (nd <= 1))
    full = [i for i in range(R) if mask[i].all() and labels[i].any()]
    with torch.no_grad():
        for j in range(3):
            logits = ranker(cat, num, lat[:, j], shown)
            # mean ListNet reward over clicked requests = -ListNet loss
            clicked = labels.sum(1) > 0
            assert ln[clicked, j].mean().item() == pytest.approx(-listnet_loss(logits, labels, mask).item(), abs=1e-5)
            # NDCG over the whole slate = metrics.ndcg_at_k with k = S on unpadded slates
            want = metrics.ndcg_at_k(logits[full].numpy(), labels[full].numpy(), S)
            assert nd[full, j].mean().item() == pytest.approx(want, abs=1e-5)
    # hand case: slate of 3, click on the second-ranked intent -> 1 / log2(3)
    logits, clicks = torch.tensor([[3.0, 2.0, 1.0, 9.0]]), torch.tensor([[0, 1, 0, 1]])
    real = torch.tensor([[1, 1, 1, 0]])
    v = rga.ndcg_reward(logits, clicks, real)  # the padded slot's click and logit are ignored
    assert v.item() == pytest.approx(1 / math.log2(3))
    with pytest.raises(ConfigError):
        rga.reward_scores(ranker, cat, num, lat, shown, labels, mask, kind="auc")


# ---- SFT / DPO data -----------------------------------------------------------------------------


def test_sft_examples_take_the_best_candidate_as_target():
    p, t = rga.sft_examples(["p0", "p1"], [["a", "b"], ["c", " d "]], torch.tensor([1, 1]))
    assert p == ["p0", "p1"] and t == [" b", " d"]


def test_dpo_pairs_keep_best_vs_worst_above_the_margin():
    prompts = ["p0", "p1", "p2", "p3"]
    cands = [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"], ["j", "J", "k"]]
    rewards = torch.tensor([
        [0.25, 1.0, -0.5],  # margin 1.5: kept, chosen b, rejected c
        [0.5, 0.5, 0.5],  # margin 0 (a tie): dropped whatever min_margin
        [0.0, 0.05, 0.01],  # margin 0.05: kept at min_margin 0, dropped at 0.1
        [1.0, 0.0, 0.5],  # chosen "j", rejected "J": the same query, dropped
    ])
    pairs = rga.dpo_pairs(prompts, cands, rewards, min_margin=0.0)
    assert pairs == [("p0", " b", " c"), ("p2", " h", " g")]
    assert pairs[0].chosen == " b" and pairs[0].rejected == " c"
    assert rga.dpo_pairs(prompts, cands, rewards, min_margin=0.1) == [("p0", " b", " c")]
    assert rga.dpo_pairs(prompts, cands, rewards, min_margin=1.5) == [("p0", " b", " c")]  # >= keeps it
    assert rga.dpo_pairs(prompts, cands, rewards, min_margin=2.0) == []


def test_user_dpo_pairs_keep_a_preference_that_holds_over_the_users_requests():
    prompts = ["p0", "p1", "p2", "p3", "p4"]
    cands = [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"], ["j", "J", "k"], ["l", "m", "n"]]
    rewards = [
        torch.tensor([[0.0, 1.0, 0.2], [0.1, 0.9, 0.0], [0.0, 0.8, 0.3]]),  # b over a on all 3 slates: kept
        torch.tensor([[1.0, 0.0, 0.5], [-1.0, 0.2, 0.4], [0.9, 0.1, 0.5]]),  # by the mean f > e, but d-e flips
        torch.tensor([[0.0, 1.0, 0.2]]),  # one slate only: no evidence beyond it
        torch.tensor([[1.0, 0.0, 0.5], [0.9, 0.1, 0.6]]),  # "j" over "J": the same query
        torch.tensor([[0.00, 0.02, 0.01], [0.00, 0.03, 0.01]]),  # consistent, but below the noise floor
    ]
    pairs = rga.user_dpo_pairs(prompts, cands, rewards, min_margin=0.05)
    assert pairs[0] == ("p0", " b", " a")
    # p1: best f (mean 0.467), worst e (0.1): differences 0.5, 0.2, 0.4: mean 0.367 > se 0.088, kept
    assert pairs[1] == ("p1", " f", " e") and len(pairs) == 2
    # p4: mean difference 0.025 >= 0.05 / sqrt(2) = 0.035? no; with no floor it is kept
    assert ("p4", " m", " l") in rga.user_dpo_pairs(prompts, cands, rewards, min_margin=0.0)
    # a preference that flips between slates: mean not above its standard error
    flip = [torch.tensor([[0.0, 1.0], [0.0, -0.8], [0.0, 0.9], [0.0, -0.9]])]
    assert rga.user_dpo_pairs(["p"], [["x", "y"]], flip) == []
    with pytest.raises(ConfigError, match=r"\(K, 3\)"):
        rga.user_dpo_pairs(["p"], [["x", "y", "z"]], [torch.zeros(2, 2)])


def test_dpo_policy_is_kept_only_above_chance_by_more_than_its_standard_error():
    # 50 held-out pairs: se = sqrt(0.25 / 50) = 0.0707; chance + se = 0.5707
    kept = rga.generalises(0.69, 50)  # synthetic seed 0's held-out accuracy
    assert kept["kept"] and kept["standard_error"] == pytest.approx(0.0707107, abs=1e-6)
    assert kept["excess"] == pytest.approx(0.19 / 0.0707107, rel=1e-5) and kept["chance"] == 0.5
    assert not rga.generalises(0.50, 42)["kept"] and not rga.generalises(0.48, 42)["kept"]  # seeds 1, 2
    assert not rga.generalises(0.57, 50)["kept"] and rga.generalises(0.58, 50)["kept"]  # either side of 0.5707
    assert not rga.generalises(1.0, 0)["kept"]  # no held-out pairs: no evidence that it generalises
    assert rga.generalises(None, 0)["standard_error"] is None
    # the same accuracy is evidence on many pairs and noise on few
    assert rga.generalises(0.55, 400)["kept"] and not rga.generalises(0.55, 40)["kept"]


# ---- log-probabilities and the DPO step ---------------------------------------------------------


def test_batched_logprobs_equal_unbatched(reasoner, prompts):
    responses = [" Where is my parcel?", " Refund status", " x", " Payment failed today please", " a", " b"]
    whole = rga.batched_sequence_logprobs(reasoner, reasoner.tokenizer, prompts, responses, batch_size=64)
    by2 = rga.batched_sequence_logprobs(reasoner, reasoner.tokenizer, prompts, responses, batch_size=2)
    assert whole.shape == (R,) and not whole.requires_grad
    torch.testing.assert_close(whole, by2, atol=1e-4, rtol=0)
    with torch.no_grad():
        for i in range(R):
            b = encode_pairs(reasoner.tokenizer, [prompts[i]], [responses[i]], reasoner.config.max_len)
            one = reasoner.sequence_logprobs(b["input_ids"], b["attention_mask"], b["labels"])
            assert whole[i].item() == pytest.approx(one.item(), abs=1e-4)
    with_grad = rga.batched_sequence_logprobs(reasoner, reasoner.tokenizer, prompts, responses, batch_size=4, grad=True)
    assert with_grad.requires_grad
    torch.testing.assert_close(with_grad.detach(), whole, atol=1e-4, rtol=0)


def test_dpo_step_leaves_the_frozen_reference_untouched(reasoner, prompts):
    policy = copy.deepcopy(reasoner).train()
    reference = rga.freeze(copy.deepcopy(reasoner))
    ref_before = rga.param_checksums(reference)
    pol_before = rga.param_checksums(policy)
    pairs = [rga.DPOPair(prompts[0], " Where is my parcel?", " Reset my password"),
             rga.DPOPair(prompts[1], " Refund status", " Flash sale times")]
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.5)
    loss, stats = rga.dpo_batch_loss(policy, reference, reasoner.tokenizer, pairs, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-4)  # policy == reference: margin 0
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in reference.parameters())
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training
    assert rga.frozen_unchanged(ref_before, rga.param_checksums(reference))
    assert not rga.frozen_unchanged(pol_before, rga.param_checksums(policy))  # the policy did move
    loss2, stats2 = rga.dpo_batch_loss(policy, reference, reasoner.tokenizer, pairs, beta=0.1)
    assert loss2.item() < loss.item() and stats2["reward_margin"] > 0


def test_param_checksums_catch_changes_a_plain_sum_misses():
    m = torch.nn.Linear(3, 2)
    before = rga.param_checksums(m)
    assert set(before) == {"weight", "bias"}
    assert rga.frozen_unchanged(before, rga.param_checksums(m))
    with torch.no_grad():
        w = m.weight.view(-1)
        w[0], w[1] = w[1].item(), w[0].item()  # same sum, swapped
    assert rga.changed_names(before, rga.param_checksums(m)) == ["weight"]
    assert not rga.frozen_unchanged(before, {"weight": before["weight"]})  # a missing entry is a change


# ---- RG-CL --------------------------------------------------------------------------------------


def test_info_nce_equals_hand_computation_2x2():
    # a1 = (1, 0), a2 = (0, 1); p1 = (1, 0), p2 = (0.6, 0.8); T = 1
    # row 1 logits (a1.p1, a1.p2) = (1, 0.6) -> -log(e / (e + e^0.6)) = log(1 + e^-0.4) = 0.5130153
    # row 2 logits (a2.p1, a2.p2) = (0, 0.8) -> log(1 + e^-0.8) = 0.3711007
    # mean = 0.4420580
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    loss = rga.info_nce(a, p, None, temperature=1.0)
    assert loss.item() == pytest.approx(0.4420580, abs=1e-6)
    # norms do not matter: everything is L2-normalised
    assert rga.info_nce(3 * a, 0.5 * p, None, temperature=1.0).item() == pytest.approx(0.4420580, abs=1e-6)
    # an extra negative n = (0, 1) adds e^0 to row 1 and e^1 to row 2 (T = 1):
    # row 1: log((e + e^0.6 + 1) / e) = 0.7120668, row 2: log((1 + e^0.8 + e) / e^0.8) = 0.9823525
    n = torch.tensor([[0.0, 2.0]])
    assert rga.info_nce(a, p, n, temperature=1.0).item() == pytest.approx((0.7120668 + 0.9823525) / 2, abs=1e-6)
    # masked for row 2 only (e.g. row 2 clicked that intent): row 2 is back to 0.3711007
    mask = torch.tensor([[True], [False]])
    got = rga.info_nce(a, p, n, temperature=1.0, negative_mask=mask).item()
    assert got == pytest.approx((0.7120668 + 0.3711007) / 2, abs=1e-6)
    # T = 0.5 doubles the logits: row 1 log(1 + e^-0.8), row 2 log(1 + e^-1.6)
    want = (math.log1p(math.exp(-0.8)) + math.log1p(math.exp(-1.6))) / 2
    assert rga.info_nce(a, p, None, temperature=0.5).item() == pytest.approx(want, abs=1e-6)


def test_info_nce_decreases_as_anchors_move_to_their_positives():
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(8, 16, generator=gen)
    a0 = torch.randn(8, 16, generator=gen)
    negs = torch.randn(20, 16, generator=gen)
    losses = [rga.info_nce((1 - t) * a0 + t * p, p, negs).item() for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(x > y for x, y in zip(losses, losses[1:]))
    # and a gradient step on the anchors lowers it
    a = a0.clone().requires_grad_(True)
    rga.info_nce(a, p, negs).backward()
    assert rga.info_nce(a.detach() - 0.5 * a.grad, p, negs).item() < losses[0]


def test_info_nce_of_a_global_batch_splits_into_the_ranks_shares():
    """A rank computes its anchors (rows rank::world) against the whole batch's positives: the
    shares, weighted by their sizes, add up to the one-process loss (a duplicate positive, a KB
    mask and an odd batch included)."""
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(7, 16, generator=gen)
    p[5] = p[2]  # two requests with the same target
    a = torch.randn(7, 16, generator=gen)
    negs = torch.randn(11, 16, generator=gen)
    mask = torch.rand(7, 11, generator=gen) > 0.3
    whole = rga.info_nce(a, p, negs, 0.1, mask)
    parts = [(rga.info_nce(a[r::2], p, negs, 0.1, mask[r::2], targets=torch.arange(7)[r::2]), len(range(r, 7, 2)))
             for r in (0, 1)]
    assert sum(loss * k for loss, k in parts).item() / 7 == pytest.approx(whole.item(), rel=1e-6)
    with pytest.raises(ConfigError):
        rga.info_nce(a[:3], p, negs)  # a subset of anchors needs its targets


def test_info_nce_does_not_use_an_identical_positive_as_negative():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.1]])
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # both requests clicked the same intent
    # without the duplicate mask each row would see its own answer as a negative: loss >= log 2
    assert rga.info_nce(a, p, None, temperature=1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_clicked_intent_targets_mean_of_clicked_and_preferred():
    kb = torch.eye(4)  # intent k's latent is e_k
    shown = torch.tensor([[0, 1, 2], [2, 3, 0], [1, 0, 3]])
    labels = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 0, 1]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]])  # request 2's click is on padding
    pos, has, neg = rga.clicked_intent_targets(kb, shown, labels, mask)
    torch.testing.assert_close(pos[0], torch.tensor([1.0, 1.0, 0.0, 0.0]) / math.sqrt(2))
    assert has.tolist() == [True, False, False]
    assert neg[0].tolist() == [False, False, True, True] and neg[1].all()
    pref = torch.tensor([[0.0, 0.0, 0.0, 1.0]] * 3)
    pos, has, _ = rga.clicked_intent_targets(kb, shown, labels, mask, preferred=pref, preferred_weight=0.5)
    assert has.all()
    want0 = torch.nn.functional.normalize(0.5 * torch.tensor([1.0, 1.0, 0, 0]) / math.sqrt(2) + 0.5 * pref[0], dim=0)
    torch.testing.assert_close(pos[0], want0)
    torch.testing.assert_close(pos[1], pref[1])  # no click: the preferred query alone


def test_reward_refuses_a_ranker_that_stays_in_training_mode(ranker, slate):
    class Stubborn(torch.nn.Module):  # ignores eval(): its reward would depend on dropout
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def train(self, mode=True):
            return self

        def forward(self, *args):
            return self.inner(*args)

    cat, num, shown, labels, mask = slate
    with pytest.raises(TrainError, match="eval mode"):
        rga.reward_scores(Stubborn(ranker), cat, num, _latents(R, 2, ranker.config.d_query), shown, labels, mask)


@pytest.mark.parametrize("share_prompt", [True, False])
def test_candidate_latents_truncate_long_texts(reasoner, prompts, share_prompt):
    cands = [["Where is my parcel " * 8, "x"], ["Refund status", "Payment failed"]]
    z = rga.candidate_latents(reasoner, reasoner.tokenizer, prompts[:2], cands, max_len=24, share_prompt=share_prompt)
    assert z.shape == (2, 2, reasoner.config.d_query) and torch.isfinite(z).all()


def test_stage3_keeps_the_reward_reasoners_copy_unless_lora_reads_the_same_checkpoint(tmp_path):
    """The policy scores its own pools only under LoRA and when the reward ranker read the very
    checkpoint the policy starts from; otherwise a copy, and stage.json's source says why."""
    import types

    from rgalign.training.alignment.rg_sft import _reward_reasoner_source
    from rgalign.training.config import TrainConfig

    policy = tiny_reasoner()
    run = tmp_path / "run"
    ctx = types.SimpleNamespace(run=types.SimpleNamespace(root=run), relative=lambda p: str(p.relative_to(run)))
    lora = TrainConfig.from_dict({"finetune": {"lora": "on"}})
    own, other = run / "stages/5-rg-cl/reasoner", run / "stages/1-warmup/reasoner"
    ctx.config = lora
    assert _reward_reasoner_source(ctx, policy, own, own)[0]
    shared, why = _reward_reasoner_source(ctx, policy, own, other)
    assert not shared and "stages/1-warmup/reasoner" in why
    ctx.config = TrainConfig.from_dict({"finetune": {"lora": "off"}})
    shared, why = _reward_reasoner_source(ctx, policy, own, own)
    assert not shared and "full fine-tuning" in why
