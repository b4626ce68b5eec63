"""schemathesis hooks for tests/schemathesis/run.sh (loaded through SCHEMATHESIS_HOOKS).

schemathesis cannot validate `application/x-ndjson` answers itself; the check `ndjson_events`
validates every line of one against the document's `Event` schema (the schema of one line),
with jsonschema_rs, which schemathesis itself depends on.
"""

import json
import os

import jsonschema_rs
import schemathesis

with open(os.environ["BURROW_OPENAPI_DOC"], encoding="utf-8") as f:
    _DOC = json.load(f)
_EVENT = jsonschema_rs.Draft4Validator(_DOC["components"]["schemas"]["Event"])


@schemathesis.check
def ndjson_events(ctx, response, case):
    """Every line of an NDJSON answer is one JSON object matching `Event`."""
    media = (response.headers.get("content-type") or [""])[0].split(";")[0].strip()
    if media != "application/x-ndjson" or response.stream_cut_short:
        return None
    body = response.content
    if not body.endswith(b"\n"):
        # The gateway ends every line with a newline and the answer with the last chunk (a cut on
        # its side is a broken chunked body, which the client reports itself). A body without a
        # final newline was cut by the client: a stream still following a live job read up to
        # the request timeout. Its last, partial line is not checked.
        body = body[: body.rfind(b"\n") + 1]
    # Split on "\n" alone: `splitlines` also splits on U+2028 and friends, which JSON strings
    # carry unescaped (a refused path the fuzzer made up, echoed in an error event).
    lines = [line for line in body.decode("utf-8").split("\n") if line]
    if not lines and not response.content:
        raise AssertionError("an NDJSON answer without a line")
    for n, line in enumerate(lines, 1):
        event = json.loads(line)
        errors = list(_EVENT.iter_errors(event))
        if errors:
            raise AssertionError(f"line {n} does not match Event: {errors[0].message}: {line}")
    return True
