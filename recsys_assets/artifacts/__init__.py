"""Pure compute for the artifacts of SPEC §4: daily aggregates, payloads, envelope, validation.

Nothing here touches Dagster, files or the clock; assets read through resources, call these
functions and write what they return.
"""
