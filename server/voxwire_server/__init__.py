"""voxwire server: gRPC streaming speech recognition and synthesis for voice assistants."""

__version__ = "0.1.0"
__all__ = ["__version__"]
