"""The OpenAPI document tells the truth: schemathesis fuzzes every operation of `/api/schema/` against the live app
(ASGI on a real port, the registry loaded, the simulated upstream answering) as a top-tier user with a hub API key,
with every check it has: no 5xx, every status and body documented and matching, schema-valid requests accepted,
schema-invalid ones refused, and so on.

Reproducible: a fixed seed and a bounded number of examples per operation (`SCHEMA_FUZZ_EXAMPLES`). A failure names
the operation and prints a curl command that replays it.
"""

import os

import langcodes
import pytest
import schemathesis
import schemathesis.engine
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events

SEED = 13
EXAMPLES = int(os.environ.get("SCHEMA_FUZZ_EXAMPLES", "25"))


def _config(api_key: str) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        "seed": SEED,
        "headers": {"Authorization": f"Bearer {api_key}"},
        "generation": {"max-examples": EXAMPLES},
        "request-timeout": 30,
    })


@pytest.fixture
def fuzzer(live_hub, make_user, api_key_for, settings, simulated_upstream):
    """A top-tier user (not staff) whose base URLs may reach the simulated upstream."""
    settings.LLMHUB = {**settings.LLMHUB, "SSRF_ALLOWLIST": [f"127.0.0.1:{simulated_upstream.port}"]}
    return api_key_for(make_user("fuzzer", tier="enterprise"))


def realistic(case):
    """What no schema can state, because it depends on the world rather than the request's shape, made true in the
    schema-valid (positive) cases: a user's base URL must resolve to an address our servers may reach (here: the
    simulated upstream, on the allowlist), and a language tag must be registered in BCP 47 ("jp" is well-formed but
    no language). Negative cases are sent as generated."""
    if case.meta is None or not case.meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return case
    if "base_url" in case.body:
        case.body["base_url"] = case.operation.schema.simulator_url
    for name in ("target_language", "source_language"):
        if name in case.body and not (isinstance(case.body[name], str) and langcodes.tag_is_valid(case.body[name])):
            case.body[name] = "fr"
    return case


def fuzz(schema_url: str, *, api_key: str, simulator_url: str) -> tuple[list[str], int]:
    """Runs every schemathesis phase over the schema; returns the failures (readable, with a curl command that
    replays each) and how many test cases ran."""
    schema = schemathesis.openapi.from_url(schema_url, config=_config(api_key))
    schema.simulator_url = simulator_url
    schema.hook("map_case")(lambda context, case: realistic(case))
    failures, cases = [], 0
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.FatalError):
            raise event.exception
        if isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: {event.info.format()}")
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            cases += len(event.recorder.cases)
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failures.append(f"{event.recorder.label} [{check.name}] {check.failure_info.failure.title}: "
                                        f"{check.failure_info.failure.message}\n    {check.failure_info.code_sample}")
    return sorted(set(failures)), cases


def test_it_answers_every_api_operation_as_its_schema_says(live_hub, fuzzer, simulated_upstream):
    failures, cases = fuzz(f"{live_hub}/api/schema/?format=json", api_key=fuzzer,
                           simulator_url=simulated_upstream.base_url)

    assert not failures, f"{len(failures)} failures in {cases} cases:\n" + "\n".join(failures)
    assert cases > 100
