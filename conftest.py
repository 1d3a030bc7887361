"""Notebook tests (nbval) wait for a kernel's output as long as a slow, busy machine needs.

nbval reads a cell's outputs with a fixed 5-second wait per message; on a 2-core machine whose
cores are busy with training processes the kernel can take longer to send them, and the cell
then fails with "Timeout of 5 seconds exceeded waiting for output" although it ran. A cell
that really hangs still stops at nbval's own cell timeout (``--nbval-cell-timeout``).
"""

from nbval.plugin import IPyNbCell

OUTPUT_WAIT_SECONDS = 120

_nbval_init = IPyNbCell.__init__


def _patient_init(self, *args, **kwargs):
    _nbval_init(self, *args, **kwargs)
    self.output_timeout = OUTPUT_WAIT_SECONDS


IPyNbCell.__init__ = _patient_init


# The fast tier (``pytest -m "not slow"``) leaves out the notebooks and every test that waits on the five trained styles;
# tests that train or run a browser for long mark themselves ``@pytest.mark.slow``.
SLOW_FIXTURES = {"trained_outputs", "comparison"}  # fixtures that train styles or adapter kinds


def pytest_collection_modifyitems(items):
    import pytest

    for item in items:
        if item.path.suffix == ".ipynb" or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
