"""`POST /v1/explain`: why a served classifier or tagger gave its answer, as the explain viewer draws it.

    {"task": "classify", "input": text or texts, "method": "attention"|"rollout"|"ig"|"saliency", "target"?}
    -> {"object": "list", "model", "task", "data": [explanation, ...]}

Each explanation is what `lmforge explain` writes to explanations.json for the text (tokens, target, its
probability, the method's token scores, IG's completeness figures) plus its attention maps
{kind: [layer][head][query][key]}. The explained model is the one `/v1/<task>` serves, under the same lock.
`GET /explain/viewer` is the explain viewer's page, which the playground's Explain tab fills with an explanation.
"""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from lmforge.runs.explain import explain_one
from lmforge.explain.viewer import viewer_example, viewer_template
from lmforge.runs.explain_subjects import ExplainedRun
from lmforge.serve.errors import APIError
from lmforge.serve.routes.info import PLAYGROUND_HEADERS
from lmforge.serve.routes.tasks import run_task
from lmforge.serve.schemas import ExplainRequest
from lmforge.serve.state import ServerState
from lmforge.serve.task_endpoints import explainable_tasks

EXPLAIN_ROUTES = ("/v1/explain", "/explain/viewer")


def add_explain_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/v1/explain")
    async def explain(body: ExplainRequest):
        if body.task not in explainable_tasks(state.tasks):
            served = ", ".join(explainable_tasks(state.tasks)) or "none"
            raise APIError(404, f"no served task model {body.task!r} to explain (explainable here: {served})",
                           param="task", code="model_not_found")
        endpoint = state.tasks[body.task]
        texts = [body.input] if isinstance(body.input, str) else list(body.input)

        def explain_texts() -> list[dict]:
            run = ExplainedRun(endpoint.run_dir, loaded=(endpoint.pipeline.model, endpoint.pipeline.task))
            explained = [explain_one(run, text, body.method, body.target) for text in texts]
            return [viewer_example(record, {k: m.numpy() for k, m in maps.items()}) for record, maps in explained]

        return await run_task(state, body.task, None, explain_texts)

    page = viewer_template()

    @app.get("/explain/viewer", response_class=HTMLResponse)
    async def viewer():
        return HTMLResponse(page, headers=PLAYGROUND_HEADERS)
