"""The demos: ``python -m lmseg.demo`` (or ``lmseg-demo``, or ``demo/demo.py`` in a checkout)
segments images and videos from the command line (:mod:`.cli`); ``python -m lmseg.demo.web`` (or
``lmseg-web``, or ``demo/app.py``) serves the same in a web page (:mod:`.web`, needs the ``web``
extra). What both share is :mod:`.common`."""
