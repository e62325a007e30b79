"""A job's live ipywidgets view in Jupyter; its markup is drawn by ``_job_view``."""

from __future__ import annotations

from typing import Any

from ._job_view import final_text, job_html

_looks: dict[str, Any] = {}


def _shared_looks() -> dict[str, Any]:
    """Layouts and styles every job widget shares (made once, in the first displaying
    cell): a job opens no comm models of its own for them."""
    if not _looks:
        import ipywidgets as w
        from ipywidgets.widgets.widget_string import HTMLStyle  # not exported by ipywidgets

        _looks.update(
            view=w.Layout(flex="1 1 auto", min_width="20em"),
            html=HTMLStyle(),
            button=w.Layout(width="auto", flex="0 0 auto", align_self="flex-start"),
            button_style=w.ButtonStyle(),
            box=w.Layout(width="100%", align_items="flex-start"),
        )
    return _looks


class WidgetRenderer:
    """An ipywidgets view of a job: state, description, bar, n/total, rate, ETA,
    elapsed, cancel button; the traceback on failure, the result on success.

    Light on the frontend: one HTML widget holds all of it but the button, so a job
    opens three comm models (the HTML, the button, their box; their layouts and styles
    are shared by every job), and a draw is one message."""

    def __init__(self, job: Any) -> None:
        import ipywidgets as w

        shared = _shared_looks()
        self.job = job
        self.draws = 0
        self.view = w.HTML(layout=shared["view"], style=shared["html"])
        self.cancel_button = w.Button(
            description="Cancel",
            icon="stop",
            tooltip=f"revoke task {job.id}",
            layout=shared["button"],
            style=shared["button_style"],
        )
        self.cancel_button.on_click(lambda _button: self.job.cancel())
        self.widget = w.HBox([self.view, self.cancel_button], layout=shared["box"])
        self.widget.add_class("celerynb-job")
        self.handle: Any = None  # the display, to leave a true final line for nbconvert
        self._final_published: str | None = None  # the final HTML published, once done
        self._html = ""
        self.draw()

    def mimebundle(self) -> dict[str, Any]:
        """While the job runs: the widget view plus a text line for frontends that cannot
        render widgets. Once it is done: the same look as static HTML plus that line, so
        that a saved notebook shows it without widget state (GitHub, nbviewer, nbconvert)."""
        if self.job.done():
            return {"text/html": self.final_html(), "text/plain": final_text(self.job)}
        bundle = self.widget._repr_mimebundle_()
        bundle["text/plain"] = final_text(self.job)
        return bundle

    def final_html(self) -> str:
        """The widget as it is now, in static HTML (its parts are escaped by ``job_html``)."""
        return f"<div class='celerynb-job celerynb-final'>{self._html}</div>"

    def draw(self) -> bool:
        """Show the job's state now (one message at most); True once it is done."""
        job = self.job
        self._html = job_html(job)
        replaced = job.done() and self.handle is not None  # by static HTML, below
        if self.view.value != self._html and not replaced:  # one message for the whole view
            self.view.value = self._html
        self.draws += 1
        if self.handle is not None:
            if job.done():  # again when it changes later (a revoke's note delivered)
                final = self.final_html()
                if final != self._final_published:
                    self._final_published = final
                    self.handle.update(self.mimebundle(), raw=True)
            elif self._final_published is not None:  # done, then running again (a retry)
                self._final_published = None
                self.handle.update(self.mimebundle(), raw=True)
        return job.done()
