"""What composes stages: ``run`` (every stage of a plan and its side studies on one run
directory), ``study`` with ``study_stats`` and ``study_report`` (seeds, their paired intervals
and their report), ``check`` (every artefact of a run against what it was made from)."""
