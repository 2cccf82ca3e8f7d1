"""The report stage: tables, figures and provenance pages for the book.

* :mod:`~energybook.report.analysis`: fits and comparisons over the measured grids;
* :mod:`~energybook.report.provenance`: what was measured, where, when and how;
* :mod:`~energybook.report.plot`: the book's figures;
* :mod:`~energybook.report.bench`: the committed benchmark outputs as tables (the folder named by the caller).

It reads :mod:`energybook.store` and :mod:`energybook.model`; nothing imports it but the CLI.
"""
