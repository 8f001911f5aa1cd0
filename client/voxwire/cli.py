"""The ``voxwire`` command: transcribe, stream, synthesize and inspect a voxwire server.

Exit status: 0 on success; 1 when the server is unreachable or unavailable (UNAVAILABLE),
``health`` finds it not serving, or ``voices`` finds no voice for the language; 2 for usage errors,
unreadable or unwritable files and every other RPC error (printed as ``voxwire: error: CODE:
details``); 130 when interrupted. Every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import errno
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TextIO

from voxwire import __version__
from voxwire.audio import finalize_streamed_wav
from voxwire.errors import UnavailableError, VoxwireError
from voxwire.sync import Client
from voxwire.types import (
    AudioEncoding,
    CachePolicy,
    Endpointing,
    ModelTier,
    RecognitionConfig,
    SpeechEventType,
    StreamUpdate,
    Tls,
)

__all__ = ["main"]

DEFAULT_SERVER = "127.0.0.1:50051"
_EVENT_LABELS = {
    SpeechEventType.SPEECH_STARTED: "speech started",
    SpeechEventType.END_OF_UTTERANCE: "end of utterance",
    SpeechEventType.END_OF_SINGLE_UTTERANCE: "end of single utterance",
    SpeechEventType.UNSPECIFIED: "speech event",
}

Handler = Callable[[Client, argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        _error(f"{exc} (see voxwire --help)")
        return 2
    # Not parser defaults: a default on a shared option would overwrite, in the command's parser,
    # a value given before the command.
    if not hasattr(args, "server"):
        args.server = os.environ.get("VOXWIRE_SERVER") or DEFAULT_SERVER
    if not hasattr(args, "timeout"):
        args.timeout = None
    handler: Handler = args.handler
    try:
        api_key, tls = _credentials(args)
        with Client(args.server, timeout_s=args.timeout, api_key=api_key, tls=tls) as client:
            return handler(client, args)
    except UnavailableError as exc:
        _error(f"{exc.code}: {exc.details or 'server unavailable'} (server {args.server}){_hint(exc)}")
        return 1
    except VoxwireError as exc:
        _error(f"{exc.code}: {exc.details}")
        return 2
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, without a traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except FileNotFoundError as exc:
        _error(f"no such file or directory: {exc.filename}")
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"{where}{exc.strerror or exc}")
        return 2
    except ValueError as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug here must still not greet the user with a traceback
        _error(f"unexpected {type(exc).__name__}: {exc}")
        return 2


def _credentials(args: argparse.Namespace) -> tuple[str | None, Tls | None]:
    """The API key (from --api-key-file or $VOXWIRE_API_KEY) and TLS settings of the command."""
    api_key: str | None = os.environ.get("VOXWIRE_API_KEY") or None
    if hasattr(args, "api_key_file"):
        with open(args.api_key_file, encoding="utf-8") as f:
            api_key = f.read().strip()
        if not api_key:
            raise ValueError(f"{args.api_key_file}: the API key file is empty")
    files = {name: getattr(args, name, None) for name in ("tls_ca", "tls_cert", "tls_key")}
    server_name = getattr(args, "tls_server_name", None)
    if not (hasattr(args, "tls") or server_name or any(files.values())):
        return api_key, None
    if bool(files["tls_cert"]) != bool(files["tls_key"]):
        raise ValueError("--tls-cert and --tls-key go together")
    return api_key, Tls.from_files(
        files["tls_ca"], files["tls_cert"], files["tls_key"], server_name=server_name
    )


def _hint(exc: UnavailableError) -> str:
    if "connect" not in exc.details.lower():
        return ""
    return (
        "; is voxwire-server running there? Start it with `make serve` (or `voxwire-server --listen "
        "HOST:PORT`), or point --server / $VOXWIRE_SERVER at it"
    )


def _error(message: str) -> None:
    print(f"voxwire: error: {message}", file=sys.stderr)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """One line for a usage error, like every other error of this command (not usage + message)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    # --server and --timeout go before or after the command: the command's copy, when given, wins.
    common = _Parser(add_help=False)
    common.add_argument(
        "--server",
        default=argparse.SUPPRESS,
        metavar="HOST:PORT",
        help=f"server address (default: $VOXWIRE_SERVER or {DEFAULT_SERVER})",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help="deadline of each unary call",
    )
    common.add_argument(
        "--api-key-file",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="file holding the API key (default: $VOXWIRE_API_KEY; a key on the command line would "
        "show in the process list)",
    )
    common.add_argument(
        "--tls", action="store_true", default=argparse.SUPPRESS, help="connect over TLS (system roots)"
    )
    for flag, what in (
        ("--tls-ca", "PEM CA bundle that signed the server's certificate (implies --tls)"),
        ("--tls-cert", "PEM client certificate, for mutual TLS (implies --tls; needs --tls-key)"),
        ("--tls-key", "PEM private key of --tls-cert"),
        ("--tls-server-name", "name to check the server's certificate against (implies --tls)"),
    ):
        common.add_argument(
            flag,
            default=argparse.SUPPRESS,
            metavar="FILE" if flag != "--tls-server-name" else "NAME",
            help=what,
        )
    parser = _Parser(prog="voxwire", description="Client of a voxwire speech server.", parents=[common])
    parser.add_argument("--version", action="version", version=f"voxwire {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, parents=[common])

    p = command("transcribe", "transcribe a whole audio file")
    _add_recognition_args(p)
    p.add_argument("--words", action="store_true", help="also print word timings")
    p.add_argument("--prompt", default="", help="text that conditions the decoder")
    p.add_argument(
        "--hotword", action="append", default=[], metavar="WORD", help="a word or phrase to favour (repeat)"
    )
    p.set_defaults(handler=_transcribe)

    p = command("stream", "stream an audio file and print results as they come")
    _add_recognition_args(p)
    p.add_argument("--realtime", action="store_true", help="send audio no faster than real time")
    p.add_argument("--interim", action="store_true", help="ask for partial results")
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per message (default 100)")
    p.add_argument("--single-utterance", action="store_true", help="stop after the first utterance")
    p.add_argument("--silence-ms", type=int, help="trailing silence that ends an utterance")
    p.set_defaults(handler=_stream)

    p = command("say", "synthesize speech to a file")
    p.add_argument("text", metavar="TEXT")
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="file to write ('-': standard output)"
    )
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--ssml", action="store_true", help="TEXT is SSML (<speak>...</speak>)")
    kind.add_argument(
        "--template", action="store_true", help="TEXT is a template with {slots}, filled from --entity"
    )
    p.add_argument(
        "--entity", action="append", default=[], metavar="NAME=VALUE", help="a template slot's value (repeat)"
    )
    p.add_argument("--tenant", default="", help="tenant id (cache entries are kept per tenant)")
    p.add_argument("--user", default="", help="user id (personal cache entries; PurgeUser removes them)")
    p.add_argument(
        "--cache", choices=["use", "bypass", "do_not_store"], default="use", help="cache policy (default use)"
    )
    p.add_argument("--voice", default="", help="voice name (default: the server's)")
    p.add_argument("--rate", type=float, default=1.0, help="speaking rate, 0.5 to 2.0")
    p.add_argument("--sample-rate", type=int, default=0, metavar="HZ", help="output rate (default: native)")
    p.add_argument("--encoding", choices=["wav", "linear16", "ogg_opus"], default="wav")
    p.add_argument("--stream", action="store_true", help="use the streaming RPC")
    p.set_defaults(handler=_say)

    p = command("voices", "list the voices")
    p.add_argument("--language", default="", help="language prefix, e.g. en-GB")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_voices)

    p = command("stats", "print cache and request counters")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_stats)

    p = command("warmup", "put phrases and template prefixes in the global synthesis cache")
    p.add_argument("--phrase", action="append", default=[], help="a phrase to cache (repeat)")
    p.add_argument("--template", action="append", default=[], help="a template with {slots} (repeat)")
    p.add_argument("--voice", default="", help="voice name (default: the server's)")
    p.add_argument("--rate", type=float, default=1.0, help="speaking rate, 0.5 to 2.0")
    p.add_argument("--sample-rate", type=int, default=0, metavar="HZ", help="output rate (default: native)")
    p.add_argument("--encoding", choices=["wav", "linear16", "ogg_opus"], default="wav")
    p.set_defaults(handler=_warmup)

    p = command("purge", "remove every cache entry of one user")
    p.add_argument("user", metavar="USER")
    p.add_argument("--tenant", default="", help="the user's tenant")
    p.set_defaults(handler=_purge)

    p = command("health", "print the health status (exit 0 when SERVING)")
    p.add_argument("--service", default="", help="a service name; default: the whole server")
    p.set_defaults(handler=_health)
    return parser


def _add_recognition_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help=".wav, .flac, .ogg/.opus or .raw/.pcm")
    p.add_argument("--tier", choices=["fast", "accurate"], help="model tier (default: the server's)")
    p.add_argument("--language", default="en", help="BCP-47 language (default en)")
    p.add_argument("--sample-rate", type=int, metavar="HZ", help="sample rate of a raw PCM file")
    p.add_argument("--json", action="store_true", help="print JSON")


def _recognition_config(args: argparse.Namespace, **extra: Any) -> RecognitionConfig:
    return RecognitionConfig(
        sample_rate_hz=args.sample_rate,
        language=args.language,
        model_tier=ModelTier(args.tier) if args.tier else ModelTier.DEFAULT,
        **extra,
    )


def _transcribe(client: Client, args: argparse.Namespace) -> int:
    config = _recognition_config(
        args, word_timestamps=args.words, prompt=args.prompt, hotwords=tuple(args.hotword)
    )
    transcript = client.recognize(_existing(args.file), config)
    if args.json:
        body = {
            "text": transcript.text,
            "audio_duration_ms": transcript.audio_duration_ms,
            "processing_latency_ms": transcript.processing_latency_ms,
            "results": [dataclasses.asdict(r) for r in transcript.results],
        }
        print(json.dumps(body, ensure_ascii=False))
        return 0
    print(transcript.text)
    if args.words:
        for result in transcript.results:
            for word in result.alternatives[0].words if result.is_final and result.alternatives else ():
                print(f"  {word.start_ms / 1000:7.2f}-{word.end_ms / 1000:.2f}s  {word.word.strip()}")
    return 0


def _stream(client: Client, args: argparse.Namespace) -> int:
    endpointing = Endpointing(silence_ms=args.silence_ms) if args.silence_ms is not None else None
    config = _recognition_config(
        args, interim_results=args.interim, single_utterance=args.single_utterance, endpointing=endpointing
    )
    updates = client.stream(_existing(args.file), config, chunk_ms=args.chunk_ms, realtime=args.realtime)
    printer = _StreamPrinter(sys.stdout, in_place=sys.stdout.isatty(), as_json=args.json)
    try:
        for update in updates:
            printer.show(update)
    finally:
        printer.finish()
    return 0


class _StreamPrinter:
    """Prints stream updates; on a terminal a partial result is rewritten in place until its final."""

    def __init__(self, out: TextIO, *, in_place: bool, as_json: bool) -> None:
        self._out = out
        self._in_place = in_place
        self._as_json = as_json
        self._partial_shown = False

    def show(self, update: StreamUpdate) -> None:
        if self._as_json:
            self._line(json.dumps(_update_json(update), ensure_ascii=False))
            return
        result, event = update.result, update.speech_event
        if result is not None and not result.is_final:
            text = f"[partial] {result.transcript.strip()}"
            if self._in_place:
                self._out.write(f"\r\x1b[K{text}")
                self._out.flush()
                self._partial_shown = True
            else:
                self._line(text)
        elif result is not None:
            start, end = result.audio_start_ms / 1000, result.audio_end_ms / 1000
            self._line(f"[final  {start:.2f}-{end:.2f}s] {result.transcript.strip()}")
        elif event is not None:
            self._line(f"[{_EVENT_LABELS[event.type]} {event.audio_offset_ms / 1000:.2f}s]")

    def finish(self) -> None:
        if self._partial_shown:
            self._out.write("\n")
            self._partial_shown = False
        self._out.flush()

    def _line(self, text: str) -> None:
        if self._partial_shown:
            self._out.write("\r\x1b[K")
            self._partial_shown = False
        self._out.write(text + "\n")
        self._out.flush()


def _update_json(update: StreamUpdate) -> dict[str, Any]:
    body = dataclasses.asdict(update)
    body["resume_token"] = base64.b64encode(update.resume_token).decode("ascii")
    if update.result is not None:
        body["result"]["transcript"] = update.result.transcript
    return body


def _entities(pairs: list[str]) -> dict[str, str]:
    entities = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--entity expects NAME=VALUE, got {pair!r}")
        entities[name.strip()] = value
    return entities


def _say(client: Client, args: argparse.Namespace) -> int:
    encoding = AudioEncoding(args.encoding)
    text_args: dict[str, Any] = {"ssml": args.text} if args.ssml else {"text": args.text}
    if args.template:
        text_args = {"template": args.text, "entities": _entities(args.entity)}
    elif args.entity:
        raise ValueError("--entity needs --template")
    options: dict[str, Any] = {
        "voice": args.voice,
        "speaking_rate": args.rate,
        "encoding": encoding,
        "sample_rate_hz": args.sample_rate,
        "tenant_id": args.tenant,
        "user_id": args.user,
        "cache_policy": CachePolicy(args.cache),
    }
    out = _Output(args.output)
    try:
        written = _synthesize_to(client, out, encoding, text_args, options, stream=args.stream)
    except BaseException:
        out.discard()
        raise
    print(f"wrote {out.name if out.name != '-' else 'standard output'}: {written}", file=sys.stderr)
    return 0


def _synthesize_to(
    client: Client,
    out: _Output,
    encoding: AudioEncoding,
    text_args: dict[str, Any],
    options: dict[str, Any],
    *,
    stream: bool,
) -> str:
    """Synthesizes, writes the audio and returns what was written, in words."""
    started = time.monotonic()
    if stream:
        first_s: float | None = None
        parts: list[bytes] = []
        duration_ms, rate_hz, cache = 0, 0, "none"
        for chunk in client.synthesize_stream(**text_args, **options):
            if first_s is None:
                first_s = time.monotonic() - started
                cache = chunk.cache_status.value
            parts.append(chunk.audio)
            duration_ms, rate_hz = chunk.audio_offset_ms + chunk.audio_duration_ms, chunk.sample_rate_hz
        data = b"".join(parts)
        out.write(finalize_streamed_wav(data) if encoding is AudioEncoding.WAV else data)
        first = f"{first_s:.2f}" if first_s is not None else "-"
        return (
            f"{duration_ms / 1000:.2f} s of audio at {rate_hz} Hz, {encoding.value}, "
            f"{len(parts)} chunks, first after {first} s, cache {cache}"
        )
    result = client.synthesize(**text_args, **options)
    out.write(result.audio)
    return (
        f"{result.audio_duration_ms / 1000:.2f} s of audio at {result.sample_rate_hz} Hz, "
        f"{result.encoding.value}, voice {result.voice or '-'}, cache {result.cache_status.value}, "
        f"took {time.monotonic() - started:.2f} s"
    )


class _Output:
    """Where ``say`` writes ('-': standard output). Checked before anything is synthesized, so an
    unwritable path costs no synthesis; written once the audio is whole."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._created = False
        if name == "-":
            return
        path = Path(name)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a file to write", name)
        existed = path.exists()
        with path.open("ab"):  # OSError now: no such directory, no permission, read-only
            pass
        self._created = not existed

    def write(self, data: bytes) -> None:
        if self.name == "-":
            stdout: BinaryIO = sys.stdout.buffer
            stdout.write(data)
            stdout.flush()
        else:
            Path(self.name).write_bytes(data)
        self._created = False

    def discard(self) -> None:
        """Removes the empty file the check created, when nothing was written to it."""
        if self._created:
            Path(self.name).unlink(missing_ok=True)


def _voices(client: Client, args: argparse.Namespace) -> int:
    voices = client.list_voices(args.language)
    if not voices and args.language:
        offered = sorted({v.language for v in client.list_voices()})
        _error(f"no voice for language {args.language!r}; this server speaks: {', '.join(offered) or 'none'}")
        return 1
    if args.json:
        print(json.dumps([dataclasses.asdict(v) for v in voices], ensure_ascii=False))
        return 0
    rows = [
        (
            v.name,
            v.language,
            v.accent or "-",
            v.gender or "-",
            f"{v.native_sample_rate_hz} Hz",
            "default" * v.is_default,
        )
        for v in voices
    ]
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(6)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _stats(client: Client, args: argparse.Namespace) -> int:
    stats = client.stats()
    if args.json:
        print(json.dumps(dataclasses.asdict(stats), ensure_ascii=False))
        return 0
    print(f"server version      {stats.server_version}")
    print(f"asr model           {stats.asr_model}")
    print(f"tts model           {stats.tts_model}")
    print(f"uptime              {stats.uptime_s:.0f} s")
    print(f"active streams      {stats.active_streams}")
    print(f"recognize requests  {stats.recognize_requests}")
    print(f"streaming requests  {stats.streaming_requests}")
    print(f"synthesize requests {stats.synthesize_requests}")
    if stats.tiers:
        print(f"{'tier':<16} {'entries':>9} {'hits':>9} {'misses':>9} {'hit %':>6} {'bytes':>12}")
        for t in stats.tiers:
            ratio = f"{100 * t.hit_ratio:.1f}" if t.hit_ratio is not None else "-"
            print(f"{t.tier:<16} {t.entries:>9} {t.hits:>9} {t.misses:>9} {ratio:>6} {t.size_bytes:>12}")
    return 0


def _warmup(client: Client, args: argparse.Namespace) -> int:
    if not args.phrase and not args.template:
        raise ValueError("give at least one --phrase or --template")
    phrases, templates = client.warmup(
        args.phrase,
        args.template,
        args.voice,
        speaking_rate=args.rate,
        encoding=AudioEncoding(args.encoding),
        sample_rate_hz=args.sample_rate,
    )
    print(f"cached {phrases} phrases and {templates} template prefixes")
    return 0


def _purge(client: Client, args: argparse.Namespace) -> int:
    print(f"removed {client.purge_user(args.tenant, args.user)} cache entries")
    return 0


def _health(client: Client, args: argparse.Namespace) -> int:
    status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1


def _existing(path: str) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(2, "No such file", path)
    return path
