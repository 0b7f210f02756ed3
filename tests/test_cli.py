"""The CLI end to end: a tiny prepare -> pretrain -> generate -> eval, and every bad input a user
is likely to make: one `error:` line, exit status 2, no traceback, no half-written run directory."""
import json

import pytest

from cli_run import assert_user_error, with_threads, write_corpus  # tests/cli_run.py

TEXT = ("The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
        "To be, or not to be, that is the question.\n") * 80




lmforge = with_threads(2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory, "cli", TEXT)


@pytest.fixture(scope="module")
def trained(corpus):
    r = lmforge("prepare", "--data", corpus / "corpus.txt", "--tokenizer", "char", "--out", corpus / "data")
    assert r.returncode == 0, r.stderr
    r = lmforge("pretrain", "--data", corpus / "data", "--model", "debug", "--model.block-size", "64",
                "--train.max-steps", "30", "--train.batch_size", "8", "--train.eval_interval", "15",
                "--train.progress", "false", "--out", corpus / "run")
    assert r.returncode == 0, r.stderr
    return corpus / "run"


def test_run_directory_is_complete(trained):
    for name in ("config.yaml", "tokenizer.json", "model.safetensors", "config.json", "metrics.jsonl",
                 "summary.json", "plots/loss.png", "state/state.json", "state/optimizer.safetensors"):
        assert (trained / name).is_file(), name
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["val_loss"] < summary["initial_val_loss"]
    records = [json.loads(l) for l in (trained / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and "val_loss" in records[0]


def test_generate_and_eval(trained, corpus):
    r = lmforge("generate", "--model", trained, "--prompt", "The quick", "--max-new-tokens", "20",
                "--temperature", "0", "--no_stream")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The quick")
    r = lmforge("eval", "perplexity", "--model", trained, "--data", corpus / "corpus.txt")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["perplexity"] > 1 and result["bits_per_byte"] > 0


def test_generate_and_eval_on_an_explicit_cpu_device_equal_the_default(trained, corpus):
    args = ["--model", trained, "--prompt", "The quick", "--max-new-tokens", "20", "--temperature", "0", "--no_stream"]
    default, cpu = lmforge("generate", *args), lmforge("generate", *args, "--device", "cpu")
    assert cpu.returncode == 0, cpu.stderr
    if not __import__("torch").cuda.is_available():  # the default is auto: the GPU when there is one
        assert cpu.stdout == default.stdout


def test_generate_compiled_equals_eager(trained):
    args = ["--model", trained, "--prompt", '["The quick", "A"]', "--max-new-tokens", "20", "--temperature", "0",
            "--no_stream", "--device", "cpu"]
    eager, compiled = lmforge("generate", *args), lmforge("generate", *args, "--compile")
    assert compiled.returncode == 0, compiled.stderr
    assert compiled.stdout == eager.stdout


def test_generate_compiled_refuses_a_recurrent_model_before_printing(trained, corpus, tmp_path):
    run = tmp_path / "lstm"
    r = lmforge("pretrain", "--data", corpus / "data", "--model", "lstm-debug", "--train.max_steps", "2",
                "--train.progress", "false", "--out", run)
    assert r.returncode == 0, r.stderr
    r = lmforge("generate", "--model", run, "--prompt", "The", "--compile")
    assert_user_error(r, "GPT-family", "without --compile")
    assert r.stdout == ""


def test_generate_compiled_refuses_a_gpu_device(trained):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    assert_user_error(lmforge("generate", "--model", trained, "--prompt", "x", "--compile", "--device", "cuda"),
                      "compiled decoding runs on CPU")


@pytest.mark.parametrize("device,fragment", [("tpu", "unknown device 'tpu'"),
                                             ("cuda", "CUDA is not available")])
def test_unusable_device(trained, corpus, device, fragment):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_user_error(lmforge("generate", "--model", trained, "--prompt", "x", "--device", device), fragment)
    assert_user_error(lmforge("eval", "perplexity", "--model", trained, "--data", corpus / "corpus.txt",
                              "--device", device), fragment)


def test_missing_data_path(tmp_path):
    assert_user_error(lmforge("pretrain", "--data", tmp_path / "nope.txt", "--out", tmp_path / "run"), "nope.txt")
    assert not (tmp_path / "run").exists()


def test_empty_file(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert_user_error(lmforge("pretrain", "--data", tmp_path / "empty.txt", "--out", tmp_path / "run"), "empty")
    assert not (tmp_path / "run").exists()


def test_binary_file(tmp_path):
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 10)
    assert_user_error(lmforge("prepare", "--data", tmp_path / "blob.txt", "--out", tmp_path / "data"), "blob.txt")
    assert not (tmp_path / "data").exists()


def test_unknown_preset(corpus, tmp_path):
    assert_user_error(lmforge("pretrain", "--data", corpus / "corpus.txt", "--model", "gpt2-125m",
                              "--out", tmp_path / "run"), "gpt2-125m", "gpt2-124m")
    assert not (tmp_path / "run").exists()


def test_negative_learning_rate(corpus, tmp_path):
    assert_user_error(lmforge("pretrain", "--data", corpus / "corpus.txt", "--train.lr", "-0.001",
                              "--out", tmp_path / "run"), "train.lr")
    assert not (tmp_path / "run").exists()


def test_context_longer_than_model(trained, corpus, tmp_path):
    assert_user_error(lmforge("pretrain", "--data", corpus / "data", "--model", "debug", "--train.seq_len", "4096",
                              "--out", tmp_path / "run"), "train.seq_len", "context length")
    assert not (tmp_path / "run").exists()
    r = lmforge("generate", "--model", trained, "--prompt", "x" * 500, "--max_new_tokens", "5")
    assert_user_error(r, "context")


def test_corrupt_checkpoint(trained, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 3])
    assert_user_error(lmforge("generate", "--model", broken, "--prompt", "The"), "model.safetensors")


def test_bad_option_value_and_unknown_option(tmp_path):
    assert_user_error(lmforge("pretrain", "--data", "python-docs", "--train.lr", "fast", "--out", tmp_path / "r"),
                      "train.lr")
    assert_user_error(lmforge("pretrain", "--data", "python-docs", "--train.learning_rate", "1",
                              "--out", tmp_path / "r"), "learning_rate")
    assert not (tmp_path / "r").exists()


def test_existing_run_directory_needs_resume(trained):
    assert_user_error(lmforge("pretrain", "--data", "python-docs", "--out", trained), "--resume")


def test_resume_without_checkpoints(tmp_path):
    assert_user_error(lmforge("pretrain", "--data", "python-docs", "--out", tmp_path / "none", "--resume"),
                      "nothing to resume")


def test_pretrain_init_from_continues_from_the_runs_weights_and_tokenizer(trained, corpus, tmp_path):
    from safetensors.torch import load_file

    other = tmp_path / "other.txt"
    other.write_text("All the world's a stage, and all the men and women merely players.\n" * 60)
    run = tmp_path / "continued"
    r = lmforge("pretrain", "--data", other, "--init_from", trained, "--train.max_steps", "1", "--train.lr", "1e-12",
                "--train.warmup_steps", "0", "--train.batch_size", "4", "--train.seq_len", "64",
                "--train.progress", "false", "--out", run)
    assert r.returncode == 0, r.stderr
    assert (run / "tokenizer.json").read_text() == (trained / "tokenizer.json").read_text()
    assert json.loads((run / "config.json").read_text()) == json.loads((trained / "config.json").read_text())
    before, after = load_file(str(trained / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert before.keys() == after.keys()
    for key in before:  # one step at lr 1e-12 leaves the weights where the first run ended
        assert (before[key] - after[key]).abs().max() < 1e-6, key
    assert json.loads((run / "summary.json").read_text())["steps"] == 1


def test_pretrain_init_from_a_missing_folder(corpus, tmp_path):
    assert_user_error(lmforge("pretrain", "--data", corpus / "corpus.txt", "--init_from", tmp_path / "nope",
                              "--out", tmp_path / "r"), "nope")
    assert not (tmp_path / "r").exists()


def test_a_bad_model_shape_is_reported_before_any_data_work(corpus, tmp_path):
    # 7 heads cannot split a width of 64: known from the recipe alone, so no progress bar, no data written.
    r = lmforge("pretrain", "--data", corpus / "corpus.txt", "--model", "debug", "--model.n_head", "7",
                "--model.n_embd", "64", "--out", tmp_path / "run")
    assert_user_error(r, "n_head")
    assert "%" not in r.stderr and not (tmp_path / "run").exists()


def test_a_bad_finetune_start_is_reported_before_any_data_work(tmp_path):
    # The training file does not even need to be read to know the preset cannot take these sizes.
    train = tmp_path / "train.tsv"
    train.write_text("good\tpos\nbad\tneg\n" * 20)
    r = lmforge("finetune", "--task", "classify", "--data", train, "--model", "debug", "--model.n_head", "7",
                "--model.n_embd", "64", "--out", tmp_path / "run")
    assert_user_error(r, "n_head")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("verb", ["prepare", "pretrain", "finetune", "demo"])
def test_out_that_is_a_file_fails_up_front(verb, corpus, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    data = {"prepare": ["--data", corpus / "corpus.txt"], "pretrain": ["--data", corpus / "corpus.txt"],
            "finetune": ["--task", "classify", "--data", corpus / "corpus.txt"], "demo": []}[verb]
    assert_user_error(lmforge(verb, *data, "--out", taken), f"--out {taken} is a file")
    assert_user_error(lmforge(verb, *data, "--out", taken / "inside"), "which is a file")
    assert taken.read_text() == "keep me"


def test_a_mistyped_flag_gets_the_closest_one_and_abbreviations_are_refused(trained):
    assert_user_error(lmforge("generate", "--model", trained, "--promt", "hi"), "--promt",
                      "did you mean --prompt?")
    # A prefix is not a flag: `--max_new_token` could mean something else once more flags exist.
    assert_user_error(lmforge("generate", "--model", trained, "--max_new_token", "3"),
                      "did you mean --max_new_tokens?")
    assert_user_error(lmforge("pretrain", "--data", "x", "--train.max_step", "3", "--out", "unused"),
                      "did you mean --train.max_steps?")


def test_a_missing_recipe_names_the_recipes_that_exist(tmp_path):
    assert_user_error(lmforge("finetune", "--config", tmp_path / "sst.yaml", "--out", tmp_path / "run"),
                      f"config file {tmp_path / 'sst.yaml'} not found", "configs/finetune/sst2.yaml")


def test_documents_passed_as_text_are_named(tmp_path):
    pdf = tmp_path / "paper.pdf"
    pdf.write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    assert_user_error(lmforge("prepare", "--data", pdf, "--out", tmp_path / "d"), "is a PDF document", "pdftotext")
    docx = tmp_path / "notes.docx"
    docx.write_bytes(b"PK\x03\x04" + bytes(40))
    assert_user_error(lmforge("prepare", "--data", docx, "--out", tmp_path / "d"), "zip archive")


def test_several_completions_are_numbered_and_json_gives_one_object_per_prompt(trained):
    args = ["generate", "--model", trained, "--prompt", '["The quick", "A journey"]', "--num_samples", "2",
            "--max_new_tokens", "5", "--seed", "0", "--temperature", "0.8"]
    plain = lmforge(*args, "--no_stream")
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert [line[:5] for line in lines if line.startswith("[")] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    rows = [json.loads(line) for line in lmforge(*args, "--json").stdout.splitlines()]
    assert [r["prompt"] for r in rows] == ["The quick", "A journey"] and all(len(r["samples"]) == 2 for r in rows)
    streamed = lmforge(*args)
    assert streamed.stdout.count("[1/4] The quick") == 1 and "[4/4] A journey" in streamed.stdout


def test_model_aliases_users_type_resolve_to_presets():
    from lmforge.models.registry import preset_config

    assert preset_config("gpt2") == preset_config("gpt2-small") == preset_config("gpt2-124m")
    assert preset_config("bert-base-uncased") == preset_config("bert-base")
    assert preset_config("gpt2-medium") == preset_config("gpt2-355m")
