"""Reports: what a run produced (typed, and as report.json), report.md and the printed tables, figures, and
the environment a result was made in."""
