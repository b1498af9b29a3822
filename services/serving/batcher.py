"""Dynamic batching: requests for one model that arrive within a few milliseconds share a forward.

Each loaded model has one :class:`DynamicBatcher`. Requests put their (already preprocessed) batch
on an asyncio queue; one collector task per model takes the first, gathers whatever else is
waiting, and, when it is still alone and ``wait_s`` > 0, waits that long for company before running
the forward in the serving executor (one thread per process, so forwards never block the event
loop and never fight each other for the CPU cores). While a forward runs, new requests queue up
and form the next batch, so under load no request waits longer than one forward plus ``wait_s``.

The default window is 0: batches form from the requests that arrive while the previous forward
runs. With one forward thread a window only helps the first request after an idle spell, and
under load it idles the forward thread: on 2 CPU cores with 32 clients, a 3 ms window served 19 %
fewer requests per second than none (``benchmarks/serving.py --wait-ms 3`` vs ``--wait-ms 0``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Executor

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]
Item = tuple[torch.Tensor, "asyncio.Future[torch.Tensor]"]


class DynamicBatcher:
    """Runs ``forward`` on the concatenation of the requests that arrive together.

    Args:
        forward: maps a float batch ``[N, ...]`` to an output ``[N, ...]`` (runs in ``executor``).
        executor: where forwards run.
        wait_s: how long a lone request waits for others before its forward starts.
        max_batch: most rows in one forward (a larger single request runs alone).
        enabled: False runs every request in its own forward (the baseline of the benchmark).
        on_batch: called with the rows of each forward (metrics).
    """

    def __init__(
        self,
        forward: Forward,
        executor: Executor,
        *,
        wait_s: float = 0.0,
        max_batch: int = 256,
        enabled: bool = True,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.forward = forward
        self.executor = executor
        self.wait_s = wait_s
        self.max_batch = max_batch
        self.enabled = enabled
        self.on_batch = on_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._carry: Item | None = None

    async def submit(self, x: torch.Tensor) -> torch.Tensor:
        """The forward's output rows for ``x`` (awaits the batch it joins)."""
        loop = asyncio.get_running_loop()
        if not self.enabled:
            if self.on_batch is not None:
                self.on_batch(int(x.shape[0]))
            return await loop.run_in_executor(self.executor, self.forward, x)
        if self._loop is not loop or self._task is None or self._task.done():
            self._start(loop)
        assert self._queue is not None
        future: asyncio.Future[torch.Tensor] = loop.create_future()
        self._queue.put_nowait((x, future))
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue = asyncio.Queue()
        self._carry = None
        self._task = loop.create_task(self._collect(), name="midre-batcher")

    def _take(self, batch: list[Item], rows: int) -> int:
        """Move waiting requests into ``batch`` while they fit; returns the rows in it."""
        assert self._queue is not None
        while rows < self.max_batch:
            if self._carry is not None:
                item, self._carry = self._carry, None
            else:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
            n = int(item[0].shape[0])
            if rows + n > self.max_batch:
                self._carry = item
                break
            batch.append(item)
            rows += n
        return rows

    async def _collect(self) -> None:
        assert self._queue is not None and self._loop is not None
        while True:
            first = self._carry
            self._carry = None
            if first is None:
                first = await self._queue.get()
            batch = [first]
            rows = self._take(batch, int(first[0].shape[0]))
            if rows < self.max_batch and self.wait_s > 0 and self._queue.empty() and self._carry is None:
                await asyncio.sleep(self.wait_s)
                rows = self._take(batch, rows)
            batch = [item for item in batch if not item[1].cancelled()]
            if not batch:
                continue
            inputs = batch[0][0] if len(batch) == 1 else torch.cat([item[0] for item in batch])
            if self.on_batch is not None:
                self.on_batch(int(inputs.shape[0]))
            try:
                output = await self._loop.run_in_executor(self.executor, self.forward, inputs)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for x, future in batch:
                n = int(x.shape[0])
                if not future.done():
                    future.set_result(output[start : start + n])
                start += n

    def close(self) -> None:
        """Stop the collector task (from any thread); waiting requests are cancelled."""
        task, loop = self._task, self._loop
        self._task = None
        if task is None or loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(task.cancel)
