"""One flow per story; a flow only orchestrates (no HTTP or SQL of its own).

Every story's run is recorded alike by :mod:`flows.run_record`; which flow runs a job
is said once, in :mod:`photo_escape.stories`.
"""
