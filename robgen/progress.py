"""Progress reporting through one optional argument.

`progress` may be True (a tqdm bar on stderr), False/None (silent), or a
callable `fn(fraction, desc)`; the Gradio app passes `gr.Progress()`, which has
that signature.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(items: Iterable[T], desc: str = "", progress=True, total: Optional[int] = None) -> Iterator[T]:
    """Yield `items`, reporting progress as `progress` asks."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if progress is True:
        yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
    elif callable(progress):
        for index, item in enumerate(items):
            progress(index / total if total else 0.0, desc=desc)
            yield item
        progress(1.0, desc=desc)
    else:
        yield from items


def step_reporter(progress, desc: str = "") -> Optional[Callable[[float], None]]:
    """A `fn(fraction)` for loops that report a fraction done, from a `progress` argument (see above)."""
    if progress is None or progress is False:
        return None
    if progress is True:
        bar = tqdm(total=100, desc=desc, leave=False, dynamic_ncols=True)

        def report(fraction: float) -> None:
            bar.n = round(100 * fraction)
            bar.refresh()
            if fraction >= 1:
                bar.close()

        return report
    return lambda fraction: progress(fraction, desc=desc)
