"""`casewatch handle`: the example handler desk that handler teams copy. `handle` is the
command and live view, `kafka` follows a handler topic and publishes resolutions, `cases` folds
records into cases and parses commands. Imports pipeline.runtime (topics, access),
pipeline.core and pipeline.config.
"""
