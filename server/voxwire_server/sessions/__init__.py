"""Per-request orchestration: audio → VAD → utterances → decode → results; text → audio."""
