"""Judges: reply parsing, the OpenAI-compatible client against a real loopback server (retries,
timeouts, errors, caching, secrets), official prompts read without executing code, and the local
transformers judge on a tiny random VLM (whose replies cannot be parsed: the failure path)."""
from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import BenchmarkDataError
from benchmarks.judges.base import (
    JudgeError, JudgeFatalError, JudgeRequest, JudgeRunner, ReplyParseError, parse_score_json, preflight, scrub,
)
from benchmarks.judges.cache import JudgeCache, image_digest, request_key
from benchmarks.judges.openai_api import OpenAIJudge, OpenAIJudgeConfig
from benchmarks.judges.prompts import (
    OFFICIAL, UNOFFICIAL, imgedit_prompts, read_string_constants, uge_prompt, viescore_prompts,
)
from tests.bench_fixtures import VIE_TEST_CONSTANTS, solid, write_code_with_prompts
from benchmarks.imgedit import official_line_scores
from tests.judge_server import (
    ChatServer, Response, binary, echo, empty_body, error, free_port_url, malformed, reply, slow, undecodable,
)

SECRET = "sk-test-Zq81-SECRET-do-not-leak"
GOOD = '{"score": [7, 4], "reasoning": "fine"}'


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    return "JUDGE_TEST_KEY"


def api_cfg(server: ChatServer, key_env: str, **kw) -> OpenAIJudgeConfig:
    base = dict(model="test-judge", base_url=server.base_url, api_key_env=key_env, timeout_s=1.0, max_retries=2,
                backoff_s=0.01, max_backoff_s=0.05, concurrency=2, parse_retries=1)
    base.update(kw)
    return OpenAIJudgeConfig(**base)


def parse2(text: str) -> list[float]:
    return parse_score_json(text, 2)


REQ = JudgeRequest("rate this <instruction>", (solid("red"), solid("blue", (20, 20))))


# ---------------------------------------------------------------------------------------------
# Parsers


@pytest.mark.parametrize("text, expected", [
    ('{"score": [7, 4], "reasoning": "x"}', [7, 4]),
    ('Here you go:\n```json\n{\n"score" : [10, 0],\n"reasoning" : "a"\n}\n```', [10, 0]),
    ('||V^=^V||\n{"score": [3, 9], "reasoning": "b"}\n||V^=^V||', [3, 9]),
    ("[6, 0]", [6, 0]),
    ('{"score": [5, 6], "reasoning": "has a stray } brace"} trailing', [5, 6]),
    ("{'score': [2, 8], 'reasoning': 'single quotes'}", [2, 8]),
])
def test_parse_score_json_accepts_the_forms_judges_write(text, expected):
    assert parse_score_json(text, 2) == expected


@pytest.mark.parametrize("text", ["", "   ", "I cannot rate these images.", '{"score": [7], "reasoning": ""}',
                                  '{"score": [7, 11], "reasoning": ""}', '{"score": ["high", 3]}', "[1, 2, 3]"])
def test_parse_score_json_rejects_what_it_cannot_trust(text):
    with pytest.raises(ReplyParseError):
        parse_score_json(text, 2)


# ---------------------------------------------------------------------------------------------
# The API client against a real server


def test_request_format_and_bearer_token(key_env):
    with ChatServer(lambda r: reply(GOOD)) as server:
        judge = OpenAIJudge(api_cfg(server, key_env, temperature=0.0, seed=42, max_tokens=1400))
        out = judge.complete(REQ)
    assert out.text == GOOD and out.model_version == "judge-test-2025-01-01"
    (rec,) = server.requests
    assert rec.headers["authorization"] == f"Bearer {SECRET}"
    content = rec.body["messages"][0]["content"]
    assert [p["type"] for p in content] == ["text", "image_url", "image_url"]  # text first, as GEdit's script
    assert all(u.startswith("data:image/jpeg;base64,") for u in rec.image_urls)
    assert [im.size for im in rec.images] == [(40, 30), (20, 20)]
    assert rec.body["model"] == "test-judge" and rec.body["temperature"] == 0.0 and rec.body["seed"] == 42
    assert rec.body["max_tokens"] == 1400


def test_png_transport_and_images_first(key_env):
    with ChatServer(lambda r: reply(GOOD)) as server:
        OpenAIJudge(api_cfg(server, key_env, image_format="png", images_first=True)).complete(REQ)
    content = server.requests[0].body["messages"][0]["content"]
    assert [p["type"] for p in content] == ["image_url", "image_url", "text"]
    assert server.requests[0].image_urls[0].startswith("data:image/png;base64,")
    assert server.requests[0].images[0].getpixel((0, 0)) == solid("red").getpixel((0, 0))  # lossless


def test_retries_on_500_429_malformed_and_slow_replies(key_env):
    with ChatServer(lambda r: reply(GOOD)) as server:
        judge = OpenAIJudge(api_cfg(server, key_env, max_retries=4, timeout_s=0.5))
        server.script(error(500), error(429, retry_after=0.01), malformed(), slow(1.5))
        got = judge.complete(REQ)
    assert got.text == GOOD and got.requests == 5
    assert len(server.requests) == 5  # four failures, then the good reply


def test_gives_up_after_max_retries(key_env):
    with ChatServer(lambda r: error(503)) as server:
        judge = OpenAIJudge(api_cfg(server, key_env, max_retries=2))
        with pytest.raises(JudgeError, match="HTTP 503.*3 attempts"):
            judge.complete(REQ)
    assert len(server.requests) == 3


def test_client_errors_fail_the_request_without_retry_and_auth_errors_stop_the_run(key_env):
    with ChatServer(lambda r: error(400)) as server:
        with pytest.raises(JudgeError, match="HTTP 400"):
            OpenAIJudge(api_cfg(server, key_env)).complete(REQ)
        assert len(server.requests) == 1
    with ChatServer(lambda r: error(401)) as server:
        runner = JudgeRunner(OpenAIJudge(api_cfg(server, key_env)), JudgeCache(None))
        with pytest.raises(JudgeFatalError, match="401"):
            runner.run([1, 2, 3], lambda i: (REQ, parse2))


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    judge = OpenAIJudge(OpenAIJudgeConfig(api_key_env="NO_SUCH_KEY_VAR"))  # needed only for a request
    with pytest.raises(JudgeFatalError, match="NO_SUCH_KEY_VAR"):
        judge.complete(REQ)
    judge = OpenAIJudge(OpenAIJudgeConfig(api_key_env=""))  # a local server without auth
    assert SECRET not in repr(judge)


def test_runner_parses_retries_unparsable_caches_and_counts(tmp_path, key_env):
    def responder(rec):
        # the prompt names the sample; sample 'bad' always gets prose, 'empty' an empty message
        if "bad" in rec.text:
            return reply("I would rather not say.")
        if "empty" in rec.text:
            return reply(None)
        if "flaky" in rec.text and sum("flaky" in r.text for r in server.requests) == 1:
            return reply("garbled")
        return reply('{"score": [%d, 9], "reasoning": "r"}' % len(rec.text.removeprefix("sample ")))

    names = ["good-a", "bad", "flaky", "empty", "good-bb"]
    make = lambda n: (JudgeRequest(f"sample {n}", (solid("green"),)), parse2)  # noqa: E731
    with ChatServer(responder) as server:
        cfg = api_cfg(server, key_env, parse_retries=1)
        runner = JudgeRunner(OpenAIJudge(cfg), JudgeCache(tmp_path / "cache"), parse_retries=1)
        verdicts = runner.run(names, make)
        first_calls = len(server.requests)
        assert [v.ok for v in verdicts] == [True, False, True, False, True]
        assert verdicts[0].value == [6, 9] and verdicts[2].value == [5, 9] and verdicts[4].value == [7, 9]
        assert "unparsable" in verdicts[1].error and "empty reply" in verdicts[3].error
        # good-a, good-bb: 1 call each; bad, empty: 1 + 1 parse retry; flaky: garbled then good
        assert first_calls == 1 + 2 + 2 + 2 + 1 == runner.stats.calls
        assert runner.stats.failed == 2 and runner.stats.model_versions == {"judge-test-2025-01-01"}

        # A rerun makes no calls at all: good replies and failures both come from the cache.
        again = JudgeRunner(OpenAIJudge(cfg), JudgeCache(tmp_path / "cache"), parse_retries=1)
        verdicts2 = again.run(names, make)
        assert len(server.requests) == first_calls and again.stats.calls == 0 and again.stats.cache_hits == 5
        assert [(v.ok, v.value) for v in verdicts2] == [(v.ok, v.value) for v in verdicts]
        assert all(v.cached for v in verdicts2)

        # retry_failed asks again for the failed ones only.
        retry = JudgeRunner(OpenAIJudge(cfg), JudgeCache(tmp_path / "cache"), parse_retries=0, retry_failed=True)
        retry.run(names, make)
        assert len(server.requests) == first_calls + 2
        assert {r.text for r in server.requests[first_calls:]} == {"sample bad", "sample empty"}

    # The key went out as the bearer token and appears in no cache file.
    assert all(r.headers["authorization"] == f"Bearer {SECRET}" for r in server.requests)
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 5
    assert not any(SECRET in f.read_text() for f in files)
    entry = json.loads(files[0].read_text())
    assert entry["judge"]["model"] == "test-judge" and "prompt" in entry


def test_transport_failures_are_cached_as_failed_and_not_retried_by_default(tmp_path, key_env):
    with ChatServer(lambda r: error(500)) as server:
        cfg = api_cfg(server, key_env, max_retries=1)
        v = JudgeRunner(OpenAIJudge(cfg), JudgeCache(tmp_path)).ask(REQ, parse2)
        assert not v.ok and "HTTP 500" in v.error and len(server.requests) == 2
        v2 = JudgeRunner(OpenAIJudge(cfg), JudgeCache(tmp_path)).ask(REQ, parse2)
        assert not v2.ok and v2.cached and len(server.requests) == 2


def test_undecodable_binary_and_empty_bodies_are_retried_then_failed_never_a_crash(tmp_path, key_env):
    with ChatServer(lambda r: reply(GOOD)) as server:
        judge = OpenAIJudge(api_cfg(server, key_env, max_retries=3))
        server.script(undecodable(), binary(), empty_body())
        got = judge.complete(REQ)
        assert got.text == GOOD and got.requests == 4
    with ChatServer(lambda r: undecodable()) as server:
        runner = JudgeRunner(OpenAIJudge(api_cfg(server, key_env, max_retries=2)), JudgeCache(tmp_path), parse_retries=1)
        v = runner.ask(REQ, parse2)
        assert not v.ok and "malformed API response" in v.error and "3 attempts" in v.error
        assert runner.stats.calls == len(server.requests) == 3 and runner.stats.failed == 1
    (entry,) = [json.loads(f.read_text(encoding="utf-8")) for f in tmp_path.rglob("*.json")]
    assert entry["reply"] is None and "malformed" in entry["error"]
    # a 200 whose message is binary junk (valid JSON, lone surrogates) is unparsable, stored as valid UTF-8
    with ChatServer(lambda r: Response(raw=b'{"choices": [{"message": {"content": "\\udcff\\u0000 \\ud800"}}]}')) as server:
        runner = JudgeRunner(OpenAIJudge(api_cfg(server, key_env)), JudgeCache(tmp_path / "b"), parse_retries=1)
        v = runner.ask(REQ, parse2)
        assert not v.ok and "unparsable" in v.error and runner.stats.calls == 2
    assert all(json.loads(f.read_bytes().decode("utf-8")) for f in (tmp_path / "b").rglob("*.json"))


def test_judge_calls_count_every_http_request_and_cache_hits_apart(tmp_path, key_env):
    """The count the issue found short (47 reported, 50 made): transport retries are calls too."""
    with ChatServer(lambda r: reply(GOOD)) as server:
        cfg = api_cfg(server, key_env, max_retries=3)
        server.script(error(500), error(503), error(429, retry_after=0.01))  # the first question needs 4 requests
        runner = JudgeRunner(OpenAIJudge(cfg), JudgeCache(tmp_path), parse_retries=0, preflight=True)
        names = ["a", "b", "c"]
        runner.run(names, lambda n: (JudgeRequest(f"sample {n}", (solid("green"),)), parse2))
        assert runner.stats.calls == len(server.requests) == 1 + 4 + 1 + 1  # preflight, a (3 errors + reply), b, c
        assert runner.stats.preflight_calls == 1 and runner.stats.cache_hits == 0
        again = JudgeRunner(OpenAIJudge(cfg), JudgeCache(tmp_path), preflight=True)
        again.run(names, lambda n: (JudgeRequest(f"sample {n}", (solid("green"),)), parse2))
        assert again.stats.calls == 0 and again.stats.cache_hits == 3 and len(server.requests) == 7  # no preflight either


def test_no_secret_in_anything_stored_or_raised_when_the_server_echoes_headers(tmp_path, key_env, capsys):
    echoed_raw = lambda r: Response(raw=("\n".join(f"{k}: {v}" for k, v in r.headers.items())).encode())  # noqa: E731
    cache = JudgeCache(tmp_path / "cache")
    texts = []
    with ChatServer(lambda r: echo(200)) as server:  # 200 whose message is the request's headers
        runner = JudgeRunner(OpenAIJudge(api_cfg(server, key_env)), cache, parse_retries=1)
        v = runner.ask(JudgeRequest("echo-200", (solid("red"),)), parse2)
        assert not v.ok and "Authorization: Bearer ***" in v.reply
        texts += [v.reply, v.error]
    for status in (500, 400):  # error bodies that echo the headers
        with ChatServer(lambda r, st=status: echo(st)) as server:
            runner = JudgeRunner(OpenAIJudge(api_cfg(server, key_env, max_retries=1)), cache)
            v = runner.ask(JudgeRequest(f"echo-{status}", (solid("red"),)), parse2)
            assert not v.ok and f"HTTP {status}" in v.error
            texts.append(v.error)
    with ChatServer(echoed_raw) as server:  # a 200 that is not JSON and holds the headers
        runner = JudgeRunner(OpenAIJudge(api_cfg(server, key_env, max_retries=0)), cache)
        v = runner.ask(JudgeRequest("echo-raw", (solid("red"),)), parse2)
        assert not v.ok and "malformed" in v.error
        texts.append(v.error)
    with ChatServer(key="not-this-one") as server:  # a 401 that echoes the Authorization header: fatal, message clean
        with pytest.raises(JudgeFatalError) as exc:
            JudgeRunner(OpenAIJudge(api_cfg(server, key_env)), cache).ask(REQ, parse2)
        texts.append(str(exc.value))
        with pytest.raises(JudgeFatalError) as exc:
            OpenAIJudge(api_cfg(server, key_env)).preflight()
        texts.append(str(exc.value))
    stored = [f.read_text(encoding="utf-8") for f in (tmp_path / "cache").rglob("*.json")]
    assert len(stored) == 4
    everything = "\n".join(texts + stored + list(capsys.readouterr()))
    assert SECRET not in everything and "Bearer ***" in everything
    assert "Bearer sk" not in everything


def test_scrub_removes_keys_and_header_values():
    text = 'headers: {"Authorization": "Bearer sk-live-123456789", "api-key": "azure-987654321"} then sk-live-123456789.'
    out = scrub(text, ["sk-live-123456789"])
    assert "123456789" not in out and "987654321" not in out
    assert scrub("Prompt Compliance: 4", ["EMPTY"]) == "Prompt Compliance: 4"  # short placeholders are not secrets
    assert scrub("ok \udcff", []) == "ok ?"


def test_preflight_names_what_to_fix(monkeypatch, key_env):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(JudgeFatalError, match="NO_SUCH_KEY_VAR is not set"):
        preflight(OpenAIJudgeConfig(api_key_env="NO_SUCH_KEY_VAR"))
    with ChatServer(key="another-key-entirely", models={"test-judge"}) as server:
        with pytest.raises(JudgeFatalError, match=r"the key in \$JUDGE_TEST_KEY was rejected \(HTTP 401.*check judge.api_key_env") as exc:
            preflight(api_cfg(server, key_env))
        assert SECRET not in str(exc.value) and "\n" not in str(exc.value)
        with pytest.raises(JudgeFatalError, match="server wants a key; set judge.api_key_env"):
            preflight(api_cfg(server, ""))
    with ChatServer(key=SECRET, models={"test-judge"}, script_preflight=True) as server:
        assert preflight(api_cfg(server, key_env)) == 1
        with pytest.raises(JudgeFatalError, match=r"no model 'gpt-4.1-typo' there \(HTTP 404.*check judge.model"):
            preflight(api_cfg(server, key_env, model="gpt-4.1-typo"))
        server.script(error(503), error(500))
        assert preflight(api_cfg(server, key_env)) == 3  # transient answers are tried again
        last = server.requests[-1].body
        assert last["max_tokens"] == 1 and last["model"] == "test-judge" and "image_url" not in json.dumps(last)
    unreachable = OpenAIJudgeConfig(model="m", base_url=free_port_url(), api_key_env="", backoff_s=0.01)
    with pytest.raises(JudgeFatalError, match=r"cannot reach the endpoint .*check judge.base_url"):
        preflight(unreachable)


def test_passes_average_independent_replies_each_cached_under_its_own_key(tmp_path, key_env):
    with ChatServer(lambda r: reply('{"score": [%d, 9], "reasoning": ""}' % (r.body["seed"] - 40))) as server:
        cfg = api_cfg(server, key_env, seed=42, passes=3)
        runner = JudgeRunner(OpenAIJudge(cfg), JudgeCache(tmp_path), parse_retries=0, passes=3)
        v = runner.ask(REQ, parse2)
        assert [r.body["seed"] for r in server.requests] == [42, 43, 44]  # pass p sends seed + p
        assert v.ok and v.value == [(2 + 3 + 4) / 3, 9.0] and len(v.replies) == 3
        assert len(list(tmp_path.rglob("*.json"))) == 3
        single = JudgeRunner(OpenAIJudge(api_cfg(server, key_env)), JudgeCache(tmp_path), parse_retries=0)
        assert single.ask(REQ, parse2).value == [2.0, 9.0] and single.stats.calls == 0  # pass 0 = the one-pass key
        again = JudgeRunner(OpenAIJudge(cfg), JudgeCache(tmp_path), passes=3)
        assert again.ask(REQ, parse2).value == v.value and again.stats.calls == 0 and again.stats.cache_hits == 3
        server.script(reply("no score"))  # one pass unusable: the question fails, naming the pass
        v2 = runner.ask(JudgeRequest("another", (solid("red"),)), parse2)
        assert not v2.ok and v2.error.startswith("pass 0: unparsable")


def test_cache_key_covers_prompt_images_and_decoding():
    ident = OpenAIJudge(OpenAIJudgeConfig(api_key_env="")).identity()
    d = [image_digest(im) for im in REQ.images]
    k = request_key(ident, "p", d)
    assert k == request_key(dict(ident), "p", list(d))
    assert k != request_key(ident, "p2", d)
    assert k != request_key(ident, "p", [image_digest(solid("green")), d[1]])
    assert k != request_key({**ident, "temperature": 1.0}, "p", d)
    assert k != request_key({**ident, "model": "gpt-4o"}, "p", d)


# ---------------------------------------------------------------------------------------------
# Prompts


def test_official_viescore_prompts_are_read_without_running_the_module(tmp_path):
    marker = tmp_path / "executed.txt"
    module = write_code_with_prompts(tmp_path / "GEdit-Bench" / "viescore" / "vie_prompts.py", VIE_TEST_CONSTANTS, marker)
    consts = read_string_constants(module)
    assert consts["_prompts_0shot_rule_PQ"] == "TEST-PQ one image"
    for where in (module, module.parent, module.parent.parent):  # the file, viescore/, GEdit-Bench/
        tie = viescore_prompts("tie", where)
        assert tie.source == OFFICIAL and tie.path == str(module.resolve())
        assert tie.sc == "TEST-CONTEXT answer as JSON\nTEST-TIE-RULE two images\nTEST-TIE-SC instruction: <instruction>"
        assert tie.pq == "TEST-CONTEXT answer as JSON\nTEST-PQ one image"
        assert tie.sc_for("make it red").endswith("instruction: make it red")
    sdig = viescore_prompts("sdig", module)
    assert sdig.sc_for("a dog on the beach").endswith("prompt: a dog on the beach")
    assert not marker.exists()


def test_official_prompt_errors_name_the_file(tmp_path):
    partial = write_code_with_prompts(tmp_path / "vie_prompts.py", {"_context_no_delimit": "x"}, tmp_path / "m")
    with pytest.raises(BenchmarkDataError, match=r"vie_prompts.py: expected string constants .*_prompts_0shot_rule_PQ"):
        viescore_prompts("tie", partial)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkDataError, match="no vie_prompts.py found"):
        viescore_prompts("tie", tmp_path / "empty")
    (tmp_path / "prompts.json").write_text(json.dumps({"add": "x <edit_prompt>"}))
    with pytest.raises(BenchmarkDataError, match=r"prompts.json: no prompt for edit types \['remove'\]"):
        imgedit_prompts(tmp_path / "prompts.json", ["add", "remove"])
    (tmp_path / "prompts.json").write_text("{not json")
    with pytest.raises(BenchmarkDataError, match="prompts.json: not valid JSON"):
        imgedit_prompts(tmp_path, ["add"])
    uge = write_code_with_prompts(tmp_path / "UGE_bench.py", {"other": "x"}, tmp_path / "m2")
    with pytest.raises(BenchmarkDataError, match="UGE_bench.py: no module-level string constant 'prompt'"):
        uge_prompt(uge)


def test_own_prompts_have_the_official_structure_and_are_marked_unofficial():
    tie, sdig = viescore_prompts("tie"), viescore_prompts("sdig")
    assert tie.source == sdig.source == UNOFFICIAL and tie.path is None
    assert "<instruction>" in tie.sc and "<prompt>" in sdig.sc and '"score"' in tie.pq
    own = imgedit_prompts(None, ["add", "remove", "compose"])
    assert own.source == UNOFFICIAL and all("<edit_prompt>" in p for p in own.by_type.values())
    # the answer format the harness's prompts ask for is the one its parsers read
    example = "\n".join(l.replace("<1-5>", "4") for l in own.by_type["add"].splitlines()[-4:])
    assert [v for _, v in official_line_scores(example)] == [4, 4, 4]  # what step1_get_avgscore.py counts
    assert uge_prompt(None).source == UNOFFICIAL and "Score: <1-5>" in uge_prompt(None).text
    uge_example = uge_prompt(None).text.splitlines()[-2:]
    assert official_line_scores("\n".join(l.replace("<1-5>", "3").replace("<at most 20 words>", "ok") for l in uge_example)) == [("Score", 3)]


# ---------------------------------------------------------------------------------------------
# The local transformers judge


def test_local_vlm_judge_on_a_tiny_random_model_records_failures(tmp_path):
    from benchmarks.judges.local_vlm import LocalVLMJudge, LocalVLMJudgeConfig
    from tests.bench_fixtures import tiny_llava

    path = tiny_llava(tmp_path / "tiny_llava")
    judge = LocalVLMJudge(LocalVLMJudgeConfig(model=str(path), max_new_tokens=6, device="cpu"))
    assert judge.identity()["decoding"] == "greedy" and judge.identity()["seed"] == 42
    a, b = judge.complete(REQ), judge.complete(REQ)
    assert isinstance(a.text, str) and a.text == b.text  # greedy + fixed seed: the same reply
    runner = JudgeRunner(judge, JudgeCache(tmp_path / "cache"), parse_retries=0)
    verdicts = runner.run(["x", "y"], lambda n: (JudgeRequest(f"rate {n}", (solid("red"), solid("blue"))), parse2))
    assert [v.ok for v in verdicts] == [False, False] and all("unparsable" in v.error for v in verdicts)
    assert runner.stats.calls == 2 and runner.stats.failed == 2
    again = JudgeRunner(judge, JudgeCache(tmp_path / "cache"))
    again.run(["x", "y"], lambda n: (JudgeRequest(f"rate {n}", (solid("red"), solid("blue"))), parse2))
    assert again.stats.calls == 0 and again.stats.failed == 2


def test_local_vlm_judge_bad_path_is_fatal_at_preflight_and_is_loaded_only_when_asked(tmp_path):
    from benchmarks.judges.local_vlm import LocalVLMJudge, LocalVLMJudgeConfig
    from tests.bench_fixtures import tiny_llava

    judge = LocalVLMJudge(LocalVLMJudgeConfig(model=str(tmp_path / "nothing")))  # nothing loaded yet
    with pytest.raises(JudgeFatalError, match="judge.model: cannot load"):
        judge.preflight()
    with pytest.raises(JudgeFatalError, match="judge.model: cannot load"):
        judge.complete(REQ)
    ok = LocalVLMJudge(LocalVLMJudgeConfig(model=str(tiny_llava(tmp_path / "llava")), max_new_tokens=2, device="cpu"))
    assert ok.preflight() == 0 and ok.net is None
