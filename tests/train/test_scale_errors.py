"""Bad input to the scale-out options through `lmforge pretrain`: one `error:` line, exit status 2, and no
run directory left behind by a run that could not start."""
import shutil

import pytest

from cli_run import assert_user_error, with_threads, write_corpus

TEXT = "The quick brown fox jumps over the lazy dog. To be, or not to be, that is the question.\n" * 60

lmforge = with_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_corpus(tmp_path_factory, "scale", TEXT)
    r = lmforge("prepare", "--data", root / "corpus.txt", "--tokenizer", "char", "--out", root / "data")
    assert r.returncode == 0, r.stderr
    return root / "data"


def pretrain(data, out, *options):
    return lmforge("pretrain", "--data", data, "--model.block_size", "32", "--train.batch_size", "2",
                   "--train.progress", "false", "--train.eval_interval", "2", "--out", out, *options)


def test_fsdp_with_a_family_that_has_no_transformer_blocks(data, tmp_path):
    r = pretrain(data, tmp_path / "run", "--model", "lstm-debug", "--train.parallel", "fsdp")
    assert_user_error(r, "no transformer blocks", "--train.parallel ddp")
    assert not (tmp_path / "run").exists()


def test_a_global_batch_the_processes_do_not_divide(data, tmp_path):
    r = pretrain(data, tmp_path / "run", "--model", "llama-debug", "--train.global_batch_size", "5")
    assert_user_error(r, "train.global_batch_size (5) is not a multiple", "--train.global_batch_size 4")
    assert not (tmp_path / "run").exists()


def test_background_saves_of_whole_weight_checkpoints(data, tmp_path):
    r = pretrain(data, tmp_path / "run", "--model", "llama-debug", "--train.async_checkpoint", "true")
    assert_user_error(r, "train.async_checkpoint writes sharded checkpoints", "--train.checkpoint_format sharded")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def sharded_run(data):
    run = data.parent / "sharded"
    r = pretrain(data, run, "--model", "llama-debug", "--train.max_steps", "2", "--train.checkpoint_format",
                 "sharded")
    assert r.returncode == 0, r.stderr
    return run


def test_convert_makes_one_hugging_face_folder_from_a_sharded_run(sharded_run, tmp_path):
    assert not (sharded_run / "model.safetensors").exists()
    r = lmforge("convert", sharded_run, tmp_path / "hf", "--to", "hf")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (tmp_path / "hf" / "config.json").is_file()


def test_resuming_a_sharded_checkpoint_with_another_model_shape(data, sharded_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sharded_run, run)
    r = pretrain(data, run, "--model", "llama-debug", "--model.intermediate_size", "96",
                 "--train.max_steps", "4", "--train.checkpoint_format", "sharded", "--resume")
    assert_user_error(r, "sharded checkpoint", "of shape", "resume with the model config")
