"""PamModel.ask: the affordance score on the tiny fixture, checked against the official first-step logits
(golden.safetensors) and against the model's own first step."""
from __future__ import annotations

import math

import pytest
import torch
from pam_tiny_fixture import golden, image_cases

from pam_ros.errors import TaskError
from pam_ros.model.tasks import AFFORDANCE_QUESTION, affordance_question, chat_prompt

QUERY = "cutting paper"
QUESTION = "<image>\nCan this object be used for the following: cutting paper? Answer yes or no."


@pytest.fixture(scope="module")
def objects(pam_model, decoded_image_cases):
    """One frame's features of every fixture object (the image cases' prompts)."""
    return [pam_model.region_features(dec, 0) for _, (_, dec) in sorted(decoded_image_cases.items())]


def first_step_logits(pam, features, user_turn: str) -> torch.Tensor:
    """What generation sees at its first position for this prompt (the decode loop's own logits)."""
    _, embeds = pam.prepare(features, None, prompt=user_turn)
    settings = pam.generation_settings(max_new_tokens=1)
    return pam.language.generate(embeds, settings, pam.tokenizer, return_logits=True).step_logits[0]


def test_the_default_question_is_the_documented_one():
    assert affordance_question(QUERY) == QUESTION
    assert AFFORDANCE_QUESTION.replace("{query}", "x") == (
        "<image>\nCan this object be used for the following: x? Answer yes or no.")
    assert affordance_question("  holding {water}  ") == QUESTION.replace("cutting paper", "holding {water}")


def test_score_reads_the_first_step_logits_of_yes_and_no(pam_model, objects):
    yes_id = pam_model.tokenizer("Yes", add_special_tokens=False).input_ids[0]
    no_id = pam_model.tokenizer("No", add_special_tokens=False).input_ids[0]
    for features in objects:
        (answer,) = pam_model.ask(features, QUERY)
        logits = first_step_logits(pam_model, features, QUESTION)
        assert answer.yes_logit == pytest.approx(float(logits[yes_id]), abs=1e-4)
        assert answer.no_logit == pytest.approx(float(logits[no_id]), abs=1e-4)
        assert answer.log_odds == pytest.approx(answer.yes_logit - answer.no_logit, abs=1e-6)
        expected = math.exp(answer.yes_logit) / (math.exp(answer.yes_logit) + math.exp(answer.no_logit))
        assert answer.score == pytest.approx(expected, rel=1e-6)
        assert answer.query == QUERY


def official_yes_no(case: dict, tokenizer) -> tuple[float, float]:
    """The official reference's raw first-step logits of "Yes" and "No" for a fixture case."""
    logits = golden()[f"{case['case']}.llm.first_step_logits"][0]
    yes_id = tokenizer("Yes", add_special_tokens=False).input_ids[0]
    no_id = tokenizer("No", add_special_tokens=False).input_ids[0]
    return float(logits[yes_id]), float(logits[no_id])


def test_log_odds_are_the_official_first_step_logits(pam_model, decoded_image_cases):
    """Asked with the fixture case's own question (its task text as the template, "subject" as the query),
    ask's prompt is the official prompt, so its yes/no logits are the official first-step logits
    (README: 1e-3 on logits)."""
    differences = []
    for case in image_cases():
        template = case["task_prompt"].replace("subject", "{query}")
        assert chat_prompt(affordance_question("subject", template)) == case["prompt_text"]
        _, dec = decoded_image_cases[case["case"]]
        (answer,) = pam_model.ask(pam_model.region_features(dec, 0), "subject", template=template)
        yes, no = official_yes_no(case, pam_model.tokenizer)
        assert answer.yes_logit == pytest.approx(yes, abs=1e-3), case["case"]
        assert answer.no_logit == pytest.approx(no, abs=1e-3), case["case"]
        assert answer.log_odds == pytest.approx(yes - no, abs=2e-3), case["case"]
        assert answer.score == pytest.approx(float(torch.tensor([yes, no]).softmax(0)[0]), abs=1e-3), case["case"]
        differences.append(round(yes - no, 2))
    assert len(set(differences)) == len(differences), f"the cases must tell apart: {differences}"


def test_a_batch_answers_as_each_object_alone_and_ranks_the_same(pam_model, objects):
    batched = pam_model.ask(objects, QUERY)
    alone = [pam_model.ask(features, QUERY)[0] for features in objects]
    assert len(batched) == len(objects)
    for together, single in zip(batched, alone):
        assert together.log_odds == pytest.approx(single.log_odds, abs=1e-4)
    rank = sorted(range(len(objects)), key=lambda i: -batched[i].score)
    assert rank == sorted(range(len(objects)), key=lambda i: -alone[i].score)
    assert len({round(a.score, 6) for a in alone}) == len(alone), "ties would make the ranking check vacuous"


def test_one_prefill_for_all_objects_and_no_decoding(pam_model, objects):
    calls = []
    hook = pam_model.language.llm.register_forward_hook(lambda module, args, kwargs, out: calls.append(
        kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
    try:
        pam_model.ask(objects, QUERY)
        pam_model.ask(objects, QUERY, batch_size=2)
    finally:
        hook.remove()
    assert calls == [len(objects)] + [2] * (len(objects) // 2) + [1] * (len(objects) % 2)


def test_another_question_template_is_used_when_given(pam_model, objects):
    template = "<image>\nIs this good for {query}? Answer yes or no."
    (answer,) = pam_model.ask(objects[0], QUERY, template=template)
    logits = first_step_logits(pam_model, objects[0], "<image>\nIs this good for cutting paper? Answer yes or no.")
    yes_id = pam_model.tokenizer("Yes", add_special_tokens=False).input_ids[0]
    assert answer.yes_logit == pytest.approx(float(logits[yes_id]), abs=1e-4)


@pytest.mark.parametrize("query, template, problem", [
    ("", AFFORDANCE_QUESTION, "the query is empty"),
    ("   \n", AFFORDANCE_QUESTION, "the query is empty"),
    ("cutting", "<image>\nCan this cut?", "must contain {query}"),
    ("cutting", "Can this be used for {query}?", "exactly one <image>"),
])
def test_unaskable_queries_are_refused(pam_model, objects, query, template, problem):
    with pytest.raises(TaskError, match=problem):
        pam_model.ask(objects, query, template=template)


def test_no_objects_no_answers(pam_model):
    assert pam_model.ask([], QUERY) == []
