"""Batches: the runner that validates, executes, resumes and finalizes them
(`runner.BatchRunner`) and the in-process execution of one line (`inprocess`)."""
