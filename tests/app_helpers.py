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


HOLD_ARGS = ("hold", 1, 3.0, 1.0, 12, 0, False)  # /generate arguments that park in GatedPipe
# The queued job asks for another seed: gradio names its cached output files by their content, so
# two identical images share one path, and the second job rewriting it while the first one's image
# is being downloaded cut that download short ("peer closed connection", seen under load).
QUEUED_ARGS = HOLD_ARGS[:5] + (1,) + HOLD_ARGS[6:]


def fill_queue(client, pipe, timeout: float = 30):
    """Occupy the model slot with one held request and queue a second; returns both jobs."""
    import time

    from gradio_client.utils import Status

    running = client.submit(*HOLD_ARGS, api_name="/generate")
    assert pipe.started.wait(timeout)
    waiting = client.submit(*QUEUED_ARGS, api_name="/generate")
    deadline = time.monotonic() + timeout
    while waiting.status().code != Status.IN_QUEUE and time.monotonic() < deadline:
        time.sleep(0.05)
    return running, waiting
