"""Static HTML report of a routing analysis: ``plots`` (figures from arrays), ``html`` (the page),
``stage`` (the ``report`` stage reading ``workdir/analysis``)."""
