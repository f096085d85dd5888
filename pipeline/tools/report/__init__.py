"""`casewatch report`: what the exception log says, as text or HTML. `report` reads the log
and is the command, `cases` analyses the records, `output` renders tables, text and HTML.
Imports pipeline.runtime (topics, access), pipeline.core and pipeline.config.
"""
