"""Who closes the engine: cleanup, or the inference thread when a frame still uses it."""

import gc
import threading


def close_engine(engine):
    """Close ``engine`` (None: nothing) and return its memory."""
    if engine is not None:
        engine.close()
        del engine
        gc.collect()


class EngineHandoff:
    """The frame lock of the inference thread and the engine a cleanup left to it.

    The inference thread holds ``frame_lock`` for each frame. A cleanup that cannot take it
    in time does not wait for the frame: it hands the engine over, and the inference thread
    closes it when that frame ends (:meth:`after_frame`).
    """

    def __init__(self):
        self.frame_lock = threading.Lock()
        self._lock = threading.Lock()
        self._engine_to_close = None

    def busy(self):
        """True while a frame is in flight."""
        return self.frame_lock.locked()

    def release(self, engine, timeout, detach):
        """Close ``engine`` now, or hand it to the frame in flight; True when closed now.

        ``detach()`` (drop what refers to the engine) runs first, with the frame lock held
        when it could be taken within ``timeout`` seconds.
        """
        held = self.frame_lock.acquire(timeout=timeout)
        try:
            detach()
            if not held:
                with self._lock:
                    self._engine_to_close = engine
                # The frame may have ended meanwhile, before it could see the handoff.
                held = self.frame_lock.acquire(blocking=False)
                engine = self._take() if held else None
            close_engine(engine)
        finally:
            if held:
                self.frame_lock.release()
        return held

    def after_frame(self, log):
        """Close an engine cleanup handed over during the frame that just ended."""
        engine = self._take()
        if engine is not None:
            close_engine(engine)
            log.info('engine released (the frame in flight at cleanup ended)')

    def _take(self):
        with self._lock:
            engine, self._engine_to_close = self._engine_to_close, None
            return engine
