"""What a run tells people: the run card (HTML, PNG charts) and the run summary."""
