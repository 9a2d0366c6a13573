"""Dynamic batching for `cifar serve`: images from concurrent requests run through one ONNX
Runtime model together, up to max_batch images or max_wait_ms after the first one waits.

Requests put decoded images on a bounded queue (full: Overloaded, which the server answers 503);
one asyncio task gathers a batch and hands it to the one inference thread; each image's future
gets its probabilities. A batch waits for more images only while some are still being decoded
(`incoming`): a lone request is never held back. ServerMetrics counts what /metrics reports, in Prometheus' text format.
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cifarcli.batches import batch_probabilities

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # seconds
QUEUE_BATCHES = 8  # the queue holds this many full batches before new images are refused


class Overloaded(Exception):
    """The queue is full: the server is behind by QUEUE_BATCHES batches."""


class Histogram:
    def __init__(self, buckets):
        self.buckets, self.counts, self.total, self.count = tuple(buckets), [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        self.count, self.total = self.count + 1, self.total + value
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1

    def lines(self, name: str) -> list[str]:
        pairs = zip(self.buckets, self.counts, strict=True)
        buckets = [f'{name}_bucket{{le="{bound:g}"}} {count}' for bound, count in pairs]
        total = [
            f'{name}_bucket{{le="+Inf"}} {self.count}',
            f"{name}_sum {self.total:.6f}",
            f"{name}_count {self.count}",
        ]
        return [f"# TYPE {name} histogram", *buckets, *total]


class ServerMetrics:
    def __init__(self, max_batch: int):
        self.requests: dict[int, int] = {}  # status code -> count
        self.images = self.image_errors = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch}))

    def request_done(self, status: int, seconds: float) -> None:
        self.requests[status] = self.requests.get(status, 0) + 1
        self.latency.observe(seconds)

    def text(self) -> str:
        lines = ["# TYPE cifar_requests_total counter"]
        lines += [f'cifar_requests_total{{code="{code}"}} {count}' for code, count in sorted(self.requests.items())]
        lines += ["# TYPE cifar_images_total counter", f"cifar_images_total {self.images}"]
        lines += ["# TYPE cifar_image_errors_total counter", f"cifar_image_errors_total {self.image_errors}"]
        lines += self.latency.lines("cifar_request_seconds") + self.batch_size.lines("cifar_batch_size")
        return "\n".join(lines) + "\n"


class Batcher:
    def __init__(self, classifier, max_batch: int, max_wait_ms: float, metrics: ServerMetrics):
        self.classifier, self.max_batch, self.max_wait = classifier, max_batch, max_wait_ms / 1000
        self.metrics = metrics
        self.queue: asyncio.Queue = asyncio.Queue(QUEUE_BATCHES * max_batch)
        self.inference = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.task: asyncio.Task | None = None
        self.incoming = 0  # images of requests being decoded, soon to be submitted

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.inference.shutdown(wait=True)

    def submit(self, pixels: np.ndarray) -> asyncio.Future:
        """A future of one image's probabilities; Overloaded when the queue is full."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((pixels, future))
        except asyncio.QueueFull:
            raise Overloaded from None
        return future

    async def next_batch(self) -> list:
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.incoming:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.next_batch()
            waiting = [(pixels, future) for pixels, future in batch if not future.done()]  # a client may have gone
            if not waiting:
                continue
            images = np.stack([pixels for pixels, _ in waiting])
            self.metrics.batch_size.observe(len(images))
            try:
                probabilities = await loop.run_in_executor(
                    self.inference, batch_probabilities, self.classifier, images, self.max_batch
                )
            except Exception as error:  # the model failed on this batch: each request says so
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), probs in zip(waiting, probabilities, strict=True):
                if not future.done():
                    future.set_result(probs)
