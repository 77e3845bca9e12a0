"""The stages of a run (DESIGN section 1). Each stage builds requests from records and
parses completions back into records, nothing else; the runner sends the requests,
grades, and writes the tables."""
