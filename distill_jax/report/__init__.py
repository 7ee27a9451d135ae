"""What results look like to a reader: run records, Markdown tables, plots, and `show`
(a distilled set as a picture)."""
