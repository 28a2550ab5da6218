"""lm's harness model against references: the harness's own `hf` model on the exported checkpoint, and hand
computations with the GPT itself."""

import copy

import lm_eval
import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from torch._dynamo.utils import counters

from lm.cli import main
from lm.data.tokenizer import EOT, get_encoding
from lm.errors import UserError
from lm.eval.harness import HarnessModel, task_manager
from lm.eval.results import metric_values
from lm.model import GPT
from tests.conftest import tiny_config
from tests.eval.harness_tasks import TASKS, write_tasks
from tests.interop.tiny_hf import perturb
from tests.test_generate import eos_model, save_checkpoint

MAX_GEN_TOKS = 16


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"), MAX_GEN_TOKS)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return perturb(GPT(tiny_config("classic", block_size=64)))


def evaluate(task_dir, **model):
    return lm_eval.simple_evaluate(
        tasks=TASKS, task_manager=task_manager(TASKS, str(task_dir)), log_samples=True, device="cpu", **model
    )


@pytest.mark.parametrize("block", ["classic", "modern"])
def test_results_equal_the_harness_hf_model_on_the_export(block, task_dir, tmp_path):
    """Multiple choice (ARC, HellaSwag), rolling log-likelihood (wikitext) and generation (GSM8K), in fp32."""
    torch.manual_seed(0)
    ckpt = save_checkpoint(perturb(GPT(tiny_config(block, block_size=128))), tmp_path / "tiny.ckpt")
    main(["export", "--ckpt_path", ckpt, "--out", str(tmp_path / "hf")])
    ours = evaluate(task_dir, model="lm", model_args=f"ckpt_path={ckpt},batch_size=3")
    theirs = evaluate(task_dir, model="hf", model_args=f"pretrained={tmp_path / 'hf'},dtype=float32", batch_size=4)

    assert metric_values(ours) == pytest.approx(metric_values(theirs), rel=1e-6)
    assert set(metric_values(ours)) >= {"arc_easy_local/acc_norm", "wikitext_local/bits_per_byte"}
    for task in TASKS:
        samples = list(zip(ours["samples"][task], theirs["samples"][task], strict=True))
        for a, b in samples:
            assert a["doc_id"] == b["doc_id"]
            for ours_resps, their_resps in zip(a["resps"], b["resps"], strict=True):
                for x, y in zip(ours_resps, their_resps, strict=True):
                    if isinstance(x, str):
                        assert x == y  # generate_until
                    elif isinstance(x, tuple):
                        assert x[0] == pytest.approx(y[0], abs=1e-4) and x[1] == y[1]  # loglikelihood, is_greedy
                    else:
                        assert x == pytest.approx(y, abs=1e-4)  # loglikelihood_rolling
    generations = [s["resps"][0][0] for s in ours["samples"]["gsm8k_local"]]
    assert min(len(get_encoding().encode(text)) for text in generations) < MAX_GEN_TOKS - 2  # cut by a stop sequence
    accuracies = [ours["results"][task]["acc,none"] for task in ("arc_easy_local", "hellaswag_local")]
    assert any(0 < acc < 1 for acc in accuracies)


def test_the_model_is_registered_as_lm(model, tmp_path):
    assert get_model("lm") is HarnessModel
    lm = get_model("lm").create_from_arg_string(f"ckpt_path={save_checkpoint(model, tmp_path / 'm.ckpt')}")
    assert torch.equal(lm.gpt.lm_head.weight, model.lm_head.weight)


def logprobs_of(model: GPT, tokens: list[int]) -> torch.Tensor:
    """log p(tokens[t + 1] | tokens[: t + 1]) for every t, one unpadded sequence."""
    logits = model(torch.tensor([tokens[:-1]]))[0].float()
    return F.log_softmax(logits, -1)[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])]


def request(kind: str, *arguments) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=arguments, idx=0)


def test_loglikelihood_matches_a_hand_computation(model):
    enc, lm = get_encoding(), HarnessModel(model=model, batch_size=2)
    long_context = " ".join(["word"] * 100)  # longer than the 64-token context
    pairs = [("The cat sat on the", " mat"), ("", "Hello world"), (long_context, " end of it"), ("A b c ", "d e")]
    results = lm.loglikelihood([request("loglikelihood", *pair) for pair in pairs])
    for (context, continuation), (logprob, greedy) in zip(pairs, results):
        if context:  # the harness moves trailing spaces of the context into the continuation
            stripped = context.rstrip()
            whole, ctx = enc.encode(stripped + context[len(stripped) :] + continuation), enc.encode(stripped)
        else:  # an empty context is <|endoftext|>
            whole, ctx = [EOT, *enc.encode(continuation)], [EOT]
        tokens, n = whole[-65:], len(whole) - len(ctx)  # cut from the left to fit, continuation kept
        expected = logprobs_of(model, tokens)[-n:]
        assert logprob == pytest.approx(expected.sum().item(), abs=1e-4)
        assert greedy == bool(
            (model(torch.tensor([tokens[:-1]]))[0, -n:].argmax(-1) == torch.tensor(tokens[-n:])).all()
        )

    # A continuation that is the model's own greedy choice is reported as greedy.
    context = enc.encode("The cat sat on the")
    best = model(torch.tensor([context]))[0, -1].argmax().item()
    assert lm._loglikelihood_tokens([(None, context, [best]), (None, context, [best + 1])]) == [
        (pytest.approx(logprobs_of(model, [*context, best])[-1].item(), abs=1e-4), True),
        (pytest.approx(logprobs_of(model, [*context, best + 1])[-1].item(), abs=1e-4), False),
    ]


def test_rolling_loglikelihood_of_a_short_document_is_its_token_log_probs(model):
    text = "A short document that fits in the context."
    (total,) = HarnessModel(model=model).loglikelihood_rolling([request("loglikelihood_rolling", text)])
    assert total == pytest.approx(logprobs_of(model, [EOT, *get_encoding().encode(text)]).sum().item(), abs=1e-4)


def naive_greedy(model: GPT, context: str, until: list[str], max_gen_toks: int) -> str:
    """Greedy decoding one token at a time without a cache, stopping as the harness says."""
    enc = get_encoding()
    tokens, generated = (enc.encode(context) or [EOT])[-(64 - max_gen_toks) :], []
    for _ in range(max_gen_toks):
        token = model(torch.tensor([tokens + generated]))[0, -1].argmax().item()
        if token == EOT:
            break
        generated.append(token)
        if any(stop in enc.decode(generated) for stop in until):
            break
    text = enc.decode(generated)
    for stop in until:
        text = text.split(stop)[0]
    return text


def test_generation_equals_naive_greedy_decoding(model):
    """Batched (equal lengths), cached, left-truncated, stopped at stop sequences or max_gen_toks."""
    contexts = ["The cat", "The dog", "Once upon a time there was", "", " ".join(["word"] * 100), "A"]
    settings = [{"until": ["e"], "max_gen_toks": 12}, {"until": ["\n\n"], "max_gen_toks": 20}]
    requests = [request("generate_until", c, dict(s)) for c in contexts for s in settings]
    texts = HarnessModel(model=model, batch_size=4).generate_until(requests)
    expected = [naive_greedy(model, c, s["until"], s["max_gen_toks"]) for c in contexts for s in settings]
    assert texts == expected
    assert any(len(get_encoding().encode(text)) == 20 for text in texts)  # some ran to max_gen_toks


def test_generation_stops_at_end_of_text():
    texts = HarnessModel(model=eos_model()).generate_until(
        [request("generate_until", "Hi", {"until": ["\n"], "max_gen_toks": 5})]
    )
    assert texts == [""]


def test_each_rank_scores_an_equal_share_and_together_all_requests(model):
    order = list(range(10))
    shares = [HarnessModel(model=model, shard=(rank, 3)).my_share(order) for rank in range(3)]
    assert [len(share) for share in shares] == [4, 4, 4]  # padded to the same number of requests
    assert sorted({i for share in shares for i in share}) == order
    assert [i for rank in range(3) for i in order[rank::3]] == sorted(order, key=lambda i: (i % 3, i))


def test_task_errors_are_one_line(task_dir, tmp_path):
    with pytest.raises(UserError, match=r"unknown harness tasks \['nope'\]"):
        task_manager(["arc_easy_local", "nope"], str(task_dir))
    with pytest.raises(UserError, match="is not a directory"):
        task_manager(["arc_easy_local"], str(tmp_path / "missing"))
    assert "arc_easy_local" in task_manager(["arc_easy_local"], str(task_dir)).all_tasks


def test_a_compiled_model_is_evaluated_eagerly(model):
    """The training model may be compiled (model.compile: true); evaluation shapes vary, so it must not recompile."""
    compiled = copy.deepcopy(model)
    compiled.compile()
    counters.clear()
    requests = [request("loglikelihood", "The cat", " sat"), request("loglikelihood", "A much longer context", " x")]
    assert HarnessModel(model=compiled).loglikelihood(requests) == HarnessModel(model=model).loglikelihood(requests)
    assert counters["frames"]["total"] == 0  # no frame went through torch.compile
