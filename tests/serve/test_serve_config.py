"""ServeConfig checks every setting before a model is loaded, with the messages the CLI prints."""
from pathlib import Path

import pytest

from lmforge.errors import ConfigError
from lmforge.serve.app import create_app
from lmforge.serve.config import ServeConfig


@pytest.mark.parametrize("settings, message", [
    ({"max_tokens_limit": 0}, "max_tokens_limit must be >= 1, got 0"),
    ({"max_body_bytes": 0}, "max_body_bytes must be >= 1, got 0"),
    ({"max_concurrent": -1}, "max_concurrent must be >= 1, got -1"),
    ({"max_prompt_tokens": 0}, "max_prompt_tokens must be >= 1, got 0"),
    ({"dtype": "float16"}, "dtype must be one of float32, bfloat16, got 'float16'"),
    ({"task_models": {"chat": "runs/c"}}, "unknown task 'chat' for a task model"),
    ({"task_models": {"classify": "runs/c"}, "model_name": "classify"},
     "the generation model's name 'classify' is also a task name"),
])
def test_invalid_settings_are_refused_before_loading(tmp_path, settings, message):
    missing_run = tmp_path / "never-read"
    with pytest.raises(ConfigError) as e:
        ServeConfig(missing_run, **settings)
    assert str(e.value).startswith(message)


def test_unknown_task_lists_the_routed_tasks():
    with pytest.raises(ConfigError) as e:
        ServeConfig("runs/x", task_models={"sentiment": "runs/c"})
    assert "use one of: classify, ner, qa, translate, summarize" in str(e.value)


def test_defaults_and_derived_values(tmp_path):
    config = ServeConfig(tmp_path / "demo", api_keys=["a", "b"], task_models=None)
    assert config.served_name == "demo" and config.api_keys == ("a", "b") and config.task_models == {}
    assert config.batched_tokens() == 512
    assert ServeConfig("runs/demo", model_name="tiny", max_slots=1024).batched_tokens() == 1024
    limits = ServeConfig("runs/demo", max_prompt_tokens=500, max_tokens_limit=40, request_timeout=None).limits(128)
    assert (limits.max_prompt_tokens, limits.max_tokens_limit, limits.request_timeout) == (127, 40, None)
    assert ServeConfig("runs/demo").limits(1024).max_prompt_tokens == 1023


def test_create_app_takes_a_config_or_keywords_but_not_both():
    with pytest.raises(TypeError, match="max_slots"):
        create_app(ServeConfig(Path("runs/demo")), max_slots=2)
    with pytest.raises(ConfigError, match="max_concurrent"):
        create_app("runs/demo", max_concurrent=0)
