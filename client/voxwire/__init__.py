"""voxwire: the client of the voxwire streaming speech server (Whisper ASR, hibari TTS).

::

    from voxwire import Client, RecognitionConfig

    with Client("127.0.0.1:50051") as client:
        print(client.recognize("hello.wav").text)
        for update in client.stream("hello.wav", RecognitionConfig(interim_results=True)):
            if update.result and update.result.is_final:
                print(update.result.transcript)
        audio = client.synthesize("Hello there.").audio  # a WAV file

:class:`AsyncClient` has the same methods for asyncio. Errors are :class:`VoxwireError`
subclasses (see :mod:`voxwire.errors`); values are frozen dataclasses (see :mod:`voxwire.types`).
"""

from voxwire.aio import AsyncClient
from voxwire.audio import AudioFile, read_audio_file
from voxwire.errors import (
    AbortedError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    RequestCancelledError,
    ResourceExhaustedError,
    ServerError,
    UnavailableError,
    UnimplementedError,
    VoxwireError,
    from_rpc_error,
)
from voxwire.sync import Client
from voxwire.types import (
    Alternative,
    AudioEncoding,
    CachePolicy,
    CacheStatus,
    CacheTierStats,
    Endpointing,
    ModelTier,
    RecognitionConfig,
    RecognitionResult,
    Resumability,
    ServerStats,
    SpeechEvent,
    SpeechEventType,
    StreamUpdate,
    SynthesisCacheStatus,
    SynthesisChunk,
    SynthesisResult,
    Tls,
    Transcript,
    UtteranceEnd,
    Voice,
    Word,
)

__version__ = "0.1.0"

__all__ = [
    "AbortedError",
    "Alternative",
    "AsyncClient",
    "AudioEncoding",
    "AudioFile",
    "CachePolicy",
    "CacheStatus",
    "CacheTierStats",
    "Client",
    "DeadlineExceededError",
    "Endpointing",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "ModelTier",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "RecognitionConfig",
    "RecognitionResult",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "Resumability",
    "ServerError",
    "ServerStats",
    "SpeechEvent",
    "SpeechEventType",
    "StreamUpdate",
    "SynthesisCacheStatus",
    "SynthesisChunk",
    "SynthesisResult",
    "Tls",
    "Transcript",
    "UtteranceEnd",
    "UnavailableError",
    "UnimplementedError",
    "Voice",
    "VoxwireError",
    "Word",
    "__version__",
    "from_rpc_error",
    "read_audio_file",
]
