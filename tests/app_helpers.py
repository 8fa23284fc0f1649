"""Shared by the app tests."""
import threading


class GatedPipe:
    """A real pipeline whose generate() waits for `release` on prompts containing "hold",
    so queue-full tests can keep the single model slot busy for as long as they need."""

    def __init__(self, pipe):
        self._pipe, self.started, self.release = pipe, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def generate(self, prompt, **kwargs):
        if "hold" in prompt:
            self.started.set()
            self.release.wait(60)
        return self._pipe.generate(prompt, **kwargs)
