"""prompt_gen against a real chat-completions server on 127.0.0.1 (tests/helpers/llm_server.py)."""
import json
import multiprocessing
import os
import subprocess
import sys
import threading

import pytest

from lmseg.descriptions import prompt_name, validate_descriptions
from prompt_gen.cli import main
from lmseg.descriptions.generator import merge_descriptions, read_classes
from tests.helpers.llm_server import ChatServer, completion, fake_entry, good_answer

KEY = "sk-test-5f3a9c0e7d1b"
VOCABULARY = ["wall", "fence", "sofa, couch", "bed ", "grass", "tree", "person", "sky"]
FAST = ["--backoff", "0.001", "--no-progress", "--timeout", "10"]


@pytest.fixture
def files(tmp_path):
    classes = tmp_path / "vocab.json"
    classes.write_text(json.dumps(VOCABULARY))
    return str(classes), str(tmp_path / "out" / "descriptions.json")


def run(server, classes, out, *extra):
    return main(["--classes", classes, "--out", out, "--base-url", server.base_url, "--api-key", KEY, "--model", "test-model", *FAST, *extra])


def read(out):
    with open(out, encoding="utf-8") as f:
        pairs = json.load(f, object_pairs_hook=lambda kv: kv)
    names = [k for k, _ in pairs]
    assert len(names) == len(set(names)), f"duplicate entries in {out}"
    return {k: dict(v) for k, v in pairs}


def test_clean_run(files, capsys):
    classes, out = files
    with ChatServer() as server:
        assert run(server, classes, out, "--jobs", "3") == 0
        assert sorted(server.asked()) == sorted(prompt_name(n) for n in VOCABULARY)
        data = read(out)
        assert list(data) == VOCABULARY  # vocabulary order, exact keys ("bed " keeps its space)
        assert data == {n: fake_entry(prompt_name(n)) for n in VOCABULARY}
        validate_descriptions(data, vocabulary=VOCABULARY)
        name, request, headers = next(r for r in server.requests if r[0] == "fence")
        assert headers["authorization"] == f"Bearer {KEY}"
        assert request["model"] == "test-model"
        assert request["response_format"]["type"] == "json_schema"
        assert request["response_format"]["json_schema"]["schema"]["required"] == ["color", "shape", "texture"]
        prompt = request["messages"][1]["content"]
        assert "wall; sofa, couch; bed; grass" in prompt  # the vocabulary as context
        assert "8 new descriptions written" in capsys.readouterr().out
        # A second run finds everything described and asks nothing.
        assert run(server, classes, out) == 0
        assert len(server.requests) == len(VOCABULARY)


def test_rate_limit_honours_retry_after(files):
    classes, out = files

    def behave(n, name, request):
        if n == 1:
            return 429, {"Retry-After": "1"}, {"error": {"message": "rate limited"}}
        return good_answer(n, name, request)

    with ChatServer(behave) as server:
        assert run(server, classes, out, "--jobs", "1") == 0
        assert server.asked()[0] == server.asked()[1]  # the limited class, asked again
        assert server.times[1] - server.times[0] >= 0.95  # waited as told, not the 1 ms back-off
        assert read(out) == {n: fake_entry(prompt_name(n)) for n in VOCABULARY}


def test_malformed_replies_are_asked_again(files):
    classes, out = files
    bad = {
        1: "Sure! Here it is: {color: reddish",  # not JSON
        2: json.dumps({"color": "a white wall", "shape": "flat", "texture": "smooth"}),  # repeats the name
    }

    def behave(n, name, request):
        if n in bad:
            return 200, {}, completion(bad[n])
        return good_answer(n, name, request)

    with ChatServer(behave) as server:
        assert run(server, classes, out, "--jobs", "1") == 0
        assert server.asked()[:3] == ["wall"] * 3
        retry = server.requests[2][1]["messages"]
        assert retry[-2] == {"role": "assistant", "content": bad[2]}
        assert "repeats the class name" in retry[-1]["content"]
        assert read(out)["wall"] == fake_entry("wall")


def test_falls_back_to_plain_replies_without_structured_output(files, capsys):
    classes, out = files

    def behave(n, name, request):
        if "response_format" in request:
            return 400, {}, {"error": {"message": "response_format is not supported"}}
        return 200, {}, completion("```json\n" + json.dumps(fake_entry(name)) + "\n```")

    with ChatServer(behave) as server:
        assert run(server, classes, out, "--jobs", "2") == 0
        plain = [r for _, r, _ in server.requests if "response_format" not in r]
        assert len(plain) == len(VOCABULARY)
        assert "Reply with only a JSON object" in plain[0]["messages"][1]["content"]
    assert capsys.readouterr().err.count("refused structured output") == 1
    assert read(out) == {n: fake_entry(prompt_name(n)) for n in VOCABULARY}


def test_server_stopping_mid_run_then_rerun_completes(files, capsys):
    classes, out = files
    served = 3
    on_disk = []  # entries in the output file when each request arrives

    def behave(n, name, request):
        on_disk.append(len(read(out)) if os.path.exists(out) else 0)
        if n <= served:
            if n == served:
                threading.Thread(target=server.stop).start()
            return good_answer(n, name, request)
        return 0, {}, None  # the server is going down: drop the connection

    with ChatServer(behave) as server:
        code = run(server, classes, out, "--jobs", "1", "--retries", "1", "--give-up-after", "2")
    err = capsys.readouterr().err
    assert code == 1
    assert "stopped" in err and "rerun the same command" in err and "Traceback" not in err
    assert on_disk[:served + 1] == list(range(served + 1))  # each reply written as it arrived
    first = read(out)
    assert list(first) == VOCABULARY[:served]
    assert first == {n: fake_entry(prompt_name(n)) for n in VOCABULARY[:served]}

    with ChatServer() as server:
        assert run(server, classes, out, "--jobs", "2") == 0
        asked = server.asked()
    assert sorted(asked) == sorted(prompt_name(n) for n in VOCABULARY[served:])  # only the missing, once each
    data = read(out)
    assert list(data) == VOCABULARY
    assert data == {n: fake_entry(prompt_name(n)) for n in VOCABULARY}


@pytest.mark.slow
def test_server_that_only_fails_stops_with_one_clear_message(files, tmp_path):
    classes, out = files

    def behave(n, name, request):
        # A careless server that echoes the key in its error: it must still appear nowhere.
        return 500, {}, {"error": {"message": f"internal error (key {KEY})"}}

    env = dict(os.environ, OPENAI_API_KEY=KEY, PYTHONPATH=os.getcwd())
    with ChatServer(behave) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "prompt_gen", "--classes", classes, "--out", out, "--base-url", server.base_url,
             "--model", "test-model", "--retries", "2", *FAST],
            capture_output=True, text=True, env=env, timeout=300,
        )
        assert server.requests and all(h["authorization"] == f"Bearer {KEY}" for _, _, h in server.requests)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "prompt_gen" in line]
    assert len(lines) == 1 and "stopped: 3 classes in a row failed" in lines[0] and "HTTP 500" in lines[0]
    assert KEY not in proc.stdout + proc.stderr
    assert not os.path.exists(out)
    for root, _, names in os.walk(tmp_path):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                assert KEY.encode() not in f.read()


def test_dry_run_prints_requests_and_sends_nothing(files, capsys):
    classes, out = files
    with ChatServer() as server:
        assert run(server, classes, out, "--dry-run") == 0
        assert server.requests == []
    printed = capsys.readouterr()
    assert printed.out.count(f"POST {server.base_url}/chat/completions") == len(VOCABULARY)
    assert 'Describe the class \\"sofa\\" (also called: couch)' in printed.out
    assert KEY not in printed.out + printed.err
    assert not os.path.exists(out)


def test_refuses_old_list_format_and_reads_text_vocabularies(tmp_path, capsys):
    out = tmp_path / "old.json"
    out.write_text(json.dumps({"wall": ["A wall, flat and white."]}))
    text = tmp_path / "names.txt"
    text.write_text("wall\n\n  sofa, couch \n")
    assert read_classes(str(text)) == ["wall", "sofa, couch"]
    assert main(["--classes", str(text), "--out", str(out), "--base-url", "http://127.0.0.1:9/v1", "--dry-run"]) == 2
    assert "old list format" in capsys.readouterr().err
    assert json.loads(out.read_text()) == {"wall": ["A wall, flat and white."]}  # untouched


def _write_entries(cache, tag, count, start):
    """One writer of test_processes_sharing_a_cache_keep_each_others_entries."""
    start.wait()
    for i in range(count):
        merge_descriptions(cache, {f"{tag} {i}": fake_entry(f"{tag} {i}")}, [])


@pytest.mark.slow
def test_processes_sharing_a_cache_keep_each_others_entries(tmp_path):
    cache = str(tmp_path / "cache" / "descriptions.json")
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    writers = [context.Process(target=_write_entries, args=(cache, tag, 200, start)) for tag in ("alpha", "beta")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0]
    expected = {f"{tag} {i}": fake_entry(f"{tag} {i}") for tag in ("alpha", "beta") for i in range(200)}
    assert read(cache) == expected  # valid JSON, every entry of both writers, none twice
    assert sorted(os.listdir(tmp_path / "cache")) == ["descriptions.json", "descriptions.json.lock"]
