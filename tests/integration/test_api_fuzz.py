"""The read API fuzzed by schemathesis from its own OpenAPI document, over a real socket.

Every operation gets valid and invalid requests (schemathesis's positive and negative
modes) and every response goes through schemathesis's default checks: no server error,
status code, content type, headers and body as the document declares them, invalid
requests refused and valid ones accepted. It runs three times: a server without a token,
and a server with ``API_TOKEN`` asked with the token and without it.

Bounded by :data:`EXAMPLES_PER_OPERATION` per operation and mode, so a run takes about a
minute; derandomized under CI=true like the other property tests (tests/conftest.py).
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from pymongo.database import Database
from schemathesis import Case, GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from telemetry.api import ApiServer
from tests.integration.api_support import (
    BASE,
    api_settings,
    create_indexes,
    gpu_doc,
    point_doc,
    store,
)
from tools.openapi import openapi_document

EXAMPLES_PER_OPERATION = 40
BETWEEN_PARAMETERS = frozenset(
    {"invalid_agg", "invalid_window", "window_too_large", "invalid_step"}
)
TOKEN = "fuzz-token"
GPU = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"  # the spec's example uuid, so it is found


def _stored(database: Database[Any]) -> None:
    """A GPU with points of the whole GPU and of a MIG instance, for 200s with bodies."""
    create_indexes(database)
    store(
        database,
        [
            point_doc(GPU, metric, BASE + timedelta(seconds=second), second, "host-a")
            for metric in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP")
            for second in range(5)
        ]
        + [point_doc(GPU, "DCGM_FI_DEV_GPU_UTIL", BASE, 1.0, "host-a", gpu_instance="13")],
    )
    database["gpus"].update_one(
        {"_id": GPU},
        {"$set": gpu_doc(GPU, "mtv5-dgx1-hgpu-031", BASE, BASE, device="nvidia0")},
    )


def _fuzz(operation: Any, mode: GenerationMode, url: str, headers: dict[str, str]) -> int:
    """Send generated requests of one operation and mode; each response must pass every
    default check. Returns how many were sent."""
    sent = 0
    cases = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:
        # A cursor is opaque: only one a page returned is valid, which no schema can
        # describe, so a made-up one is a 400 however well-formed (test_api.py pages).
        cases = cases.filter(lambda case: "cursor" not in (case.query or {}))

    # /telemetry's rules between parameters (agg needs step, step needs both ends, a window
    # of at most 31 days, a step of 1s to 1d, start before end) cannot be written in
    # OpenAPI: a schema-valid request breaking one is a 400 naming that rule, and only then.
    narrowed = mode is GenerationMode.POSITIVE and operation.path.endswith("/telemetry")

    @settings(
        settings.default,
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=cases)
    def send(case: Case) -> None:
        nonlocal sent
        if narrowed:
            response = case.call_and_validate(
                base_url=url, headers=headers, excluded_checks=[positive_data_acceptance]
            )
            if response.status_code == 400:
                assert response.json()["error"] in BETWEEN_PARAMETERS, response.text
        else:
            case.call_and_validate(base_url=url, headers=headers)
        sent += 1

    try:
        send()
    except Unsatisfiable:
        # No invalid request exists for an operation without parameters (the probes).
        if mode is not GenerationMode.NEGATIVE or sent:
            raise
    return sent


@pytest.mark.parametrize(
    ("server_token", "sent_token"),
    [(None, None), (TOKEN, TOKEN), (TOKEN, None)],
    ids=["no-token", "token", "token-missing"],
)
def test_every_response_to_generated_requests_conforms_to_the_spec(
    mongo_server: Any,
    database: Database[Any],
    server_token: str | None,
    sent_token: str | None,
) -> None:
    # given: the API on a real socket, on a database with a GPU in it
    _stored(database)
    overrides = {"api_token": server_token} if server_token else {}
    headers = {"Authorization": f"Bearer {sent_token}"} if sent_token else {}
    cases: Counter[str] = Counter()
    with ApiServer(api_settings(mongo_server.uri, database.name, **overrides)) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 6
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                # when / then: see _fuzz
                cases[f"{operation.label} {mode.value}"] = _fuzz(
                    operation, mode, server.url, headers
                )
    total = sum(cases.values())
    server_has = "with" if server_token else "without"
    request_has = "with" if sent_token else "without"
    print(f"schemathesis, API_TOKEN {server_has}, requests {request_has}: {total} cases", cases)
    assert total >= len(operations) * 2 * 5, cases


def test_the_spec_declares_the_errors_the_api_returns_and_no_other() -> None:
    spec = openapi_document()
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            declared = set(operation["responses"])
            assert "422" not in declared, path  # validation errors are 400s here
            if path.startswith("/api/"):
                assert {"200", "400", "401", "503"} <= declared, path
                # the token is checked only when the server has one
                assert {} in operation["security"], path
            if "{uuid}" in path:
                assert "404" in declared, path
