"""The report stage without matplotlib's PNG rendering, for tests where the figures are not the point."""

from moe_jax.report import plots


def no_render(fig, path=None, dpi=110, stamp=None):
    """``plots.png_bytes`` that closes ``fig`` and writes a placeholder: patch it in with
    ``monkeypatch.setattr(plots, "png_bytes", no_render)``."""
    plots.plt.close(fig)
    if path is not None:
        plots.atomic_write_bytes(path, b"png")
    return b"png"
