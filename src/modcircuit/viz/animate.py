"""Animations of training: one network drawing per frame, with the step, loss and connection cost.

    rec = Recorder(task, every=200)
    run = mc.train("two-moons", regime="bimt", callback=rec, callback_every=rec.every)
    rec.save("moons.gif")            # GIF (Pillow); .mp4 when ffmpeg is on PATH

The trainer calls the recorder after the first step and then every `every` steps, so a run of S
steps gives 1 + S // every frames. `record_training` does all of it in one call.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from ..regime_names import DEFAULT_REGIME
from ..errors import ModcircuitError
from .network import draw
from ..atomic import partial_prefix, publish, write_bytes
from ..outputs import FIGURE_MARK, check_output, prepare_output

ANIMATION_FORMATS = (".gif", ".mp4")


def animation_path(path) -> Path:
    """`path` with .gif added when it has no extension; an error for anything but .gif or .mp4."""
    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(".gif")
    suffix = path.suffix.lower()
    if suffix not in ANIMATION_FORMATS:
        raise ModcircuitError(
            f"unknown animation format {suffix!r} for {str(path)!r}; allowed: {', '.join(ANIMATION_FORMATS)}"
        )
    if suffix == ".mp4" and shutil.which("ffmpeg") is None:
        raise ModcircuitError(f"writing {str(path)!r} needs ffmpeg on PATH (not found); write a .gif instead")
    return path


class Recorder:
    """A training callback that draws the network every `every` steps; `save(path)` writes the animation."""

    def __init__(self, task=None, every: int = 100, *, threshold: float = 0.05, dpi: int = 80,
                 figsize: tuple[float, float] | None = None, title: str | None = None):
        if int(every) < 1:
            raise ModcircuitError(f"animation interval every={every!r} is not valid; allowed: an integer >= 1")
        self.task = task
        self.every = int(every)
        self.threshold = threshold
        self.dpi = dpi
        self.figsize = figsize
        self.title = title if title is not None else getattr(task, "name", None)
        self.frames: list[Image.Image] = []
        self.steps: list[int] = []
        self.titles: list[str] = []  # the text each frame shows
        self.overwrite = False  # save()'s default; for_path sets it
        self.path: Path | None = None

    @classmethod
    def for_path(cls, path, task=None, every: int = 100, *, overwrite: bool = False, **options) -> "Recorder":
        """A Recorder for writing `path` later: checks the format (ffmpeg for .mp4) and that the output may
        be written (modcircuit.outputs) now, before training."""
        rec = cls(task, every, **options)
        rec.path = check_output(animation_path(path), "figure", overwrite=overwrite)
        rec.overwrite = overwrite
        return rec

    def __call__(self, step: int, model, info: dict) -> None:
        parts = [f"step {step + 1}"]
        for key in ("loss", "cost"):
            if key in info:
                parts.append(f"{key} {info[key]:.4g}")
        status = "   ".join(parts)
        title = f"{self.title}\n{status}" if self.title else status
        fig = draw(model, task=self.task, threshold=self.threshold, title=title, figsize=self.figsize)
        fig.set_dpi(self.dpi)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
        self.frames.append(Image.fromarray(rgba[..., :3].copy()))
        self.steps.append(step + 1)
        self.titles.append(title)

    def save(self, path=None, fps: float = 4.0, *, overwrite: bool | None = None) -> Path:
        """Write the frames as a GIF (default) or MP4 (needs ffmpeg); returns the path written.

        path defaults to the one given to `for_path`; an existing file is replaced only with overwrite=True
        and only if modcircuit wrote it (see modcircuit.outputs)."""
        if path is None and self.path is None:
            raise ModcircuitError("no animation path given; pass one to save() or use Recorder.for_path")
        path = animation_path(path if path is not None else self.path)
        if not self.frames:
            raise ModcircuitError("no animation frames were recorded; pass the Recorder as the training callback")
        prepare_output(path, "figure", overwrite=self.overwrite if overwrite is None else overwrite)
        if path.suffix.lower() == ".gif":
            return write_bytes(path, self._gif_bytes(fps))
        return self._write_mp4(path, fps)

    def _gif_bytes(self, fps: float) -> bytes:
        import io

        buf = io.BytesIO()
        first, *rest = self.frames
        # optimize=False keeps every frame, even one identical to the frame before it
        first.save(buf, format="GIF", save_all=True, append_images=rest, duration=int(1000 / fps), loop=0,
                   optimize=False, disposal=1, comment=FIGURE_MARK)
        return buf.getvalue()

    def _write_mp4(self, path: Path, fps: float) -> Path:
        w, h = self.frames[0].size
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=partial_prefix(path), suffix=".mp4", dir=path.parent,
                                         delete=False) as f:
            tmp = Path(f.name)
        cmd = ["ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
               "-r", str(fps), "-i", "-", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-pix_fmt", "yuv420p",
               "-vcodec", "libx264", "-metadata", f"comment={FIGURE_MARK}", str(tmp)]
        try:
            data = b"".join(frame.convert("RGB").resize((w, h)).tobytes() for frame in self.frames)
            proc = subprocess.run(cmd, input=data, capture_output=True)
            if proc.returncode != 0:
                raise ModcircuitError(f"ffmpeg failed writing {str(path)!r}: {proc.stderr.decode()[-300:].strip()}")
            publish(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


def record_training(task, regime: str = DEFAULT_REGIME, path="training.gif", *, frames: int = 20, seed: int = 0,
                    threshold: float = 0.05, fps: float = 4.0, overwrite: bool = False, **train_options):
    """Train `task` under `regime` and write an animation of at most `frames` frames, evenly spaced
    over training (the first after step 1); returns (run, path)."""
    from ..tasks import get_task
    from ..train import train

    path = check_output(animation_path(path), "figure", overwrite=overwrite)  # fail before training, not after
    if int(frames) < 2:
        raise ModcircuitError(f"frames={frames!r} is not valid; allowed: an integer >= 2")
    task_obj = get_task(task, seed=seed) if isinstance(task, str) else task
    steps = int(train_options.get("steps") or task_obj.defaults.get("steps", 1000))
    every = max(1, -(-steps // (int(frames) - 1)))  # ceil: 1 + steps // every <= frames
    rec = Recorder(task_obj, every=every, threshold=threshold, title=f"{task_obj.name} \u00b7 {regime}")
    run = train(task_obj, regime=regime, seed=seed, callback=rec, callback_every=every, **train_options)
    return run, rec.save(path, fps=fps, overwrite=overwrite)
