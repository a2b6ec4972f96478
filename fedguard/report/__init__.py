"""``fedguard report RUN_DIR``: one self-contained HTML page (and PNG plots) describing a finished run."""
