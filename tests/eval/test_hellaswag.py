import json

import pytest
import torch
import torch.nn.functional as F

from lm.cli import main
from lm.data.tokenizer import get_encoding
from lm.errors import UserError
from lm.eval.hellaswag import ending_losses, evaluate, load_examples
from lm.model import GPT
from tests.conftest import tiny_config
from tests.test_generate import save_checkpoint

ROWS = [
    (
        "A man is sitting on a roof. he",
        [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        3,
    ),
    (
        "A woman is outside with a bucket and a dog. The dog is running around trying to avoid a bath. She",
        [
            "rinses the bucket off with soap and blow dry the dog's head.",
            "uses a hose to keep it from getting soapy.",
            "gets the dog wet, then it runs away again.",
            "gets into a bath tub with the dog.",
        ],
        2,
    ),
    (
        "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.",
        [
            "then, the man adds wax to the windshield and cuts it.",
            "a person board a ski lift, while two men supporting "
            "the head of the person wearing winter clothes snow as the we girls sled.",
            "the man puts on a christmas coat, knitted with netting.",
            "the man continues removing the snow on his car.",
        ],
        3,
    ),
    (
        "A cat",
        ["sleeps.", "jumps onto the kitchen counter and knocks a glass of water to the floor.", "meows.", "eats."],
        0,
    ),
]


def write_jsonl(path, rows=ROWS) -> str:
    """HellaSwag's official schema, all fields present."""
    with open(path, "w") as f:
        for i, (ctx, endings, label) in enumerate(rows):
            f.write(
                json.dumps(
                    {
                        "ind": i,
                        "activity_label": "Test",
                        "ctx_a": ctx,
                        "ctx_b": "",
                        "ctx": ctx,
                        "endings": endings,
                        "source_id": f"test~{i}",
                        "split": "val",
                        "split_type": "indomain",
                        "label": label,
                    }
                )
                + "\n"
            )
    return str(path)


def naive_losses(model, ctx: str, ending: str) -> torch.Tensor:
    """Per-token losses of the ending, one unpadded sequence at a time."""
    enc = get_encoding()
    c, e = enc.encode_ordinary(ctx), enc.encode_ordinary(" " + ending)
    tokens = torch.tensor([c + e])
    logprobs = F.log_softmax(model(tokens[:, :-1]).float(), dim=-1)[0]
    targets = tokens[0, 1:]
    return -logprobs[torch.arange(len(targets)), targets][len(c) - 1 :]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(tiny_config(block_size=64)).eval()


def test_batched_scores_match_a_hand_computation(model, tmp_path):
    examples = load_examples(write_jsonl(tmp_path / "hs.jsonl"))
    sums, means = ending_losses(model, examples)
    for i, (ctx, endings, _) in enumerate(ROWS):
        naive = [naive_losses(model, ctx, ending) for ending in endings]
        assert torch.allclose(sums[i], torch.stack([x.sum() for x in naive]), atol=1e-4)
        assert torch.allclose(means[i], torch.stack([x.mean() for x in naive]), atol=1e-5)
        assert sums[i].argmin() == torch.stack([x.sum() for x in naive]).argmin()
        assert means[i].argmin() == torch.stack([x.mean() for x in naive]).argmin()
    result = evaluate(model, examples, batch_size=3)  # 2 batches, the last one short
    labels = torch.tensor([label for *_, label in ROWS])
    assert result == {
        "acc": (sums.argmin(1) == labels).float().mean().item(),
        "acc_norm": (means.argmin(1) == labels).float().mean().item(),
        "n": 4,
    }


def test_mean_is_the_sum_over_the_ending_tokens(model, tmp_path):
    examples = load_examples(write_jsonl(tmp_path / "hs.jsonl", [("A cat", ["a a a a a a a a", "b", "c d", "e"], 0)]))
    sums, means = ending_losses(model, examples)
    lengths = torch.tensor([[len(e) for e in examples[0].endings]], dtype=torch.float)
    assert lengths[0, 0] == 8 and torch.allclose(sums, means * lengths)


def test_context_is_cut_from_the_left_to_fit(model, tmp_path):
    long_ctx = " ".join(["word"] * 200)  # 200 tokens, context 64
    examples = load_examples(write_jsonl(tmp_path / "hs.jsonl", [(long_ctx, ["one.", "two.", "three.", "four."], 1)]))
    sums, _ = ending_losses(model, examples)
    kept = (examples[0].context + examples[0].endings[0])[-65:]
    logprobs = F.log_softmax(model(torch.tensor([kept[:-1]])).float(), dim=-1)[0]
    n = len(examples[0].endings[0])
    expected = -logprobs[torch.arange(64 - n, 64), torch.tensor(kept[-n:])].sum()
    assert torch.allclose(sums[0, 0], expected, atol=1e-4)


def test_malformed_line_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "hs.jsonl")
    with open(path, "a") as f:
        f.write(json.dumps({"ctx": "x", "endings": ["a", "b"], "label": 0}) + "\n")
    with pytest.raises(UserError, match="line 5"):
        load_examples(path)
    assert len(load_examples(path, limit=2)) == 2
    with open(path, "a") as f:
        f.write("{not json\n")
    with pytest.raises(UserError, match="line 5"):
        load_examples(path)


def test_cli_prints_and_returns_accuracy(model, tmp_path, capsys):
    ckpt = save_checkpoint(model, tmp_path / "tiny.ckpt")
    data = write_jsonl(tmp_path / "hs.jsonl")
    main(["hellaswag", "--ckpt_path", ckpt, "--data", data, "--limit", "3", "--batch_size", "2"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["n"] == 3 and 0 <= printed["acc"] <= 1 and 0 <= printed["acc_norm"] <= 1
    with pytest.raises(SystemExit, match="error: HellaSwag data not found"):
        main(["hellaswag", "--ckpt_path", ckpt, "--data", str(tmp_path / "missing.jsonl")])
