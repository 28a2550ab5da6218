"""Small local copies of four lm-evaluation-harness tasks, in their datasets' real schemas.

Each task YAML includes the harness's own task file (prompt, metrics, filters) and only points it at local
jsonl files: the way an offline cluster runs the suite (docs/evaluation.md).
"""

import json
from pathlib import Path

import lm_eval.tasks

from tests.conftest import stdlib_docs
from tests.eval.test_hellaswag import write_jsonl as write_hellaswag

HARNESS_TASKS = Path(lm_eval.tasks.__file__).parent

# allenai/ai2_arc: id, question, choices {text, label}, answerKey (labels are letters or digits).
ARC = [
    ("Which gas do plants take in from the air to make their food?", ["oxygen", "carbon dioxide", "nitrogen"], 1),
    ("What is the boiling point of water at sea level?", ["0 degrees Celsius", "50 degrees", "100 degrees"], 2),
    ("Which organ pumps blood through the body?", ["the lungs", "the liver", "the heart", "the brain"], 2),
    ("What causes day and night on Earth?", ["the Earth spinning", "the Moon", "clouds", "the seasons"], 0),
    ("Which of these is a mammal?", ["a shark", "a frog", "a whale", "a lizard"], 2),
    ("What do bees collect from flowers?", ["sand", "nectar", "salt", "rocks"], 1),
    ("Which form of energy does a solar panel use?", ["sound", "light", "wind", "heat from the ground"], 1),
    ("What happens to ice when it is heated?", ["it melts", "it gets harder", "it turns to rock"], 0),
    ("Which tool is used to measure temperature?", ["a ruler", "a scale", "a thermometer", "a clock"], 2),
    ("What is the main source of light for the Earth?", ["the Moon", "the Sun", "the stars", "lightning"], 1),
]

# openai/gsm8k (main): question, answer ("... #### <number>").
GSM8K = [
    ("Tom has 3 apples and buys 2 more. How many apples does he have?", "3 + 2 = <<3+2=5>>5\n#### 5"),
    ("A box holds 4 rows of 6 eggs. How many eggs are in the box?", "4 * 6 = <<4*6=24>>24\n#### 24"),
    ("Sara reads 10 pages a day for 3 days. How many pages does she read?", "10 * 3 = <<10*3=30>>30\n#### 30"),
    ("There are 12 birds on a wire and 5 fly away. How many are left?", "12 - 5 = <<12-5=7>>7\n#### 7"),
    ("A pencil costs 2 dollars. How much do 7 pencils cost?", "2 * 7 = <<2*7=14>>14\n#### 14"),
    ("Ann had 20 stickers and gave half to Ben. How many does she have?", "20 / 2 = <<20/2=10>>10\n#### 10"),
]

TASKS = ["arc_easy_local", "hellaswag_local", "wikitext_local", "gsm8k_local"]


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def task_yaml(name: str, harness_file: str, data_files: dict[str, Path], extra: str = "") -> str:
    files = ", ".join(f"{split}: {path}" for split, path in data_files.items())
    return (
        f"include: {HARNESS_TASKS / harness_file}\n"
        f"task: {name}\n"
        "tag: []\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        f"dataset_kwargs:\n  data_files: {{{files}}}\n" + extra
    )


def write_tasks(root: Path, max_gen_toks: int = 16) -> Path:
    """A directory for --include_path holding the four tasks (TASKS) and their data; returns it."""
    root.mkdir(parents=True, exist_ok=True)
    arc = []
    for i, (question, texts, answer) in enumerate(ARC):
        labels = [str(n + 1) for n in range(len(texts))] if i % 3 == 1 else list("ABCD"[: len(texts)])
        arc.append({"id": f"q{i}", "question": question, "choices": {"text": texts, "label": labels}})
        arc[-1]["answerKey"] = labels[answer]
    arc_file = write_lines(root / "arc.jsonl", arc)
    hellaswag_file = Path(write_hellaswag(root / "hellaswag.jsonl"))
    # EleutherAI/wikitext_document_level: one document per row in "page"; the longest spans several contexts.
    wiki_file = write_lines(root / "wikitext.jsonl", [{"page": doc} for doc in stdlib_docs()[:6]])
    gsm_file = write_lines(root / "gsm8k.jsonl", [{"question": q, "answer": a} for q, a in GSM8K])
    splits = "training_split: null\nvalidation_split: null\ntest_split: test\n"
    (root / "arc_easy_local.yaml").write_text(
        task_yaml("arc_easy_local", "arc/arc_easy.yaml", {"test": arc_file}, splits)
    )
    (root / "hellaswag_local.yaml").write_text(
        task_yaml(
            "hellaswag_local", "hellaswag/hellaswag.yaml", {"validation": hellaswag_file}, "training_split: null\n"
        )
    )
    (root / "wikitext_local.yaml").write_text(
        task_yaml("wikitext_local", "wikitext/wikitext.yaml", {"test": wiki_file}, splits)
    )
    # Two shots from the same file; "e" (a common letter) among the stop sequences, so that an untrained model's
    # text also stops early, sometimes inside a token.
    generation = (
        "num_fewshot: 2\n"
        "generation_kwargs:\n"
        '  until: ["Question:", "\\n\\n", "e"]\n'
        f"  max_gen_toks: {max_gen_toks}\n"
        "  do_sample: false\n"
    )
    (root / "gsm8k_local.yaml").write_text(
        task_yaml("gsm8k_local", "gsm8k/gsm8k.yaml", {"train": gsm_file, "test": gsm_file}, generation)
    )
    return root
