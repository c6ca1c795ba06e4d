"""tasks/gsm8k.py: the gold number, the task on local files, directories and the hub cache, and its errors."""

import json

import datasets
import datasets.config
import huggingface_hub.constants
import pytest

import rewards
import tasks
from tasks.data import load_table
from tasks.gsm8k import gold_number, problem_id
from training_with_unsloth.errors import ConfigError

# Hand-written GSM8K-style rows: a worked solution with calculator notes, then "#### <number>".
ROWS = [
    (
        "Mia buys 3 packs of 12 stickers and gives away 5. How many stickers does she keep?",
        "3 packs hold 3*12=<<3*12=36>>36 stickers.\nShe keeps 36-5=<<36-5=31>>31.\n#### 31",
    ),
    (
        "A bike costs $1,200 and is sold at a $120 discount. What is the sale price?",
        "1200-120=<<1200-120=1080>>1080\n#### 1,080",
    ),
    ("The temperature is 4 degrees and falls by 7 degrees. What is it now?", "4-7=<<4-7=-3>>-3\n#### -3"),
    ("Tom reads 15 pages a day for 6 days. How many pages does he read?", "15*6=<<15*6=90>>90\n#### 90"),
    ("A baker splits 45 rolls into bags of 9. How many bags?", "45/9=<<45/9=5>>5\n#### 5"),
    ("Lena saves $25 a week for 8 weeks. How much does she save?", "25*8=<<25*8=200>>200\n#### 200"),
    ("A class of 28 forms teams of 4. How many teams?", "28/4=<<28/4=7>>7\n#### 7"),
    ("Sam has 50 marbles and loses 18. How many are left?", "50-18=<<50-18=32>>32\n#### 32"),
    ("A garden has 7 rows of 11 tulips. How many tulips?", "7*11=<<7*11=77>>77\n#### 77"),
    ("Two pizzas cost $9.50 each. What do both cost?", "2*9.50=<<2*9.5=19>>19\n#### 19"),
    ("A tank holds 120 liters and is half full. How many liters are in it?", "120/2=<<120/2=60>>60\n#### 60"),
    (
        "Eli walks 3 km each morning and 2 km each evening. How far in 5 days?",
        "3+2=<<3+2=5>>5 km a day.\n5*5=<<5*5=25>>25\n#### 25",
    ),
]
CORRECT_1080 = "<think>\n1200 - 120 = 1080\n</think>\n<answer>\n1080\n</answer>"


def chat(text):
    return [{"role": "assistant", "content": text}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    return path


@pytest.fixture(autouse=True)
def empty_hf_caches(tmp_path, monkeypatch):
    """Empty Hugging Face caches: `datasets` and the hub read HF_HOME at import, so patch their paths too."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf"


@pytest.fixture
def data_file(tmp_path):
    return write_jsonl(tmp_path / "problems.jsonl", ROWS)


# --- the gold number ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("lots of work\n#### 1,080", "1080"),
        ("#### -3", "-3"),
        ("####2.50", "2.5"),
        ("a #### b #### 7", "7"),
        (72, "72"),
        ("72", "72"),
        ("no marker here", None),
        ("#### seven", None),
        ("", None),
        (True, None),
    ],
)
def test_gold_number(answer, gold):
    assert gold_number(answer) == gold


# --- the task -----------------------------------------------------------------------------------


def test_task_from_one_local_file(data_file):
    task = tasks.get("gsm8k", data=str(data_file), eval_samples=4)
    train, eval_ = task.build(seed=3)
    assert (len(train), len(eval_)) == (8, 4)
    assert train.column_names == ["prompt", "question", "answer", "solution", "problem_id"]
    assert train.features["answer"].dtype == "string"
    train_ids, eval_ids = set(train["problem_id"]), set(eval_["problem_id"])
    assert not train_ids & eval_ids
    assert train_ids | eval_ids == {problem_id(q) for q, _ in ROWS}
    source = {problem_id(q): (q, a) for q, a in ROWS}
    for row in [*train, *eval_]:
        question, answer = source[row["problem_id"]]
        assert row["question"] == question
        assert row["solution"] == answer
        assert row["answer"] == gold_number(answer)
        system, user = row["prompt"]
        assert system["role"] == "system" and "<think>" in system["content"] and "<answer>" in system["content"]
        assert user == {"role": "user", "content": question}
    assert "1080" in [*train["answer"], *eval_["answer"]]  # "#### 1,080" is stored canonically


def test_task_sampling_is_seeded_and_eval_comes_first(data_file):
    def build(seed, **params):
        return tasks.get("gsm8k", data=str(data_file), eval_samples=4, **params).build(seed=seed)

    train_a, eval_a = build(5)
    train_b, eval_b = build(5)
    assert (train_a.to_list(), eval_a.to_list()) == (train_b.to_list(), eval_b.to_list())
    _, eval_c = build(6)
    assert list(eval_a["problem_id"]) != list(eval_c["problem_id"])
    small_train, same_eval = build(5, train_samples=3)
    assert same_eval.to_list() == eval_a.to_list()
    assert len(small_train) == 3 and set(small_train["problem_id"]) <= set(train_a["problem_id"])


def test_gold_completion_is_correct_and_earns_every_default_reward(data_file):
    task = tasks.get("gsm8k", data=str(data_file), eval_samples=4)
    train, eval_ = task.build(seed=0)
    funcs, _ = rewards.build(task.default_rewards)
    assert [f.__name__ for f in funcs] == ["gsm8k_correct", "digits_only", "format_tags", "xml_count"]
    rows = [*train, *eval_]
    golds = [task.gold(row) for row in rows]
    assert all(task.is_correct(gold, row) for gold, row in zip(golds, rows))
    assert all("<<" not in gold for gold in golds)  # calculator notes are dropped
    columns = {"answer": [row["answer"] for row in rows], "problem_id": [row["problem_id"] for row in rows]}
    scores = [f([row["prompt"] for row in rows], [chat(g) for g in golds], **columns) for f in funcs]
    for row, *per_reward in zip(rows, *scores):
        digits = 0.0 if row["answer"].startswith("-") else 0.5
        assert per_reward == pytest.approx([2.0, digits, 0.5, 0.5])
        assert not task.is_correct(task.gold(row).replace(row["answer"], row["answer"] + "1"), row)


def test_answer_mode_sets_is_correct(data_file):
    row = {"answer": "1080"}
    strict = tasks.get("gsm8k", data=str(data_file))
    lenient = tasks.get("gsm8k", data=str(data_file), answer_mode="lenient")
    assert strict.is_correct(CORRECT_1080, row) and lenient.is_correct(CORRECT_1080, row)
    assert not strict.is_correct("so 1080", row)
    assert lenient.is_correct("so 1080", row)
    assert not lenient.is_correct("so 1081", row)


def test_duplicate_questions_count_once(tmp_path):
    rows = [*ROWS[:4], ("  " + ROWS[0][0].replace(" ", "  "), ROWS[0][1])]  # same question, other spacing
    path = write_jsonl(tmp_path / "dupes.jsonl", rows)
    train, eval_ = tasks.get("gsm8k", data=str(path), eval_samples=1).build(seed=0)
    assert len(train) + len(eval_) == 4
    assert len(set(train["problem_id"]) | set(eval_["problem_id"])) == 4


def test_separate_eval_file_keeps_train_disjoint(tmp_path):
    train_path = write_jsonl(tmp_path / "train.jsonl", ROWS[:8])
    eval_path = write_jsonl(tmp_path / "test.jsonl", [*ROWS[6:], ("What is 2 + 2?", "2+2=4\n#### 4")])
    train, eval_ = tasks.get("gsm8k", data=str(train_path), eval_data=str(eval_path), eval_samples=100).build(seed=1)
    assert set(eval_["problem_id"]) == {problem_id(q) for q in [*(q for q, _ in ROWS[6:]), "What is 2 + 2?"]}
    assert set(train["problem_id"]) == {problem_id(q) for q, _ in ROWS[:6]}  # rows 6, 7 are eval problems


def test_parquet_csv_and_dataset_directory(tmp_path):
    table = datasets.Dataset.from_list([{"question": q, "answer": a} for q, a in ROWS])
    table.to_parquet(str(tmp_path / "p.parquet"))
    table.to_csv(str(tmp_path / "p.csv"), index=False)
    datasets.DatasetDict(train=table.select(range(8)), test=table.select(range(8, 12))).save_to_disk(tmp_path / "dir")
    for name in ("p.parquet", "p.csv"):
        train, eval_ = tasks.get("gsm8k", data=str(tmp_path / name), eval_samples=2).build(seed=0)
        assert (len(train), len(eval_)) == (10, 2)
    train, eval_ = tasks.get("gsm8k", data=str(tmp_path / "dir"), eval_samples=3).build(seed=0)
    assert set(eval_["question"]) <= {q for q, _ in ROWS[8:]}
    assert (len(train), len(eval_)) == (8, 3)
    with pytest.raises(ConfigError, match=r"has no split 'validation' \(it has: train, test\)"):
        tasks.get("gsm8k", data=str(tmp_path / "dir"), eval_split="validation").build(seed=0)


README = """---
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train-*
  - split: test
    path: main/test-*
---
"""


def test_hub_dataset_read_from_the_hub_file_cache(empty_hf_caches):
    """A hub dataset whose files are in the hub cache loads with downloads off (no network)."""
    snapshot = empty_hf_caches / "hub" / "datasets--acme--word-problems" / "snapshots" / ("0" * 40)
    (snapshot / "main").mkdir(parents=True)
    (snapshot / "README.md").write_text(README)
    table = datasets.Dataset.from_list([{"question": q, "answer": a} for q, a in ROWS])
    table.select(range(9)).to_parquet(str(snapshot / "main" / "train-00000-of-00001.parquet"))
    table.select(range(9, 12)).to_parquet(str(snapshot / "main" / "test-00000-of-00001.parquet"))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    train, eval_ = tasks.get("gsm8k", data="acme/word-problems", eval_samples=2).build(seed=0)
    assert (len(train), len(eval_)) == (9, 2)
    assert set(eval_["question"]) <= {q for q, _ in ROWS[9:]}
    assert datasets.config.HF_HUB_OFFLINE is huggingface_hub.constants.HF_HUB_OFFLINE  # flags restored alike


def test_uncached_hub_dataset_is_a_one_line_error():
    with pytest.raises(ConfigError) as info:
        tasks.get("gsm8k").build(seed=0)
    assert str(info.value) == (
        "task 'gsm8k': dataset 'openai/gsm8k' is not in the local cache and downloads are off: set task.download: "
        "true, or task.data: <local .jsonl/.parquet file with question/answer columns>"
    )
    with pytest.raises(ConfigError, match="task.eval_data: <local"):
        load_table("acme/nothing", task="gsm8k", columns=("question", "answer"), param="eval_data")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"data": "missing.jsonl"}, "task 'gsm8k': data file 'missing.jsonl' does not exist: check task.data"),
        ({"data": "./missing"}, "data file './missing' does not exist"),
        ({"data": "notes.txt"}, "unsupported file type '.txt' (use .jsonl, .json, .parquet, .csv"),
        ({"data": "cols.jsonl"}, "dataset 'cols.jsonl' lacks column(s) answer (it has: question, reply)"),
        ({"data": "nogold.jsonl"}, "row 1 of 'nogold.jsonl' needs a question and an answer ending '#### <number>'"),
        ({"data": "bad.jsonl"}, "cannot read 'bad.jsonl'"),
        ({"data": "empty.jsonl"}, "task 'gsm8k': data file 'empty.jsonl' is empty"),
        ({"data": "small.jsonl", "eval_samples": 3}, "no training problems are left outside the 3 eval problems"),
        (
            {"data": "small.jsonl", "eval_data": "missing.csv"},
            "data file 'missing.csv' does not exist: check task.eval_data",
        ),
        ({"data": ""}, "task.data is empty"),
    ],
)
def test_data_errors_are_one_line_config_errors(tmp_path, monkeypatch, params, message):
    monkeypatch.chdir(tmp_path)  # the sources below are relative paths
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "cols.jsonl").write_text(json.dumps({"question": "q?", "reply": "1"}) + "\n")
    write_jsonl(tmp_path / "nogold.jsonl", [ROWS[0], ("What is 1 + 1?", "It is two.")])
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": \n')
    (tmp_path / "empty.jsonl").write_text("")
    write_jsonl(tmp_path / "small.jsonl", ROWS[:3])
    with pytest.raises(ConfigError) as info:
        tasks.get("gsm8k", **params).build(seed=0)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"eval_sampels": 3}, "unknown task parameter 'task.eval_sampels': did you mean 'task.eval_samples'?"),
        ({"answer_mode": "loose"}, "invalid task.answer_mode"),
        ({"eval_samples": 0}, "invalid task.eval_samples"),
    ],
)
def test_bad_parameters(params, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("?", r"\?")):
        tasks.get("gsm8k", **params)


@pytest.mark.parametrize("download", [False, True])
def test_hub_loads_are_offline_unless_downloads_are_on(monkeypatch, download):
    seen = []

    def fake_load_dataset(*args, **kwargs):
        seen.append((datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE))
        raise ConnectionError("Couldn't reach 'acme/nothing' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    before = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    with pytest.raises(ConfigError) as info:
        tasks.get("gsm8k", data="acme/nothing", download=download).build(seed=0)
    assert seen[0] == (not download, not download)
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == before
    expected = "cannot download dataset 'acme/nothing'" if download else "is not in the local cache"
    assert expected in str(info.value)
