"""Reports: report.md and the printed tables, figures, and the environment a result was made in."""
