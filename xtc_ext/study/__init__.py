"""Studies: a paper's comparison (rows x seeds of ``python -m xtc_ext.train``) in one command, and its table.

- :mod:`xtc_ext.study.spec`: the study file (base options, axes, explicit rows, seeds, baseline), checked and
  expanded into runs;
- :mod:`xtc_ext.study.runner`: the runs as training processes, N at a time, resumable, failures listed;
- :mod:`xtc_ext.study.report`: the tables (markdown, CSV) and the figure from the runs' ``metrics.json``;
- ``python -m xtc_ext.study`` (:mod:`xtc_ext.study.__main__`): the command line.

The file format and the commands: docs/studies.md; one study per paper table: docs/reproducing.md.
"""

from xtc_ext.study.report import build_tables, write_report
from xtc_ext.study.runner import run_study
from xtc_ext.study.spec import STUDY_DIR, Row, Run, Study, list_studies, load_study

__all__ = ["STUDY_DIR", "Row", "Run", "Study", "list_studies", "load_study", "run_study", "build_tables",
           "write_report"]
