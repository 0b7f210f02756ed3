"""Label-likelihood classification against a naive reference that scores every label with its own full forward
pass, prompt templates (variables, exemplars, errors) and contextual calibration against a hand computation."""
import pytest
import torch

from lmforge.data.prompts import BUILTIN_TEMPLATES, PromptTemplate, load_template
from lmforge.data.tokenizers import train_tokenizer
from lmforge.errors import ConfigError
from lmforge.infer.label_likelihood import calibrate, label_logprobs
from lmforge.models.registry import build_model

TEXTS = ["a warm and funny film", "a dull and tired film", "the best movie of the year", "a waste of money"]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tok = train_tokenizer("bpe", [f"Review: {t}\nSentiment: positive negative" for t in TEXTS] * 5, vocab_size=300)
    torch.manual_seed(0)
    return build_model("debug", init_std=0.2, vocab_size=tok.vocab_size, block_size=256).eval(), tok


def naive_label_logprob(model, tok, prompt: str, verbalizer: str, delimiter: str) -> float:
    """One full forward pass over exactly this prompt and this label; the label's tokens are those past the
    prompt's own tokens."""
    whole, context = tok.encode(prompt + delimiter + verbalizer), tok.encode(prompt)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole[:-1]]))[0].double(), -1)
    return sum(float(logprobs[i - 1, whole[i]]) for i in range(len(context), len(whole)))


@pytest.mark.parametrize("template", ["sst2/cloze", "sst2/instruction", "sst2/qa"])
def test_label_scores_equal_one_full_pass_per_label(model_and_tokenizer, template):
    model, tok = model_and_tokenizer
    tpl = BUILTIN_TEMPLATES[template]
    shots = [{"text": TEXTS[0], "label": "1"}, {"text": TEXTS[1], "label": "0"}]
    prompts = [tpl.prompt({"text": t}, shots) for t in TEXTS[2:]] + [tpl.prompt({"text": TEXTS[3]})]
    verbalizers = list(tpl.verbalizers.values())
    got = label_logprobs(model, tok, prompts, verbalizers, delimiter=tpl.target_delimiter, max_batch_tokens=64)
    expected = [[naive_label_logprob(model, tok, p, v, tpl.target_delimiter) for v in verbalizers] for p in prompts]
    assert got.shape == (len(prompts), len(verbalizers))
    assert got.flatten().tolist() == pytest.approx([v for row in expected for v in row], abs=1e-5)


def test_a_prompt_is_instruction_exemplars_then_query():
    tpl = BUILTIN_TEMPLATES["sst2/instruction"]
    text = tpl.prompt({"text": "so good"}, [{"text": "bad", "label": "0"}, {"text": "fine", "label": 1}])
    assert text == ("Say whether each movie review is positive or negative.\n\nReview: bad\nAnswer: negative\n\n"
                    "Review: fine\nAnswer: positive\n\nReview: so good\nAnswer:")
    assert BUILTIN_TEMPLATES["trec/cloze"].exemplar({"text": "Who?", "label": "HUM:ind"}) == \
        "Question: Who?\nAnswer type: person"


def test_template_errors_are_clear(tmp_path):
    tpl = PromptTemplate("t", query="Q: {question} ({source})", verbalizers={"a": "yes", "b": "no"})
    with pytest.raises(ConfigError, match=r"uses \{source\}, which the example does not have"):
        tpl.fill({"question": "why"})
    with pytest.raises(ConfigError, match="label 'c' has no verbalizer"):
        tpl.exemplar({"question": "x", "source": "y", "label": "c"})
    (tmp_path / "bad.yaml").write_text("query: '{text}'\nverbalizers: {a: yes, b: no}\nanswer_prefix: x\n")
    with pytest.raises(ConfigError, match="unknown template field 'answer_prefix'"):
        load_template(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="no prompt template 'sst2/nope'"):
        load_template("sst2/nope")
    (tmp_path / "good.yaml").write_text('query: "Text: {text}\\nTopic:"\nverbalizers: {0: sport, 1: food}\n')
    assert load_template(tmp_path / "good.yaml").exemplar({"text": "goal", "label": 0}) == "Text: goal\nTopic: sport"


def test_calibration_matches_the_hand_computation():
    probs = torch.tensor([[0.7, 0.3], [0.5, 0.5]], dtype=torch.float64)
    content_free = torch.tensor([[0.6, 0.4], [0.8, 0.2]], dtype=torch.float64)  # mean (0.7, 0.3)
    got = calibrate(probs, content_free)
    # W = diag(1 / 0.7, 1 / 0.3): (0.7 / 0.7, 0.3 / 0.3) = (1, 1) -> (0.5, 0.5); (0.5 / 0.7, 0.5 / 0.3) -> softmax.
    second = torch.softmax(torch.tensor([0.5 / 0.7, 0.5 / 0.3], dtype=torch.float64), -1)
    assert got[0].tolist() == pytest.approx([0.5, 0.5])
    assert got[1].tolist() == pytest.approx(second.tolist())
    assert int(got[1].argmax()) == 1  # the label the model is biased against wins a tie
