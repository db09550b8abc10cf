"""Ask an LLM for the colour, shape and texture of every class of a vocabulary.

One chat-completions request per class, through the ``openai`` client, so OpenAI and any
OpenAI-compatible server (vLLM, Ollama, llama.cpp server) work. Every reply is checked with
:mod:`lmseg.descriptions`; accepted entries are written to the output file as they arrive, atomically,
so an interrupted run loses nothing and the next run asks only for the classes still missing.
Processes that share an output file (a cache) merge their entries into it under a file lock.
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from .format import (
    ATTRIBUTES,
    DescriptionError,
    compose_prompt,
    entry_problems,
    prompt_name,
    token_problems,
    validate_descriptions,
)
from ..io import atomic_write, file_lock

# What the LLM is told each attribute means, in the order of ATTRIBUTES.
ATTRIBUTE_QUESTIONS = {
    "color": "its typical colours as a camera sees them",
    "shape": "its typical shape, parts and size",
    "texture": "its surface texture or the material it is made of",
}

SYSTEM_PROMPT = (
    "You write short visual descriptions of object and stuff classes for an open-vocabulary semantic "
    "segmentation model that matches image regions to text. Describe what a camera sees in an "
    "ordinary photograph: concrete, specific and visual, never abstract or functional. Each "
    "description must help tell the class apart from the other classes of its vocabulary."
)

# The JSON schema of a reply, for servers that support structured output.
RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {a: {"type": "string"} for a in ATTRIBUTES},
    "required": list(ATTRIBUTES),
    "additionalProperties": False,
}

# HTTP statuses worth asking again: timeouts, conflicts, rate limits and server errors.
_RETRY_STATUSES = {408, 409, 425, 429}


@dataclass
class Endpoint:
    """Where and how to ask. ``api_key``/``base_url`` of None fall back to the openai client's
    environment variables (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``). The key is kept out of repr."""

    model: str
    base_url: Optional[str] = None
    api_key: Optional[str] = field(default=None, repr=False)
    timeout: float = 60.0  # seconds one request may take
    temperature: Optional[float] = None  # sampling temperature of every request; None: the server's default

    @property
    def url(self) -> str:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"

    def resolved_key(self) -> str:
        key = self.api_key if self.api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        return key or ""


@dataclass
class RetryPolicy:
    """How hard to try. A failed attempt waits ``backoff * 2**attempt`` seconds (at least what the
    server's ``Retry-After`` asks, at most ``max_delay``) before the next one."""

    retries: int = 5  # further attempts per class after the first
    backoff: float = 1.0  # seconds before the first retry
    max_delay: float = 60.0  # longest single wait
    # The run stops when this many classes in a row failed on server or connection errors ...
    give_up_after: int = 3
    # ... or when requests kept failing for this many seconds without one accepted reply.
    patience: float = 180.0

    def delay(self, attempt: int, retry_after: Optional[float]) -> float:
        wait = self.backoff * (2 ** attempt)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, self.max_delay)


@dataclass
class Report:
    """What a run did: classes described now, classes already in the file, failures by class, and
    why the run stopped early (None when it did not)."""

    out: str
    total: int
    written: List[str] = field(default_factory=list)
    kept: int = 0
    failed: Dict[str, str] = field(default_factory=dict)
    stopped: Optional[str] = None

    @property
    def missing(self) -> int:
        return self.total - self.kept - len(self.written)


class GeneratorError(RuntimeError):
    """A problem that stops the run before or instead of asking (bad input, refused key...)."""


class BadReply(ValueError):
    """The server answered, but not with three acceptable descriptions."""


class _ServerFailure(Exception):
    """A request failed on the server's or the connection's side (worth retrying)."""

    def __init__(self, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.retry_after = retry_after


class _ClassFailed(Exception):
    def __init__(self, message: str, server_side: bool):
        super().__init__(message)
        self.server_side = server_side


class _Stopped(Exception):
    pass


def read_classes(path: str) -> List[str]:
    """A vocabulary from a benchmark's short name ("ade150", see
    :data:`lmseg.data.vocabularies.BENCHMARK_VOCABULARIES`), a JSON list of names, or a text file
    with one name a line (blank lines skipped, surrounding spaces removed)."""
    from ..data.vocabularies import BENCHMARK_VOCABULARIES, load_vocabulary

    if path in BENCHMARK_VOCABULARIES and not os.path.exists(path):
        return load_vocabulary(path)
    if not os.path.isfile(path):
        raise GeneratorError(
            f"--classes {path}: no such file, and not a benchmark vocabulary ({', '.join(BENCHMARK_VOCABULARIES)})"
        )
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise GeneratorError(f"--classes {path}: not valid JSON ({e})") from None
        if isinstance(names, dict):
            names = list(names)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise GeneratorError(f"--classes {path}: expected a JSON list of class names")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names or not all(n.strip() for n in names):
        raise GeneratorError(f"--classes {path}: the vocabulary is empty or has empty names")
    seen, dupes = set(), []
    for n in names:
        if n in seen:
            dupes.append(n)
        seen.add(n)
    if dupes:
        raise GeneratorError(f"--classes {path}: repeats {', '.join(repr(n) for n in dupes[:5])}; names must be unique")
    return names


def user_prompt(class_name: str, vocabulary: Sequence[str], structured: bool) -> str:
    """The request for one class: the class, its vocabulary, what to write and how."""
    name = prompt_name(class_name)
    others = "; ".join(n.strip() for n in vocabulary if n != class_name)
    synonyms = f' (also called: {class_name.split(", ", 1)[1]})' if ", " in class_name else ""
    questions = "\n".join(f"- {a}: {ATTRIBUTE_QUESTIONS[a]}" for a in ATTRIBUTES)
    lines = [
        f'Describe the class "{name}"{synonyms} of a segmentation vocabulary whose other classes are: {others}.',
        "",
        f"Write three descriptions of how a {name} looks in a photograph:",
        questions,
        "",
        f'Each description continues the sentence "{compose_prompt(class_name, "").rstrip()}" and is one short '
        f'phrase of at most 20 words. Do not repeat the word "{name}" and do not begin with "is" or "which". '
        "Name what tells it apart from similar classes of the vocabulary.",
    ]
    if not structured:
        lines += ["", 'Reply with only a JSON object: {"color": "...", "shape": "...", "texture": "..."}']
    return "\n".join(lines)


def build_request(
    class_name: str,
    vocabulary: Sequence[str],
    model: str,
    structured: bool = True,
    correction: Optional[tuple] = None,
    temperature: Optional[float] = None,
) -> dict:
    """The keyword arguments of ``chat.completions.create`` for one class. ``correction`` is
    (previous reply, its problems): the request then shows the model what to fix; ``temperature``
    of None leaves the server's default."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_prompt(class_name, vocabulary, structured)},
    ]
    if correction is not None:
        reply, problem = correction
        messages += [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": f"That reply cannot be used: {problem}. Answer again with a corrected JSON object."},
        ]
    request = {"model": model, "messages": messages}
    if temperature is not None:
        request["temperature"] = temperature
    if structured:
        request["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "class_description", "strict": True, "schema": RESPONSE_SCHEMA},
        }
    return request


def parse_reply(text: Optional[str]) -> dict:
    """The JSON object of a reply, structured or plain (code fences and surrounding prose allowed)."""
    if not text or not text.strip():
        raise BadReply("the reply is empty")
    body = re.sub(r"```(?:json)?", "", text).strip()
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        raise BadReply(f"no JSON object in the reply {_short(text)}")
    try:
        obj = json.loads(body[start : end + 1])
    except json.JSONDecodeError as e:
        raise BadReply(f"the reply is not valid JSON ({e.msg}): {_short(text)}") from None
    if not isinstance(obj, dict):
        raise BadReply(f"the reply is not a JSON object: {_short(text)}")
    normalised = {}
    for key, value in obj.items():
        key = str(key).strip().lower()
        normalised["color" if key == "colour" else key] = value
    return normalised


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


def load_existing(path: str) -> Dict[str, object]:
    """The entries already in ``path`` (empty when it does not exist yet), unchecked.

    A file that is not a JSON object, or is in the old list format, is an error: it is never
    overwritten.
    """
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise GeneratorError(f"--out {path}: cannot be read as JSON ({e}); fix it or move it away (it is not overwritten)") from None
    if not isinstance(data, dict) or any(isinstance(v, list) for v in data.values()):
        try:
            validate_descriptions(data, source=path, check_tokens=False)
        except DescriptionError as e:
            raise GeneratorError(f"--out {e}") from None
    return data


def write_descriptions(path: str, data: Dict[str, object], order: Sequence[str]) -> None:
    """Write ``data`` atomically, entries in vocabulary order, names outside it last."""
    ranked = {n: i for i, n in enumerate(order)}
    ordered = dict(sorted(data.items(), key=lambda kv: ranked.get(kv[0], len(ranked))))
    text = json.dumps(ordered, indent=1, ensure_ascii=False) + "\n"
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def merge_descriptions(path: str, entries: Dict[str, object], order: Sequence[str]) -> None:
    """Add ``entries`` to the descriptions file ``path`` (replacing entries of the same names),
    keeping every other entry, also those another process wrote since this one read the file.

    The file is read, updated and atomically replaced under :func:`lmseg.io.file_lock`, so that
    processes sharing a file (the model's LLM cache) take turns and none drops another's entries.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with file_lock(path):
        data = load_existing(path)
        data.update(entries)
        write_descriptions(path, data, order)


class Generator:
    """Asks for the missing classes of a vocabulary and writes each accepted entry at once.

    Args:
        endpoint: model, server and key.
        vocabulary: every class name, the context each request shows.
        out: the descriptions file, read first (present entries are not asked again), then updated
            with each accepted entry (:func:`merge_descriptions`: entries other processes add to it
            meanwhile are kept).
        jobs: requests in flight at once.
        policy: retries and when to give up.
        structured: start with structured (json_schema) output; servers that refuse it are asked
            for plain JSON replies instead.
        log: where messages go (one string per call).
        progress: show a progress bar on stderr (when it is a terminal).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        vocabulary: Sequence[str],
        out: str,
        *,
        jobs: int = 4,
        policy: Optional[RetryPolicy] = None,
        structured: bool = True,
        log: Optional[Callable[[str], None]] = None,
        progress: bool = False,
    ):
        if jobs < 1:
            raise GeneratorError(f"--jobs must be at least 1, got {jobs}")
        self.endpoint = endpoint
        self.vocabulary = list(vocabulary)
        self.out = out
        self.jobs = jobs
        self.policy = policy or RetryPolicy()
        self.structured = structured
        self.progress = progress
        self._log = log or (lambda message: print(message, file=sys.stderr))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_reason: Optional[str] = None
        self._server_failures_in_a_row = 0
        self._last_success = time.monotonic()
        self._taken: Dict[str, Dict[str, str]] = {a: {} for a in ATTRIBUTES}
        self._redo: set = set()  # entries of the file that fail the checks

    def log(self, message: str) -> None:
        self._log(self.redact(message))

    def redact(self, text: str) -> str:
        """``text`` with the API key (if any) blotted out."""
        key = self.endpoint.resolved_key()
        return text.replace(key, "***") if key else text

    # --- what to ask --------------------------------------------------------------------------
    def existing(self) -> Dict[str, object]:
        """The entries of the output file; vocabulary entries that fail the checks are logged and
        will be asked again (they stay in the file until replaced)."""
        data = load_existing(self.out)
        self._redo = set()
        for name in self.vocabulary:
            if name not in data:
                continue
            problems = entry_problems(name, data[name]) or token_problems(name, data[name])
            if problems:
                self.log(f"{self.out}: asking again for {problems[0]}")
                self._redo.add(name)
        return data

    def missing(self, data: Dict[str, object], names: Optional[Sequence[str]] = None) -> List[str]:
        """Names (default: the whole vocabulary) without an acceptable entry in ``data``."""
        return [n for n in (self.vocabulary if names is None else names) if n not in data or n in self._redo]

    def requests(self) -> List[dict]:
        """The requests a run would send now (what --dry-run prints)."""
        return [
            build_request(n, self.vocabulary, self.endpoint.model, self.structured, temperature=self.endpoint.temperature)
            for n in self.missing(self.existing())
        ]

    # --- the run ------------------------------------------------------------------------------
    def run(self, names: Optional[Sequence[str]] = None) -> Report:
        """Ask for the classes of ``names`` (default: the whole vocabulary) that the output file
        does not describe yet, writing each accepted entry at once."""
        wanted = self.vocabulary if names is None else list(names)
        data = self.existing()
        todo = self.missing(data, wanted)
        for name in self.vocabulary:
            if name in data and name not in todo:
                self._claim(name, data[name])
        report = Report(out=self.out, total=len(wanted), kept=len(wanted) - len(todo))
        if not todo:
            return report
        client = self._client()
        bar = self._bar(len(todo))
        self._last_success = time.monotonic()
        pool = ThreadPoolExecutor(max_workers=self.jobs)
        futures = {pool.submit(self._describe_and_write, client, name): name for name in todo}
        try:
            for future in as_completed(futures):
                name = futures[future]
                try:
                    future.result()
                except CancelledError:
                    continue
                except _Stopped:
                    continue
                except _ClassFailed as e:
                    report.failed[name] = self.redact(str(e))
                    self._class_failed(name, e)
                    if self._stop.is_set():
                        for f in futures:
                            f.cancel()
                else:
                    report.written.append(name)
                if bar is not None:
                    bar.update(1)
        except BaseException:
            self._stop.set()
            for f in futures:
                f.cancel()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if bar is not None:
                bar.close()
            client.close()
        report.stopped = self._stop_reason
        return report

    def _describe_and_write(self, client, name: str) -> Dict[str, str]:
        """Describe one class and add it to the file at once (under the file's lock, which the
        request threads also take turns on)."""
        entry = self._describe(client, name)
        try:
            merge_descriptions(self.out, {name: entry}, self.vocabulary)
        except OSError as e:
            raise GeneratorError(f"cannot write {self.out}: {e}") from None
        return entry

    def _bar(self, total: int):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=total, unit="class", desc="describing", file=sys.stderr, dynamic_ncols=True, disable=None)

    def _client(self):
        import openai

        key = self.endpoint.resolved_key()
        if not key and not (self.endpoint.base_url or os.environ.get("OPENAI_BASE_URL")):
            raise GeneratorError("no API key: set OPENAI_API_KEY (or --api-key), or point --base-url at a server that needs none")
        return openai.OpenAI(
            api_key=key or "none",  # a local server without authentication ignores it
            base_url=self.endpoint.base_url,
            timeout=self.endpoint.timeout,
            max_retries=0,  # retries are ours, with back-off and per-class reporting
        )

    def _class_failed(self, name: str, error: "_ClassFailed") -> None:
        with self._lock:
            if error.server_side:
                self._server_failures_in_a_row += 1
                if self._server_failures_in_a_row >= self.policy.give_up_after:
                    self._halt(
                        f"{self._server_failures_in_a_row} classes in a row failed after "
                        f"{self.policy.retries + 1} attempts each; last error: {error}"
                    )
            else:
                self._server_failures_in_a_row = 0

    def _halt(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = self.redact(reason)
            self._stop.set()

    def _claim(self, name: str, entry: Dict[str, str]) -> None:
        for a in ATTRIBUTES:
            self._taken[a][" ".join(entry[a].lower().split())] = name

    def _accept(self, name: str, reply: dict) -> Dict[str, str]:
        """Check one parsed reply and reserve its texts; raises BadReply listing the problems."""
        problems = entry_problems(name, reply)
        if not problems:
            problems = token_problems(name, reply)
        if problems:
            raise BadReply("; ".join(p.split(": ", 1)[-1] for p in problems))
        entry = {a: reply[a].strip() for a in ATTRIBUTES}
        with self._lock:
            for a in ATTRIBUTES:
                other = self._taken[a].get(" ".join(entry[a].lower().split()))
                if other is not None and other != name:
                    raise BadReply(f"its {a} is word for word that of {other!r}; describe what sets it apart")
            self._claim(name, entry)
            self._last_success = time.monotonic()
            self._server_failures_in_a_row = 0
        return entry

    def _describe(self, client, name: str) -> Dict[str, str]:
        """Ask for one class until a reply is accepted or the attempts run out."""
        import openai

        correction = None
        error, server_side = "not asked", False
        attempt = 0
        while attempt <= self.policy.retries:
            if self._stop.is_set():
                raise _Stopped()
            structured = self.structured
            request = build_request(
                name, self.vocabulary, self.endpoint.model, structured, correction, self.endpoint.temperature
            )
            retry_after = None
            try:
                reply = self._send(client, request)
                try:
                    return self._accept(name, parse_reply(reply))
                except BadReply as e:
                    correction = (reply, str(e))
                    raise
            except BadReply as e:
                error, server_side = f"bad reply: {e}", False
            except _ServerFailure as e:
                error, server_side, retry_after = str(e), True, e.retry_after
            except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
                if structured:
                    with self._lock:
                        if self.structured:
                            self.structured = False
                            self.log(
                                f"the server refused structured output ({_status_text(e)}); "
                                "asking for plain JSON replies instead"
                            )
                    continue  # the same attempt, in plain mode
                raise _ClassFailed(f"the server refused the request: {_status_text(e)}", server_side=False) from None
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                self._halt(
                    f"the server at {self.endpoint.url} refused the API key (HTTP {e.status_code}); "
                    "check OPENAI_API_KEY or --api-key"
                )
                raise _Stopped() from None
            except openai.NotFoundError:
                self._halt(
                    f"the server at {self.endpoint.url} answered 404 (not found) for model {self.endpoint.model!r}; "
                    "check --model and --base-url"
                )
                raise _Stopped() from None
            except openai.APIStatusError as e:
                raise _ClassFailed(f"the server refused the request: {_status_text(e)}", server_side=False) from None
            self._check_patience(error)
            if attempt == self.policy.retries:
                break
            if self._stop.wait(self.policy.delay(attempt, retry_after)):
                raise _Stopped()
            attempt += 1
        raise _ClassFailed(error, server_side)

    def _check_patience(self, error: str) -> None:
        with self._lock:
            idle = time.monotonic() - self._last_success
            if idle > self.policy.patience:
                self._halt(f"no reply was accepted for {idle:.0f} s; last error: {error}")

    def _send(self, client, request: dict) -> str:
        """One request; returns the reply's text, raises _ServerFailure on what is worth retrying."""
        import openai

        try:
            completion = client.chat.completions.create(**request)
        except openai.APITimeoutError:
            raise _ServerFailure(f"no answer within {self.endpoint.timeout:g} s") from None
        except openai.APIConnectionError:
            raise _ServerFailure(f"cannot reach {self.endpoint.url}") from None
        except openai.APIStatusError as e:
            if e.status_code in _RETRY_STATUSES or e.status_code >= 500:
                raise _ServerFailure(_status_text(e), _retry_after(e.response.headers)) from None
            raise
        except openai.APIResponseValidationError as e:
            raise BadReply(f"the server's answer is not a chat completion ({e})") from None
        choices = getattr(completion, "choices", None)
        if not choices:
            raise BadReply("the answer has no choices")
        message = choices[0].message
        if getattr(message, "refusal", None):
            raise BadReply(f"the model refused: {_short(message.refusal)}")
        if choices[0].finish_reason == "length":
            raise BadReply("the reply was cut off at the token limit")
        return message.content or ""


def _status_text(error) -> str:
    text = f"HTTP {error.status_code}"
    body = error.body
    if isinstance(body, dict):
        detail = body.get("error", body)
        message = detail.get("message") if isinstance(detail, dict) else detail
        if message:
            text += f" {_short(str(message))}"
    return text


def _retry_after(headers) -> Optional[float]:
    """Seconds a response asks to wait (``retry-after-ms`` or ``Retry-After`` in seconds)."""
    for header, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None


def describe(
    names: Sequence[str],
    vocabulary: Sequence[str],
    endpoint: Endpoint,
    cache: str,
    *,
    policy: Optional[RetryPolicy] = None,
    jobs: int = 4,
    log: Optional[Callable[[str], None]] = None,
) -> Dict[str, Dict[str, str]]:
    """Descriptions of ``names`` from the ``cache`` descriptions file, asking the LLM for those it
    lacks (and adding them to it). Names the LLM could not describe are absent from the result;
    why is logged."""
    log = log or (lambda message: print(message, file=sys.stderr))
    context = list(vocabulary) + [n for n in names if n not in vocabulary]
    generator = Generator(endpoint, context, cache, jobs=jobs, policy=policy, log=log)
    report = generator.run(names)
    if report.stopped:
        log(f"asking {endpoint.url} for descriptions stopped: {report.stopped}")
    for name, error in report.failed.items():
        log(f"no description of {name!r} from {endpoint.url}: {error}")
    data = load_existing(cache)
    return {n: data[n] for n in names if n in data and not entry_problems(n, data[n])}
