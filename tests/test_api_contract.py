"""The OpenAPI document is valid and the live service honours it (schemathesis)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from openapi_spec_validator import validate

from tests.services import FACES, Env, http, wait_until

RUNS = {
    # Every check, on every operation but the two that take a body needing real content.
    "routes": ["--exclude-path", "/scan/url", "--exclude-path", "/scan/image/{filename}",
               "--exclude-path", "/search"],
    # A schema cannot say "a decodable image": random bytes are schema-valid yet rightly
    # refused with 400, so only positive_data_acceptance is left out here.
    "upload": ["--include-path", "/scan/image/{filename}", "--include-path", "/search",
               "--exclude-checks", "positive_data_acceptance"],
}
# /scan/url is not fuzzed: random URLs would make the service fetch from the internet.
# tests/test_rest_inputs.py and the SSRF tests cover it with local servers.


def test_the_served_openapi_document_is_valid_openapi_3(env: Env) -> None:
    rest = env.start_rest()
    doc = http("GET", f"{rest}/openapi.json").body
    validate(doc)
    assert set(doc["paths"]) >= {"/scan/image/{filename}", "/scan/url", "/match/{image_hash}",
                                 "/image/{image_hash}", "/", "/healthz", "/readyz", "/metrics",
                                 "/name/{name}"}
    assert doc["paths"]["/image/{image_hash}"]["delete"]["x-facerec-scope"] == "full"
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_schemathesis_finds_no_server_error_and_no_response_off_the_schema(
        env: Env, tmp_path: Path) -> None:
    # With credentials configured, as a deployment has them: the full one is sent.
    rest = env.start_rest(API_KEYS="contract:full:contract-secret,r:read:read-secret-1")
    # A worker, so that POST /search is answered (with none it is a documented 503).
    env.start_worker()
    photo = (FACES / "obama/obama_small.jpg").read_bytes()
    auth = {"Authorization": "Bearer contract-secret"}
    wait_until(lambda: http("POST", f"{rest}/search", photo, headers=auth).status == 200, 120,
               "the worker to serve searches")
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert exe, "schemathesis is not installed (requirements/test.txt)"
    config = Path(__file__).with_name("schemathesis.toml")
    for name, args in RUNS.items():
        result = subprocess.run(
            [exe, "--config-file", str(config), "run", f"{rest}/openapi.json", "--checks", "all",
             "--max-examples", "40",
             "--seed", "1", "--phases", "examples,coverage,fuzzing", "--warnings", "off",
             "--report-dir", str(tmp_path), "--header",
             "Authorization: Bearer contract-secret", *args],
            capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{name}:\n{result.stdout[-6000:]}\n{result.stderr}"
        assert "No issues found" in result.stdout, result.stdout[-3000:]
