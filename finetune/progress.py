"""Progress of a long loop: on a terminal, a bar redrawn in place; in a log (its stream a file or a pipe), a plain
line every LOG_INTERVAL_S seconds and one at the end. A redrawn bar in a log is one long line of carriage returns:
a 30-epoch run wrote 100 kB of them."""

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 10.0  # between two progress lines in a log


class _Lines(tqdm):
    """tqdm writing each report as a line of its own: no carriage return, no cursor moves, no clearing."""

    def display(self, msg=None, pos=None):
        if msg is None:  # "" is tqdm clearing a finished bar: a log keeps what it wrote
            self.fp.write(f"{self}\n")
            self.fp.flush()
        return False  # nothing drawn to clear (close() writes "\r" otherwise)

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)  # shown in the next line, not a line each

    def close(self):
        if not self.disable and self.n != self.last_print_n:
            self.display()  # the line at the end, unless the last line says it already
            self.leave = False  # and no line more (tqdm redraws a bar it leaves)
        super().close()


def track(iterable=None, *, every: float = LOG_INTERVAL_S, **kwargs) -> tqdm:
    """tqdm(iterable, **kwargs): a bar where its stream (stderr, unless file= is given) is a terminal, else a
    line every `every` seconds and one at the end."""
    stream = kwargs.get("file") or sys.stderr
    if stream is not None and stream.isatty():
        return tqdm(iterable, **kwargs)
    return _Lines(iterable, mininterval=every, delay=every, **kwargs)
