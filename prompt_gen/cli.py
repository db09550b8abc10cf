"""Command line of the generator; see prompt_gen/README.md."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from lmseg.descriptions.generator import Endpoint, Generator, GeneratorError, Report, RetryPolicy, read_classes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m prompt_gen",
        description="Ask an LLM (OpenAI or any OpenAI-compatible server) for the colour, shape and texture "
        "of every class of a vocabulary, and write them to a descriptions file. Classes already "
        "described in --out are not asked again.",
    )
    p.add_argument("--classes", required=True, help="the vocabulary: a benchmark name (ade150, coco, ...), a JSON list of names, or a text file with one name a line")
    p.add_argument("--out", required=True, help="the descriptions JSON to write (and to complete, when it exists)")
    p.add_argument("--model", default="gpt-4o-mini", help="model name on the server (default: %(default)s)")
    p.add_argument("--base-url", default=None, help="server URL ending in /v1, e.g. http://localhost:8000/v1 for vLLM (default: $OPENAI_BASE_URL, else OpenAI)")
    p.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY; prefer the variable: a flag shows in the process list)")
    p.add_argument("--jobs", type=int, default=4, help="requests in flight at once (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds one request may take (default: %(default)s)")
    p.add_argument("--retries", type=int, default=5, help="further attempts per class after a failed one (default: %(default)s)")
    p.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry, doubled for each further one; a server's Retry-After is honoured (default: %(default)s)")
    p.add_argument("--max-delay", type=float, default=60.0, help="longest wait between two attempts, in seconds (default: %(default)s)")
    p.add_argument("--give-up-after", type=int, default=3, help="stop the run when this many classes in a row failed on server or connection errors (default: %(default)s)")
    p.add_argument("--patience", type=float, default=180.0, help="stop the run when requests kept failing this many seconds with no reply accepted (default: %(default)s)")
    p.add_argument("--no-structured", action="store_true", help="ask for plain JSON replies from the start (for servers without structured output; otherwise detected)")
    p.add_argument("--dry-run", action="store_true", help="print the requests that would be sent and send nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    errors = [
        f"--{name} must be {rule}"
        for name, ok, rule in (
            ("jobs", args.jobs >= 1, "at least 1"),
            ("retries", args.retries >= 0, "0 or more"),
            ("timeout", args.timeout > 0, "positive"),
            ("backoff", args.backoff >= 0, "0 or more"),
            ("give-up-after", args.give_up_after >= 1, "at least 1"),
            ("patience", args.patience > 0, "positive"),
        )
        if not ok
    ]
    if errors:
        print(f"prompt_gen: error: {'; '.join(errors)}", file=sys.stderr)
        return 2
    endpoint = Endpoint(model=args.model, base_url=args.base_url, api_key=args.api_key, timeout=args.timeout)
    policy = RetryPolicy(
        retries=args.retries,
        backoff=args.backoff,
        max_delay=args.max_delay,
        give_up_after=args.give_up_after,
        patience=args.patience,
    )
    try:
        vocabulary = read_classes(args.classes)
        generator = Generator(
            endpoint,
            vocabulary,
            args.out,
            jobs=args.jobs,
            policy=policy,
            structured=not args.no_structured,
            progress=not args.no_progress,
        )
        if args.dry_run:
            return _dry_run(generator, len(vocabulary))
        report = generator.run()
    except GeneratorError as e:
        print(f"prompt_gen: error: {_redact(endpoint, str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prompt_gen: interrupted; what was written to {args.out} is kept, rerun the same command to continue", file=sys.stderr)
        return 130
    return _summary(report)


def _redact(endpoint: Endpoint, text: str) -> str:
    key = endpoint.resolved_key()
    return text.replace(key, "***") if key else text


def _dry_run(generator: Generator, total: int) -> int:
    requests = generator.requests()
    url = generator.endpoint.url.rstrip("/") + "/chat/completions"
    for request in requests:
        print(f"POST {url}")
        print(json.dumps(request, indent=1, ensure_ascii=False))
    print(f"dry run: {len(requests)} requests ({total - len(requests)} classes already described); nothing sent", file=sys.stderr)
    return 0


def _summary(report: Report) -> int:
    done = f"{len(report.written)} new descriptions written to {report.out} ({report.kept} already there, {report.total} classes)"
    if report.stopped:
        print(
            f"prompt_gen: stopped: {report.stopped}. {done}; {report.missing} classes still missing: "
            "rerun the same command to ask for them",
            file=sys.stderr,
        )
        return 1
    if report.failed:
        lines = [f"  {name!r}: {error}" for name, error in report.failed.items()]
        print(
            f"prompt_gen: {len(report.failed)} of {report.total} classes failed:\n" + "\n".join(lines) + f"\n{done}; rerun the same command to ask for the failed ones",
            file=sys.stderr,
        )
        return 1
    print(done)
    return 0
